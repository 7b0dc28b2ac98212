"""Step-addressed batches: what step k trains on depends on (seed, k) only, and its global
batch is the same however many workers share it (what exact and elastic resumption rest on)."""

from __future__ import annotations

import torch

from ncsn_ray.data.global_batches import GlobalBatches


def _images(n: int = 103) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 1, 2, 2).to(torch.uint8)


def test_each_epoch_visits_every_image_at_most_once_and_epochs_differ():
    batches = GlobalBatches(_images(), global_batch=10, seed=3, num_levels=4)
    assert batches.steps_per_epoch == 10  # 103 // 10: the last 3 of each epoch's order are dropped
    first = torch.cat([batches.global_indices(k) for k in range(1, 11)])
    second = torch.cat([batches.global_indices(k) for k in range(11, 21)])
    for epoch in (first, second):
        assert len(epoch) == 100 and len(set(epoch.tolist())) == 100
    assert not torch.equal(first, second)


def test_a_step_draws_the_same_whatever_came_before_it():
    straight = GlobalBatches(_images(), global_batch=8, seed=1, num_levels=5)
    for step in range(1, 30):
        straight.draws(step)
    resumed = GlobalBatches(_images(), global_batch=8, seed=1, num_levels=5)
    a, b = straight.draws(30), resumed.draws(30)
    for field in ("images", "levels", "noise", "uniform", "flip"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(resumed.draws(31).noise, b.noise)
    assert not torch.equal(GlobalBatches(_images(), global_batch=8, seed=2, num_levels=5).draws(30).noise, b.noise)


def test_workers_split_the_global_batch_and_its_draws_between_them():
    whole = GlobalBatches(_images(), global_batch=12, seed=7, num_levels=3).draws(17)
    parts = [GlobalBatches(_images(), global_batch=12, seed=7, num_levels=3, rank=r, world=3).draws(17) for r in range(3)]
    for field in ("images", "levels", "noise", "uniform", "flip"):
        assert torch.equal(torch.cat([getattr(p, field) for p in parts]), getattr(whole, field)), field
    assert parts[0].images.shape == (4, 1, 2, 2) and parts[0].images.dtype == torch.uint8
    assert int(whole.levels.max()) < 3


def test_a_lognormal_sigma_draw_comes_last_and_splits_like_the_rest():
    """EDM's log-normal draw (``training.sigma_draw: lognormal``): one sigma per example from the
    step's generator after every other draw, so a ladder run's draws are unchanged; clamped to
    the ladder's range; the same global draw however many workers share it."""
    lognormal = (-1.2, 1.2, 0.08, 4.81)
    ladder = GlobalBatches(_images(), global_batch=64, seed=5, num_levels=14).draws(9)
    drawn = GlobalBatches(_images(), global_batch=64, seed=5, num_levels=14, lognormal=lognormal).draws(9)
    assert ladder.sigmas is None
    for field in ("images", "levels", "noise", "uniform", "flip"):
        assert torch.equal(getattr(drawn, field), getattr(ladder, field)), field
    assert drawn.sigmas.dtype == torch.float32 and drawn.sigmas.shape == (64,)
    assert bool(drawn.sigmas.min() >= torch.tensor(0.08)) and bool(drawn.sigmas.max() <= torch.tensor(4.81))
    logs = torch.cat([GlobalBatches(_images(), global_batch=64, seed=5, num_levels=14, lognormal=lognormal)
                      .draws(k).sigmas for k in range(1, 40)]).log()
    inside = logs[(logs > torch.log(torch.tensor(0.08))) & (logs < torch.log(torch.tensor(4.81)))]
    assert abs(float(torch.median(logs)) + 1.2) < 0.1  # the median of log sigma is the mean, -1.2
    assert 0.6 < float(inside.std()) < 1.2  # 1.2 before the clamp cuts the tails
    parts = [GlobalBatches(_images(), global_batch=64, seed=5, num_levels=14, lognormal=lognormal, rank=r,
                           world=4).draws(9).sigmas for r in range(4)]
    assert torch.equal(torch.cat(parts), drawn.sigmas)


def test_a_count_that_does_not_divide_the_batch_shares_it_near_equally_and_whole():
    """An elastic group may have any size: 3 workers share a batch of 32 as 10, 11, 11 rows,
    disjoint and covering the global batch and its draws; a count that divides the batch keeps
    the slices ``[r b, (r + 1) b)`` it always had (so fixed runs are bit-identical)."""
    from ncsn_ray.data.global_batches import worker_rows

    whole = GlobalBatches(_images(), global_batch=32, seed=7, num_levels=3).draws(5)
    parts = [GlobalBatches(_images(), global_batch=32, seed=7, num_levels=3, rank=r, world=3).draws(5) for r in range(3)]
    assert [len(p.images) for p in parts] == [10, 11, 11]
    for field in ("images", "levels", "noise", "uniform", "flip"):
        assert torch.equal(torch.cat([getattr(p, field) for p in parts]), getattr(whole, field)), field
    for world in (1, 2, 4, 8, 16, 32):
        assert [worker_rows(r, world, 32) for r in range(world)] == [(r * 32 // world, (r + 1) * 32 // world)
                                                                     for r in range(world)]
        assert all(stop - start == 32 // world for start, stop in (worker_rows(r, world, 32) for r in range(world)))
    for world in range(1, 33):
        bounds = [worker_rows(r, world, 32) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == 32 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert {stop - start for start, stop in bounds} <= {32 // world, -(-32 // world)}
