"""The sample-set format (``ncsn_ray.sample.sample_set``) on its own, without a sampler: the
shard plan, the job spec that decides who may write into a folder, and the manifest that is
written last and only over complete shards."""

from __future__ import annotations

import numpy as np
import pytest

from ncsn_ray.io.storage import Storage
from ncsn_ray.sample.sample_set import (
    FolderState, SampleSetError, finished_units, make_job_spec, open_sample_set, plan_units, read_sample_manifest,
    write_manifest,
)
from support.data import digits_uint8, write_sample_set


def test_the_shard_plan_covers_every_position_once_and_names_shards_by_first_and_last():
    units = plan_units("generate", 10, 4, offset=100)
    assert [(u.start, u.stop) for u in units] == [(0, 4), (4, 8), (8, 10)]
    assert [u.name for u in units] == ["samples-000100-000103.parquet", "samples-000104-000107.parquet",
                                       "samples-000108-000109.parquet"]
    assert sum(u.count for u in units) == 10
    with pytest.raises(ValueError):
        plan_units("generate", 0, 4)


def test_a_folder_belongs_to_one_job_which_resumes_there(tmp_path):
    storage = Storage.from_uri(str(tmp_path / "set"))
    spec = make_job_spec("generate", {"n": 8, "seed": 0}, {"made_by": "test"})
    assert open_sample_set(storage, spec) is FolderState.NEW
    assert open_sample_set(storage, make_job_spec("generate", {"n": 8, "seed": 0}, {"made_by": "other"})) \
        is FolderState.RESUME  # the info part (URIs, who) may differ; the identity may not
    with pytest.raises(SampleSetError, match="seed"):
        open_sample_set(storage, make_job_spec("generate", {"n": 8, "seed": 1}, {}))
    other = Storage.from_uri(str(tmp_path / "other"))
    other.write_bytes("notes.txt", b"mine")
    with pytest.raises(SampleSetError, match="not a sample set"):
        open_sample_set(other, spec)


def test_the_manifest_is_written_only_over_complete_shards_and_read_back_checked(tmp_path):
    storage = Storage.from_uri(str(tmp_path / "set"))
    write_sample_set(storage, digits_uint8(20), shard_size=8, complete=False)
    units = plan_units("generate", 20, 8)
    assert finished_units(storage, units) == {u.name for u in units}
    spec = storage.read_json("_job.json")
    storage.delete(units[1].name)
    with pytest.raises(SampleSetError, match=units[1].name):
        write_manifest(storage, spec, units, image_shape=(1, 8, 8))
    assert not storage.exists("_manifest.json")
    with pytest.raises(SampleSetError, match="did not finish"):
        read_sample_manifest(storage)

    complete = Storage.from_uri(str(tmp_path / "complete"))
    write_sample_set(complete, digits_uint8(20), shard_size=8)
    manifest = read_sample_manifest(complete)
    assert manifest["count"] == 20 and (manifest["channels"], manifest["height"], manifest["width"]) == (1, 8, 8)
    assert np.sum([s["num_rows"] for s in manifest["shards"]]) == 20
