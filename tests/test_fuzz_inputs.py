"""Fuzzed inputs (Hypothesis): malformed configs, manifests and damaged shard or image bytes.

Each property states what a user relies on when an input is wrong: the job that reads it
names the problem, exits 2 (bad input, whenever it is found: a re-run cannot fix it), prints
no traceback, and publishes nothing (no run folder, no ``_manifest.json``, no
``_scores.json``). Every generated case is wrong by construction, so a job that accepted one
would be a bug, not a tolerated input. The configs are checked in-process against the
loader (hundreds of cases, fast) and through ``jobs/train.py``'s ``main``; manifests and
bytes through the job that reads them (train, evaluate, prepare_data), all before any Ray
cluster starts. Run with ``--hypothesis-show-statistics`` to see how many cases were tried.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ncsn_core import ConfigError, config_from_dict, load_config
from ncsn_core.config import Config, apply_overrides
from ncsn_ray.io.storage import Storage
from support.data import digits_uint8, write_sample_set
from support.jobs import load_job
from support.train_helpers import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "ncsn_ray" / "configs" / "digits.yaml").read_text())


def job_settings(max_examples: int) -> settings:
    """Cases that run a job's ``main`` (a few hundred milliseconds each): no deadline, and
    pytest's function-scoped fixtures are fine because every case works in its own folder."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------ the config's fields, seen from outside

FIELDS: dict[str, typing.Any] = {}  # "section.key" -> annotation
for _section in dataclasses.fields(Config):
    if _section.name == "name":
        continue
    for _key, _type in typing.get_type_hints(typing.get_type_hints(Config)[_section.name]).items():
        FIELDS[f"{_section.name}.{_key}"] = _type

CHOICES = {
    "data.dataset": ("digits", "mnist", "cifar10", "celeba", "celeba64", "imagefolder", "toy"),
    "model.kind": ("ncsn", "ncsnv2", "unet", "mlp", "toy_mlp"),
    "training.loss": ("dsm", "ssm"),
    "training.sigma_draw": ("ladder", "lognormal"),
    "training.loss_weighting": ("sigma_power", "edm"),
    "sampling.init": ("uniform", "gaussian"),
    "sampling.precision": ("fp32", "bf16"),
    "sampling.method": ("annealed_langevin", "euler", "heun", "edm", "pc", "consistency"),
    "sampling.schedule": ("ladder", "edm"),
    "sampling.predictor": ("reverse_diffusion", "euler", "heun"),
    "consistency.teacher_weights": ("ema", "trained"),
    "consistency.distance": ("pseudo_huber", "l2"),
    "consistency.weighting": ("ict", "uniform"),
}
# What a user may set each number to, as the README and the paper describe the settings.
POSITIVE = {
    "data.image_size", "data.channels", "model.ngf", "model.hidden", "model.depth", "model.sigma_data", "noise.sigma_max",
    "noise.sigma_min", "noise.num_levels", "training.n_projections", "training.batch_size", "training.lr",
    "training.steps", "training.checkpoint_every", "training.keep_checkpoints", "training.log_every",
    "training.grad_clip", "sampling.steps_per_level", "sampling.eps", "sampling.batch_size",
    "sampling.preview_samples", "sampling.rho", "sampling.snr", "sampling.churn_noise", "training.sigma_std",
    "consistency.rho", "consistency.sigma_min", "consistency.huber_c",
}
NON_NEGATIVE = {"training.weight_decay", "training.anneal_power", "training.seed", "sampling.churn",
                "sampling.churn_min", "sampling.corrector_steps", "model.groups", "consistency.teacher_step"}
UNIT_INTERVAL = {"training.ema_decay", "training.beta1"}  # [0, 1)
AT_LEAST_TWO = {"sampling.steps", "consistency.levels"}


def _base_types(annotation) -> set[type]:
    args = typing.get_args(annotation)
    return {a for a in args if a is not type(None)} if args else {annotation}


def _is_float_field(key: str) -> bool:
    return float in _base_types(FIELDS[key])


def _wrong_type_values(key: str) -> st.SearchStrategy:
    types_ = _base_types(FIELDS[key])
    options = [st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)]
    if bool not in types_:
        options.append(st.booleans())
    if types_ & {int, float} and str not in types_:
        options.append(st.text(max_size=8).filter(lambda t: _not_a_number(t)))
    if types_ == {int}:
        options.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)))
    if types_ == {bool}:
        options += [st.integers(), st.text(max_size=5)]
    if str in types_ and not types_ & {int, float}:
        options += [st.integers(), st.floats(allow_nan=False)]
    if key in ("noise.sigma_max", "noise.num_levels", "sampling.eps"):  # number or "auto"
        options = [o for o in options] + [st.text(min_size=1, max_size=8).filter(
            lambda t: t != "auto" and _not_a_number(t))]
    return st.one_of(options)


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _out_of_range_values(key: str) -> st.SearchStrategy:
    is_int = int in _base_types(FIELDS[key]) and not _is_float_field(key)
    number = (lambda **kw: st.integers(**kw)) if is_int else (
        lambda **kw: st.floats(allow_nan=False, allow_infinity=False, **kw))
    if key in POSITIVE:
        return number(max_value=0)
    if key in NON_NEGATIVE:
        return number(max_value=-1) if is_int else number(max_value=-1e-9)
    if key in UNIT_INTERVAL:
        return st.one_of(number(max_value=-1e-9), number(min_value=1.0))
    if key in AT_LEAST_TWO:
        return st.integers(max_value=1)
    raise AssertionError(key)


RANGED = sorted(POSITIVE | NON_NEGATIVE | UNIT_INTERVAL | AT_LEAST_TWO)


@st.composite
def broken_configs(draw) -> tuple[dict, str]:
    """``(raw config, the key its error must name)``: the digits default with one setting
    made wrong (an unknown key, a wrong type, a non-finite number, a value out of range, an
    unknown choice, a run name that is not a folder name)."""
    raw = json.loads(json.dumps(BASE))
    kind = draw(st.sampled_from(["unknown_key", "unknown_section", "wrong_type", "non_finite", "out_of_range",
                                 "bad_choice", "bad_name", "section_not_mapping"]))
    event(kind)
    if kind == "unknown_section":
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
                    .filter(lambda n: n not in ("name", "data", "model", "noise", "training", "sampling",
                                                "inpainting", "consistency")))
        raw[name] = draw(st.integers())
        return raw, name
    if kind == "bad_name":
        raw["name"] = draw(st.one_of(st.sampled_from(["", ".", "..", "../escape", "a/b", "/abs", "-x", "a b"]),
                                     st.text(min_size=1, max_size=20).filter(lambda t: not t[0].isalnum()
                                                                             or "/" in t)))
        return raw, "name"
    if kind == "section_not_mapping":
        section = draw(st.sampled_from(["data", "model", "noise", "training", "sampling"]))
        raw[section] = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)))
        return raw, section
    if kind == "unknown_key":
        section = draw(st.sampled_from(["data", "model", "noise", "training", "sampling", "inpainting",
                                        "consistency"]))
        key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
                   .filter(lambda k: f"{section}.{k}" not in FIELDS))
        raw.setdefault(section, {})[key] = draw(st.integers())
        return raw, f"{section}.{key}"
    if kind == "wrong_type":
        dotted = draw(st.sampled_from(sorted(k for k in FIELDS if k != "data.uri")))
        value = draw(_wrong_type_values(dotted))
    elif kind == "non_finite":
        dotted = draw(st.sampled_from(sorted(k for k in FIELDS if _is_float_field(k))))
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-Infinity"]))
    elif kind == "out_of_range":
        dotted = draw(st.sampled_from(RANGED))
        value = draw(_out_of_range_values(dotted))
    else:
        dotted = draw(st.sampled_from(sorted(CHOICES)))
        value = draw(st.text(max_size=12).filter(lambda t: t not in CHOICES[dotted]))
    section, key = dotted.split(".")
    raw.setdefault(section, {})[key] = value
    return raw, dotted


@settings(max_examples=1000, deadline=None)
@given(broken_configs())
def test_every_malformed_config_is_a_config_error_naming_the_key(case):
    raw, key = case
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, "fuzz.yaml")
    assert key in str(err.value) and str(err.value).startswith("fuzz.yaml")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")
                                                                   if _encodable(t) else b"\xff")))
def test_any_bytes_as_a_config_file_load_or_give_a_config_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(data)
        try:
            config = load_config(path)
        except ConfigError as err:
            assert str(path) in str(err)
        else:
            assert isinstance(config, Config)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_any_set_override_applies_or_gives_a_config_error(overrides):
    base = config_from_dict(BASE)
    try:
        config = apply_overrides(base, overrides)
    except ConfigError as err:
        assert str(err).startswith("--set")
    else:
        assert isinstance(config, Config)


def _assert_clean_exit_2(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    for word in words:
        assert word in err, (word, err)


@job_settings(100)
@given(case=broken_configs())
def test_train_exits_2_on_a_malformed_config_and_creates_no_run(case, capsys):
    raw, key = case
    train = load_job("train")
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "broken.yaml"
        config.write_text(yaml.safe_dump(raw, allow_unicode=True))
        storage = Path(folder) / "runs"
        code = train.main(["--config", str(config), "--storage", str(storage), "--steps", "1"])
        _assert_clean_exit_2(code, capsys.readouterr().err, key)
        assert not storage.exists()


# ------------------------------------------------------------------ prepared datasets


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Digits prepared by the project's own preparation (3 shards, with SHA-256 per shard)."""
    from ncsn_ray.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("fuzz") / "digits"
    prepare_dataset("digits", str(out), shard_size=700, log=lambda *_: None)
    return out


REQUIRED = ["format", "version", "shards", "name", "height", "width", "channels", "num_rows"]
SHARD_REQUIRED = ["path", "num_rows", "first_id", "last_id"]


DATASET_DAMAGE = ["drop", "wrong_type", "miscount", "shape", "version", "format", "escaping_path",
                  "duplicate_shard", "checksum", "manifest_bytes", "not_an_object", "shard_bytes", "missing_shard"]


@st.composite
def damaged_datasets(draw, kind: str) -> tuple[str, object]:
    """``(what, change)``: one thing of ``kind`` wrong with a prepared dataset, as a function of its folder."""
    k = draw(st.integers(0, 2))  # which shard
    junk = st.one_of(st.text(max_size=5), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                     st.none(), st.booleans())

    def edit(fn):
        def apply(folder: Path) -> None:
            path = folder / "_manifest.json"
            manifest = json.loads(path.read_text())
            fn(manifest)
            path.write_text(json.dumps(manifest))
        return apply

    if kind == "drop":
        field = draw(st.sampled_from(REQUIRED + [f"shards.{f}" for f in SHARD_REQUIRED]))
        if field.startswith("shards."):
            return kind, edit(lambda m: m["shards"][k].pop(field.split(".")[1]))
        return kind, edit(lambda m: m.pop(field))
    if kind == "wrong_type":
        field = draw(st.sampled_from(REQUIRED[1:] + [f"shards.{f}" for f in SHARD_REQUIRED]))
        value = draw(junk.filter(lambda v: not (field == "name" and isinstance(v, str))))
        if field.startswith("shards."):
            return kind, edit(lambda m: m["shards"][k].__setitem__(field.split(".")[1], value))
        return kind, edit(lambda m: m.__setitem__(field, value))
    if kind == "miscount":
        field = draw(st.sampled_from(["num_rows", "shards.num_rows", "shards.first_id", "shards.last_id"]))
        delta = draw(st.integers(-5, 5).filter(lambda d: d != 0))
        if field == "num_rows":
            return kind, edit(lambda m: m.__setitem__("num_rows", m["num_rows"] + delta))
        return kind, edit(lambda m: m["shards"][k].__setitem__(field[7:], m["shards"][k][field[7:]] + delta))
    if kind == "shape":
        field, value = draw(st.sampled_from(["height", "width", "channels"])), draw(st.integers(-2, 40))
        return kind, edit(lambda m: m.__setitem__(field, value if value != m[field] else value + 1))
    if kind == "version":
        value = draw(st.integers().filter(lambda v: v != 1))
        return kind, edit(lambda m: m.__setitem__("version", value))
    if kind == "format":
        value = draw(st.text(max_size=15).filter(lambda t: t != "ncsn-dataset"))
        return kind, edit(lambda m: m.__setitem__("format", value))
    if kind == "escaping_path":
        value = draw(st.sampled_from(["../shard-00000.parquet", "/etc/passwd", "sub/shard.parquet", "", "..",
                                      "s3://other/shard.parquet", "C:\\x.parquet"]))
        return kind, edit(lambda m: m["shards"][k].__setitem__("path", value))
    if kind == "duplicate_shard":
        other = (k + 1) % 3
        return kind, edit(lambda m: m["shards"][other].__setitem__("path", m["shards"][k]["path"]))
    if kind == "checksum":
        value = draw(st.text("0123456789abcdef", min_size=64, max_size=64))
        return kind, edit(lambda m: m["shards"][k].__setitem__("sha256", value))
    if kind == "manifest_bytes":
        data = draw(st.binary(max_size=64).filter(lambda b: not _is_json_object(b)))
        return kind, lambda folder: (folder / "_manifest.json").write_bytes(data)
    if kind == "not_an_object":
        value = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)))
        return kind, lambda folder: (folder / "_manifest.json").write_text(json.dumps(value))
    if kind == "missing_shard":
        return kind, lambda folder: (folder / f"shard-{k:05d}.parquet").unlink()
    # shard_bytes: the shard's bytes damaged: truncated, overwritten in a range, or replaced
    how = draw(st.sampled_from(["truncate", "overwrite", "replace"]))
    cut, span, fill = draw(st.floats(0, 0.999)), draw(st.integers(1, 64)), draw(st.binary(min_size=1, max_size=64))

    def damage(folder: Path) -> None:
        path = folder / f"shard-{k:05d}.parquet"
        data = bytearray(path.read_bytes())
        at = int(cut * len(data))
        if how == "truncate":
            data = data[:at]
        elif how == "overwrite":
            patch = (fill * span)[:span]
            if bytes(data[at:at + len(patch)]) == patch:
                patch = bytes(b ^ 0xFF for b in patch)
            data[at:at + len(patch)] = patch
        else:
            data = bytearray(fill)
        path.write_bytes(bytes(data))
    return f"{kind}:{how}", damage


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


@pytest.mark.parametrize("kind", DATASET_DAMAGE)
@job_settings(25)
@given(data=st.data())
def test_train_exits_2_on_a_damaged_dataset_and_creates_no_run(kind, data, prepared, tmp_path, capsys):
    what, damage = data.draw(damaged_datasets(kind))
    event(what)
    train = load_job("train")
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        data = Path(folder) / "data"
        shutil.copytree(prepared, data)
        damage(data)
        storage = Path(folder) / "runs"
        config = write_tiny_config(Path(folder))
        code = train.main(["--config", str(config), "--data", str(data), "--storage", str(storage),
                           "--steps", "1", "--no-preview"])
        _assert_clean_exit_2(code, capsys.readouterr().err, str(data))
        assert not storage.exists(), what


# ------------------------------------------------------------------ sample sets and source images


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "samples"
    write_sample_set(Storage.from_uri(str(out)), digits_uint8(24), shard_size=8)
    return out


SAMPLE_SET_DAMAGE = ["drop", "wrong_type", "miscount", "escaping_path", "duplicate_shard", "version", "png_bytes"]


@st.composite
def damaged_sample_sets(draw, kind: str):
    """``(what, change)``: one thing of ``kind`` wrong with a complete sample set of 3 shards."""
    k = draw(st.integers(0, 2))

    def edit(fn):
        def apply(folder: Path) -> None:
            manifest = json.loads((folder / "_manifest.json").read_text())
            fn(manifest)
            (folder / "_manifest.json").write_text(json.dumps(manifest))
        return apply

    if kind == "drop":
        field = draw(st.sampled_from(["format", "version", "shards", "count", "channels", "height", "width",
                                      "kind"]))
        return kind, edit(lambda m: m.pop(field))
    if kind == "wrong_type":
        field = draw(st.sampled_from(["count", "channels", "height", "width", "version"]))
        value = draw(st.one_of(st.text(max_size=4), st.floats(allow_nan=False), st.none(), st.booleans()))
        return kind, edit(lambda m: m.__setitem__(field, value))
    if kind == "miscount":
        field = draw(st.sampled_from(["count", "shards.num_rows"]))
        delta = draw(st.integers(-5, 5).filter(lambda d: d != 0))
        if field == "count":
            return kind, edit(lambda m: m.__setitem__("count", m["count"] + delta))
        return kind, edit(lambda m: m["shards"][k].__setitem__("num_rows", m["shards"][k]["num_rows"] + delta))
    if kind == "escaping_path":
        value = draw(st.sampled_from(["../x.parquet", "/etc/passwd", "a/b.parquet", "", ".."]))
        return kind, edit(lambda m: m["shards"][k].__setitem__("path", value))
    if kind == "duplicate_shard":
        return kind, edit(lambda m: m["shards"][(k + 1) % 3].__setitem__("path", m["shards"][k]["path"]))
    if kind == "version":
        value = draw(st.integers().filter(lambda v: v != 1))
        return kind, edit(lambda m: m.__setitem__("version", value))
    row, junk = draw(st.integers(0, 7)), draw(st.binary(max_size=40))

    def damage_png(folder: Path) -> None:  # a shard whose Parquet is fine but one PNG is not
        import pyarrow.parquet as pq

        manifest = json.loads((folder / "_manifest.json").read_text())
        path = folder / manifest["shards"][k]["path"]
        table = pq.read_table(path)
        images = table.column("image").to_pylist()
        images[row] = images[row][: len(images[row]) // 2] + junk
        table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
        pq.write_table(table, path)
    return kind, damage_png


@pytest.mark.parametrize("kind", SAMPLE_SET_DAMAGE)
@job_settings(25)
@given(data=st.data())
def test_evaluate_exits_2_on_a_damaged_sample_set_and_writes_no_scores(kind, data, sample_set, tmp_path, capsys):
    what, damage = data.draw(damaged_sample_sets(kind))
    evaluate = load_job("evaluate")
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        samples = Path(folder) / "samples"
        shutil.copytree(sample_set, samples)
        damage(samples)
        code = evaluate.main(["--samples", str(samples), "--metrics", "digits", "--no-ray"])
        _assert_clean_exit_2(code, capsys.readouterr().err, str(samples))
        assert not (samples / "_scores.json").exists(), what


@job_settings(100)
@given(junk=st.binary(max_size=300), keep=st.floats(0, 0.8), index=st.integers(0, 5))
def test_prepare_exits_2_on_an_image_that_does_not_decode_and_publishes_nothing(junk, keep, index, tmp_path, capsys):
    from PIL import Image

    prepare = load_job("prepare_data")
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        root = Path(folder) / "images"
        root.mkdir()
        rng = np.random.default_rng(0)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / f"{i}.png")
        bad = root / f"{index}.png"
        good = bad.read_bytes()  # cut inside the pixel data (a PNG cut in its last chunks may still decode)
        bad.write_bytes(good[: int(keep * len(good))] + junk)
        out = Path(folder) / "out"
        code = prepare.main(["--dataset", "imagefolder", "--root", str(root), "--image-size", "8", "--out", str(out)])
        _assert_clean_exit_2(code, capsys.readouterr().err, bad.name)
        assert not (out / "_manifest.json").exists()
