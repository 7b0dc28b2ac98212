"""Consistency distillation as a job (jobs/distill.py) on a real embedded Ray instance: a resumed
or restarted distillation ends bit-identical to an uninterrupted one, the student samples with K
network evaluations (counted) from its seeds alone, and bad input exits 2 with nothing written.

One tiny U-Net teacher is trained once for the module (4 steps); every student distils it
for 6 steps with a tiny recipe.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ncsn_core import build_model, load_checkpoint, save_checkpoint
from ncsn_core.config import config_from_dict
from ncsn_ray.sample.sampler import Sampler, SamplerSettings
from ncsn_ray.testing import faults
from support.jobs import load_job
from support.train_helpers import REPO, metrics, training_state_digests, write_tiny_config

train_main, distill_main, generate_main = (load_job(job).main for job in ("train", "distill", "generate"))

pytestmark = [pytest.mark.ray]

UNET = {"model": {"kind": "unet", "ngf": 2, "hidden": 8, "groups": 1, "sigma_data": 0.37},
        "training": {"loss_weighting": "edm", "sigma_draw": "lognormal", "steps": 4, "checkpoint_every": 4},
        "sampling": {"method": "heun", "schedule": "edm", "steps": 4, "final_denoise": True}}
RECIPE = {"training": {"batch_size": 32, "lr": 1e-3, "steps": 6, "checkpoint_every": 3, "log_every": 1,
                       "keep_checkpoints": 2, "ema_decay": 0.9, "eval_every": 0},
          "consistency": {"levels": 5},
          "sampling": {"method": "consistency", "steps": 2, "schedule": "edm", "batch_size": 4}}


@pytest.fixture(scope="module")
def teacher(ray_local, digits_local, tmp_path_factory):
    """A tiny U-Net trained 4 steps on the digits (its run folder)."""
    folder = tmp_path_factory.mktemp("teacher")
    config = write_tiny_config(folder, **UNET)
    assert train_main(["--config", str(config), "--data", str(digits_local), "--storage", str(folder / "runs"),
                       "--max-failures", "0", "--no-preview", "--no-eval"]) == 0
    return folder / "runs" / "tiny"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny-recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


@pytest.fixture(scope="module")
def straight_student(teacher, recipe, digits_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("straight") / "runs"
    assert distill_main(["--checkpoint", str(teacher), "--recipe", str(recipe), "--data", str(digits_local),
                         "--storage", str(storage), "--name", "student", "--max-failures", "0", "--no-preview"]) == 0
    return storage / "student"


@pytest.mark.timeout(500)
def test_a_resumed_or_restarted_distillation_ends_bit_identical_to_an_uninterrupted_one(
        straight_student, teacher, recipe, digits_local, tmp_path, monkeypatch):
    common = ["--checkpoint", str(teacher), "--recipe", str(recipe), "--data", str(digits_local),
              "--storage", str(tmp_path / "runs"), "--no-preview"]
    assert distill_main([*common, "--name", "resumed", "--steps", "3", "--max-failures", "0"]) == 0
    assert distill_main([*common, "--name", "resumed", "--max-failures", "0"]) == 0
    kill_at = random.Random(os.environ.get("PYTEST_SEED", "31")).randint(4, 6)
    print(f"killing the worker after step {kill_at}")
    monkeypatch.setenv(faults.ENV, f"train.kill_worker_at_step={kill_at}")
    assert distill_main([*common, "--name", "killed", "--max-failures", "2"]) == 0
    killed = tmp_path / "runs" / "killed"
    assert (killed / ".injected-failure-done").exists(), "the failure was not injected"
    assert [m["step"] for m in metrics(killed) if "loss" in m] == [1, 2, 3, 4, 5, 6]

    expected = training_state_digests(straight_student / "checkpoint_00000006" / "checkpoint.pt")
    for name in ("resumed", "killed"):
        got = training_state_digests(tmp_path / "runs" / name / "checkpoint_00000006" / "checkpoint.pt")
        assert got == expected, f"{name}: the student's weights, EMA or Adam state differ from the uninterrupted run"

    # The student's checkpoint records the whole recipe and its teacher, and it learnt something.
    student = load_checkpoint(straight_student / "checkpoint_00000006" / "checkpoint.pt")
    teacher_file = teacher / "checkpoint_00000004" / "checkpoint.pt"
    c = student.config.consistency
    assert c.teacher == str(teacher_file) and c.teacher_step == 4 and c.levels == 5
    assert c.distance == "pseudo_huber" and c.weighting == "ict" and c.sigma_min == 0.002
    assert student.config.sampling.method == "consistency" and student.config.training.lr == 1e-3
    start = load_checkpoint(teacher_file).model_state
    moved = [k for k, v in student.model_state.items() if not torch.equal(v, start[k.removeprefix("network.")])]
    assert moved, "distillation did not change the student"


@pytest.mark.timeout(300)
def test_the_student_samples_with_k_evaluations_from_its_seeds_alone(straight_student, tmp_path):
    out = tmp_path / "samples"
    assert generate_main(["--checkpoint", str(straight_student), "--n", "8", "--out", str(out)]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["sampler"]["method"] == "consistency" and manifest["nfe_per_sample"] == 2
    # Seeds 4..7 alone, in another batch size, give the same bytes as within the 8.
    part = tmp_path / "part"
    assert generate_main(["--checkpoint", str(straight_student), "--n", "4", "--seed", "4", "--out", str(part),
                          "--batch-size", "3"]) == 0
    every = {r["seed"]: r["image"] for r in pq.read_table(out).to_pylist()}
    for row in pq.read_table(part).to_pylist():
        assert row["image"] == every[row["seed"]]

    # The network evaluations made equal the NFE recorded, for K = 1, 2 and 3.
    checkpoint = load_checkpoint(straight_student / "checkpoint_00000006" / "checkpoint.pt")
    for k in (1, 2, 3):
        config = config_from_dict({**checkpoint.config.to_dict(),
                                   "sampling": {**checkpoint.config.to_dict()["sampling"], "steps": k}}, "test")
        network = checkpoint.build_model()
        calls = []
        hook = network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        sampler = Sampler(network, checkpoint.sigmas, SamplerSettings.from_config(config), (1, 8, 8))
        sampler.sample([0, 1, 2])
        hook.remove()
        assert len(calls) == k == sampler.nfe_per_sample, (k, calls)


@pytest.mark.timeout(300)
def test_the_student_inpaints_in_k_evaluations_keeping_the_known_pixels(straight_student):
    checkpoint = load_checkpoint(straight_student / "checkpoint_00000006" / "checkpoint.pt")
    network = checkpoint.build_model()
    calls = []
    hook = network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    sampler = Sampler(network, checkpoint.sigmas, SamplerSettings.from_config(checkpoint.config), (1, 8, 8))
    known = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(3)).float() / 255
    mask = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    completed = sampler.inpaint([5, 6, 7], known, mask)  # (B, H, W, C) uint8
    hook.remove()
    assert len(calls) == sampler.nfe_per_inpainting == checkpoint.config.sampling.steps == 2
    expected = (known.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    held = mask.permute(0, 2, 3, 1)
    assert torch.equal(torch.as_tensor(completed)[held], expected[held])
    assert not torch.equal(torch.as_tensor(completed)[~held], expected[~held])


@pytest.mark.timeout(300)
def test_the_sampler_search_on_a_student_tries_k_steps_and_each_costs_k(straight_student):
    from ncsn_ray.tune.job import TuneOptions, plan

    setup, settings, costs = plan(TuneOptions(checkpoint=str(straight_student), n=8))
    assert settings[0] == [] and costs[0] == setup.checkpoint.config.sampling.steps  # the run's own setting first
    assert all("sampling.method=consistency" in s for s in settings[1:]) and len(settings) > 4
    for setting, cost in zip(settings[1:], costs[1:]):
        assert f"sampling.steps={cost}" in setting, (setting, cost)
    assert {1, 2, 3, 4} <= set(costs)


def _fake_checkpoint(path, **config_sections):
    """A checkpoint file of an untrained network with the tiny config changed by ``config_sections``."""
    raw = yaml.safe_load(write_tiny_config(path.parent, **UNET).read_text())
    for section, values in config_sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    config = config_from_dict(raw, "test")
    from ncsn_core import geometric_sigmas

    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    save_checkpoint(path, model=build_model(config), config=config, sigmas=sigmas, step=1)
    return path


@pytest.mark.timeout(300)
def test_bad_input_exits_2_with_nothing_written(digits_local, recipe, tmp_path):
    ncsn = _fake_checkpoint(tmp_path / "ncsn.pt", model={"kind": "ncsn", "ngf": 2},
                            training={"sigma_draw": "ladder", "loss_weighting": "sigma_power"},
                            sampling={"method": "annealed_langevin"})
    big = _fake_checkpoint(tmp_path / "big.pt", data={"image_size": 16})
    storage = tmp_path / "runs"
    cases = {
        "missing": (str(tmp_path / "no-such-run"), "no checkpoint found"),
        "ncsn": (str(ncsn), "index of its trained noise levels"),
        "shape": (str(big), "16x16x1"),
    }
    for name, (teacher_uri, message) in cases.items():
        done = subprocess.run([sys.executable, str(REPO / "jobs" / "distill.py"), "--checkpoint", teacher_uri,
                               "--recipe", str(recipe), "--data", str(digits_local), "--storage", str(storage),
                               "--name", name], capture_output=True, text=True, timeout=240)
        assert done.returncode == 2, (name, done.stdout[-2000:], done.stderr[-2000:])
        assert message in done.stderr, (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert not (storage / name).exists(), f"{name}: a run folder was written"


def test_the_recipe_auto_picks_follows_the_teachers_kind(tmp_path):
    """An NCSNv2 teacher gets the ncsnv2 recipe (its 2-step student re-noises higher: rho 3),
    any other the default (rho 7); a recipe named by the user is used as named."""
    from ncsn_ray.train.distill import student_config

    for folder in ("v2", "unet"):
        (tmp_path / folder).mkdir()
    ncsnv2 = _fake_checkpoint(tmp_path / "v2" / "ncsnv2.pt", model={"kind": "ncsnv2", "ngf": 2},
                              training={"sigma_draw": "ladder", "loss_weighting": "sigma_power"})
    unet = _fake_checkpoint(tmp_path / "unet" / "unet.pt")
    lines: list[str] = []
    picked = {(name, recipe): student_config(str(path), recipe, [], endpoint_url=None, log=lines.append)
              for name, path in (("ncsnv2", ncsnv2), ("unet", unet)) for recipe in ("auto", "default")}
    assert picked[("ncsnv2", "auto")].sampling.rho == 3.0 and picked[("ncsnv2", "default")].sampling.rho == 7.0
    assert picked[("unet", "auto")].sampling.rho == 7.0 == picked[("unet", "default")].sampling.rho
    assert "recipe ncsnv2.yaml (auto, for this teacher)" in lines[0]
    assert "recipe default.yaml (auto, for this teacher)" in lines[2] and "recipe default.yaml:" in lines[3]
    # The two shipped recipes differ in sampling.rho alone (the docs say so; a retune of one
    # must be carried to the other or this fails).
    from ncsn_ray.train.distill import RECIPE_DIR

    default, ncsnv2_recipe = (yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text()) for name in ("default", "ncsnv2"))
    assert (default["sampling"].pop("rho"), ncsnv2_recipe["sampling"].pop("rho")) == (7.0, 3.0)
    assert default == ncsnv2_recipe
