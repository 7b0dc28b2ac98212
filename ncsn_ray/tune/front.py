"""The quality-versus-cost front of a set of sampler trials, and the setting to recommend.

A trial row is a dict with at least ``nfe`` (network evaluations per sample, the cost) and
``score`` (lower is better; ``inf`` for a setting whose samples were not finite), and, where
the metric measures it, ``recall`` (the share of the real data the samples cover, higher is
better): a score that mixes fidelity and coverage, such as a Fréchet distance, can improve
while coverage falls, so the recommendation also holds recall near the best trial's.
"""

from __future__ import annotations

import math

__all__ = ["pareto_front", "recommend", "RECALL_MARGIN"]

RECALL_MARGIN = 0.03  # the recommended setting's recall is at most this far below the best trial's


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row dominates (as cheap or cheaper and strictly better, or cheaper and
    as good), sorted by NFE: along the front, each point costs more and scores strictly better
    than the one before."""
    finite = sorted((r for r in rows if math.isfinite(r["score"])), key=lambda r: (r["nfe"], r["score"]))
    front: list[dict] = []
    for row in finite:
        if not front or row["score"] < front[-1]["score"]:
            if front and row["nfe"] == front[-1]["nfe"]:
                continue  # same cost, sorted by score: the first one was better
            front.append(row)
    return front


def recommend(rows: list[dict], tolerance: float, recall_margin: float = RECALL_MARGIN) -> dict | None:
    """The cheapest row whose score is within ``tolerance`` (relative) of the best score, among
    the rows whose ``recall`` is at most ``recall_margin`` below the best trial's (all rows when
    they carry no recall); ties in NFE go to the better score. None if no row has a finite score."""
    finite = [r for r in rows if math.isfinite(r["score"])]
    if not finite:
        return None
    recalls = [r.get("recall") for r in finite]
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in recalls):
        floor = max(recalls) - recall_margin
        finite = [r for r in finite if r["recall"] >= floor]
    best = min(r["score"] for r in finite)
    good = [r for r in finite if r["score"] <= best + tolerance * abs(best)]
    return min(good, key=lambda r: (r["nfe"], r["score"]))
