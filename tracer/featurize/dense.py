"""A dense random projection of the flattened per-example gradient (TRAK-style), for comparison.

``phi(z) = R^T vec(grad L(z))`` with ``R`` a seeded Gaussian ``(n_params, k)`` matrix of
variance ``1/k`` (Park et al. 2023). The full per-example gradient of the tracked
parameters is materialised (via the identity-projection featurizer, one batched pass),
so this path costs memory ``batch x n_params`` and is meant for small models and for
measuring how much the Kronecker-factored path loses or gains against it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.gradients import GradientFeaturizer
from tracer.featurize.layout import build_layout, feature_dim
from tracer.featurize.views import raw_view
from tracer.model.tokenization import Encoded, pad_batch

ROWS_PER_CHUNK = 65536  # rows of R generated at once (memory: ROWS_PER_CHUNK x k floats)


class DenseProjector:
    """TRAK-style dense projection of exact per-example gradients of the tracked parameters.

    Args:
        model: A causal LM.
        cfg: Which parameters (``layers``, biases, norms) and the loss; the projection fields are ignored.
        k: Projected width.
        seed: Seed of ``R``.
        max_cached_bytes: Keep ``R`` in memory when it fits (else regenerate per batch).
    """

    def __init__(self, model: torch.nn.Module, cfg: FeaturizeConfig, k: int, seed: int = 0,
                 max_cached_bytes: int = 1 << 30) -> None:
        exact = FeaturizeConfig.exact(layers=cfg.layers, include_biases=cfg.include_biases,
                                      include_norms=cfg.include_norms, loss_reduction=cfg.loss_reduction)
        layout = build_layout(model, exact.layers, 0, 0, exact.include_norms, exact.include_biases)
        self._fz = GradientFeaturizer(model, layout, {"raw": raw_view(layout, exact)}, exact.loss_reduction)
        self.n_params = feature_dim(layout)
        self.k, self.seed = k, seed
        self._cache: list[torch.Tensor] | None = [] if self.n_params * k * 4 <= max_cached_bytes else None

    def _chunk(self, i: int) -> torch.Tensor:
        if self._cache is not None and i < len(self._cache):
            return self._cache[i]
        lo = i * ROWS_PER_CHUNK
        rows = min(ROWS_PER_CHUNK, self.n_params - lo)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        r = torch.randn(rows, self.k, generator=g) / self.k**0.5
        if self._cache is not None:
            self._cache.append(r)
        return r

    def project(self, examples: Sequence[Encoded], pad_id: int, batch_size: int = 16) -> np.ndarray:
        """``(n, k)`` float32 projected gradients."""
        out = []
        for s in range(0, len(examples), batch_size):
            full = self._fz.featurize(pad_batch(examples[s:s + batch_size], pad_id))[0]["raw"]
            acc = torch.zeros(full.shape[0], self.k)
            for i, lo in enumerate(range(0, self.n_params, ROWS_PER_CHUNK)):
                acc += full[:, lo:lo + ROWS_PER_CHUNK] @ self._chunk(i)
            out.append(acc.numpy())
        return np.concatenate(out)
