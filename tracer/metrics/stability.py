"""Is a hit's ``stable`` flag evidence? Proponent rate of stable vs unstable hits at the same rank.

This module owns the statistic behind the report's stability table and ``eval/stability.py``. A
hit is *stable* when it is in the top-k under every checkpoint alone (:attr:`tracer.types.Hit.stable`).
For one method, the input is a ``(n_queries, k, 2)`` int8 array of ``(stable, proponent)`` per
query and rank (``-1`` where a query has no hit at that rank). Rank by rank, the share of
proponents among stable hits is compared with the share among unstable hits; ranks holding both
kinds are pooled, weighted by their number of hits, so a method that puts its stable hits at the
top is not credited for the top ranks being better. The interval is a percentile bootstrap over
queries (seeded), as everywhere else in the report.

Per-hit stability travels in the report's ``details["stability"]`` block (see
:func:`stability_block`): ``{method: {qid: [[topk_fraction, stable, low, high], ...]}}``, aligned
with ``details["hits"]``; ``null`` entries for hits without a measure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["hit_matrix", "hit_records", "rank_matched_difference", "stability_block", "summarize"]

MISSING = -1


def rank_matched_difference(x: np.ndarray) -> tuple[float, float, float]:
    """Pooled ``(stable - unstable, stable, unstable)`` proponent rates over ranks holding both kinds.

    Args:
        x: ``(n_queries, k, 2)`` of ``(stable, proponent)`` per query and rank, ``-1`` where missing.

    Returns:
        The three rates, each a mean over ranks of the per-rank rate weighted by the rank's number of
        hits; ``nan`` three times when no rank holds both a stable and an unstable hit.
    """
    num = den = ps = pu = 0.0
    for r in range(x.shape[1]):
        col = x[:, r]
        col = col[col[:, 0] >= 0]
        st, un = col[col[:, 0] == 1, 1], col[col[:, 0] == 0, 1]
        if len(st) and len(un):
            w = len(col)
            num += w * (st.mean() - un.mean())
            ps += w * st.mean()
            pu += w * un.mean()
            den += w
    return (num / den, ps / den, pu / den) if den else (float("nan"),) * 3


def _round(v: float) -> float | None:
    return None if v != v else round(float(v), 4)


def summarize(x: np.ndarray, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The stability table's row of one method: hit counts, the two proponent rates and their difference.

    Args:
        x: ``(n_queries, k, 2)`` as in :func:`rank_matched_difference`.
        n_boot: Bootstrap resamples of the queries, ``>= 1``.
        seed: Seed of the resampling.
        confidence: Coverage of the interval of the difference.

    Returns:
        ``{"queries", "hits", "stable_hits", "stable_share", "proponent_rate_stable",
        "proponent_rate_unstable", "difference", "ci95": [lo, hi]}``, rates rounded to 4 digits;
        ``None`` for what cannot be computed (no rank with both kinds; no hit at all).

    Raises:
        ValueError: If ``x`` is not ``(n, k, 2)`` or ``n_boot < 1``.
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != 2:
        raise ValueError(f"x must be (n_queries, k, 2), got shape {x.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    diff, ps, pu = rank_matched_difference(x)
    lo = hi = float("nan")
    if diff == diff and len(x):
        rng = np.random.default_rng(seed)
        boots = np.array([rank_matched_difference(x[rng.integers(0, len(x), len(x))])[0] for _ in range(n_boot)])
        if np.isfinite(boots).any():
            alpha = (1.0 - confidence) / 2 * 100
            lo, hi = (float(v) for v in np.nanpercentile(boots, [alpha, 100 - alpha]))
            lo, hi = min(lo, diff), max(hi, diff)
    valid = x[..., 0] >= 0
    n_hits = int(valid.sum())
    n_stable = int((x[..., 0] == 1).sum())
    return {"queries": int(len(x)), "hits": n_hits, "stable_hits": n_stable,
            "stable_share": _round(n_stable / n_hits) if n_hits else None,
            "proponent_rate_stable": _round(ps), "proponent_rate_unstable": _round(pu),
            "difference": _round(diff), "ci95": [_round(lo), _round(hi)] if lo == lo else None}


def stability_block(st: Any, n: int) -> list[list[Any] | None]:
    """The first ``n`` hits of one :class:`tracer.retrieval.Stability` as ``[topk_fraction, stable, low, high]``
    (floats to 6 significant digits); ``None`` (no measure) gives ``n`` ``None``."""
    if st is None:
        return [None] * n
    out: list[list[Any] | None] = []
    for j in range(n):
        if j >= len(st.topk_fraction):
            out.append(None)
            continue
        out.append([float(f"{st.topk_fraction[j]:.6g}"), bool(st.stable[j]),
                    float(f"{st.low[j]:.6g}"), float(f"{st.high[j]:.6g}")])
    return out


def hit_records(entries: Sequence[Sequence[Any] | None]) -> list[dict[str, Any] | None]:
    """``[topk_fraction, stable, low, high]`` entries as ``{"topk_fraction", "stable", "interval"}`` dicts
    (what ``per_query.jsonl`` holds), ``None`` kept."""
    return [None if e is None else {"topk_fraction": e[0], "stable": e[1], "interval": [e[2], e[3]]}
            for e in entries]


def hit_matrix(hits: Mapping[str, Sequence[Sequence[Any]]], stability: Mapping[str, Sequence[Any]],
               qrels: Mapping[str, Collection[str]], k: int) -> np.ndarray:
    """``(n_queries, k, 2)`` of ``(stable, proponent)`` from one method's report blocks.

    Args:
        hits: Query id -> ``[doc_id, score, ...]`` best first (``details["hits"][method]``).
        stability: Query id -> per-hit entries aligned with ``hits`` (``details["stability"][method]``);
            a hit whose entry is ``None`` counts as missing.
        qrels: Query id -> proponent ids.
        k: Ranks kept.

    Returns:
        The array, queries in sorted id order (those in both ``hits`` and ``stability``).
    """
    qids = sorted(set(hits) & set(stability))
    x = np.full((len(qids), k, 2), MISSING, dtype=np.int8)
    for i, q in enumerate(qids):
        rel = qrels.get(q, ())
        for r, (h, e) in enumerate(zip(hits[q][:k], stability[q][:k])):
            if e is not None:
                x[i, r] = (int(bool(e[1])), int(h[0] in rel))
    return x
