"""TracIn-CP (Pruthi et al. 2020) on projected gradients, raw and cosine (TrackStar) variants.

``tracin``: ``sum_c lr_c <g_c(q), g_c(z)>`` — the first-order loss change summed over
checkpoints. ``tracin_cos``: ``mean_c cos(g~_c(q), g~_c(z))`` with Adam-corrected
gradients ``g~ = g / sqrt(v)`` when the index has them (Chang et al. 2024, TrackStar;
FTRACE's best TracIn variant), raw gradients otherwise. Unit normalisation removes
the bias toward examples with large gradients (outliers, long documents).
"""

from __future__ import annotations

import numpy as np

from tracer.featurize.views import ADAM, RAW
from tracer.methods.base import Method, QueryFeatures


def _gather(mat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a memmap as float32 (sorted access is faster on memmaps)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), mat.shape[1]), dtype=np.float32)
    out[order] = mat[rows[order]]
    return out


class TracIn(Method):
    name = "tracin"
    requires = ("gradients",)
    needs = ("grads",)
    description = "sum over checkpoints of lr * <grad loss(query), grad loss(example)> (TracIn-CP)"

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        total = np.zeros(len(rows))
        for ci, ck in enumerate(self.store.checkpoints):
            total += ck["lr"] * (_gather(self.store.features(RAW, ci), rows) @ q.grads[RAW][ci]).astype(np.float64)
        return total


class TracInCosine(Method):
    name = "tracin_cos"
    requires = ("gradients",)
    needs = ("grads",)
    description = "mean over checkpoints of cosine of optimizer-corrected gradients (TrackStar)"

    def view(self) -> str:
        return ADAM if ADAM in self.store.manifest.get("views", []) else RAW

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        view = self.view()
        total = np.zeros(len(rows))
        n_ckpt = len(self.store.checkpoints)
        for ci in range(n_ckpt):
            x = _gather(self.store.features(view, ci), rows).astype(np.float64)
            qv = q.grads[view][ci].astype(np.float64)
            qn = qv / max(np.linalg.norm(qv), 1e-30)
            total += (x @ qn) / np.maximum(np.linalg.norm(x, axis=1), 1e-30)
        return total / n_ckpt
