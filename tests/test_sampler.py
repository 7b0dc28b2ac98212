"""``ncsn_ray.sample.sampler``, the sampler every job uses (generation actors, inpainting,
training previews), on its own: no Ray, a tiny random network, seeds in and images out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncsn_core import ConfigError, build_model, config_from_dict, geometric_sigmas
from ncsn_ray.errors import UserError
from ncsn_ray.sample.sampler import NonFiniteSamplesError, Sampler, SamplerSettings, check_finite, override_sampling

CONFIG = config_from_dict({"name": "tiny", "data": {"dataset": "digits", "image_size": 8, "channels": 1},
                           "model": {"kind": "ncsnv2", "ngf": 4},
                           "noise": {"sigma_max": 1.0, "sigma_min": 0.05, "num_levels": 4},
                           "sampling": {"steps_per_level": 3, "eps": 1e-4, "batch_size": 4}})


def _sampler(config=CONFIG, calls: list | None = None) -> Sampler:
    """A random tiny NCSNv2; ``calls`` collects the batch size of every network evaluation."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    if calls is not None:
        model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    return Sampler(model, sigmas, SamplerSettings.from_config(config, use_ema=False), (1, 8, 8))


@pytest.mark.parametrize("overrides", [[], ["sampling.method=edm", "sampling.steps=4", "sampling.schedule=edm",
                                            "sampling.churn=5"]])
def test_an_image_depends_on_its_seed_not_on_its_neighbours(overrides):
    sampler = _sampler(override_sampling(CONFIG, overrides))
    together = sampler.sample([10, 11, 12, 13])
    assert together.shape == (4, 8, 8, 1) and together.dtype == np.uint8
    again = sampler.sample([10, 11, 12, 13])
    assert np.array_equal(together, again), "the same seeds give the same bytes"
    # other neighbours in the batch, same seed: equal up to the last bit of a batched network
    mixed = sampler.sample([99, 12, 98, 97])
    assert np.abs(mixed[1].astype(int) - together[2].astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[1]), "different seeds give different images"


@pytest.mark.parametrize("overrides", [[], ["sampling.method=edm", "sampling.steps=5", "sampling.schedule=edm"],
                                       ["sampling.method=pc", "sampling.corrector_steps=2"]])
def test_the_recorded_network_evaluations_are_the_ones_made(overrides):
    calls: list[int] = []
    sampler = _sampler(override_sampling(CONFIG, overrides), calls)
    sampler.sample([1, 2])
    assert len(calls) == sampler.nfe_per_sample and set(calls) == {2}  # one batched call per evaluation
    if not overrides:
        assert sampler.nfe_per_sample == 4 * 3  # L levels x T steps (Algorithm 1, no final denoise)


def test_only_sampling_settings_may_change_at_sampling_time():
    with pytest.raises(ConfigError, match="only sampling"):
        override_sampling(CONFIG, ["training.lr=1"])
    with pytest.raises(ConfigError):
        override_sampling(CONFIG, ["sampling.method=nope"])


def test_non_finite_samples_name_their_seeds():
    x = torch.zeros(3, 1, 2, 2)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteSamplesError, match=r"seed\(s\) 41\b"):
        check_finite(x, [40, 41, 42])
    assert check_finite(torch.zeros(2, 4), [1, 2]).shape == (2, 4)


METHODS = {  # every sampler generation has, as --set overrides on the tiny NCSNv2
    "annealed_langevin": [],
    "euler": ["sampling.method=euler"],
    "heun": ["sampling.method=heun", "sampling.final_denoise=false"],
    "edm": ["sampling.method=edm", "sampling.steps=5", "sampling.schedule=edm", "sampling.churn=5"],
    "pc": ["sampling.method=pc", "sampling.corrector_steps=2"],
}


def _known(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` reference images (multiples of 1/255, as decoded PNGs) and half masks."""
    known = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float() / 255
    mask = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    return known, mask


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_makes_the_recorded_evaluations_generating_and_inpainting(method):
    """A counter around the network: the calls per sample equal what the Sampler (and so the
    manifest) reports, for generation and for inpainting. Annealed Langevin inpaints in L T
    (no final denoise); a fast sampler inpaints at its generation cost."""
    config = override_sampling(CONFIG, [*METHODS[method], "sampling.final_denoise=true"]
                               if method == "annealed_langevin" else METHODS[method])
    calls: list[int] = []
    sampler = _sampler(config, calls)
    sampler.sample([1, 2])
    assert len(calls) == sampler.nfe_per_sample and set(calls) == {2}
    calls.clear()
    known, mask = _known(2)
    sampler.inpaint([1, 2], known, mask)
    assert len(calls) == sampler.nfe_per_inpainting and set(calls) == {2}
    settings = sampler.settings
    assert sampler.nfe_per_inpainting == settings.nfe_per_sample(4, inpaint=True)
    if method == "annealed_langevin":
        assert (sampler.nfe_per_sample, sampler.nfe_per_inpainting) == (4 * 3 + 1, 4 * 3)
    else:
        assert sampler.nfe_per_inpainting == sampler.nfe_per_sample


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_inpaints_keeping_the_known_pixels_and_its_seed(method):
    sampler = _sampler(override_sampling(CONFIG, METHODS[method]))
    known, mask = _known(3)
    images = sampler.inpaint([7, 8, 9], known, mask)
    originals = np.rint(known.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    held = mask.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images[held], originals[held]), "known pixels are the original's, exactly"
    assert not np.array_equal(images[~held], originals[~held])
    assert np.array_equal(sampler.inpaint([7, 8, 9], known, mask), images), "the same seeds give the same bytes"
    alone = sampler.inpaint([8], known[1:2], mask[1:2])
    assert np.abs(alone[0].astype(int) - images[1].astype(int)).max() <= 1, "a completion depends on its seed only"
    assert not np.array_equal(images[0], sampler.inpaint([17], known[:1], mask[:1])[0])


def test_a_fast_sampler_refuses_annealed_langevins_renoise_option():
    sampler = _sampler(override_sampling(CONFIG, METHODS["heun"]))
    known, mask = _known(1)
    with pytest.raises(UserError, match="annealed Langevin's"):
        sampler.inpaint([1], known, mask, renoise="step")


def test_inpainting_samples_with_the_configs_inpainting_settings_and_flags_win(tmp_path):
    from ncsn_ray.sample.job import SamplingOptions, resolve_sampling
    from support.data import TINY_RUN_CONFIG, make_tiny_run

    run = tmp_path / "run"
    make_tiny_run(run, steps=1, config={**TINY_RUN_CONFIG,
                                        "inpainting": {"method": "pc", "corrector_steps": 1, "snr": 0.5}})
    generating = resolve_sampling(SamplingOptions(checkpoint=str(run)))
    inpainting = resolve_sampling(SamplingOptions(checkpoint=str(run)), inpaint=True)
    assert generating.settings.method == "annealed_langevin" and inpainting.settings.method == "pc"
    assert inpainting.settings.snr == 0.5
    paper = resolve_sampling(SamplingOptions(checkpoint=str(run), overrides=["sampling.method=annealed_langevin"]),
                             inpaint=True)
    assert paper.settings.method == "annealed_langevin"
