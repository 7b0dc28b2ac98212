"""One optimisation step with gradient accumulation and bf16 autocast (ncsn_core.train_step).

What users rely on: ``--batch-per-worker`` changes memory, not learning (an accumulated step
is the full-batch step to float tolerance, and DDP all-reduces once per step, not once per
micro-batch); ``training.precision: bf16`` trains to about the fp32 loss while everything
that is saved (weights, EMA, Adam's moments) stays float32.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

from ncsn_core import EMA, LOSSES, build_model, config_from_dict, geometric_sigmas, make_optimizer, train_step
from ncsn_core.train_step import split_batch

CONFIG = {
    "name": "step",
    "data": {"dataset": "digits", "image_size": 8, "channels": 1},
    "model": {"kind": "ncsnv2", "ngf": 8},
    "noise": {"sigma_max": 4.0, "sigma_min": 0.08, "num_levels": 6},
    "training": {"batch_size": 32, "lr": 1e-3, "ema_decay": 0.9},
}


def _setup(seed: int = 0):
    config = config_from_dict(CONFIG, "test")
    torch.manual_seed(seed)
    model = build_model(config)
    optimizer = make_optimizer(model.parameters(), lr=config.training.lr)
    ema = EMA(model, decay=config.training.ema_decay)
    sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    return model, optimizer, ema, sigmas


def _digits(n: int, seed: int) -> torch.Tensor:
    images = torch.from_numpy(load_digits().images).float().div(16.0).unsqueeze(1)
    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[rows]


def _fixed_draws(x: torch.Tensor, num_levels: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"levels": torch.randint(0, num_levels, (len(x),), generator=g), "noise": torch.randn(x.shape, generator=g)}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_an_accumulated_step_equals_the_full_batch_step():
    full_model, full_opt, full_ema, sigmas = _setup()
    acc_model = copy.deepcopy(full_model)
    acc_opt = make_optimizer(acc_model.parameters(), lr=1e-3)
    acc_ema = EMA(acc_model, decay=0.9)
    start = copy.deepcopy(full_model.state_dict())
    for step in range(3):
        x = _digits(32, seed=step)
        draws = _fixed_draws(x, len(sigmas), seed=100 + step)
        full = train_step(full_model, full_opt, LOSSES["dsm"], x, sigmas, ema=full_ema, grad_clip=1.0, **draws)
        acc = train_step(acc_model, acc_opt, LOSSES["dsm"], x, sigmas, ema=acc_ema, grad_clip=1.0,
                         micro_batches=4, **draws)
        # The loss and its per-example record are the full batch's, in the same order.
        assert acc.per_example.shape == (32,) and torch.equal(acc.levels, full.levels)
        assert acc.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
        assert torch.allclose(acc.per_example, full.per_example, rtol=1e-5, atol=1e-6)
    moved = _max_difference(full_model.state_dict(), start)
    weights = _max_difference(acc_model.state_dict(), full_model.state_dict())
    assert weights < 1e-5 < moved, f"weights differ by {weights:.2e} (the three steps moved them by {moved:.2e})"
    assert _max_difference(acc_ema.state_dict(), full_ema.state_dict()) < 1e-5
    for group_full, group_acc in zip(full_opt.state.values(), acc_opt.state.values()):
        assert torch.allclose(group_full["exp_avg"], group_acc["exp_avg"], rtol=1e-4, atol=1e-7)
        assert torch.allclose(group_full["exp_avg_sq"], group_acc["exp_avg_sq"], rtol=1e-4, atol=1e-10)


def test_a_batch_splits_into_near_equal_parts_and_never_into_empty_ones():
    """Parts of ``B // k`` or one more rows (an elastic worker's share need not divide by its
    micro-batch size); equal parts when ``k`` divides ``B``, as before; more parts than rows
    is refused."""
    x = torch.arange(10.0).view(10, 1, 1, 1)
    parts = split_batch(x, {"levels": torch.arange(10), "anneal_power": 2.0, "generator": None}, 4)
    assert [p[0].shape[0] for p in parts] == [2, 3, 2, 3]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1]["levels"] for p in parts]), torch.arange(10))
    assert all(p[1]["anneal_power"] == 2.0 for p in parts)
    parts = split_batch(x, {"levels": torch.arange(10)}, 5)
    assert [p[0].shape[0] for p in parts] == [2] * 5
    with pytest.raises(ValueError, match="cannot split a batch of 10 into 11"):
        split_batch(x, {}, 11)


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_uneven_shares_weighted_by_their_size_give_the_whole_batch_gradient():
    """Three workers share a global batch of 32 as 10, 11, 11 rows (``worker_rows``); each
    weights its loss by ``b_r W / B`` and DDP averages the three gradients: the result is the
    gradient of one worker on the whole batch, to float tolerance, also when a share is
    accumulated in uneven micro-batches."""
    from ncsn_ray.data.global_batches import worker_rows

    model, _, _, sigmas = _setup()
    x = _digits(32, seed=3)
    draws = _fixed_draws(x, len(sigmas), seed=4)
    still = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the weights; the gradients stay
    train_step(model, still, LOSSES["dsm"], x, sigmas, **draws)
    whole = _gradients(model)
    scale = max(g.abs().max().item() for g in whole.values())

    def ddp_average(micro_batches: int, weighted: bool) -> dict[str, torch.Tensor]:
        total = {name: torch.zeros_like(g) for name, g in whole.items()}
        for rank in range(3):
            start, stop = worker_rows(rank, 3, 32)
            worker = copy.deepcopy(model)
            train_step(worker, torch.optim.SGD(worker.parameters(), lr=0.0), LOSSES["dsm"], x[start:stop], sigmas,
                       micro_batches=micro_batches, loss_weight=(stop - start) * 3 / 32 if weighted else 1.0,
                       **{k: v[start:stop] for k, v in draws.items()})
            for name, g in _gradients(worker).items():
                total[name] += g
        return {name: g / 3 for name, g in total.items()}  # what DDP's all-reduce makes of them

    assert [worker_rows(r, 3, 32) for r in range(3)] == [(0, 10), (10, 21), (21, 32)]
    for micro_batches in (1, 3):  # 3 parts: 3 + 3 + 4 and 3 + 4 + 4 rows
        assert _max_difference(ddp_average(micro_batches, weighted=True), whole) < 1e-5 * scale, micro_batches
    # Unweighted, the share of 10 would count as much as the shares of 11: a visible error.
    assert _max_difference(ddp_average(1, weighted=False), whole) > 1e-3 * scale


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_ddp_all_reduces_once_per_step_not_once_per_micro_batch():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model, _, _, sigmas = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1000)  # one bucket: one call per sync
        reductions = []

        def counting_hook(state, bucket):
            reductions.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, counting_hook)
        optimizer = make_optimizer(ddp.parameters(), lr=1e-3)
        x = _digits(32, seed=0)
        train_step(ddp, optimizer, LOSSES["dsm"], x, sigmas, micro_batches=4, **_fixed_draws(x, len(sigmas), 1))
        assert len(reductions) == 1, f"{len(reductions)} all-reduces for one step of 4 micro-batches"
        train_step(ddp, optimizer, LOSSES["dsm"], x, sigmas, micro_batches=1, **_fixed_draws(x, len(sigmas), 2))
        assert len(reductions) == 2
    finally:
        dist.destroy_process_group()


BF16_STEPS, WINDOW = 150, 50
BF16_TOLERANCE = 0.05  # relative difference of the mean loss over the last 50 steps (measured: 0.2%)


@pytest.mark.timeout(300)
def test_bf16_training_tracks_fp32_and_keeps_fp32_state():
    curves = {}
    for precision in ("fp32", "bf16"):
        model, optimizer, ema, sigmas = _setup(seed=1)
        losses = []
        for step in range(BF16_STEPS):
            x = _digits(32, seed=1000 + step)
            out = train_step(model, optimizer, LOSSES["dsm"], x, sigmas, ema=ema, precision=precision,
                             **_fixed_draws(x, len(sigmas), seed=2000 + step))
            losses.append(out.loss.item())
        curves[precision] = losses
        assert all(p.dtype == torch.float32 for p in model.parameters()), "master weights must stay float32"
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
        assert all(t.dtype == torch.float32 for t in ema.state_dict().values() if t.is_floating_point())
        assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in optimizer.state.values())
    start, fp32, bf16 = (sum(curves["fp32"][:10]) / 10, sum(curves["fp32"][-WINDOW:]) / WINDOW,
                         sum(curves["bf16"][-WINDOW:]) / WINDOW)
    assert fp32 < 0.8 * start, f"fp32 did not learn ({start:.3f} -> {fp32:.3f}): the comparison would mean nothing"
    assert abs(bf16 - fp32) / fp32 < BF16_TOLERANCE, f"bf16 loss {bf16:.4f} vs fp32 {fp32:.4f}"
    assert curves["bf16"] != curves["fp32"], "bf16 changed nothing: autocast did not run"
