"""The ``Method`` interface: exact scores of a query against given corpus rows.

Every method scores *higher = more supportive* (the training example pushed the model
toward the query's target). Scores are computed for explicit rows, so the same code
reranks a candidate set and scans the full corpus blockwise.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tracer.index.store import IndexStore


@dataclass
class QueryFeatures:
    """Everything the methods need to know about one query.

    Attributes:
        text: ``prompt + target`` (for BM25).
        grads: View -> list over checkpoints of ``(dim,)`` float32 projected gradients.
        losses: Per checkpoint query loss (summed over target tokens).
        embedding: ``(d_model,)`` float32 unit-norm embedding (or ``None``).
        cache: Per-method transformed queries (filled lazily by methods).
    """

    text: str
    grads: dict[str, list[np.ndarray]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    embedding: np.ndarray | None = None
    cache: dict[str, Any] = field(default_factory=dict)


def damped_inverse(mat: np.ndarray, damping: float) -> np.ndarray:
    """``(M + lambda I)^{-1}`` with ``lambda = damping * mean eigenvalue of M`` (= trace / k), float64.

    Raises:
        ValueError: If ``damping <= 0``.
    """
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    m = np.asarray(mat, dtype=np.float64)
    lam = damping * max(np.trace(m) / len(m), 1e-30)
    return np.linalg.inv(m + lam * np.eye(len(m)))


class Method(abc.ABC):
    """An attribution or retrieval score over corpus rows."""

    name: ClassVar[str]
    #: index stages the method needs
    requires: ClassVar[tuple[str, ...]] = ()
    #: query feature kinds the method needs: "grads", "embedding"
    needs: ClassVar[tuple[str, ...]] = ()
    #: one line for docs and ``tracer info``: what the score means
    description: ClassVar[str] = ""

    def __init__(self, store: IndexStore, **params: Any) -> None:
        self.store = store
        self.params = params

    def check_ready(self) -> None:
        """Raise ``IndexNotReadyError`` if the index lacks what this method needs."""
        for stage in self.requires:
            self.store.require(stage, f"method {self.name!r}")

    def prepare(self) -> None:
        """Load the per-index constants the method needs (called once, before any concurrent use)."""

    def prepare_queries(self, qs: list[QueryFeatures]) -> None:
        """Transform a batch of queries at once (cached on each; optional, for batch GEMMs)."""

    @abc.abstractmethod
    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        """Scores of ``rows``.

        Args:
            q: Query features.
            rows: ``(m,)`` int64 corpus rows.

        Returns:
            ``(m,)`` float64 scores, higher = more supportive.
        """


class GradientMethod(Method):
    """A score made of inner products of stored gradient rows with per-checkpoint query vectors.

    Subclasses give the query vectors (:meth:`vectors`, optionally per-row constants
    :meth:`row_squares`) and a pure :meth:`combine` of the products; the kernel
    (:func:`tracer.methods.kernel.score_together`) reads the rows once for every such method.
    """

    requires: ClassVar[tuple[str, ...]] = ("gradients",)
    needs: ClassVar[tuple[str, ...]] = ("grads",)
    #: multiply in float64 (scores that cancel heavily); float32 GEMMs otherwise
    exact: ClassVar[bool] = False
    #: how :meth:`combine` joins checkpoints: ``sum`` or ``mean`` (per-checkpoint stability puts each
    #: checkpoint's score on the combined score's scale, so that the score is their mean)
    checkpoint_reduce: ClassVar[str] = "sum"

    def view(self) -> str:
        """The stored gradient view the method reads."""
        from tracer.featurize.views import RAW

        return RAW

    def checkpoint_indices(self) -> list[int]:
        return list(range(len(self.store.checkpoints)))

    @abc.abstractmethod
    def vectors(self, q: QueryFeatures, ci: int) -> np.ndarray:
        """``(D, k)`` query vectors for checkpoint ``ci``."""

    def row_squares(self, ci: int, rows: np.ndarray, mat: Any, sel: Any) -> np.ndarray | None:
        """Query-independent ``(m, j)`` per-row constants of checkpoint ``ci`` (``None``: not needed).

        ``rows`` are the corpus rows, ``mat[sel]`` the same rows as stored (possibly a prefetched copy).
        """
        return None

    @abc.abstractmethod
    def combine(self, dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """Scores from ``{ci: ((m, k) products, (m, j) squared products or None)}``."""

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        from tracer.methods.kernel import score_together

        return score_together(self.store, q, rows, [self])[self.name]
