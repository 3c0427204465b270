"""TRAK (Park et al. 2023) on the stored projected gradients, ensembled over checkpoints.

Per checkpoint ``c``: ``Phi_c = G_c S`` (a seeded JL sketch of the stored features),
``tau_c(q, z) = phi_c(q)^T (Phi_c^T Phi_c + lambda I)^{-1} phi_c(z) * Q_c(z)`` with
``Q_c(z) = 1 - p_c(z)``, ``p_c(z) = exp(-loss_c(z))`` the model's probability of the
example (TRAK's one-minus-probability reweighting for a cross-entropy loss). The
checkpoints act as TRAK's ensemble of models: ``tau = mean_c tau_c``. ``lambda`` is
``damping`` times the mean eigenvalue of the Gram matrix.
"""

from __future__ import annotations

import numpy as np

from tracer.featurize.views import RAW
from tracer.featurize.sketch import trak_sketch
from tracer.methods.base import Method, QueryFeatures, damped_inverse
from tracer.methods.kernel import row_dots

# Relative to the mean eigenvalue; chosen on queries outside the learned slice (eval/tune_damping.py).
DEFAULT_DAMPING = 0.1


class Trak(Method):
    name = "trak"
    requires = ("gradients", "trak")
    needs = ("grads",)
    description = "TRAK: phi(q)^T (Phi^T Phi + lambda I)^-1 phi(z) * (1 - p(z)), mean over checkpoints"

    def __init__(self, store, damping: float = DEFAULT_DAMPING, **params):  # type: ignore[no-untyped-def]
        super().__init__(store, **params)
        damped_inverse(np.eye(1), damping)  # validates damping now, not at the first query
        self.damping = damping
        self._sketch: np.ndarray | None = None
        self._inv: dict[int, np.ndarray] = {}

    def prepare(self) -> None:
        width = sum(b["size"] for b in self.store.layout)
        for ci in range(len(self.store.checkpoints)):
            feats, xtx = self.store.trak_features(ci)
            if self._sketch is None:
                self._sketch = trak_sketch(width, feats.shape[1], self.store.manifest["config"]["seed"])
            if ci not in self._inv:
                self._inv[ci] = damped_inverse(xtx, self.damping)

    def prepare_queries(self, qs: list[QueryFeatures]) -> None:
        """All queries' ``(Phi^T Phi + lambda)^-1 S^T g`` per checkpoint in two GEMMs (one read of ``S``)."""
        if self._sketch is None:
            self.prepare()
        for ci in range(len(self.store.checkpoints)):
            todo = [q for q in qs if f"trak:{self.damping}:{ci}" not in q.cache]
            if not todo:
                continue
            g = np.stack([q.grads[RAW][ci] for q in todo]).astype(np.float32)
            phi = (g @ self._sketch).astype(np.float64)
            for q, t in zip(todo, phi @ self._inv[ci].T):
                q.cache[f"trak:{self.damping}:{ci}"] = t

    def _query(self, q: QueryFeatures, ci: int) -> np.ndarray:
        key = f"trak:{self.damping}:{ci}"
        if key not in q.cache:
            feats, xtx = self.store.trak_features(ci)
            if self._sketch is None:
                seed = self.store.manifest["config"]["seed"]
                self._sketch = trak_sketch(len(q.grads[RAW][ci]), feats.shape[1], seed)
            if ci not in self._inv:
                self._inv[ci] = damped_inverse(xtx, self.damping)
            phi_q = q.grads[RAW][ci].astype(np.float32) @ self._sketch
            q.cache[key] = self._inv[ci] @ phi_q.astype(np.float64)
        return q.cache[key]

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        n_ckpt = len(self.store.checkpoints)
        total = np.zeros(len(rows))
        for ci in range(n_ckpt):
            feats, _ = self.store.trak_features(ci)
            qt = self._query(q, ci)
            one_minus_p = 1.0 - np.exp(-np.asarray(self.store.losses(ci))[rows].astype(np.float64))
            dots, _, _ = row_dots(feats, rows, qt[:, None])
            total += dots[:, 0] * one_minus_p
        return total / n_ckpt
