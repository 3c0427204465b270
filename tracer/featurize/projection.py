"""Seeded random projections for the Kronecker-factored (LoGra) gradient features.

``P_in`` (``k_in x d_in``) and ``P_out`` (``k_out x d_out``) have i.i.d. entries of
variance ``1/k`` (Gaussian or Rademacher), so ``(P_out ⊗ P_in)`` preserves inner
products in expectation: ``E[<P_out G P_in^T, P_out H P_in^T>] = <G, H>``. Each matrix
is generated from ``(seed, module name, side)`` alone, so any process rebuilds the same
matrices without storing them.
"""

from __future__ import annotations

import hashlib

import torch


def _seed_for(seed: int, module: str, side: str) -> int:
    digest = hashlib.sha256(f"{seed}:{module}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def projection_matrix(seed: int, module: str, side: str, k: int, d: int, kind: str = "gaussian") -> torch.Tensor:
    """A ``(k, d)`` float32 projection (identity when ``k == d`` and ``kind == "identity"``).

    Args:
        seed: Projection seed (part of the feature's identity).
        module: Module name (each layer gets its own matrix).
        side: ``"in"`` or ``"out"``.
        k: Projected width.
        d: Original width.
        kind: ``gaussian``, ``rademacher``, ``orthogonal`` or ``identity``.

    Raises:
        ValueError: For an unknown kind, or identity with ``k != d``.
    """
    if kind == "identity":
        if k != d:
            raise ValueError(f"identity projection needs k == d, got k={k}, d={d}")
        return torch.eye(d)
    g = torch.Generator().manual_seed(_seed_for(seed, module, side))
    if kind == "gaussian":
        return torch.randn(k, d, generator=g) / k**0.5
    if kind == "rademacher":
        return (torch.randint(0, 2, (k, d), generator=g).float() * 2 - 1) / k**0.5
    if kind == "orthogonal":
        # k orthonormal rows (QR of a Gaussian), scaled so E[P^T P] = I; exact when k == d and
        # lower variance than i.i.d. entries when k is a sizeable fraction of d.
        q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        return (q[:k] * (d / k) ** 0.5).float()
    raise ValueError(f"unknown projection kind {kind!r} (expected gaussian, rademacher, orthogonal or identity)")
