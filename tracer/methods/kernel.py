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

import functools
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


def int8_terms(v: np.ndarray, bounds: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Split float query vectors into ``terms`` int8 digits per block, laid out block-diagonally.

    ``v[:, j]`` restricted to block ``b`` equals ``sum_t amp[b, t, j] * digits[:, (b, t, j)]`` up to
    ``max|v_b| / (2 * 127**terms)``: each term quantises the previous one's remainder. Multiplying
    int8 rows by the digits is exact in int32, so the only error of the int8 kernel is this one
    (3 terms: ~2e-7 of the block's largest entry, float32's precision; 4 terms: ~2e-9).

    Returns:
        ``digits`` ``(D, >= n_blocks * terms * k)`` int8 (zero outside each block; columns padded
        to a multiple of 16, the padding zero), ``amp``
        ``(n_blocks, terms, k)`` float64.
    """
    v = np.asarray(v, dtype=np.float64)
    d, k = v.shape
    nb = len(bounds) - 1
    widths = np.diff(bounds)
    padded, flat = _digit_layout(np.asarray(bounds, dtype=np.int64).tobytes(), d, terms, k)
    amp = np.zeros((nb, terms, k))
    rest = v.copy()
    parts = np.empty((d, terms, k), dtype=np.int8)
    for t in range(terms):
        top = np.maximum.reduceat(np.abs(rest), bounds[:-1], axis=0) if d else np.zeros((nb, k))
        top[widths == 0] = 0.0  # reduceat gives an empty block its neighbour's row
        a = np.where(top > 0, top / 127.0, 1.0)
        a_rows = np.repeat(a, widths, axis=0)
        q = np.rint(rest / a_rows)
        np.clip(q, -127, 127, out=q)
        parts[:, t, :] = q
        amp[:, t, :] = np.where(top > 0, a, 0.0)
        rest -= q * a_rows
    digits = np.zeros((d, padded), dtype=np.int8)
    digits.reshape(-1)[flat] = parts.ravel()  # one scatter into zeros
    return digits, amp


@functools.lru_cache(maxsize=64)
def _digit_layout(bounds_bytes: bytes, d: int, terms: int, k: int) -> tuple[int, np.ndarray]:
    """Columns of :func:`int8_terms`: padded width, and where row i's digit (t, j) goes in the flat array.

    Row ``i`` of block ``b`` puts digit ``(t, j)`` in column ``(b * terms + t) * k + j``; the width
    is padded to a multiple of 16, the int8 GEMM's fast path (zero columns cost nothing).
    """
    bounds = np.frombuffer(bounds_bytes, dtype=np.int64)
    block_of = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    padded = -(-(len(bounds) - 1) * terms * k // 16) * 16
    cols = (block_of[:, None, None] * terms + np.arange(terms)[None, :, None]) * k + np.arange(k)[None, None, :]
    flat = (np.arange(d)[:, None, None] * padded + cols).ravel()
    flat.setflags(write=False)
    return padded, flat


def _int8_dots(mat: Int8Rows, sel_all: np.ndarray | slice, m: int,
               groups: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
    """``X[rows] @ v`` (float64) for int8 rows and each ``(v, terms)`` group, one gather for all.

    Exact int32 products with :func:`int8_terms` digits; the groups' digit columns are laid side
    by side so each chunk of rows is read and multiplied once.
    """
    nb = len(mat.bounds) - 1
    pre = None if mat.prescale is None else mat.prescale.astype(np.float64)[:, None]
    encoded = [int8_terms(v if pre is None else v * pre, mat.bounds, terms) + (terms, v.shape[1])
               for v, terms in groups]
    dt = torch.from_numpy(np.concatenate([e[0] for e in encoded], axis=1))
    starts = np.cumsum([0] + [e[0].shape[1] for e in encoded])
    outs = [np.empty((m, e[3])) for e in encoded]
    start = (sel_all.start or 0) if isinstance(sel_all, slice) else 0
    for lo in range(0, m, INT8_CHUNK):
        hi = min(m, lo + INT8_CHUNK)
        sel = slice(start + lo, start + hi) if isinstance(sel_all, slice) else sel_all[lo:hi]
        q = _tensor(mat.q[sel])
        if hi - lo <= 16:  # _int_mm wants more than 16 rows: pad the tail
            q = torch.cat([q, torch.zeros((17 - (hi - lo), q.shape[1]), dtype=torch.int8)])
        p_all = torch._int_mm(q, dt)[: hi - lo].numpy()
        scales = np.asarray(mat.scales[sel], dtype=np.float64)
        for out, (_, amp, terms, k), c0 in zip(outs, encoded, starts):
            p = p_all[:, c0:c0 + nb * terms * k].astype(np.float64).reshape(hi - lo, nb, terms, k)
            out[lo:hi] = np.einsum("rbk,rb->rk", np.einsum("rbtk,btk->rbk", p, amp), scales)
    return outs


INT8_CHUNK = 128  # rows per int8 GEMM: the gathered chunk stays in cache for the multiply
INT8_TERMS = 2  # int8 digits per query vector: ~3e-5 of a block's largest entry, 1/125 of int8 storage error
INT8_TERMS_EXACT = 4  # for exact methods


def row_dots(mat: Any, rows: np.ndarray | slice, vectors: np.ndarray | None,
             square_vectors: np.ndarray | None = None,
             exact_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``X[rows] @ V``, ``(X[rows] ** 2) @ U`` and ``X[rows] @ W`` (the last more exactly), in one pass.

    For int8 rows the products with ``V`` and ``W`` are int8 x int8 GEMMs (``torch._int_mm``, exact
    in int32) against the query split into int8 digits (:func:`int8_terms`), so the stored rows
    are never widened; squared products need the widened rows and take the float path.

    Args:
        mat: A float16/float32 ``(n, D)`` array or memmap, or :class:`Int8Rows` (its prescale is applied).
        rows: Int64 row numbers (any order; the output follows it) or a ``slice`` (a full-scan block).
        vectors: ``(D, k)`` query vectors (float32 GEMM for float rows), or ``None``.
        square_vectors: ``(D, j)`` vectors applied to the squared rows (e.g. a whitened norm), or ``None``.
        exact_vectors: ``(D, l)`` vectors for scores that cancel (e.g. influence with small damping):
            float64 GEMM for float rows, 4 int8 digits for int8 rows; or ``None``.

    Returns:
        ``(m, k)``, ``(m, j)`` and ``(m, l)`` float64 products (``None`` where no vectors were given).
    """
    n = len(mat)
    sel_all, inverse = _selection(rows, n)
    m = n_rows(sel_all, n)
    res: list[np.ndarray | None] = [None, None, None]
    if isinstance(mat, Int8Rows) and hasattr(torch, "_int_mm"):
        groups = [(np.asarray(g, dtype=np.float64), t) for g, t in ((vectors, INT8_TERMS),
                                                                     (exact_vectors, INT8_TERMS_EXACT)) if g is not None]
        if groups:
            got = iter(_int8_dots(mat, sel_all, m, groups))
            res[0] = next(got) if vectors is not None else None
            res[2] = next(got) if exact_vectors is not None else None
        vectors = exact_vectors = None
    groups: list[np.ndarray | None] = [vectors, square_vectors, exact_vectors]
    if any(g is not None for g in groups):
        floats = _float_dots(mat, sel_all, m, groups)
        res = [r if r is not None else f for r, f in zip(res, floats)]
    if inverse is not None:
        res = [None if r is None else r[inverse] for r in res]
    return res[0], res[1], res[2]


def _float_dots(mat: Any, sel_all: np.ndarray | slice, m: int,
                groups: list[np.ndarray | None]) -> list[np.ndarray | None]:
    """The widened-rows path of :func:`row_dots` (float32 GEMMs; float64 for the exact group)."""
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
            torch.matmul(x.to(torch.float64), ts[2], out=outs[2][lo:hi])  # type: ignore[index]
        if ts[0] is not None:
            torch.matmul(x, ts[0], out=outs[0][lo:hi])  # type: ignore[index]
        if ts[1] is not None:
            torch.matmul(x.mul_(x), ts[1], out=outs[1][lo:hi])  # type: ignore[index]
    return [None if o is None else o.numpy().astype(np.float64, copy=False) for o in outs]


def checkpoint_dots(store: Any, q: Any, rows: np.ndarray, methods: list[Any],
                    ci: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Products of checkpoint ``ci``'s rows with every method's query vectors, one read per view.

    Returns ``{method: (products, per-row constants or None)}`` for the methods that use ``ci``.
    Needs only ``q.grads[view][ci]``, so a query's checkpoints can be scored as they are featurized.
    """
    by_view: dict[str, list[tuple[Any, np.ndarray]]] = {}
    for m in methods:
        if ci in m.checkpoint_indices():
            by_view.setdefault(m.view(), []).append((m, m.vectors(q, ci)))
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for view, parts in by_view.items():
        lin = [v for m, v in parts if not m.exact]
        ex = [v for m, v in parts if m.exact]
        mat = store.features(view, ci)
        d, _, d_ex = row_dots(mat, rows, np.concatenate(lin, axis=1) if lin else None, None,
                              np.concatenate(ex, axis=1) if ex else None)
        c = c_ex = 0
        for m, v in parts:
            k = v.shape[1]
            if m.exact:
                prod, c_ex = d_ex[:, c_ex:c_ex + k], c_ex + k  # type: ignore[index]
            else:
                prod, c = d[:, c:c + k], c + k  # type: ignore[index]
            out[m.name] = (prod, m.row_squares(ci, rows, mat, rows))
    return out


def score_together(store: Any, q: Any, rows: np.ndarray, methods: list[Any]) -> dict[str, np.ndarray]:
    """Scores of several :class:`~tracer.methods.base.GradientMethod` s with one read of the rows.

    The query vectors of every method are stacked per ``(view, checkpoint)`` and multiplied in one
    :func:`row_dots` pass (int8 GEMMs for int8 rows; float32, and float64 for methods that set
    ``exact``, for float rows); per-row constants (``row_squares``, e.g. a whitened norm) come
    from the method's cache; each method's ``combine`` turns its columns into scores.
    """
    cks = sorted({ci for m in methods for ci in m.checkpoint_indices()})
    per_ckpt = {ci: checkpoint_dots(store, q, rows, methods, ci) for ci in cks}
    return combine(methods, per_ckpt)


def combine(methods: list[Any], per_ckpt: dict[int, dict[str, tuple[np.ndarray, np.ndarray | None]]]
            ) -> dict[str, np.ndarray]:
    """Each method's scores from the per-checkpoint products of :func:`checkpoint_dots`."""
    return {m.name: m.combine({ci: d[m.name] for ci, d in sorted(per_ckpt.items()) if m.name in d})
            for m in methods}


def checkpoint_scores(store: Any, q: Any, rows: np.ndarray, method: Any) -> np.ndarray:
    """``(C, m)`` scores of ``rows`` under each checkpoint alone, on the combined score's scale.

    Row ``c`` is what the method would score if every checkpoint agreed with checkpoint ``c``
    (``C * combine({c})`` for a summing method, ``combine({c})`` for an averaging one), so the
    method's score is exactly the mean of the rows.
    """
    cks = method.checkpoint_indices()
    return per_checkpoint_scores(method, {ci: checkpoint_dots(store, q, rows, [method], ci) for ci in cks})


def per_checkpoint_scores(method: Any, per_ckpt: dict[int, dict[str, tuple[np.ndarray, np.ndarray | None]]]
                          ) -> np.ndarray:
    """:func:`checkpoint_scores` from products already computed by :func:`checkpoint_dots`."""
    cks = method.checkpoint_indices()
    scale = len(cks) if method.checkpoint_reduce == "sum" else 1
    out = [method.combine({ci: per_ckpt[ci][method.name]}) for ci in cks]
    return scale * np.asarray(out, dtype=np.float64).reshape(len(cks), -1)
