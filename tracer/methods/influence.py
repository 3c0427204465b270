"""Influence functions (Koh & Liang 2017) with a block-diagonal projected Gauss-Newton/Fisher.

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
from tracer.index.stages import influence_sketch
from tracer.methods.base import Method, QueryFeatures, damped_inverse
from tracer.methods.tracin import gathered

# Relative to the mean eigenvalue; chosen on queries outside the learned slice (eval/README).
DEFAULT_DAMPING = 0.001


class Influence(Method):
    name = "influence"
    requires = ("gradients", "influence")
    needs = ("grads",)
    description = "g(q)^T (F + lambda I)^-1 g(z), F = block-diagonal projected Fisher (final checkpoint)"

    def __init__(self, store, damping: float = DEFAULT_DAMPING, **params):  # type: ignore[no-untyped-def]
        super().__init__(store, **params)
        damped_inverse(np.eye(1), damping)  # validates damping now, not at the first query
        self.damping = damping
        self._inv: list[np.ndarray] | None = None
        self._sketches: dict[tuple[str, int], np.ndarray | None] = {}

    def transformed_query(self, q: QueryFeatures) -> np.ndarray:
        key = f"influence:{self.damping}"
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

    def score(self, q: QueryFeatures, rows: np.ndarray) -> np.ndarray:
        last = len(self.store.checkpoints) - 1
        x = gathered(self.store, q, RAW, last, rows)
        # float64: with small damping the transformed query is large and the dot product cancels
        return x.astype(np.float64) @ self.transformed_query(q)
