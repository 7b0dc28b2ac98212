"""``python jobs/tune_sampler.py ...``: the same command as ``ncsn-tune`` (``ncsn_ray/cli/tune_sampler.py``; see ``--help``)."""

import sys

from _launch import main_of

if __name__ == "__main__":
    sys.exit(main_of("tune_sampler")())
