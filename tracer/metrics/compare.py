"""Comparisons between methods on the same queries: paired tests and agreement of their rankings.

This module owns method-vs-method statistics. All functions are pure and seeded.

* :func:`paired_test` — for one metric, the per-query differences ``a - b``: their mean with a
  paired percentile-bootstrap interval, a two-sided paired randomization (sign-flip) test
  (Fisher 1935; Smucker, Allan & Carterette 2007 for IR), and win/tie/loss counts.
* :func:`topk_jaccard` — mean over queries of the Jaccard overlap of two methods' top-k sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TIE_TOL", "against_best", "paired_test", "pairwise", "topk_jaccard"]

# Per-query differences within this are ties (metric values are ratios of small integers).
TIE_TOL = 1e-12


def paired_test(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 10000,
                seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of two methods' per-query values of one metric.

    Args:
        a, b: Query id -> metric value; only queries present in both are compared.
        n_resamples: Sign-flip permutations and bootstrap resamples, ``>= 1``.
        seed: Seed of both resampling schemes.
        confidence: Coverage of the bootstrap interval of the mean difference.

    Returns:
        ``{"n", "mean_diff", "lo", "hi", "p_value", "wins", "ties", "losses"}``: ``wins`` counts
        queries where ``a > b``. ``p_value`` is ``(1 + #{|mean(s * d)| >= |mean(d)|}) /
        (1 + n_resamples)`` over random signs ``s``; 1.0 when every query ties.

    Raises:
        ValueError: If no query is shared or ``n_resamples < 1``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    qids = sorted(set(a) & set(b))
    if not qids:
        raise ValueError("a and b share no query")
    d = np.array([float(a[q]) - float(b[q]) for q in qids], dtype=np.float64)
    d[np.abs(d) <= TIE_TOL] = 0.0
    rng = np.random.default_rng(seed)
    observed = abs(d.mean())
    if np.all(d == 0):
        p = 1.0
    else:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, d.size))
        flipped = np.abs((signs * d).mean(axis=1))
        p = float((1 + np.count_nonzero(flipped >= observed - 1e-15)) / (1 + n_resamples))
    boot = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return {"n": int(d.size), "mean_diff": float(d.mean()),
            "lo": float(min(np.quantile(boot, alpha), d.mean())),
            "hi": float(max(np.quantile(boot, 1 - alpha), d.mean())),
            "p_value": p, "wins": int(np.count_nonzero(d > 0)), "ties": int(np.count_nonzero(d == 0)),
            "losses": int(np.count_nonzero(d < 0))}


def pairwise(per_query: Mapping[str, Mapping[str, Mapping[str, Any]]], metric: str, reference: str,
             n_resamples: int = 10000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`paired_test` of every other method against ``reference`` on ``metric``.

    Args:
        per_query: Method -> query id -> metric name -> value (the report's ``details.per_query``).
        metric: Metric key, e.g. ``"mrr"``; methods or queries lacking it are left out.
        reference: The method the others are compared with.

    Returns:
        Method -> test dict (``a`` = that method, ``b`` = the reference).
    """
    ref = {q: v[metric] for q, v in per_query.get(reference, {}).items() if metric in v}
    out = {}
    for m, rows in per_query.items():
        vals = {q: v[metric] for q, v in rows.items() if metric in v}
        if m == reference or not ref or not (set(vals) & set(ref)):
            continue
        out[m] = paired_test(vals, ref, n_resamples=n_resamples, seed=seed)
    return out


def against_best(methods: Mapping[str, Mapping[str, Any]], per_query: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 metrics: Sequence[str], n_resamples: int = 10000,
                 seed: int = 0) -> tuple[str, dict[str, dict[str, dict[str, Any]]]]:
    """The reports' paired tests: every method against the one with the best mean MRR.

    Args:
        methods: The report's ``methods`` block (method -> ``{"all": {"mrr": {"mean": ...}}}``).
        per_query: The report's ``details.per_query``.
        metrics: Metric keys to test; those no query carries are left out.

    Returns:
        ``(reference, {metric: {method: paired_test dict}})``; the reference is chosen among the
        methods that have per-query rows.
    """
    pool = [m for m in methods if m in per_query] or list(methods)  # a reference with per-query rows to pair
    ref = max(pool, key=lambda m: methods[m].get("all", {}).get("mrr", {}).get("mean", float("-inf")))
    present = [k for k in metrics if any(k in row for rows in per_query.values() for row in rows.values())]
    return ref, {k: pairwise(per_query, k, ref, n_resamples=n_resamples, seed=seed) for k in present}


def topk_jaccard(a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]], k: int = 10) -> float:
    """Mean over shared queries of ``|A ∩ B| / |A ∪ B|`` for the two top-``k`` doc sets.

    Args:
        a, b: Query id -> doc ids, best first.
        k: Cutoff.

    Returns:
        The mean Jaccard in ``[0, 1]`` (two empty lists count as identical); ``nan`` when no query
        is shared.
    """
    qids = sorted(set(a) & set(b))
    if not qids:
        return float("nan")
    vals = []
    for q in qids:
        sa, sb = set(a[q][:k]), set(b[q][:k])
        vals.append(1.0 if not (sa | sb) else len(sa & sb) / len(sa | sb))
    return float(np.mean(vals))
