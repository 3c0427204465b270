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

import numpy as np

from tracer.featurize.views import ADAM, RAW
from tracer.methods.base import Method, QueryFeatures


def _gather(mat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a memmap as float32 (read in sorted order; torch converts fp16 ~2x faster than numpy)."""
    import torch

    order = np.argsort(rows, kind="stable")
    block = np.ascontiguousarray(mat[rows[order]])
    out = torch.from_numpy(block).float().numpy() if block.dtype == np.float16 else block.astype(np.float32)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return out[inverse] if not np.array_equal(order, np.arange(len(order))) else out


def gathered(store: object, q: QueryFeatures, view: str, ckpt: int, rows: np.ndarray) -> np.ndarray:
    """Rows of a feature matrix as float32, cached on the query so methods sharing rows read them once.

    The cache lives as long as the ``QueryFeatures``; long loops (``evaluation``) clear it per query.
    """
    key = ("rows", view, ckpt, len(rows), hash(rows.tobytes()))
    if key not in q.cache:
        q.cache[key] = _gather(store.features(view, ckpt), rows)  # type: ignore[attr-defined]
    return q.cache[key]


class TracIn(Method):
    name = "tracin"
    requires = ("gradients",)
    needs = ("grads",)
    description = "sum over checkpoints of lr * <grad loss(query), grad loss(example)> (TracIn-CP)"

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        total = np.zeros(len(rows))
        for ci, ck in enumerate(self.store.checkpoints):
            total += ck["lr"] * (gathered(self.store, q, RAW, ci, rows) @ q.grads[RAW][ci]).astype(np.float64)
        return total


DEFAULT_WHITEN_DAMPING = 0.1  # relative to the mean second moment; see the README's tracin_cos comparison


def whitening(moments: np.ndarray, damping: float) -> np.ndarray:
    """``1 / sqrt(Lambda + damping * mean(Lambda))`` per coordinate (float32)."""
    lam = np.asarray(moments, dtype=np.float64)
    return (1.0 / np.sqrt(lam + damping * max(float(lam.mean()), 1e-30))).astype(np.float32)


class TracInCosine(Method):
    name = "tracin_cos"
    requires = ("gradients",)
    needs = ("grads",)
    description = "mean over checkpoints of cosine of second-moment-corrected gradients (TrackStar)"

    def __init__(self, store, damping: float = DEFAULT_WHITEN_DAMPING, **params):  # type: ignore[no-untyped-def]
        super().__init__(store, **params)
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        self.damping = damping
        self.whiten = store.has("fit") and store.has("moments")
        self._w: dict[int, np.ndarray] = {}

    def view(self) -> str:
        return ADAM if ADAM in self.store.manifest.get("views", []) else RAW

    def _weights(self, ci: int) -> np.ndarray:
        if ci not in self._w:
            self._w[ci] = whitening(self.store.moments(RAW, ci), self.damping)
        return self._w[ci]

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        view = RAW if self.whiten else self.view()
        total = np.zeros(len(rows))
        n_ckpt = len(self.store.checkpoints)
        for ci in range(n_ckpt):
            x = gathered(self.store, q, view, ci, rows)
            qv = q.grads[view][ci]
            if self.whiten:
                w = self._weights(ci)
                x, qv = x * w, qv * w
            qn = qv / max(float(np.linalg.norm(qv.astype(np.float64))), 1e-30)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            total += (x @ qn.astype(np.float32)).astype(np.float64) / np.maximum(norms, 1e-30)
        return total / n_ckpt
