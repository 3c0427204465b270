"""Per-query detail of a benchmark run: what the report's drill-down, curves and histograms read.

This module owns the ``report["details"]`` block that :func:`tracer.evaluation.run_evaluation`
adds next to the aggregates. Every function is pure (runs and qrels in, JSON-able dicts out), so
the block travels unchanged over gRPC (``Evaluate``'s ``report_json``) and the report is drawn the
same from a local or a remote evaluation. Layout::

    {
        "queries": {qid: {"prompt", "target", "relation", "proponents": [doc_id, ...]}},
        "per_query": {method: {qid: {"mrr", "recall@10", "success@10", "ndcg@10",
                                     "ranks": [1-based ranks of the proponents in the run],
                                     "tail_patch"?: float}}},
        "hits": {method: {qid: [[doc_id, score], ...]}},      # the top HITS_K, best first
        "stability": {method: {qid: [[topk_fraction, stable, low, high] | None, ...]}},  # aligned with
                                                              # "hits"; gradient methods over 2+ checkpoints
        "documents": {doc_id: text},                          # every hit and proponent, truncated
        "score_hist": {method: {"edges": [...], "proponents": [counts], "others": [counts]}},
        "depth": int,                                         # length of the ranked lists
    }
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["HITS_K", "PER_QUERY_METRICS", "SCORE_EDGES", "proponent_ranks", "score_histogram", "top_hits"]

# Hits kept per query and method for the drill-down.
HITS_K = 10
# Per-query metrics kept for paired tests and the drill-down (keys of evaluate_run's dicts).
PER_QUERY_METRICS = ("mrr", "recall@10", "success@10", "ndcg@10")
# Bin edges of the standardized-score histograms (scores are z-scored within each ranked list).
SCORE_EDGES: tuple[float, ...] = tuple(float(x) for x in np.round(np.arange(-3.0, 6.01, 0.25), 2))
# Characters of document text kept for the drill-down.
TEXT_CHARS = 240

ScoredRun = Mapping[str, Sequence[tuple[str, float]]]


def proponent_ranks(ranked: Sequence[str], relevant: Collection[str]) -> list[int]:
    """1-based ranks at which relevant docs appear (first occurrence of each), ascending.

    Args:
        ranked: Doc ids, best first.
        relevant: Relevant doc ids.

    Returns:
        Ranks; empty when no relevant doc is ranked. ``ranks[0]`` is the first proponent's rank.
    """
    seen: set[str] = set()
    out = []
    for i, d in enumerate(ranked, start=1):
        if d in relevant and d not in seen:
            out.append(i)
        seen.add(d)
    return out


def top_hits(run: ScoredRun, k: int = HITS_K) -> dict[str, list[list[Any]]]:
    """The first ``k`` ``[doc_id, score]`` pairs of every query (scores rounded to 6 significant digits)."""
    return {qid: [[d, float(f"{s:.6g}")] for d, s in ranked[:k]] for qid, ranked in run.items()}


def score_histogram(run: ScoredRun, qrels: Mapping[str, Collection[str]],
                    edges: Sequence[float] = SCORE_EDGES) -> dict[str, list[float]]:
    """Histograms of proponents' and other docs' scores, standardized within each ranked list.

    Raw scores are not comparable across queries (a query's gradient norm scales every TracIn
    score), so each list is z-scored first: ``(s - mean) / std`` over the list. Values beyond the
    edges land in the outermost bins; lists with fewer than 2 docs or zero spread are skipped.

    Args:
        run: Query id -> ``(doc_id, score)`` best first.
        qrels: Query id -> relevant doc ids.
        edges: Increasing bin edges, ``len(edges) - 1`` bins.

    Returns:
        ``{"edges": [...], "proponents": [count per bin], "others": [count per bin]}``.
    """
    e = np.asarray(edges, dtype=np.float64)
    pro: list[float] = []
    rest: list[float] = []
    for qid, ranked in run.items():
        rel = qrels.get(qid, ())
        s = np.array([sc for _, sc in ranked], dtype=np.float64)
        if s.size < 2 or not np.all(np.isfinite(s)) or s.std() == 0:
            continue
        z = np.clip((s - s.mean()) / s.std(), e[0], e[-1])
        for (d, _), v in zip(ranked, z):
            (pro if d in rel else rest).append(float(v))
    return {"edges": [float(x) for x in e],
            "proponents": np.histogram(pro, bins=e)[0].astype(int).tolist(),
            "others": np.histogram(rest, bins=e)[0].astype(int).tolist()}


def run_details(runs: Mapping[str, ScoredRun], qrels: Mapping[str, Collection[str]],
                per_query: Mapping[str, Mapping[str, Mapping[str, float]]], depth: int,
                stability: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> dict[str, Any]:
    """The ``details`` block, less ``queries``, ``documents`` and ``tail_patch`` (the caller owns those).

    Args:
        runs: Method -> query id -> ``(doc_id, score)`` best first.
        qrels: Query id -> relevant doc ids.
        per_query: Method -> :func:`tracer.metrics.evaluate_run` output.
        depth: Length the ranked lists were cut at.
        stability: Method -> query id -> per-hit ``[topk_fraction, stable, low, high]`` (or ``None``)
            aligned with the top hits (:func:`tracer.metrics.stability.stability_block`); kept as
            ``"stability"`` when given and non-empty.
    """
    pq: dict[str, dict[str, dict[str, Any]]] = {}
    for m, run in runs.items():
        pq[m] = {}
        for qid, metrics in per_query[m].items():
            row: dict[str, Any] = {k: metrics[k] for k in PER_QUERY_METRICS if k in metrics}
            row["ranks"] = proponent_ranks([d for d, _ in run.get(qid, ())], qrels[qid])
            pq[m][qid] = row
    out = {"per_query": pq, "hits": {m: top_hits(r) for m, r in runs.items()},
           "score_hist": {m: score_histogram(r, qrels) for m, r in runs.items()}, "depth": int(depth)}
    if stability:
        out["stability"] = {m: {q: list(v) for q, v in rows.items()} for m, rows in stability.items()}
    return out
