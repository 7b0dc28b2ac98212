"""``ncsn_ray.io.storage.Storage``, the one way every job reads and writes, on local disk and
on a real S3 API (moto on loopback): each behaviour is checked on both, so a job that works
on a laptop folder works the same on object storage."""

from __future__ import annotations

import hashlib
import threading
import uuid

import pyarrow as pa
import pytest

from ncsn_ray.errors import DamagedInput
from ncsn_ray.io.storage import DamagedFile, Storage, StorageError


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    """An empty folder: ``tmp_path/store`` or a fresh prefix in a fresh bucket."""
    if request.param == "local":
        return Storage.from_uri(str(tmp_path / "store"))
    import boto3

    server = request.getfixturevalue("s3_server")
    bucket = f"store-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=server["endpoint"], region_name="us-east-1").create_bucket(Bucket=bucket)
    return Storage.from_uri(f"s3://{bucket}/store", endpoint_url=server["endpoint"])


@pytest.mark.timeout(120)
def test_bytes_round_trip_and_listing(storage):
    assert not storage.exists()
    storage.write_bytes("a/b.bin", b"\x00\x01payload")
    storage.write_bytes("top.txt", b"x")
    assert storage.read_bytes("a/b.bin") == b"\x00\x01payload" and storage.is_file("top.txt")
    assert sorted(storage.list()) == ["a", "top.txt"]
    assert storage.list(recursive=True) and "a/b.bin" in storage.list(recursive=True)
    assert storage.child("a").read_bytes("b.bin") == b"\x00\x01payload"
    storage.delete("top.txt")
    assert not storage.exists("top.txt")
    assert [n for n in storage.list(recursive=True) if ".tmp-" in n] == [], "no temporary file is left behind"


@pytest.mark.timeout(120)
def test_tables_round_trip_and_the_returned_digest_is_of_the_bytes_written(storage):
    table = pa.table({"id": pa.array([3, 1, 2], pa.int64()), "image": pa.array([b"p", b"q", b""], pa.binary())})
    digest = storage.write_table("t.parquet", table)
    assert digest == hashlib.sha256(storage.read_bytes("t.parquet")).hexdigest()
    assert storage.read_table("t.parquet").equals(table) and storage.parquet_num_rows("t.parquet") == 3
    assert storage.read_table("t.parquet", columns=["id"]).column("id").to_pylist() == [3, 1, 2]


@pytest.mark.timeout(120)
def test_json_round_trips_and_damaged_files_are_named_bad_input(storage):
    storage.write_json("m.json", {"b": [1, 2], "a": "x"})
    assert storage.read_json("m.json") == {"a": "x", "b": [1, 2]}
    storage.write_bytes("bad.json", b"{not json")
    storage.write_bytes("bad.parquet", b"PAR1 not really PAR1")
    for name, reader in (("bad.json", storage.read_json), ("bad.parquet", storage.read_table)):
        with pytest.raises(DamagedFile, match=name) as err:
            reader(name)
        assert isinstance(err.value, DamagedInput)  # exit 2 even when found mid-run


@pytest.mark.timeout(120)
def test_missing_files_are_storage_errors_naming_them(storage):
    with pytest.raises(StorageError, match="nothing.bin"):
        storage.read_bytes("nothing.bin")
    storage.check_writable()
    assert [n for n in storage.list() if n.startswith(".write-probe")] == [], "the probe is deleted"


@pytest.mark.timeout(120)
def test_exclusive_create_has_exactly_one_winner_among_racing_writers(storage):
    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(8)

    def writer(k: int) -> None:
        barrier.wait()
        results.append((k, storage.create_exclusive("_job.json", f"writer {k}".encode())))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, won in results if won]
    assert len(winners) == 1 and storage.read_bytes("_job.json") == f"writer {winners[0]}".encode()
    assert [n for n in storage.list() if "tmp" in n] == [], "no temporary file is left behind"


def test_a_failed_local_write_leaves_no_partial_file(tmp_path):
    folder = Storage.from_uri(str(tmp_path))
    (tmp_path / "target.parquet").mkdir()  # the rename onto it fails after the data was written
    with pytest.raises(StorageError, match="target.parquet: cannot write"):
        folder.write_bytes("target.parquet", b"x" * 10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.parquet"], "the temporary file was removed"
    assert folder.list() == ["target.parquet"]
