"""Baselines: BM25 (Robertson), embedding cosine, and seeded random scores (chance)."""

from __future__ import annotations

import hashlib

import numpy as np

from tracer.methods.base import Method, QueryFeatures
from tracer.methods.kernel import row_dots


def bm25_scores(store: object, q: QueryFeatures) -> np.ndarray:
    """BM25 scores of every document for the query text, computed once per query (cached on it)."""
    if "bm25" not in q.cache:
        q.cache["bm25"] = store.bm25().scores(q.text)  # type: ignore[attr-defined]
    return q.cache["bm25"]


class BM25(Method):
    name = "bm25"
    requires = ("bm25",)
    description = "BM25 of the example for the query text prompt + target (bm25s)"

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        return bm25_scores(self.store, q)[rows].astype(np.float64)


class Embedding(Method):
    name = "embedding"
    requires = ("embeddings",)
    needs = ("embedding",)
    description = "cosine of mean-pooled final hidden states (final checkpoint)"

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        assert q.embedding is not None  # guaranteed by the pipeline (needs = embedding)
        return row_dots(self.store.embeddings(), rows, np.asarray(q.embedding)[:, None])[0][:, 0]


class Random(Method):
    name = "random"
    description = "seeded uniform scores: chance level"

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(q.text.encode()).digest()[:8], "little")
        seed ^= int(self.params.get("seed", 0))
        # A per-(query, row) hash, so a row's score does not depend on which other rows are scored.
        u = (rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        u ^= u >> np.uint64(31)
        u *= np.uint64(0xBF58476D1CE4E5B9)
        u ^= u >> np.uint64(27)
        return (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)
