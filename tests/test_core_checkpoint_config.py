"""Checkpoint round trips, tamper and mismatch detection, EMA, and config validation."""

from pathlib import Path

import pytest
import torch

from ncsn_core.config import resolve_auto
from ncsn_core import (
    EMA,
    CheckpointError,
    ConfigError,
    apply_overrides,
    build_model,
    config_from_dict,
    geometric_sigmas,
    load_checkpoint,
    load_config,
    save_checkpoint,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "ncsn_ray" / "configs").glob("*.yaml"))


def tiny_config(**model):
    return config_from_dict({"data": {"image_size": 8, "channels": 1}, "model": {"ngf": 4, **model}})


def saved(tmp_path, config=None, model=None, **kwargs):
    config = config or tiny_config()
    model = model or build_model(config)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=model, config=config, sigmas=sigmas, **kwargs)
    return path, model, config


def test_round_trip_restores_weights_ema_optimizer_and_step(tmp_path):
    config = tiny_config()
    model = build_model(config)
    ema = EMA(model, 0.9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 8, 8), torch.tensor([0, 1])).sum().backward()
    opt.step()
    ema.update(model)
    path, _, _ = saved(tmp_path, config, model, ema=ema.module, optimizer=opt, step=42)
    ckpt = load_checkpoint(path)
    assert ckpt.step == 42 and ckpt.config == config
    assert torch.allclose(ckpt.sigmas, geometric_sigmas(1.0, 0.01, 10))
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model_state[k], v)
    restored = ckpt.build_model(use_ema=True)
    for (k, v), (_, e) in zip(restored.state_dict().items(), ema.module.state_dict().items()):
        assert torch.equal(v, e)
    opt2 = torch.optim.Adam(build_model(config).parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.optimizer_state)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_a_tampered_checkpoint_fails_with_a_clear_error(tmp_path):
    path, _, _ = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["model"]["begin_conv.weight"] += 1.0  # change weights, keep the old digest
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_corrupt_and_missing_files_fail_with_a_clear_error(tmp_path):
    path, _, _ = saved(tmp_path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an NCSN checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    wrong = build_model(tiny_config(ngf=8))
    path, _, _ = saved(tmp_path, tiny_config(ngf=4), wrong)
    with pytest.raises(CheckpointError, match="do not match the embedded config"):
        load_checkpoint(path)


def test_pickled_objects_are_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": "ncsn-checkpoint", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_non_finite_weights_are_never_saved(tmp_path):
    config = tiny_config()
    model = build_model(config)
    with torch.no_grad():
        model.end_conv.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        saved(tmp_path, config, model)
    assert not (tmp_path / "ckpt.pt").exists()


def test_ema_follows_the_moving_average():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(1 - 0.9**2)
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_builds(path):
    config = load_config(path)
    assert config.name == path.stem
    if config.has_auto():  # NCSNv2's auto values are resolved from the data before training
        config, _ = resolve_auto(config, max_distance=4.8,
                                 dimension=config.data.channels * config.data.image_size**2)
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_reproduction_configs_use_the_published_settings():
    for name, ngf, flip in [("mnist", 64, False), ("cifar10", 128, True), ("celeba", 128, True)]:
        c = load_config(CONFIGS[[p.stem for p in CONFIGS].index(name)])
        assert (c.model.ngf, c.data.random_flip) == (ngf, flip)
        assert (c.noise.sigma_max, c.noise.sigma_min, c.noise.num_levels) == (1.0, 0.01, 10)
        assert (c.training.lr, c.training.batch_size, c.training.steps) == (1e-3, 128, 200_000)
        # As the paper sampled: the trained weights (no EMA), eps 4e-5 in Algorithm 1's form
        # (the original code's step_lr 2e-5), T = 100, no final denoising.
        assert (c.sampling.ema, c.sampling.eps, c.sampling.steps_per_level, c.sampling.final_denoise) == (
            False, 4e-5, 100, False)
        # The original code's step_lr 2e-5 in x + a s + sqrt(2a) z is eps 4e-5 in the paper's form.
        assert (c.sampling.steps_per_level, c.sampling.eps, c.sampling.init) == (100, 4e-5, "uniform")


@pytest.mark.parametrize(
    "text,message",
    [
        ("data:\n  image_sise: 8\n", "unknown key data.image_sise"),
        ("trainer: {}\n", "unknown key 'trainer'"),
        ("data:\n  image_size: eight\n", "data.image_size must be of type int"),
        ("sampling:\n  clamp: 1\n", "sampling.clamp must be of type bool"),
        ("training:\n  loss: mse\n", "training.loss must be one of"),
        ("noise:\n  sigma_max: 0.001\n", "sigma_max must exceed"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("data: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_files_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_overrides_are_typed_and_validated():
    config = apply_overrides(config_from_dict({}), ["training.steps=7", "sampling.eps=2e-5", "name=x"])
    assert (config.training.steps, config.sampling.eps, config.name) == (7, 2e-5, "x")
    with pytest.raises(ConfigError, match="unknown key training.stepz"):
        apply_overrides(config, ["training.stepz=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides(config, ["training.steps"])
    with pytest.raises(ConfigError, match="training.steps must be of type int"):
        apply_overrides(config, ["training.steps=many"])


def test_inpainting_settings_replace_samplings_for_completions_only(tmp_path):
    shipped = load_config(Path(__file__).resolve().parents[1] / "ncsn_ray" / "configs" / "digits.yaml")
    completions = shipped.for_inpainting()
    assert shipped.sampling.method == "edm" and completions.sampling.method == "pc"
    assert (completions.sampling.snr, completions.sampling.corrector_steps) == (0.5, 1)
    assert completions.sampling.steps == shipped.sampling.steps and completions.sampling.final_denoise
    assert "inpainting" not in completions.to_dict() and shipped.to_dict()["inpainting"]["method"] == "pc"
    plain = config_from_dict({})
    assert "inpainting" not in plain.to_dict() and plain.for_inpainting() is plain  # old checkpoints compare equal
    for section, message in (({"snr": -1.0}, "inpainting: .*sampling.snr must be a positive number"),
                             ({"method": "rk4"}, "inpainting: .*sampling.method must be one of"),
                             ({"steps": "many"}, "inpainting.steps must be of type int")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"inpainting": section}, "x.yaml")
