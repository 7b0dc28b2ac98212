"""Train an NCSN with Ray Train: ``python jobs/train.py [--config ...] [--storage URI] ...``.

Run ``python jobs/train.py --help`` for every option. With no arguments it trains the digits
config on an embedded local Ray instance; under ``ray job submit`` it attaches to the cluster.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncsn_ray.train_job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
