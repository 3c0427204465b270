"""Influence functions (Koh & Liang 2017): EK-FAC in the stored basis, or a block-diagonal projected Fisher.

**K-FAC index** (``projection="kfac"``): features are gradients rotated into the K-FAC
eigenbasis, where EK-FAC's Gauss-Newton approximation is diagonal (Grosse et al. 2023). With
``Lambda_i = E_z[g_i(z)^2]`` (the eigenvalue-corrected diagonal, fitted on the corpus at the
final checkpoint), ``score(q, z) = sum_i g_i(q) g_i(z) / (Lambda_i + lambda_b)``, with
``lambda_b = damping * mean of Lambda over block b``: a per-coordinate rescale of the query.

**Random projections**:
``score(q, z) = g(q)^T (F + lambda I)^{-1} g(z)`` at the final checkpoint, where ``F`` is
the empirical Fisher of the projected gradients over the corpus, block-diagonal per
parameter group (as EK-FAC, Grosse et al. 2023, but exact within each projected block).
``lambda_b = damping * mean eigenvalue of F_b`` per block. Blocks wider than the index's
``influence_block_dim`` are JL-sketched (``s = g S``) before the Fisher is formed, and the
query becomes ``S (S^T F S + lambda I)^{-1} S^T g(q)``. Only the query is transformed, so
corpus features are used as stored and the score stays an inner product.
"""

from __future__ import annotations

import numpy as np

from tracer.featurize.views import RAW
from tracer.featurize.sketch import influence_sketch
from tracer.methods.base import GradientMethod, QueryFeatures, damped_inverse
from tracer.methods.tracin import tracin_combine

# Relative to the mean eigenvalue; chosen on queries outside the learned slice (eval/tune_damping.py).
DEFAULT_DAMPING = 0.001
# Chosen on half A of a seeded split of the learned slice over 1e-6..1e4 (eval/tune_damping.py): MRR is flat
# below 0.03 (best 0.01) and falls above 0.1; tiny-preset LDS rises as damping falls but by < 0.01 below 0.01.
DEFAULT_EKFAC_DAMPING = 0.01
DEFAULT_EKFAC_CHECKPOINTS = "all"  # mean over checkpoints (an ensemble, as TRAK here); "last" = classic


def ekfac_denominator(moments: np.ndarray, bounds: np.ndarray, damping: float) -> np.ndarray:
    """``Lambda + lambda_b`` per coordinate, ``lambda_b = damping * mean(Lambda[block b])`` (float64).

    Raises:
        ValueError: If ``damping <= 0``.
    """
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    lam = np.asarray(moments, dtype=np.float64)
    widths = np.diff(bounds)
    per_block = np.add.reduceat(lam, bounds[:-1]) / np.maximum(widths, 1)
    damp = damping * np.maximum(np.repeat(per_block, widths), 1e-30)
    return lam + damp


def ekfac_query(g: np.ndarray, moments: np.ndarray, bounds: np.ndarray, damping: float) -> np.ndarray:
    """``g / (Lambda + lambda_b)``: the query rescaled by the damped EK-FAC diagonal (float64)."""
    return np.asarray(g, dtype=np.float64) / ekfac_denominator(moments, bounds, damping)


class Influence(GradientMethod):
    name = "influence"
    requires = ("gradients", "influence")
    exact = True  # with small damping the transformed query is large and the products cancel
    description = ("g(q)^T (H + lambda)^-1 g(z), H = EK-FAC diagonal in the K-FAC eigenbasis (or a block-diagonal "
                   "projected Fisher for random projections), final checkpoint")

    def __init__(self, store, damping: float | None = None, checkpoints: str | None = None,
                 **params):  # type: ignore[no-untyped-def]
        super().__init__(store, **params)
        self.ekfac = store.stages.get("influence", {}).get("kind") == "ekfac"
        checkpoints = checkpoints or (DEFAULT_EKFAC_CHECKPOINTS if self.ekfac else "last")
        if checkpoints not in ("last", "all") or (checkpoints == "all" and not self.ekfac):
            raise ValueError(f"influence checkpoints must be 'last' (or 'all' in a kfac index), got {checkpoints!r}")
        self.checkpoints = checkpoints
        if damping is None:
            damping = DEFAULT_EKFAC_DAMPING if self.ekfac else DEFAULT_DAMPING
        damped_inverse(np.eye(1), damping)  # validates damping now, not at the first query
        self.damping = damping
        self._inv: list[np.ndarray] | None = None
        self._den: dict[int, np.ndarray] = {}
        self._sketches: dict[tuple[str, int], np.ndarray | None] = {}

    def checkpoint_indices(self) -> list[int]:
        n = len(self.store.checkpoints)
        return list(range(n)) if self.checkpoints == "all" else [n - 1]

    def prepare(self) -> None:
        if self.ekfac and not self._den:
            from tracer.index.quant import block_bounds

            bounds = block_bounds(self.store.layout)
            self._den = {ci: ekfac_denominator(self.store.moments(RAW, ci), bounds, self.damping)
                         for ci in self.checkpoint_indices()}
        if not self.ekfac and self._inv is None:
            self._inv = [damped_inverse(f, self.damping) for f in self.store.fishers()]
            for j, b in enumerate(self.store.layout):
                self._sketch(j, b["size"])

    def transformed_query(self, q: QueryFeatures, ci: int | None = None) -> np.ndarray:
        ci = len(self.store.checkpoints) - 1 if ci is None else ci
        key = f"influence:{self.damping}:{ci}"
        if key not in q.cache and self.ekfac:
            if ci not in self._den:
                self.prepare()
            q.cache[key] = np.asarray(q.grads[RAW][ci], dtype=np.float64) / self._den[ci]
        if key not in q.cache:
            if self._inv is None:
                self._inv = [damped_inverse(f, self.damping) for f in self.store.fishers()]
            g = q.grads[RAW][-1].astype(np.float64)
            out = np.empty_like(g)
            for j, (b, inv) in enumerate(zip(self.store.layout, self._inv)):
                sl = slice(b["offset"], b["offset"] + b["size"])
                sk = self._sketch(j, b["size"])
                # sketched block: S (S^T F S + lambda I)^{-1} S^T g, still an inner product with g(z)
                out[sl] = inv @ g[sl] if sk is None else sk @ (inv @ (sk.T @ g[sl]))
            q.cache[key] = out
        return q.cache[key]

    def _sketch(self, block: int, size: int) -> np.ndarray | None:
        info = self.store.stages["influence"]
        if "block_dim" not in info:
            return None
        key = ("sketch", block)
        if key not in self._sketches:
            self._sketches[key] = influence_sketch(size, info["block_dim"], block, info["seed"])
        return self._sketches[key]

    def vectors(self, q: QueryFeatures, ci: int) -> np.ndarray:
        return (self.transformed_query(q, ci) / len(self.checkpoint_indices()))[:, None]

    def combine(self, dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        return tracin_combine(dots)  # the mean over checkpoints is in the vectors
