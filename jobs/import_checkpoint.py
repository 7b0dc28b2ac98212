"""``python jobs/import_checkpoint.py ...``: the same command as ``ncsn-import`` (``ncsn_ray/cli/import_checkpoint.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("import_checkpoint")())
