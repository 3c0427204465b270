"""Retrieval metrics over one ranking, and over a whole run.

This module owns the per-query metric arithmetic. Every function is pure: it reads a
ranking (doc ids, best first) and the set of relevant doc ids and returns a float.
Aggregation over queries (means and confidence intervals) lives in
:mod:`tracer.metrics.bootstrap`; TREC file I/O in :mod:`tracer.metrics.trec`.

Conventions shared by every function here:

* ``ranked`` is a sequence of doc id strings, best first. A doc id that repeats counts
  only at its first position; later copies are treated as non-relevant.
* ``relevant`` is a non-empty collection of doc ids. A query with no relevant docs has
  no defined recall or nDCG, so the single-query functions raise ``ValueError``;
  :func:`evaluate_run` skips such queries and logs how many it skipped.
* ``k`` is a positive int cutoff. ``k <= 0`` raises ``ValueError``. ``k > len(ranked)``
  is allowed: the missing positions count as non-relevant, so ``precision_at_k`` still
  divides by ``k`` (as ``trec_eval`` does).

Metric definitions follow the fact-tracing literature: recall@k as in FTRACE
(Akyürek+ 2022: fraction of the query's proponents found in the top k), success@k as in
TrackStar (Chang+ 2024: 1.0 if any proponent is in the top k), and nDCG (Järvelin &
Kekäläinen 2002) with binary gains and a ``log2(rank + 1)`` discount.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KS",
    "NDCG_K",
    "evaluate_ranking",
    "evaluate_run",
    "ndcg_at_k",
    "precision_at_k",
    "queries_without_relevant",
    "recall_at_k",
    "reciprocal_rank",
    "success_at_k",
]

# Cutoffs reported by default: 1/3/10 for top-of-list quality, 25/100 for candidate recall.
DEFAULT_KS: tuple[int, ...] = (1, 3, 10, 25, 100)
# The single nDCG cutoff reported by evaluate_ranking (key "ndcg@10").
NDCG_K = 10


def _check_ranked(ranked: Sequence[str]) -> None:
    # A bare str is a Sequence[str] too; iterating it would silently score characters.
    if isinstance(ranked, (str, bytes)):
        raise TypeError("ranked must be a sequence of doc ids, not a single string")


def _check_relevant(relevant: Collection[str]) -> frozenset[str]:
    if isinstance(relevant, (str, bytes)):
        raise TypeError("relevant must be a collection of doc ids, not a single string")
    rel = frozenset(relevant)
    if not rel:
        raise ValueError("relevant is empty: the metric is undefined for a query with no relevant docs")
    return rel


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return k


def _hits(ranked: Sequence[str], relevant: frozenset[str], k: int | None = None) -> list[bool]:
    """Relevance flags of the first ``k`` positions (all if None); repeats are not relevant."""
    seen: set[str] = set()
    flags: list[bool] = []
    for doc_id in ranked[:k] if k is not None else ranked:
        flags.append(doc_id in relevant and doc_id not in seen)
        seen.add(doc_id)
    return flags


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """Reciprocal rank of the first relevant doc, over the whole ranking (no cutoff).

    Args:
        ranked: Doc ids, best first, length ``n``.
        relevant: Non-empty collection of relevant doc ids.

    Returns:
        ``1 / r`` where ``r`` is the 1-based rank of the first relevant doc; ``0.0``
        when no relevant doc is ranked. Its mean over queries is MRR.

    Raises:
        ValueError: If ``relevant`` is empty.
        TypeError: If ``ranked`` or ``relevant`` is a single string.
    """
    _check_ranked(ranked)
    rel = _check_relevant(relevant)
    for rank, hit in enumerate(_hits(ranked, rel), start=1):
        if hit:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Fraction of the relevant docs found in the top ``k`` (FTRACE, Akyürek+ 2022).

    Args:
        ranked: Doc ids, best first. May be shorter than ``k``.
        relevant: Non-empty collection of relevant doc ids (``n_relevant`` of them).
        k: Positive cutoff.

    Returns:
        ``|top_k ∩ relevant| / n_relevant`` in ``[0, 1]``. When ``k < n_relevant`` the
        maximum is ``k / n_relevant``.

    Raises:
        ValueError: If ``relevant`` is empty or ``k <= 0``.
        TypeError: If ``k`` is not an int, or ``ranked``/``relevant`` is a single string.
    """
    _check_ranked(ranked)
    rel = _check_relevant(relevant)
    return sum(_hits(ranked, rel, _check_k(k))) / len(rel)


def success_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 if at least one relevant doc is in the top ``k``, else 0.0 (TrackStar, Chang+ 2024).

    Args:
        ranked: Doc ids, best first. May be shorter than ``k``.
        relevant: Non-empty collection of relevant doc ids.
        k: Positive cutoff.

    Returns:
        ``1.0`` or ``0.0``.

    Raises:
        ValueError: If ``relevant`` is empty or ``k <= 0``.
        TypeError: If ``k`` is not an int, or ``ranked``/``relevant`` is a single string.
    """
    _check_ranked(ranked)
    rel = _check_relevant(relevant)
    return 1.0 if any(_hits(ranked, rel, _check_k(k))) else 0.0


def precision_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant docs in the top ``k``, divided by ``k``.

    Args:
        ranked: Doc ids, best first. When shorter than ``k`` the missing positions count
            as non-relevant, so the denominator is still ``k``.
        relevant: Non-empty collection of relevant doc ids.
        k: Positive cutoff.

    Returns:
        ``|top_k ∩ relevant| / k`` in ``[0, 1]``.

    Raises:
        ValueError: If ``relevant`` is empty or ``k <= 0``.
        TypeError: If ``k`` is not an int, or ``ranked``/``relevant`` is a single string.
    """
    _check_ranked(ranked)
    rel = _check_relevant(relevant)
    return sum(_hits(ranked, rel, _check_k(k))) / k


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalized DCG at ``k`` with binary gains (Järvelin & Kekäläinen 2002).

    ``DCG@k = sum_{i=1..k} rel_i / log2(i + 1)`` with ``rel_i`` in ``{0, 1}``, and the
    ideal ``IDCG@k = sum_{i=1..min(k, n_relevant)} 1 / log2(i + 1)``.

    Args:
        ranked: Doc ids, best first. May be shorter than ``k``.
        relevant: Non-empty collection of relevant doc ids.
        k: Positive cutoff.

    Returns:
        ``DCG@k / IDCG@k`` in ``[0, 1]``.

    Raises:
        ValueError: If ``relevant`` is empty or ``k <= 0``.
        TypeError: If ``k`` is not an int, or ``ranked``/``relevant`` is a single string.
    """
    _check_ranked(ranked)
    rel = _check_relevant(relevant)
    flags = _hits(ranked, rel, _check_k(k))
    dcg = sum(1.0 / math.log2(i + 1) for i, hit in enumerate(flags, start=1) if hit)
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(rel)) + 1))
    return dcg / idcg


def evaluate_ranking(
    ranked: Sequence[str], relevant: Collection[str], ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
    """Every metric of one ranking, keyed by name.

    Args:
        ranked: Doc ids, best first.
        relevant: Non-empty collection of relevant doc ids.
        ks: Positive cutoffs for recall, success and precision.

    Returns:
        ``{"mrr": RR, "recall@k": ..., "success@k": ..., "precision@k": ... for each k,
        "ndcg@10": ...}``. The ``mrr`` entry is this query's reciprocal rank; it becomes
        MRR once averaged over queries.

    Raises:
        ValueError: If ``relevant`` is empty, ``ks`` is empty or any ``k <= 0``.
    """
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty")
    out = {"mrr": reciprocal_rank(ranked, relevant)}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked, relevant, k)
        out[f"success@{k}"] = success_at_k(ranked, relevant, k)
        out[f"precision@{k}"] = precision_at_k(ranked, relevant, k)
    out[f"ndcg@{NDCG_K}"] = ndcg_at_k(ranked, relevant, NDCG_K)
    return out


def queries_without_relevant(qrels: Mapping[str, Collection[str]]) -> list[str]:
    """Query ids whose qrels list no relevant doc (these are skipped by :func:`evaluate_run`).

    Args:
        qrels: Query id -> relevant doc ids.

    Returns:
        Sorted query ids with an empty relevant set.
    """
    return sorted(qid for qid, rel in qrels.items() if not rel)


def _measures(ks: tuple[int, ...]) -> dict[str, object]:
    """Our metric names -> ir-measures measures (same definitions as the hand-written oracles above)."""
    from ir_measures import RR, P, R, Success, nDCG

    out: dict[str, object] = {"mrr": RR}
    for k in ks:
        out[f"recall@{k}"] = R @ k
        out[f"success@{k}"] = Success @ k
        out[f"precision@{k}"] = P @ k
    out[f"ndcg@{NDCG_K}"] = nDCG @ NDCG_K
    return out


def _scored(ranked: Sequence[str]) -> dict[str, float]:
    """A ranking as the ``{doc_id: score}`` dict trec_eval reads, keeping our order exactly.

    trec_eval re-sorts by score (ties by doc id), so scores are ``n - position``. A repeated doc
    id keeps its slot as a fresh non-relevant id, as :func:`_hits` counts it.
    """
    _check_ranked(ranked)
    n = len(ranked)
    out: dict[str, float] = {}
    for i, doc_id in enumerate(ranked):
        out[doc_id if doc_id not in out else f"\u241frepeat{i}"] = float(n - i)
    return out


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Collection[str]],
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """Per-query metrics of a whole run, for every judged query, computed by ``ir-measures``.

    The numbers are trec_eval's (through ``ir-measures`` and ``pytrec_eval``); the pure functions
    above are the hand-computed oracle they are tested against (``tests/test_metrics.py``).
    The evaluated queries are those of ``qrels`` with at least one relevant doc:

    * a judged query missing from ``run`` is scored as an empty ranking (all zeros);
    * a qrels entry with no relevant docs is skipped (count logged at INFO; see
      :func:`queries_without_relevant`);
    * a run query absent from ``qrels`` is ignored (count logged at INFO).

    Args:
        run: Query id -> doc ids, best first (e.g. from ``tracer.metrics.trec.run_doc_ids``).
        qrels: Query id -> relevant doc ids.
        ks: Positive cutoffs, as in :func:`evaluate_ranking`.

    Returns:
        Query id -> the :func:`evaluate_ranking` dict (same keys), ordered by sorted query id.

    Raises:
        ValueError: If ``ks`` is empty or any ``k <= 0``.
    """
    import ir_measures

    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty")
    for k in ks:
        _check_k(k)
    skipped = queries_without_relevant(qrels)
    if skipped:
        logger.info("skipping %d queries with no relevant docs", len(skipped))
    unjudged = [qid for qid in run if qid not in qrels]
    if unjudged:
        logger.info("ignoring %d run queries absent from qrels", len(unjudged))
    judged = sorted(qid for qid, rel in qrels.items() if rel)
    missing = [qid for qid in judged if qid not in run]
    if missing:
        logger.info("%d judged queries missing from the run score as empty rankings", len(missing))
    measures = _measures(ks)
    name_of = {m: name for name, m in measures.items()}
    out: dict[str, dict[str, float]] = {qid: {name: 0.0 for name in measures} for qid in judged}
    ir_qrels = {qid: {d: 1 for d in _check_relevant(qrels[qid])} for qid in judged}
    ir_run = {qid: _scored(run.get(qid, ())) for qid in judged}
    for m in ir_measures.iter_calc(list(measures.values()), ir_qrels, ir_run):
        out[m.query_id][name_of[m.measure]] = float(m.value)
    return out
