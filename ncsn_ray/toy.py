"""The paper's Section 3 toy experiments (Fig. 2 and Fig. 3), behind ``jobs/toy.py``.

Fig. 3: samples from p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I) drawn (a) exactly, (b) with
plain Langevin dynamics and the exact score (1000 steps, step 0.1, initial points uniform on
[-8, 8]^2), (c) with annealed Langevin dynamics and exact perturbed scores. Plain Langevin
gets the relative mode weights wrong; annealed Langevin recovers 1/5 and 4/5.

Annealed Langevin is run with two ladders, both with the paper's update
``x + alpha_i/2 s + sqrt(alpha_i) z``, ``alpha_i = eps sigma_i^2 / sigma_L^2`` (Algorithm 1),
T = 100 steps per level:

* ``paper`` (``ncsn_ray/configs/toy.yaml``): the paper's text, sigma 10 -> 0.1 (L = 10), scoring
  the perturbed mixture exactly (component variance ``1 + sigma^2``). The text's eps = 0.1
  is unstable here, whatever the convention: alpha_1 = 0.1 * (10 / 0.1)^2 = 1000 exceeds the
  level-1 stability limit 4 (1 + sigma_1^2) = 404, so the chain diverges; the config uses
  eps = 0.002.
* ``original`` (``ncsn_ray/configs/toy-original.yaml``): the authors' code
  (runners/toy_runner.py), sigma 20 -> 1 (L = 10) with eps (their lr) 0.1, scoring each level
  with component variance ``sigma^2`` instead of ``1 + sigma^2``, so that the last level,
  sigma = 1, is exactly the data distribution. Its largest step, alpha_1 = 0.1 * 20^2 = 40,
  is well inside that level's limit 4 sigma_1^2 = 1600.

Fig. 2: scores learned by sliced score matching are accurate only near the modes, where
data lives; the figure shows the data density with the true scores, and the estimated
scores over a map of their error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ncsn_core import ToyScoreMLP, annealed_langevin, initial_samples, langevin, load_config, ssm_loss, train_step
from ncsn_core.noise import geometric_sigmas
from ncsn_core.toy import GaussianMixture, lower_left_fraction

from . import configs
from .errors import UserError
from .io.figures import field_panel, hstack_panels, save_png, scatter_panel

__all__ = ["ToyOptions", "run"]

DEFAULT_CONFIG = "toy"  # shipped configs (ncsn_ray/configs/toy.yaml, toy-original.yaml)
ORIGINAL_CONFIG = "toy-original"
LIM = 8.0


def annealed(mixture: GaussianMixture, config, start: torch.Tensor, generator: torch.Generator, *,
             level_variance: str) -> torch.Tensor:
    """Annealed Langevin with the exact scores of the mixture perturbed at each level of the
    config's ladder; ``level_variance``: ``"data+sigma"`` (exact: ``1 + sigma^2``) or
    ``"sigma"`` (the authors' code: ``sigma^2``)."""
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    target = mixture if level_variance == "data+sigma" else replace(mixture, var=0.0)
    return annealed_langevin(lambda x, level: target.score(x, sigmas[level]), start, sigmas,
                             steps_per_level=config.sampling.steps_per_level, eps=config.sampling.eps,
                             generator=generator)


def figure3(mixture: GaussianMixture, config, original, n: int, generator: torch.Generator) -> tuple[dict, list]:
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    exact = mixture.sample(n, generator)
    start = initial_samples((n, 2), low=-LIM, high=LIM, generator=generator)
    plain = langevin(lambda x, level: mixture.score(x), start, sigmas, steps=1000, step_size=0.1, generator=generator)
    paper = annealed(mixture, config, start, generator, level_variance="data+sigma")
    authors = annealed(mixture, original, start, generator, level_variance="sigma")
    fractions = {
        "exact": lower_left_fraction(exact),
        "langevin": lower_left_fraction(plain),
        "annealed": lower_left_fraction(paper),
        "annealed_original": lower_left_fraction(authors),
    }
    panels = [
        scatter_panel(exact, lim=LIM, title=f"(a) exact  lower-left {fractions['exact']:.3f}"),
        scatter_panel(plain, lim=LIM, title=f"(b) Langevin  {fractions['langevin']:.3f}"),
        scatter_panel(paper, lim=LIM, title=f"(c) annealed, paper ladder  {fractions['annealed']:.3f}"),
        scatter_panel(authors, lim=LIM, title=f"(c') annealed, authors' code  {fractions['annealed_original']:.3f}"),
    ]
    return fractions, panels


def figure2(mixture: GaussianMixture, n_steps: int, generator: torch.Generator) -> tuple[dict, list]:
    """Train a score MLP with sliced score matching on the data, compare it with the truth."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    model = ToyScoreMLP(dim=2, num_levels=1, hidden=128, depth=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    tiny = torch.tensor([1e-3])  # essentially unperturbed data, as in the paper's Fig. 2
    for _ in range(n_steps):
        train_step(model, optimiser, ssm_loss, mixture.sample(256, generator), tiny, anneal_power=0.0,
                   generator=generator)
    side = 21
    axis = torch.linspace(-LIM, LIM, side)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        true = mixture.score(grid)
        est = model(grid, torch.zeros(len(grid), dtype=torch.long))
    err = (est - true).norm(dim=1)
    density = mixture.log_prob(grid).exp()
    near = density > density.max() * 0.05
    stats = {
        "score_error_near_modes": float(err[near].mean()),
        "score_error_elsewhere": float(err[~near].mean()),
    }
    dens_img = (density / density.max()).reshape(side, side)
    err_img = (err / err.max()).reshape(side, side)
    panels = [
        field_panel(grid, true, background=dens_img, lim=LIM, title="data density, true scores"),
        field_panel(grid, est, background=err_img, lim=LIM, title="estimated scores (shade = error)"),
    ]
    return stats, panels


@dataclass(kw_only=True)
class ToyOptions:
    """``config``: the toy YAML (the paper's ladder); ``original_config``: the authors' code's
    ladder; ``out``: folder for the PNG figures; ``n``: samples per
    method; ``ssm_steps``: training steps for Fig. 2; ``seed``: the RNG seed."""

    config: str = DEFAULT_CONFIG
    original_config: str = ORIGINAL_CONFIG
    out: str = "runs/toy"
    n: int = 1280
    ssm_steps: int = 1500
    seed: int = 0


def run(options: ToyOptions, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both figures; returns the lower-left mode weights and the score-error figures."""
    if options.n < 10:
        raise UserError(f"n must be at least 10, got {options.n}")
    config = load_config(configs.resolve(options.config))
    original = load_config(configs.resolve(options.original_config))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    generator = torch.Generator().manual_seed(options.seed)
    mixture = GaussianMixture()
    started = time.perf_counter()

    fractions, fig3 = figure3(mixture, config, original, options.n, generator)
    out = Path(options.out)
    fig3_path = save_png(hstack_panels(fig3), out / "fig3_langevin_vs_annealed.png")
    log(f"Fig. 3: lower-left mode weight exact {fractions['exact']:.3f}, Langevin {fractions['langevin']:.3f}, "
        f"annealed Langevin {fractions['annealed']:.3f} (paper's ladder), {fractions['annealed_original']:.3f} "
        f"(authors' code) (true 0.2) -> {fig3_path}")
    errors, fig2 = figure2(mixture, options.ssm_steps, generator)
    fig2_path = save_png(hstack_panels(fig2), out / "fig2_score_estimation.png")
    log(f"Fig. 2: mean score error near the modes {errors['score_error_near_modes']:.3f}, "
        f"elsewhere {errors['score_error_elsewhere']:.3f} -> {fig2_path}")
    return {**fractions, **errors, "n": options.n, "seconds": round(time.perf_counter() - started, 2)}
