"""Seeded Gaussian JL sketches shared by the build (which applies them) and the query path (which must match).

Pure functions of their arguments: the same seed gives the same matrix in every process, so
only the seed is stored in the manifest.
"""

from __future__ import annotations

import numpy as np
import torch


def influence_sketch(size: int, dim: int, block: int, seed: int) -> np.ndarray | None:
    """The seeded ``(size, dim)`` JL sketch of an influence block, or ``None`` when ``size <= dim``.

    Blocks wider than ``dim`` get their Fisher in a sketched space, so the per-block solve stays
    ``dim x dim`` whatever the projection width.
    """
    if size <= dim:
        return None
    g = torch.Generator().manual_seed(20_011 + 7919 * block + seed)
    return (torch.randn(size, dim, generator=g, dtype=torch.float64) / dim**0.5).numpy()


def trak_sketch(dim: int, trak_dim: int, seed: int) -> np.ndarray:
    """The seeded ``(dim, trak_dim)`` Gaussian JL sketch TRAK applies to the stored features."""
    g = torch.Generator().manual_seed(10_007 + seed)
    return (torch.randn(dim, trak_dim, generator=g) / trak_dim**0.5).numpy()
