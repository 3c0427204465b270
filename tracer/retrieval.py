"""Two-stage retrieval: candidate rows from a source, exact scores from a method, a tie-aware top-k.

Candidate sources: ``bm25`` (lexical top-n), ``embedding`` (FAISS cosine top-n),
``gradient`` (FAISS inner product in TracIn space, top-n), ``union`` of the three, or
``full`` (every row). Full-corpus scoring is blockwise with a running top-k, so no
``n_docs x n_queries`` matrix ever exists. Ties break by ``(-score, row)``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tracer.errors import InvalidRequestError
from tracer.featurize.views import RAW
from tracer.index.store import IndexStore
from tracer.methods.base import QueryFeatures
from tracer.methods.registry import CANDIDATE_SOURCES

BLOCK = 8192  # rows scored per block in full-corpus scans
SOURCE_STAGE = {"bm25": "bm25", "embedding": "embeddings", "gradient": "gradient_faiss"}  # source -> index stage


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, rows)``, ordered by ``(-score, row)``; NaN scores rank last."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    if len(s) > k:
        # argpartition, then keep every row tied with the k-th score so the tie-break is exact
        kth = np.partition(-s, k - 1)[k - 1]
        keep = np.nonzero(-s <= kth)[0]
        s, rows = s[keep], rows[keep]
    order = np.lexsort((rows, -s))[:k]
    return s[order], rows[order]


def scan_full(score_fn: Callable[[np.ndarray], np.ndarray], n_rows: int, k: int,
              block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Score every row blockwise keeping a running top-``k``."""
    best_s = np.empty(0)
    best_r = np.empty(0, dtype=np.int64)
    for lo in range(0, n_rows, block):
        rows = np.arange(lo, min(n_rows, lo + block), dtype=np.int64)
        s = score_fn(rows)
        best_s, best_r = top_k(np.concatenate([best_s, s]), np.concatenate([best_r, rows]), k)
    return best_s, best_r


def tracin_query_vector(store: IndexStore, q: QueryFeatures) -> np.ndarray:
    """The query in the gradient FAISS space ``[sqrt(lr_c) g_c(q)[coords_c]]`` (<q, z> ~ TracIn)."""
    coords = store.gradient_coords()
    return np.concatenate([np.sqrt(c["lr"]) * q.grads[RAW][i][coords[i]] for i, c in enumerate(store.checkpoints)])


def candidate_rows(store: IndexStore, q: QueryFeatures, source: str, n: int) -> np.ndarray:
    """Candidate rows for a query, sorted ascending (their order carries no meaning).

    Raises:
        InvalidRequestError: Unknown source or ``n < 1``.
        IndexNotReadyError: The source's index was not built.
    """
    from tracer.index.dense import search

    if n < 1:
        raise InvalidRequestError(f"num_candidates must be >= 1, got {n}")
    if source == "full":
        return np.arange(store.n_documents, dtype=np.int64)
    if source == "bm25":
        from tracer.methods.baselines import BM25

        s = BM25(store).score(q, np.arange(store.n_documents))
        return np.sort(top_k(s, np.arange(store.n_documents), n)[1])
    if source == "embedding":
        store.require("embeddings", "candidates='embedding'")
        assert q.embedding is not None  # computed by Tracer.features whenever the index has embeddings
        _, rows = search(store.faiss("embedding"), q.embedding[None], min(n, store.n_documents))
        return np.sort(rows[0][rows[0] >= 0])
    if source == "gradient":
        store.require("gradient_faiss", "candidates='gradient'")
        _, rows = search(store.faiss("gradient"), tracin_query_vector(store, q)[None], min(n, store.n_documents))
        return np.sort(rows[0][rows[0] >= 0])
    if source == "union":
        parts = [candidate_rows(store, q, s, n) for s in SOURCE_STAGE if store.has(SOURCE_STAGE[s])]
        return np.unique(np.concatenate(parts)) if parts else np.arange(0, dtype=np.int64)
    raise InvalidRequestError(f"unknown candidates source {source!r}; expected one of {', '.join(CANDIDATE_SOURCES)}")


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """RRF (Cormack et al. 2009): ``sum_r 1 / (k + rank_r(row))`` over rankings of rows.

    Returns:
        ``(scores, rows)`` over the union of rows, ordered by ``(-score, row)``.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (k + rank)
    rows = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    return top_k(scores, rows, len(rows))
