"""``python jobs/distill.py ...``: the same command as ``ncsn-distill`` (``ncsn_ray/cli/distill.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("distill")())
