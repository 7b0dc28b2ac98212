"""``python jobs/generate.py ...``: the same command as ``ncsn-generate`` (``ncsn_ray/cli/generate.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("generate")())
