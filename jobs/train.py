"""``python jobs/train.py ...``: the same command as ``ncsn-train`` (``ncsn_ray/cli/train.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("train")())
