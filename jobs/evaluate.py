"""``python jobs/evaluate.py ...``: the same command as ``ncsn-evaluate`` (``ncsn_ray/cli/evaluate.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("evaluate")())
