"""``python jobs/toy.py ...``: the same command as ``ncsn-toy`` (``ncsn_ray/cli/toy.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("toy")())
