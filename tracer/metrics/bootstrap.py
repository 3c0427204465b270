"""Means and percentile-bootstrap confidence intervals over queries.

This module owns aggregation: it turns per-query metric dicts (from
:func:`tracer.metrics.retrieval.evaluate_run`) into a mean and a confidence interval
per metric, overall and per group (e.g. per relation). Intervals are percentile
bootstrap intervals over queries (Efron & Tibshirani 1993): queries are resampled with
replacement ``n_boot`` times, the metric mean of each resample is taken, and the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means are the
bounds.

Determinism: the result depends only on the data and ``seed``, never on mapping order.
Query ids are sorted before resampling, and every group draws from its own generator
seeded by ``(seed, crc32(group name))``, so adding a group does not move the others.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

__all__ = ["ALL_KEY", "BY_GROUP_KEY", "aggregate", "bootstrap_ci"]

# Group key of the overall aggregate in the returned dict.
ALL_KEY = "all"
# Group key of the per-group aggregates in the returned dict.
BY_GROUP_KEY = "by_group"


def _metric_matrix(
    per_query: Mapping[str, Mapping[str, float]], qids: list[str]
) -> tuple[list[str], NDArray[np.float64]]:
    """Stack per-query metrics into a ``(n_queries, n_metrics)`` float64 matrix."""
    metrics = sorted(per_query[qids[0]])
    for qid in qids:
        if sorted(per_query[qid]) != metrics:
            raise ValueError(f"query {qid!r} has metrics {sorted(per_query[qid])}, expected {metrics}")
    values = np.array([[float(per_query[q][m]) for m in metrics] for q in qids], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("per_query contains a non-finite metric value")
    return metrics, values.reshape(len(qids), len(metrics))


def bootstrap_ci(
    values: NDArray[np.float64], n_boot: int, confidence: float, rng: np.random.Generator
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Column means and their percentile-bootstrap interval over rows.

    One ``(n_boot, n)`` matrix of row indices is drawn and shared by every column, so
    the metrics of a resample come from the same queries.

    Args:
        values: ``(n, n_metrics)`` float64, one row per query, ``n >= 1``.
        n_boot: Number of bootstrap resamples, ``>= 1``.
        confidence: Interval coverage in ``(0, 1)``.
        rng: Generator that draws the resample indices.

    Returns:
        ``(mean, lo, hi)``, each ``(n_metrics,)`` float64. ``lo <= mean <= hi`` always:
        the interval is widened to include the mean where floating-point rounding
        would put it just outside.
    """
    n = values.shape[0]
    mean = values.mean(axis=0)
    idx = rng.integers(0, n, size=(n_boot, n))
    # Column by column keeps peak memory at one (n_boot, n) block.
    boot = np.stack([values[:, j][idx].mean(axis=1) for j in range(values.shape[1])], axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo = np.quantile(boot, alpha, axis=0)
    hi = np.quantile(boot, 1.0 - alpha, axis=0)
    return mean, np.minimum(lo, mean), np.maximum(hi, mean)


def _summarize(
    per_query: Mapping[str, Mapping[str, float]],
    qids: list[str],
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    metrics, values = _metric_matrix(per_query, qids)
    mean, lo, hi = bootstrap_ci(values, n_boot, confidence, rng)
    out: dict[str, Any] = {"n": len(qids)}
    for j, name in enumerate(metrics):
        out[name] = {"mean": float(mean[j]), "lo": float(lo[j]), "hi": float(hi[j])}
    return out


def _check_args(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0 and math.isfinite(confidence)):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _group_rng(seed: int, group: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(group.encode("utf-8"))])


def aggregate(
    per_query: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean and percentile-bootstrap CI of every metric, overall and per group.

    Args:
        per_query: Query id -> metric name -> value. Every query must carry the same
            metric names (as :func:`tracer.metrics.retrieval.evaluate_run` produces).
        groups: Optional query id -> group name (e.g. relation). Queries absent from
            ``groups`` count in ``"all"`` only; ids in ``groups`` but not in
            ``per_query`` are ignored.
        n_boot: Bootstrap resamples, ``>= 1``.
        confidence: Interval coverage in ``(0, 1)``, e.g. ``0.95``.
        seed: Seed; the result is a pure function of the inputs and ``seed``.

    Returns:
        ``{"all": S, "by_group": {group: S}}`` where
        ``S = {"n": n_queries, metric: {"mean": float, "lo": float, "hi": float}}``.
        ``by_group`` is ``{}`` when ``groups`` is None. With a single query,
        ``lo == hi == mean``.

    Raises:
        ValueError: If ``per_query`` is empty, queries disagree on metric names, a value
            is not finite, ``n_boot < 1`` or ``confidence`` is outside ``(0, 1)``.
    """
    _check_args(n_boot, confidence)
    if not per_query:
        raise ValueError("per_query is empty: cannot aggregate zero queries")
    qids = sorted(per_query)
    result: dict[str, Any] = {
        ALL_KEY: _summarize(per_query, qids, n_boot, confidence, np.random.default_rng(seed)),
        BY_GROUP_KEY: {},
    }
    if groups is None:
        return result
    members: dict[str, list[str]] = {}
    for qid in qids:
        if qid in groups:
            members.setdefault(str(groups[qid]), []).append(qid)
    n_ungrouped = len(qids) - sum(len(m) for m in members.values())
    if n_ungrouped:
        logger.info("%d queries have no group; they count in 'all' only", n_ungrouped)
    for name in sorted(members):
        result[BY_GROUP_KEY][name] = _summarize(
            per_query, members[name], n_boot, confidence, _group_rng(seed, name)
        )
    return result
