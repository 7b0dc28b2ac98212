"""``python jobs/prepare_data.py ...``: the same command as ``ncsn-prepare`` (``ncsn_ray/cli/prepare_data.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("prepare_data")())
