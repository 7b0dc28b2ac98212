"""Dataset preparation (ncsn_ray.data.prepare, jobs/prepare_data.py) against real components:
scikit-learn's digits, torchvision's MNIST reader over idx files written here, image folders
of PNGs written here, a local folder and a real S3 API on loopback (moto)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ncsn_ray.data.format import MANIFEST, DatasetManifest, decode_images, iter_tables, read_manifest
from ncsn_ray.data.prepare import DEFAULT_SHARD_SIZE, PREPARE_RECORD, PrepareError, ensure_prepared, prepare_dataset
from ncsn_ray.data.sources import CELEBA_CROP, CELEBA_SIZE, SourceError, SourceUsageError, load_image
from ncsn_ray.io.storage import Storage, StorageError
from support.console import DEAD_PROXY, quiet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "prepare_data.py"


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as the expected content: ``(1797, 8, 8, 1)`` uint8 and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.floor(d.images * 255 / 16 + 0.5).astype(np.uint8)[..., None], d.target


def read_all(storage: Storage) -> tuple[DatasetManifest, pa.Table]:
    manifest = read_manifest(storage)
    return manifest, pa.concat_tables(list(iter_tables(storage, manifest)))


def check_digits(storage: Storage, digits, shard_size: int) -> pa.Table:
    images, labels = digits
    manifest, table = read_all(storage)
    assert (manifest.name, manifest.height, manifest.width, manifest.channels) == ("digits", 8, 8, 1)
    assert manifest.num_rows == table.num_rows == 1797
    assert len(manifest.shards) == -(-1797 // shard_size)
    assert [s.num_rows for s in manifest.shards][:-1] == [shard_size] * (len(manifest.shards) - 1)
    ids = table.column("id").to_numpy()
    assert np.array_equal(ids, np.arange(1797))
    assert np.array_equal(table.column("label").to_numpy(), labels)
    rows = [0, 1, 500, 1796]
    decoded = decode_images([table.column("image")[k].as_py() for k in rows], 1)
    assert np.array_equal(decoded, images[rows])
    assert decoded.max() == 255 and images[0].min() == 0
    return table


def local_mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# --------------------------------------------------------------------------- digits


@pytest.mark.timeout(60)
def test_digits_local_contents_and_rerun_does_nothing(tmp_path, digits):
    out = tmp_path / "digits"
    manifest = prepare_dataset("digits", str(out), shard_size=500, log=quiet)
    assert manifest.num_rows == 1797 and len(manifest.shards) == 4
    assert sorted(os.listdir(out)) == sorted([MANIFEST, PREPARE_RECORD] + [f"shard-0000{k}.parquet" for k in range(4)])
    check_digits(Storage.from_uri(str(out)), digits, 500)

    before = local_mtimes(out)
    lines: list[str] = []
    again = prepare_dataset("digits", str(out), shard_size=123, log=lines.append)
    assert again == manifest
    assert any("nothing to do" in line for line in lines)
    assert local_mtimes(out) == before

    # The training job's entry point returns the manifest without touching anything either.
    assert ensure_prepared("digits", str(out), image_size=8, channels=1, log=quiet) == manifest
    assert local_mtimes(out) == before


@pytest.mark.timeout(60)
def test_digits_into_s3_and_rerun_rewrites_nothing(s3_bucket, digits):
    import boto3

    bucket, endpoint = s3_bucket
    uri = f"s3://{bucket}/data/digits"
    manifest = prepare_dataset("digits", uri, shard_size=1000, endpoint_url=endpoint, log=quiet)
    assert len(manifest.shards) == 2
    check_digits(Storage.from_uri(uri, endpoint_url=endpoint), digits, 1000)

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def objects():
        listed = client.list_objects_v2(Bucket=bucket, Prefix="data/digits/")["Contents"]
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}

    before = objects()
    assert set(before) == {f"data/digits/{n}" for n in (MANIFEST, PREPARE_RECORD, "shard-00000.parquet", "shard-00001.parquet")}
    lines: list[str] = []
    prepare_dataset("digits", uri, endpoint_url=endpoint, log=lines.append)
    assert any("nothing to do" in line for line in lines)
    assert objects() == before

    # Without its manifest the dataset is incomplete: the shards are checked in place and kept.
    client.delete_object(Bucket=bucket, Key=f"data/digits/{MANIFEST}")
    events: list[tuple[int, bool]] = []
    prepare_dataset("digits", uri, endpoint_url=endpoint, log=quiet, on_shard=lambda k, i, w: events.append((k, w)))
    assert events == [(0, False), (1, False)]
    after = objects()
    shards = [f"data/digits/shard-0000{k}.parquet" for k in (0, 1)]
    assert [after[k] for k in shards] == [before[k] for k in shards]
    check_digits(Storage.from_uri(uri, endpoint_url=endpoint), digits, 1000)


@pytest.mark.timeout(60)
def test_interrupted_run_is_completed_with_identical_content(tmp_path, digits):
    reference = tmp_path / "reference"
    prepare_dataset("digits", str(reference), shard_size=400, log=quiet)
    _, expected = read_all(Storage.from_uri(str(reference)))

    out = tmp_path / "digits"

    def fail_after_two(index, info, written):
        if index == 1:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("digits", str(out), shard_size=400, log=quiet, on_shard=fail_after_two)
    assert not (out / MANIFEST).exists()
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]
    with pytest.raises(Exception, match="not a prepared dataset"):
        read_manifest(Storage.from_uri(str(out)))

    kept_mtimes = local_mtimes(out)
    events: list[tuple[int, bool]] = []
    # No --shard-size: the interrupted run's size (400) is taken from its record.
    prepare_dataset("digits", str(out), log=quiet, on_shard=lambda k, info, written: events.append((k, written)))
    assert events == [(0, False), (1, False), (2, True), (3, True), (4, True)]
    assert all(local_mtimes(out)[f"shard-0000{k}.parquet"] == kept_mtimes[f"shard-0000{k}.parquet"] for k in (0, 1))
    _, table = read_all(Storage.from_uri(str(out)))
    assert table.equals(expected)

    # Damage it: manifest gone, one shard gone, one shard garbage -> only those two rewritten.
    (out / MANIFEST).unlink()
    (out / "shard-00003.parquet").unlink()
    (out / "shard-00001.parquet").write_bytes(b"not parquet at all")
    events.clear()
    prepare_dataset("digits", str(out), shard_size=400, log=quiet, on_shard=lambda k, info, written: events.append((k, written)))
    assert events == [(0, False), (1, True), (2, False), (3, True), (4, False)]
    _, table = read_all(Storage.from_uri(str(out)))
    assert table.equals(expected)
    check_digits(Storage.from_uri(str(out)), digits, 400)

    # A smaller shard count removes the shards left over from the larger one.
    (out / MANIFEST).unlink()
    manifest = prepare_dataset("digits", str(out), shard_size=1000, log=quiet)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert len(manifest.shards) == 2
    _, table = read_all(Storage.from_uri(str(out)))
    assert table.equals(expected)


@pytest.mark.timeout(60)
def test_output_holding_something_else_is_refused(tmp_path):
    out = tmp_path / "out"
    prepare_dataset("digits", str(out), log=quiet)
    folder = make_image_folder(tmp_path / "images", labelled=True)
    with pytest.raises(PrepareError, match="already holds a different dataset.*holds digits 8x8x1"):
        prepare_dataset("imagefolder", str(out), root=str(folder), image_size=8, channels=1, log=quiet)
    with pytest.raises(PrepareError, match="different dataset"):
        ensure_prepared("imagefolder", str(out), root=str(folder), image_size=8, channels=1, log=quiet)

    # Parquet files that are not ours: nothing is written next to them.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign / "part-0.parquet")
    with pytest.raises(PrepareError, match="not shards of a prepared dataset.*part-0.parquet"):
        prepare_dataset("digits", str(foreign), log=quiet)
    (foreign / "part-0.parquet").rename(foreign / "shard-00000.parquet")
    with pytest.raises(PrepareError, match="another schema"):
        prepare_dataset("digits", str(foreign), log=quiet)
    assert os.listdir(foreign) == ["shard-00000.parquet"]

    # A manifest that is not ours.
    other = tmp_path / "other"
    other.mkdir()
    (other / MANIFEST).write_text('{"hello": "world"}')
    with pytest.raises(PrepareError, match="not a readable ncsn dataset manifest"):
        prepare_dataset("digits", str(other), log=quiet)

    # An unfinished preparation of another dataset.
    partial = tmp_path / "partial"
    with pytest.raises(RuntimeError, match="stop"):
        prepare_dataset("digits", str(partial), shard_size=1000, log=quiet, on_shard=stop_now)
    with pytest.raises(PrepareError, match="unfinished preparation of another dataset"):
        prepare_dataset("imagefolder", str(partial), root=str(folder), image_size=8, channels=1, log=quiet)


def stop_now(index, info, written):
    raise RuntimeError("stop")


@pytest.mark.timeout(60)
def test_unwritable_output(tmp_path, s3_bucket):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PrepareError, match="is a file"):
        prepare_dataset("digits", str(blocker), log=quiet)
    with pytest.raises(StorageError, match="not writable"):
        prepare_dataset("digits", str(blocker / "sub"), log=quiet)
    _, endpoint = s3_bucket
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/x"):
        prepare_dataset("digits", "s3://no-such-bucket-here/x", endpoint_url=endpoint, log=quiet)


# --------------------------------------------------------------------------- imagefolder


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def solid(size: tuple[int, int], colour: str) -> Image.Image:
    return Image.new("RGB", size, COLOURS[colour])


def make_image_folder(folder: Path, *, labelled: bool) -> Path:
    """``b_cats/`` and ``a_dogs/`` (labels 1 and 0) of solid PNGs, or the same files flat."""
    files = {
        "b_cats/2.png": solid((16, 16), "red"),
        "b_cats/1.png": solid((10, 10), "blue"),
        "a_dogs/x/deep.png": solid((8, 8), "white"),
        "a_dogs/3.png": solid((16, 16), "green"),
    }
    for rel, img in files.items():
        path = folder / (rel if labelled else rel.replace("/", "_"))
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    (folder / ".hidden.png").write_bytes(b"ignored: hidden")
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


@pytest.mark.timeout(60)
def test_imagefolder_resizes_sorts_and_labels(tmp_path):
    folder = make_image_folder(tmp_path / "images", labelled=True)
    # Non-square: the centre square is green between red and blue bands.
    wide = np.zeros((6, 18, 3), np.uint8)
    wide[:, :6] = COLOURS["red"]
    wide[:, 6:12] = COLOURS["green"]
    wide[:, 12:] = COLOURS["blue"]
    Image.fromarray(wide).save(folder / "b_cats" / "0_wide.png")
    # Transparent pixels are composited over white.
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(folder / "b_cats" / "9_clear.png")

    out = tmp_path / "out"
    manifest = prepare_dataset("imagefolder", str(out), root=str(folder), image_size=4, channels=3, shard_size=4, log=quiet)
    assert (manifest.name, manifest.height, manifest.width, manifest.channels, manifest.num_rows) == ("imagefolder", 4, 4, 3, 6)
    assert manifest.source["root"] == str(folder.resolve())
    _, table = read_all(Storage.from_uri(str(out)))
    # Sorted relative paths: a_dogs/3.png, a_dogs/x/deep.png, b_cats/0_wide.png, b_cats/1.png, b_cats/2.png, b_cats/9_clear.png
    assert table.column("id").to_pylist() == list(range(6))
    assert table.column("label").to_pylist() == [0, 0, 1, 1, 1, 1]
    images = decode_images(table.column("image").to_pylist(), 3)
    assert images.shape == (6, 4, 4, 3)
    for k, colour in enumerate(["green", "white", "green", "blue", "red", "white"]):
        assert (images[k] == COLOURS[colour]).all(), (k, colour, images[k][0, 0])

    # Grey, flat folder: labels are null.
    flat = make_image_folder(tmp_path / "flat", labelled=False)
    grey = prepare_dataset("imagefolder", str(tmp_path / "grey"), root=str(flat), image_size=2, channels=1, log=quiet)
    assert (grey.height, grey.channels, grey.num_rows) == (2, 1, 4)
    _, table = read_all(Storage.from_uri(str(tmp_path / "grey")))
    assert table.column("label").to_pylist() == [None] * 4
    images = decode_images(table.column("image").to_pylist(), 1)
    assert images.shape == (4, 2, 2, 1)
    # a_dogs_3 (green), a_dogs_x_deep (white), b_cats_1 (blue), b_cats_2 (red), in ITU-R 601-2 luma.
    assert images[:, 0, 0, 0].tolist() == [150, 255, 29, 76]

    # A changed folder is a different dataset once prepared.
    solid((40, 40), "red").save(flat / "a_dogs_3.png")
    with pytest.raises(PrepareError, match="differs in fingerprint"):
        prepare_dataset("imagefolder", str(tmp_path / "grey"), root=str(flat), image_size=2, channels=1, log=quiet)
    solid((5, 5), "red").save(flat / "zz_new.png")
    with pytest.raises(PrepareError, match="holds 4 rows, the source has 5"):
        prepare_dataset("imagefolder", str(tmp_path / "grey"), root=str(flat), image_size=2, channels=1, log=quiet)


@pytest.mark.timeout(60)
def test_imagefolder_errors(tmp_path):
    folder = make_image_folder(tmp_path / "images", labelled=True)
    bad = folder / "b_cats" / "5_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=f"{bad}: cannot read image"):
        prepare_dataset("imagefolder", str(out), root=str(folder), image_size=4, log=quiet)
    assert not (out / MANIFEST).exists()

    with pytest.raises(SourceUsageError, match="--image-size"):
        prepare_dataset("imagefolder", str(out), root=str(folder), log=quiet)
    with pytest.raises(SourceUsageError, match="--root"):
        prepare_dataset("imagefolder", str(out), image_size=4, log=quiet)
    with pytest.raises(SourceError, match="does not exist"):
        prepare_dataset("imagefolder", str(out), root=str(tmp_path / "nowhere"), image_size=4, log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        prepare_dataset("imagefolder", str(out), root=str(tmp_path / "empty"), image_size=4, log=quiet)
    solid((4, 4), "red").save(folder / "top.png")
    with pytest.raises(SourceError, match="mixes images"):
        prepare_dataset("imagefolder", str(out), root=str(folder), image_size=4, log=quiet)
    with pytest.raises(SourceUsageError, match="28x28"):
        prepare_dataset("mnist", str(out), image_size=32, log=quiet)


# --------------------------------------------------------------------------- torchvision sources


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file (the MNIST format): magic 0x0000 08 ndim, big-endian sizes, uint8 data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.timeout(60)
def test_mnist_from_files_under_root(tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train, train_labels = rng.integers(0, 256, (25, 28, 28), dtype=np.uint8), rng.integers(0, 10, 25, dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", train)
    write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx(raw / "t10k-images-idx3-ubyte", train[:3])
    write_idx(raw / "t10k-labels-idx1-ubyte", train_labels[:3])

    out = tmp_path / "mnist"
    manifest = prepare_dataset("mnist", str(out), root=str(tmp_path / "root"), shard_size=10, download=False, log=quiet)
    assert (manifest.name, manifest.height, manifest.width, manifest.channels, manifest.num_rows) == ("mnist", 28, 28, 1, 25)
    assert [s.num_rows for s in manifest.shards] == [10, 10, 5]
    assert manifest.source["split"] == "train"
    _, table = read_all(Storage.from_uri(str(out)))
    assert table.column("id").to_pylist() == list(range(25))
    assert table.column("label").to_pylist() == train_labels.tolist()
    assert np.array_equal(decode_images(table.column("image").to_pylist(), 1)[..., 0], train)

    # Complete: neither the files nor the internet are needed to find it again.
    assert ensure_prepared("mnist", str(out), root=str(tmp_path / "nowhere"), download=False, log=quiet) == manifest


def test_celeba_transform_matches_torchvision(tmp_path):
    """CelebA's aligned 178x218 faces: the paper's CenterCrop(140) + Resize(32), pixel for pixel."""
    from torchvision import transforms

    rng = np.random.default_rng(1)
    path = tmp_path / "000001.png"
    Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(path)
    ours = load_image(str(path), channels=3, crop=CELEBA_CROP, size=CELEBA_SIZE)
    with Image.open(path) as img:
        theirs = np.asarray(transforms.Compose([transforms.CenterCrop(140), transforms.Resize(32)])(img.convert("RGB")))
    assert ours.shape == (32, 32, 3)
    assert np.array_equal(ours, theirs)


@pytest.mark.timeout(60)
def test_missing_sources_say_how_to_provide_them(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match=r"mnist: no usable dataset files under .*--no-download.*MNIST/raw/.*--root"):
        prepare_dataset("mnist", str(tmp_path / "m"), root=str(tmp_path / "none"), download=False, log=quiet)
    assert not (tmp_path / "m").exists()  # no empty output left behind
    for key, value in DEAD_PROXY.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SourceError, match=r"celeba: .*downloading them failed.*img_align_celeba.*--root"):
        prepare_dataset("celeba", str(tmp_path / "c"), root=str(tmp_path / "none"), log=quiet)


# --------------------------------------------------------------------------- command line


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out, err


@pytest.mark.timeout(150)
def test_cli_success_and_failures(tmp_path, s3_server, s3_bucket):
    bucket, _ = s3_bucket
    uri = f"s3://{bucket}/digits"
    # The three runs go side by side: each spends most of its time importing torch.
    ok = start_cli("--dataset", "digits", "--out", uri, "--shard-size", "900", env=s3_server["env"])
    usage = start_cli("--dataset", "imagefolder", "--out", str(tmp_path / "x"), "--root", str(tmp_path))
    missing = start_cli("--dataset", "cifar10", "--out", str(tmp_path / "c"), "--root", str(tmp_path / "none"), env=DEAD_PROXY)

    code, out, err = finish(ok)
    assert code == 0, err
    assert "shard 2/2 written" in out and "rows/s" in out and "done" in out
    assert s3_server["env"]["AWS_SECRET_ACCESS_KEY"] not in out + err
    manifest = read_manifest(Storage.from_uri(uri, endpoint_url=s3_server["endpoint"]))
    assert (manifest.num_rows, len(manifest.shards)) == (1797, 2)

    code, out, err = finish(usage)
    assert code == 2
    assert "usage:" in err and "--image-size" in err and "Traceback" not in err

    code, out, err = finish(missing)
    assert code == 2  # a missing source is bad input: nothing was published
    assert "cifar10: no usable dataset files under" in err and "downloading them failed" in err
    assert "cifar-10-batches-py" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_cli_default_shard_size_matches_library():
    from ncsn_ray.cli import prepare_data as module

    assert module.DEFAULT_SHARD_SIZE == DEFAULT_SHARD_SIZE
    assert module.build_parser().parse_args(["--dataset", "digits", "--out", "x"]).shard_size is None
