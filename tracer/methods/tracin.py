"""TracIn-CP (Pruthi et al. 2020) on projected gradients, raw and cosine (TrackStar) variants.

``tracin``: ``sum_c lr_c <g_c(q), g_c(z)>`` — the first-order loss change summed over
checkpoints. ``tracin_cos``: ``mean_c cos(g~_c(q), g~_c(z))`` with second-moment-corrected
gradients (Chang et al. 2024, TrackStar; FTRACE's best TracIn variant). In a K-FAC index
``g~_i = g_i / sqrt(Lambda_i + lambda)`` with ``Lambda_i = E_z[g_i^2]`` the per-coordinate
second moment in the eigenbasis (the same diagonal EK-FAC influence uses; ``lambda`` =
``damping`` x its mean); with random projections ``g~ = g / sqrt(v)`` from Adam's state when
the index has it, raw gradients otherwise. Unit normalisation removes the bias toward
examples with large gradients (outliers, long documents).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer.featurize.views import ADAM, RAW
from tracer.methods.base import GradientMethod, QueryFeatures


def tracin_space(vectors: list[np.ndarray], lrs: list[float]) -> np.ndarray:
    """``[sqrt(lr_c) v_c]_c`` concatenated: the space where ``<a, b>`` is the TracIn-CP sum over checkpoints.

    The one place this concatenation is written: the gradient FAISS index stores corpus rows in
    it, and queries are searched in it.
    """
    return np.concatenate([np.sqrt(lr) * np.asarray(v, dtype=np.float32) for v, lr in zip(vectors, lrs)], axis=-1)


def tracin_combine(dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """``sum_c <lr_c g_c(q), g_c(z)>`` from the per-checkpoint products (the lr is in the query vector)."""
    return np.sum([d[:, 0] for d, _ in dots.values()], axis=0)


def cosine_combine(dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """``mean_c <w_c g~_c(q)/|g~_c(q)|, g_c(z)> / |w_c g_c(z)|`` from products and squared products."""
    total = 0.0
    for d, sq in dots.values():
        assert sq is not None
        total = total + d[:, 0] / np.maximum(np.sqrt(np.maximum(sq[:, 0], 0.0)), 1e-30)
    return np.asarray(total, dtype=np.float64) / len(dots)


class TracIn(GradientMethod):
    name = "tracin"
    description = "sum over checkpoints of lr * <grad loss(query), grad loss(example)> (TracIn-CP)"

    def vectors(self, q: QueryFeatures, ci: int) -> np.ndarray:
        return (self.store.checkpoints[ci]["lr"] * q.grads[RAW][ci].astype(np.float64))[:, None]

    def combine(self, dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        return tracin_combine(dots)


DEFAULT_WHITEN_DAMPING = 0.1  # relative to the mean second moment; see the README's tracin_cos comparison


def whitening(moments: np.ndarray, damping: float) -> np.ndarray:
    """``1 / sqrt(Lambda + damping * mean(Lambda))`` per coordinate (float32)."""
    lam = np.asarray(moments, dtype=np.float64)
    return (1.0 / np.sqrt(lam + damping * max(float(lam.mean()), 1e-30))).astype(np.float32)


class TracInCosine(GradientMethod):
    name = "tracin_cos"
    description = "mean over checkpoints of cosine of second-moment-corrected gradients (TrackStar)"

    def __init__(self, store, damping: float = DEFAULT_WHITEN_DAMPING, **params):  # type: ignore[no-untyped-def]
        super().__init__(store, **params)
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        self.damping = damping
        self.whiten = store.has("fit") and store.has("moments")
        self._w: dict[int, np.ndarray] = {}
        self._norms: dict[int, np.ndarray] = {}  # ckpt -> |w x|^2 per corpus row (NaN: not yet computed)

    def prepare(self) -> None:
        if self.whiten:
            self._w = {ci: whitening(self.store.moments(RAW, ci), self.damping)
                       for ci in range(len(self.store.checkpoints))}

    def view(self) -> str:
        if self.whiten:
            return RAW
        return ADAM if ADAM in self.store.manifest.get("views", []) else RAW

    def _weights(self, ci: int, dim: int) -> np.ndarray:
        if self.whiten and ci not in self._w:
            self.prepare()
        return self._w[ci] if self.whiten else np.ones(dim, dtype=np.float32)

    def vectors(self, q: QueryFeatures, ci: int) -> np.ndarray:
        g = q.grads[self.view()][ci].astype(np.float64)
        w = self._weights(ci, len(g)).astype(np.float64)
        qv = g * w
        qn = qv / max(float(np.linalg.norm(qv)), 1e-30)
        return (qn * w)[:, None]  # <w x, qn> = <x, w qn>

    def row_squares(self, ci: int, rows: np.ndarray, mat: Any, sel: Any) -> np.ndarray:
        """``|w x|^2 = <x^2, w^2>`` per row: query-independent, so computed once per row and cached.

        The cache is one float64 per row and checkpoint (NaN until computed). Concurrent callers may
        compute the same row twice; they write the same value, so no lock is needed.
        """
        cache = self._norms.get(ci)
        if cache is None:
            cache = self._norms.setdefault(ci, np.full(self.store.n_documents, np.nan))
        rows = np.asarray(rows, dtype=np.int64)
        missing = np.nonzero(np.isnan(cache[rows]))[0]
        if len(missing):
            from tracer.methods.kernel import row_dots

            w = self._weights(ci, mat.shape[1]).astype(np.float64)
            local = missing + (sel.start or 0) if isinstance(sel, slice) else np.asarray(sel)[missing]
            _, sq, _ = row_dots(mat, local, None, (w * w)[:, None])
            cache[rows[missing]] = sq[:, 0]  # type: ignore[index]
        return cache[rows][:, None]

    checkpoint_reduce = "mean"

    def combine(self, dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        return cosine_combine(dots)
