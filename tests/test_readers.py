"""The guide's reading snippets, run as they are, on what the jobs write.

A sample set made by the generation job and a dataset made by the preparation job, on
local disk and on a real S3 API (moto on loopback), must each read as one table with the
common readers pointed at the folder: ``pyarrow.dataset``, ``pandas.read_parquet``,
``ray.data.read_parquet`` and a ``**/*.parquet`` glob. The snippets are taken from
docs/guide/storage.md, "Reading results with your own tools" (the blocks after a
``reading-snippet`` marker), with only the bucket, the folder and the endpoint replaced.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from ncsn_ray.sample import generate
from ncsn_ray.sample.generate import GenerateOptions
from ncsn_ray.data.prepare import prepare_dataset
from ncsn_ray.sample.pipeline import ActorPlan
from support.data import make_tiny_run

REPO = Path(__file__).resolve().parents[1]
SNIPPETS = REPO / "docs" / "guide" / "storage.md"
N = 12

pytestmark = [pytest.mark.ray]


def readme_snippet(kind: str) -> str:
    text = SNIPPETS.read_text()
    match = re.search(rf"<!-- reading-snippet: {kind} .*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{SNIPPETS.relative_to(REPO)} has no reading-snippet for {kind}"
    return textwrap.dedent(match.group(1))  # a snippet may sit indented inside a list item


@pytest.fixture(scope="module")
def written(tmp_path_factory, s3_server, ray_local):
    """A generated sample set and a prepared dataset, each on local disk and on S3."""
    import boto3

    root = tmp_path_factory.mktemp("readers")
    run = root / "run"
    make_tiny_run(run)
    boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1").create_bucket(Bucket="readers")
    places = {"local": str(root), "s3": "s3://readers"}
    for place, base in places.items():
        generate.run(GenerateOptions(n=N, checkpoint=str(run), out=f"{base}/samples/tiny", shard_size=5, batch_size=4,
                                     actors=ActorPlan(num_actors=1), endpoint_url=s3_server["endpoint"]),
                     log=lambda _m: None)
        prepare_dataset("digits", f"{base}/data/digits", shard_size=700, endpoint_url=s3_server["endpoint"],
                        log=lambda _m: None)
    return places


@pytest.mark.timeout(300)
@pytest.mark.parametrize("folder, rows, columns", [
    ("samples/tiny", N, ["seed", "image"]),
    ("data/digits", 1797, ["id", "image", "label"]),
])
def test_readme_snippet_reads_a_folder_from_s3_as_one_table(written, s3_server, folder, rows, columns):
    code = readme_snippet("s3").replace("my-bucket/samples/digits", f"readers/{folder}")
    code = code.replace("http://127.0.0.1:9000", s3_server["endpoint"])
    scope: dict = {}
    exec(compile(code, "docs/guide/storage.md reading-snippet s3", "exec"), scope)
    assert scope["table"].num_rows == rows and scope["table"].column_names == columns
    assert len(scope["frame"]) == rows and list(scope["frame"].columns) == columns
    assert scope["rows"] == rows
    assert scope["first"].size == (8, 8)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("folder, rows, sidecars", [
    ("samples/tiny", N, {"_job.json", "_manifest.json", "_grid.png"}),
    ("data/digits", 1797, {"_prepare.json", "_manifest.json"}),
])
def test_readme_snippet_reads_a_local_folder_as_one_table(written, folder, rows, sidecars):
    local = Path(written["local"]) / folder
    assert sidecars <= {p.name for p in local.iterdir()}, "the folder holds its manifest and figures beside the shards"
    code = readme_snippet("local").replace("runs/samples/digits", str(local))
    scope: dict = {}
    exec(compile(code, "docs/guide/storage.md reading-snippet local", "exec"), scope)
    assert scope["table"].num_rows == len(scope["frame"]) == scope["same"].num_rows == rows
    assert all(name.endswith(".parquet") and not Path(name).name.startswith("_") for name in scope["shards"])
