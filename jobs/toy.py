"""Reproduce the paper's Section 3 toy experiments (Fig. 2 and Fig. 3).

Fig. 3: samples from p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I) drawn (a) exactly, (b) with
plain Langevin dynamics and the exact score (1000 steps, step 0.1, initial points uniform on
[-8, 8]^2), (c) with annealed Langevin dynamics and exact perturbed scores. Plain Langevin
gets the relative mode weights wrong; annealed Langevin recovers 1/5 and 4/5.

Fig. 2: scores learned by sliced score matching are accurate only near the modes, where
data lives; the figure shows the data density with the true scores, and the estimated
scores over a map of their error.

Usage::

    python jobs/toy.py [--out runs/toy] [--n 1280] [--seed 0] [--json]

With ``--json`` the last line printed is one JSON object with the fraction of samples in
the lower-left mode for ``exact``, ``langevin`` and ``annealed``, plus score-error figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ncsn_core import ToyScoreMLP, annealed_langevin, initial_samples, langevin, load_config, ssm_loss  # noqa: E402
from ncsn_core.noise import geometric_sigmas  # noqa: E402
from ncsn_core.toy import GaussianMixture, lower_left_fraction  # noqa: E402
from ncsn_ray.figures import field_panel, hstack_panels, save_png, scatter_panel  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "toy.yaml"
LIM = 8.0


def figure3(mixture: GaussianMixture, config, n: int, generator: torch.Generator) -> tuple[dict, list]:
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    exact = mixture.sample(n, generator)
    start = initial_samples((n, 2), low=-LIM, high=LIM, generator=generator)
    plain = langevin(lambda x, level: mixture.score(x), start, sigmas, steps=1000, step_size=0.1, generator=generator)
    annealed = annealed_langevin(
        lambda x, level: mixture.score(x, sigmas[level]),
        start,
        sigmas,
        steps_per_level=config.sampling.steps_per_level,
        eps=config.sampling.eps,
        generator=generator,
    )
    fractions = {
        "exact": lower_left_fraction(exact),
        "langevin": lower_left_fraction(plain),
        "annealed": lower_left_fraction(annealed),
    }
    panels = [
        scatter_panel(exact, lim=LIM, title=f"(a) exact  lower-left {fractions['exact']:.3f}"),
        scatter_panel(plain, lim=LIM, title=f"(b) Langevin  {fractions['langevin']:.3f}"),
        scatter_panel(annealed, lim=LIM, title=f"(c) annealed Langevin  {fractions['annealed']:.3f}"),
    ]
    return fractions, panels


def figure2(mixture: GaussianMixture, n_steps: int, generator: torch.Generator) -> tuple[dict, list]:
    """Train a score MLP with sliced score matching on the data, compare it with the truth."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    model = ToyScoreMLP(dim=2, num_levels=1, hidden=128, depth=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    tiny = torch.tensor([1e-3])  # essentially unperturbed data, as in the paper's Fig. 2
    for _ in range(n_steps):
        batch = mixture.sample(256, generator)
        out = ssm_loss(model, batch, tiny, anneal_power=0.0, generator=generator)
        optimiser.zero_grad(set_to_none=True)
        out.loss.backward()
        optimiser.step()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="toy config YAML (default: %(default)s)")
    parser.add_argument("--out", default="runs/toy", help="folder for the PNG figures (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1280, help="samples per method (default: %(default)s)")
    parser.add_argument("--ssm-steps", type=int, default=1500, help="training steps for Fig. 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.n < 10:
        parser.error("--n must be at least 10")
    config = load_config(args.config)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    generator = torch.Generator().manual_seed(args.seed)
    mixture = GaussianMixture()
    started = time.perf_counter()

    fractions, fig3 = figure3(mixture, config, args.n, generator)
    out = Path(args.out)
    fig3_path = save_png(hstack_panels(fig3), out / "fig3_langevin_vs_annealed.png")
    print(
        f"Fig. 3: lower-left mode weight exact {fractions['exact']:.3f}, Langevin {fractions['langevin']:.3f}, "
        f"annealed Langevin {fractions['annealed']:.3f} (true 0.2) -> {fig3_path}",
        flush=True,
    )
    errors, fig2 = figure2(mixture, args.ssm_steps, generator)
    fig2_path = save_png(hstack_panels(fig2), out / "fig2_score_estimation.png")
    print(
        f"Fig. 2: mean score error near the modes {errors['score_error_near_modes']:.3f}, "
        f"elsewhere {errors['score_error_elsewhere']:.3f} -> {fig2_path}",
        flush=True,
    )
    result = {**fractions, **errors, "n": args.n, "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
