"""The scoring kernel: inner products of stored gradient rows with query vectors, dequantised on the fly.

Every gradient method (``tracin``, ``tracin_cos``, ``influence``) scores a row ``x`` through a
few inner products ``<x_c, v>`` per checkpoint ``c`` (and ``tracin_cos`` also through
``<x_c^2, u>`` for its whitened norm). :func:`row_dots` computes them for any number of query
vectors in one pass over the rows: rows are read (gathered for a candidate set, or a contiguous
range in a full scan) in chunks that stay in cache, int8 rows are dequantised inside the
chunk (the per-row, per-block scales multiply the chunk; the per-coordinate prescale is folded
into the query vectors, so it costs nothing per row), float16 rows are widened in the chunk,
and one float32 GEMM per chunk gives every product. So the methods of one query share one read
of the candidate rows, and no float32 copy of the whole candidate matrix is ever made.

Precision: products are float32 GEMMs over dequantised rows. ``tests/test_methods.py`` checks
them against float64 brute force on the stored rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tracer.index.quant import Int8Rows

CHUNK = 256  # rows per kernel step: 256 x 8k float32 = 8 MB, cache-sized


def _selection(rows: np.ndarray | slice, n: int) -> tuple[np.ndarray | slice, np.ndarray | None]:
    """Rows in ascending order (reads go forward through the file) and the inverse permutation."""
    if isinstance(rows, slice):
        return rows, None
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1)):
        return slice(int(rows[0]), int(rows[-1]) + 1), None  # a contiguous block: read it as a range
    if len(rows) < 2 or bool(np.all(rows[1:] >= rows[:-1])):
        return rows, None
    order = np.argsort(rows, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return rows[order], inverse


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when it is a writable contiguous array (a fresh gather), else a copy."""
    return torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))


def _chunk(mat: Any, sel: np.ndarray | slice, widths: torch.Tensor | None) -> torch.Tensor:
    """Rows ``sel`` of ``mat`` as a float32 tensor (int8 scaled per block; prescale left to the vectors)."""
    if isinstance(mat, Int8Rows):
        assert widths is not None
        q = _tensor(mat.q[sel]).to(torch.float32)
        s = _tensor(mat.scales[sel]).to(torch.float32)
        return q.mul_(torch.repeat_interleave(s, widths, dim=1))
    return _tensor(mat[sel]).to(torch.float32)


def n_rows(rows: np.ndarray | slice, n: int) -> int:
    return len(range(*rows.indices(n))) if isinstance(rows, slice) else len(rows)


def row_dots(mat: Any, rows: np.ndarray | slice, vectors: np.ndarray | None,
             square_vectors: np.ndarray | None = None,
             exact_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``X[rows] @ V``, ``(X[rows] ** 2) @ U`` and ``X[rows] @ W`` in float64, in one pass over the rows.

    Args:
        mat: A float16/float32 ``(n, D)`` array or memmap, or :class:`Int8Rows` (its prescale is applied).
        rows: Int64 row numbers (any order; the output follows it) or a ``slice`` (a full-scan block).
        vectors: ``(D, k)`` query vectors (float32 GEMM), or ``None``.
        square_vectors: ``(D, j)`` vectors applied to the squared rows (e.g. a whitened norm), or ``None``.
        exact_vectors: ``(D, l)`` vectors multiplied in float64 (for scores that cancel, e.g.
            influence with small damping), or ``None``.

    Returns:
        ``(m, k)``, ``(m, j)`` and ``(m, l)`` float64 products (``None`` where no vectors were given).
    """
    n = len(mat)
    sel_all, inverse = _selection(rows, n)
    m = n_rows(sel_all, n)
    groups: list[np.ndarray | None] = [vectors, square_vectors, exact_vectors]
    widths = None
    if isinstance(mat, Int8Rows):
        widths = torch.from_numpy(np.diff(mat.bounds))
        if mat.prescale is not None:
            p = mat.prescale.astype(np.float64)[:, None]
            groups = [None if g is None else g * f for g, f in zip(groups, (p, p * p, p))]
    dtypes = (torch.float32, torch.float32, torch.float64)
    ts = [None if g is None else torch.from_numpy(np.ascontiguousarray(g)).to(dt) for g, dt in zip(groups, dtypes)]
    outs = [None if t is None else torch.empty((m, t.shape[1]), dtype=dt) for t, dt in zip(ts, dtypes)]
    start = (sel_all.start or 0) if isinstance(sel_all, slice) else 0
    for lo in range(0, m, CHUNK):
        hi = min(m, lo + CHUNK)
        sel = slice(start + lo, start + hi) if isinstance(sel_all, slice) else sel_all[lo:hi]
        x = _chunk(mat, sel, widths)
        if ts[2] is not None:
            torch.matmul(x.to(torch.float64), ts[2], out=outs[2][lo:hi])
        if ts[0] is not None:
            torch.matmul(x, ts[0], out=outs[0][lo:hi])
        if ts[1] is not None:
            torch.matmul(x.mul_(x), ts[1], out=outs[1][lo:hi])
    res = [None if o is None else o.numpy().astype(np.float64, copy=False) for o in outs]
    if inverse is not None:
        res = [None if r is None else r[inverse] for r in res]
    return res[0], res[1], res[2]


def score_together(store: Any, q: Any, rows: np.ndarray, methods: list[Any]) -> dict[str, np.ndarray]:
    """Scores of several :class:`~tracer.methods.base.GradientMethod` s with one read of the rows.

    The query vectors of every method are stacked per ``(view, checkpoint)`` and multiplied in one
    :func:`row_dots` pass (float32 products, and float64 ones for methods that set ``exact``);
    each method's ``combine`` then turns its columns into scores.
    """
    plan: dict[tuple[str, int], list[tuple[Any, np.ndarray, np.ndarray | None]]] = {}
    for m in methods:
        for ci in m.checkpoint_indices():
            plan.setdefault((m.view(), ci), []).append((m, m.vectors(q, ci), m.square_vectors(q, ci)))
    dots: dict[str, dict[int, tuple[np.ndarray, np.ndarray | None]]] = {m.name: {} for m in methods}
    for (view, ci), parts in plan.items():
        def stack(sel: list[np.ndarray]) -> np.ndarray | None:
            return np.concatenate(sel, axis=1) if sel else None

        lin = stack([v for m, v, _ in parts if not m.exact])
        sq = stack([u for m, _, u in parts if u is not None])
        ex = stack([v for m, v, _ in parts if m.exact])
        d, d_sq, d_ex = row_dots(store.features(view, ci), rows, lin, sq, ex)
        c = c_sq = c_ex = 0
        for m, v, u in parts:
            k = v.shape[1]
            if m.exact:
                prod, c_ex = d_ex[:, c_ex:c_ex + k], c_ex + k  # type: ignore[index]
            else:
                prod, c = d[:, c:c + k], c + k  # type: ignore[index]
            prod_sq = None
            if u is not None:
                prod_sq, c_sq = d_sq[:, c_sq:c_sq + u.shape[1]], c_sq + u.shape[1]  # type: ignore[index]
            dots[m.name][ci] = (prod, prod_sq)
    return {m.name: m.combine(dots[m.name]) for m in methods}
