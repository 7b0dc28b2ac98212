"""Failpoints: named places in the jobs where a test can make a fault happen (a worker exits,
an actor raises), as fail-rs and gofail call them, read from one environment variable.

Each failpoint is a call in the product's code (``faults.kill_worker_once(...)``,
``faults.after_shard(...)``, ``faults.write_rank_digests(...)``) that does nothing unless the
variable names it: with ``NCSN_FAULTS`` unset, every call is a dictionary look-up on a
parsed-once empty plan. The product's options, actor constructors and command lines carry
only real settings; a test names the failpoints it wants in ``NCSN_FAULTS``, a
comma-separated list of ``name`` or ``name=value`` entries, before it starts a job::

    NCSN_FAULTS="train.kill_worker_at_step=5"      rank 0's training worker exits once, after step 5
    NCSN_FAULTS="train.rank_digests"               every rank records digests of its weights and EMA
    NCSN_FAULTS="train.step_ms=200"                every training step takes at least 200 ms more
                                                   (paces a run so a test can add or remove nodes under it)
    NCSN_FAULTS="sample.fail_after_shards=1"       shard actors raise after that many shards
    NCSN_FAULTS="sample.exit_once_after_shards=1"  one shard actor process exits once after that many

The driver forwards the variable to the processes Ray starts for the job (Train workers,
shard actors) through their runtime environment (:func:`runtime_env`), so it takes effect
on a cluster started before the variable was set. "Once" faults leave a marker file in the
job's output folder, so the replacement process carries on.
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["ENV", "value", "enabled", "runtime_env", "kill_worker_once", "pace_step", "after_shard",
           "write_rank_digests"]

ENV = "NCSN_FAULTS"
KILL_MARKER = ".injected-failure-done"
EXIT_MARKER = ".injected-exit-done"
KNOWN = {"train.kill_worker_at_step", "train.rank_digests", "train.step_ms", "sample.fail_after_shards",
         "sample.exit_once_after_shards"}


def _plan() -> dict[str, str]:
    return _parse(os.environ.get(ENV, ""))


@functools.lru_cache(maxsize=8)
def _parse(raw: str) -> dict[str, str]:
    """The fault plan of one value of the variable (parsed once: the training loop asks at
    every step)."""
    entries: dict[str, str] = {}
    for entry in raw.split(","):
        name, _, setting = entry.strip().partition("=")
        if not name:
            continue
        if name not in KNOWN:
            raise ValueError(f"{ENV}: unknown fault {name!r} (known: {', '.join(sorted(KNOWN))})")
        entries[name] = setting
    return entries


def enabled(name: str) -> bool:
    return name in _plan()


def value(name: str) -> int | None:
    """The integer setting of fault ``name``, or None when it is not requested."""
    setting = _plan().get(name)
    return None if setting is None else int(setting)


def runtime_env() -> dict[str, Any]:
    """``{"env_vars": {NCSN_FAULTS: ...}}`` when faults are requested, else ``{}``: merge it into
    the runtime environment of the processes Ray starts for a job."""
    plan = os.environ.get(ENV)
    return {"env_vars": {ENV: plan}} if plan else {}


def kill_worker_once(step: int, rank: int, run, log) -> None:
    """``train.kill_worker_at_step``: rank 0 exits (as a crash would) after that step, once per run."""
    if rank == 0 and value("train.kill_worker_at_step") == step and not run.exists(KILL_MARKER):
        run.write_bytes(KILL_MARKER, b"1")
        log(f"[train] injected failure: killing worker at step {step}")
        os._exit(1)


def pace_step() -> None:
    """``train.step_ms``: sleep that many milliseconds after a training step (every rank), so a
    short run lasts long enough for a test to change the cluster under it. The weights are
    those of an unpaced run: only time passes."""
    delay = value("train.step_ms")
    if delay:
        import time

        time.sleep(delay / 1000)


def after_shard(shards_written: int, out) -> None:
    """``sample.fail_after_shards`` (raise) and ``sample.exit_once_after_shards`` (the actor
    process exits, once per job) after an actor has written that many shards."""
    fail = value("sample.fail_after_shards")
    if fail is not None and shards_written >= fail:
        raise RuntimeError(f"injected failure after {shards_written} shard(s) (testing)")
    exit_after = value("sample.exit_once_after_shards")
    if exit_after is not None and shards_written >= exit_after and not out.exists(EXIT_MARKER):
        out.write_bytes(EXIT_MARKER, b"1")  # once per job: the restarted actor carries on
        os._exit(1)


def write_rank_digests(run, state, rank: int) -> None:
    """``train.rank_digests``: at a checkpoint, every rank writes
    ``rank_digests/step_XXXXXXXX_rank_R.json`` with digests of its weights and EMA weights and
    its node, so a test can check that DDP keeps the ranks identical (and where they ran)."""
    if not enabled("train.rank_digests"):
        return
    import ray

    from .digests import tensors_digest

    record = {"rank": rank, "step": state.step, "digest": tensors_digest(state.model.state_dict()),
              "ema_digest": tensors_digest(state.ema.module.state_dict()),
              "node": ray.get_runtime_context().get_node_id()}
    run.write_json(f"rank_digests/step_{state.step:08d}_rank_{rank}.json", record)
