"""Elastic training (``--num-workers MIN-MAX``) on Ray's multi-node test cluster
(``ray.cluster_utils.Cluster``: real raylets on one machine, a CPU-less head, nodes of one CPU
so that a node is one worker).

* A run whose MIN does not fit says so and waits; it starts when a node joins.
* A run at 1-3 workers grows when a node joins and shrinks when one is removed, each time
  from the newest checkpoint, and ends with weights and EMA equal (to 1e-4) to those of a
  fixed one-worker run: the global batches are step-addressed and shared exactly.

The run is paced (``NCSN_FAULTS=train.step_ms``: a sleep after each step, nothing else) so that
it lasts long enough for the cluster to change under it; both tests share one cluster.
"""

from __future__ import annotations

import threading
import time

import pytest

from ncsn_core import load_checkpoint
from ncsn_ray.testing import faults
from ncsn_ray.train.checkpoints import RAY_TRAIN_SNAPSHOT
from support.jobs import load_job
from support.train_helpers import metrics, write_tiny_config

pytestmark = [pytest.mark.ray]

# As in test_node_faults.py: no CPU on the head; a removed node is declared dead in 5 s.
_HEAD = {"num_cpus": 0, "object_store_memory": 100_000_000,
         "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}}
_NODE = {"num_cpus": 1, "object_store_memory": 100_000_000}  # one CPU: one training worker


# --------------------------------------------------------------------------- without Ray


def test_num_workers_is_a_count_or_a_range_and_nonsense_is_a_usage_error(capsys):
    from ncsn_ray.cli.train import parse_args
    from ncsn_ray.train.elastic import parse_workers

    assert parse_workers("4") == 4 and parse_workers("2-8") == (2, 8) and parse_workers("3-3") == 3
    for bad in ("0", "3-2", "0-2", "two", "1-2-3", ""):
        with pytest.raises(ValueError):
            parse_workers(bad)
    assert parse_args(["--num-workers", "1-3"]).num_workers == (1, 3)
    for argv in (["--num-workers", "3-1"], ["--num-workers", "2", "--resize-check", "5"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2
    assert "MIN-MAX" in capsys.readouterr().err


def test_room_is_counted_per_node_as_rays_elastic_policy_counts_it():
    from ncsn_ray.train.elastic import room_for_workers

    nodes = [{"Alive": True, "Resources": {"CPU": 0.0}},  # a head that runs no tasks
             {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 4.0, "GPU": 1.0}}]
    assert room_for_workers(nodes, {"CPU": 1, "GPU": 1}) == 3
    assert room_for_workers(nodes, {"CPU": 3}) == 1 + 2  # 4 // 3 + 8 // 3: no worker spans two nodes
    assert room_for_workers(nodes, {"CPU": 1, "GPU": 0}) == 12


def test_the_job_says_it_waits_for_room_and_says_when_it_starts():
    from ncsn_ray.train.elastic import RoomWatch

    one = [{"Alive": True, "Resources": {"CPU": 1.0}}]
    cluster = {"nodes": one}
    lines: list[str] = []
    watch = RoomWatch(2, {"CPU": 1.0}, lines.append, nodes=lambda: cluster["nodes"], poll_s=0.01)
    assert watch.start() is True
    assert lines == ["[train] waiting for 2 workers' resources (1 CPU each); the cluster has room for 1 "
                     "(1 node(s) with 1 CPU): training starts when nodes join (an autoscaler adds them; on spot "
                     "capacity this can take minutes)"]
    cluster["nodes"] = one * 2
    deadline = time.monotonic() + 10
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.stop()
    assert lines[1].startswith("[train] the cluster has room for 2 workers now (2 node(s) with 2 CPU)")
    assert lines[1].endswith(": starting")
    assert RoomWatch(1, {"CPU": 1.0}, lines.append, nodes=lambda: one).start() is False, "no wait, no line"


def test_every_worker_count_of_a_range_must_get_an_example():
    from ncsn_ray.errors import UserError
    from ncsn_ray.train.job import _shares

    assert _shares(32, 4, None) == "" and _shares(32, 3, None) == "10-11 each"
    assert _shares(32, (1, 3), 8) == "10-32 each, in up to 4 micro-batches of at most 8"
    with pytest.raises(UserError, match="cannot give each of 40 workers an example"):
        _shares(32, (2, 40), None)


# --------------------------------------------------------------------------- on a simulated cluster


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args=_HEAD)
    try:
        made.add_node(**_NODE)
        ray.init(address=made.address)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


def _worker_nodes(cluster) -> list:
    return [n for n in cluster.list_all_nodes() if n is not cluster.head_node]


def _start(args: list[str]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", load_job("train").main(args)))
    thread.start()
    return thread, outcome


def _windows(run) -> list[dict]:
    try:
        return [m for m in metrics(run) if "loss" in m]
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-rewrite
        return []


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _args(config, digits, storage, steps: int, workers: str) -> list[str]:
    return ["--config", str(config), "--data", str(digits), "--storage", str(storage), "--steps", str(steps),
            "--num-workers", workers, "--no-preview", "--tracking", "none", "--cpus-per-worker", "1"]


@pytest.mark.timeout(600)
def test_a_run_whose_minimum_does_not_fit_says_so_waits_and_starts_when_a_node_joins(cluster, digits_local, tmp_path,
                                                                                       capfd):
    while len(_worker_nodes(cluster)) > 1:
        cluster.remove_node(_worker_nodes(cluster)[-1])
    config = write_tiny_config(tmp_path, training={"log_every": 2, "checkpoint_every": 4})
    storage = tmp_path / "runs"
    thread, outcome = _start(_args(config, digits_local, storage, 8, "2-3") + ["--resize-check", "2"])
    seen = []

    def printed(text: str) -> bool:
        seen.append(capfd.readouterr().out)
        return text in "".join(seen)

    _wait_for(lambda: printed("[train] waiting for 2 workers' resources"), 120, "the waiting line")
    time.sleep(5)
    assert not (storage / "tiny" / "metrics.jsonl").exists(), "nothing may train while MIN does not fit"
    joined = time.time()
    cluster.add_node(**_NODE)
    thread.join(timeout=400)
    assert outcome.get("code") == 0, outcome
    printed("")
    output = "".join(seen)
    assert "the cluster has room for 1 (1 node(s) with 1 CPU)" in output, output[-3000:]
    assert "[train] the cluster has room for 2 workers now" in output and ": starting" in output, output[-3000:]
    windows = _windows(storage / "tiny")
    assert windows[-1]["step"] == 8 and {w["workers"] for w in windows} == {2}
    print(f"MIN fits: training began {windows[0]['loop_started_at'] - joined:.1f} s after the node joined")


@pytest.mark.timeout(900)
def test_an_elastic_run_grows_and_shrinks_with_the_cluster_and_ends_as_a_fixed_run(cluster, digits_local, tmp_path,
                                                                                  monkeypatch):
    while len(_worker_nodes(cluster)) < 2:
        cluster.add_node(**_NODE)
    # A few dozen steps: DDP's sums differ in order with the worker count, and Adam amplifies
    # such float differences step by step (a run at 2, then 3, then 2 workers against one
    # worker: 7e-5 in the EMA after 40 steps; fixed counts: 2e-7 after 8 steps, 5e-4 after 200),
    # so "equal to float tolerance" is checked on a short run.
    steps, every = 32, 4
    config = write_tiny_config(tmp_path, training={"log_every": 2, "checkpoint_every": every, "keep_checkpoints": 20})
    fixed, elastic = tmp_path / "fixed", tmp_path / "elastic"
    assert load_job("train").main(_args(config, digits_local, fixed, steps, "1")) == 0

    monkeypatch.setenv(faults.ENV, "train.step_ms=2000")  # at least 64 s of stepping for the cluster to change
    thread, outcome = _start(_args(config, digits_local, elastic, steps, "1-3") + ["--resize-check", "2"])
    run = elastic / "tiny"
    _wait_for(lambda: any(w["workers"] == 2 for w in _windows(run)), 300, "the first window (2 nodes: 2 workers)")
    # Grow once the first group has a checkpoint registered: a resize before it restarts from
    # step 0 and drops the first group's windows (they are past the checkpoint it resumes from).
    snapshot = run / RAY_TRAIN_SNAPSHOT
    first = f"checkpoint_{every:08d}"
    _wait_for(lambda: snapshot.exists() and first in snapshot.read_text(), 120, "a checkpoint of the first group")
    cluster.add_node(**_NODE)
    joined = time.time()
    _wait_for(lambda: any(w["workers"] == 3 for w in _windows(run)), 300, "a window of 3 workers")
    grown = next(w for w in _windows(run) if w["workers"] == 3)
    # Remove a node once Ray Train has registered a checkpoint of the grown group (its snapshot
    # names it): a group lost before that restarts from the checkpoint before (Ray's contract).
    due = f"checkpoint_{(grown['step'] // every + 1) * every:08d}"
    _wait_for(lambda: snapshot.exists() and due in snapshot.read_text(), 120, "a checkpoint of the grown group")
    removed = time.time()
    cluster.remove_node(_worker_nodes(cluster)[0], allow_graceful=False)  # every node runs one worker
    thread.join(timeout=600)
    assert outcome.get("code") == 0, outcome

    records = metrics(run)
    sizes = [w["workers"] for w in records if "loss" in w]
    changes = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]
    assert changes == [2, 3, 2], sizes
    resizes = [r["resize"] for r in records if "resize" in r]
    assert [(r["from"], r["to"]) for r in resizes] == [(2, 3), (3, 2)], resizes
    steps_logged = [w["step"] for w in records if "loss" in w]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps, "each step logged once, in order"
    # Work lost to the removal: at most one checkpoint interval.
    assert resizes[1]["redone_steps"] <= every

    final = load_checkpoint(elastic / "tiny" / f"checkpoint_{steps:08d}" / "checkpoint.pt")
    reference = load_checkpoint(fixed / "tiny" / f"checkpoint_{steps:08d}" / "checkpoint.pt")
    assert final.step == steps and int(final.optimizer_state["state"][0]["step"]) == steps
    ema = max((final.ema_state[k].float() - reference.ema_state[k].float()).abs().max().item()
              for k in reference.ema_state)
    weights = max((final.model_state[k].float() - reference.model_state[k].float()).abs().max().item()
                  for k in reference.model_state)
    assert ema < 1e-4, f"EMA differs from the fixed run's by {ema:.2e}"
    first_grown = min(w["loop_started_at"] for w in records if "loss" in w and w["workers"] == 3)
    shrunk = min(w["loop_started_at"] for w in records if "loss" in w and w["workers"] == 2
                 and w["loop_started_at"] > first_grown)
    print(f"elastic 1-3: EMA within {ema:.1e} and weights within {weights:.1e} of the fixed run; "
          f"a joining node used after {first_grown - joined:.1f} s; training again {shrunk - removed:.1f} s after a "
          f"node was removed; resizes {resizes}")
