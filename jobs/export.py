"""``python jobs/export.py ...``: the same command as ``ncsn-export`` (``ncsn_ray/cli/export.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("export")())
