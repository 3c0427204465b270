"""int8 feature storage: symmetric per-row, per-block quantisation.

Each stored row is split into the feature layout's blocks (one per parameter group); a
block ``x`` is stored as ``round(x / s)`` in int8 with ``s = max|x| / 127`` (float32, one per
row and block). The dequantised block is ``q * s``: every coordinate is within ``s / 2`` of
the original, i.e. a relative error of at most ``1/254`` of the block's largest entry. The
effect on dot products and rankings is measured in ``tests/test_quant.py`` and
``eval/bench_featurize.py``.

:class:`Int8Rows` reads such a pair of memmaps like a float32 matrix (``shape``, ``len``,
``rows[...]``), so methods and build stages do not care how features are stored. In a K-FAC
index rows are divided by a per-coordinate ``prescale`` (the predicted standard deviation,
:func:`tracer.featurize.kfac.prescale`) before quantising and multiplied back on reading, so
the error bound above holds for ``x / prescale``: small-variance coordinates keep their
relative precision instead of rounding to zero next to the block's largest one.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

QMAX = 127.0


def block_bounds(layout: Sequence[dict[str, Any]]) -> np.ndarray:
    """``(n_blocks + 1,)`` column offsets of the blocks (the last is the feature width)."""
    return np.asarray([b["offset"] for b in layout] + [sum(b["size"] for b in layout)], dtype=np.int64)


def quantize(x: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scales)``: ``(n, dim)`` int8 and ``(n, n_blocks)`` float32 for float rows ``x``."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    nb = len(bounds) - 1
    q = np.empty(x.shape, dtype=np.int8)
    scales = np.empty((n, nb), dtype=np.float32)
    for j in range(nb):
        blk = x[:, bounds[j]:bounds[j + 1]]
        s = np.abs(blk).max(axis=1) / QMAX
        s = np.where(s > 0, s, 1.0).astype(np.float32)
        scales[:, j] = s
        q[:, bounds[j]:bounds[j + 1]] = np.clip(np.rint(blk / s[:, None]), -QMAX, QMAX).astype(np.int8)
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Float32 rows from ``quantize``'s output."""
    widths = np.diff(bounds)
    return np.asarray(q, dtype=np.float32) * np.repeat(np.asarray(scales, dtype=np.float32), widths, axis=1)


class Int8Rows:
    """A read-only ``(n, dim)`` float32 view of int8 rows and their per-block scales.

    Indexing with an int, a slice or an integer array returns dequantised float32 rows.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, q: np.ndarray, scales: np.ndarray, bounds: np.ndarray,
                 prescale: np.ndarray | None = None) -> None:
        if q.ndim != 2 or scales.ndim != 2 or q.shape[0] != scales.shape[0] or scales.shape[1] != len(bounds) - 1 \
                or q.shape[1] != bounds[-1] or (prescale is not None and prescale.shape != (q.shape[1],)):
            raise ValueError(f"int8 features {q.shape} do not match scales {scales.shape}, "
                             f"{len(bounds) - 1} blocks of total width {bounds[-1]} and prescale "
                             f"{None if prescale is None else prescale.shape}")
        # plain ndarray views of the memmaps: np.memmap's Python-level __getitem__ costs more than a gather
        self.q, self.scales, self.bounds = np.asarray(q), np.asarray(scales), bounds
        self.prescale = None if prescale is None else np.asarray(prescale, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    def __len__(self) -> int:
        return int(self.q.shape[0])

    def __getitem__(self, rows: Any) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self[np.asarray([rows])][0]
        out = dequantize(self.q[rows], self.scales[rows], self.bounds)
        return out if self.prescale is None else out * self.prescale

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def open_features(root: Any, view: str, ckpt: int, layout: Sequence[dict[str, Any]]) -> Any:
    """A stored feature matrix: a float16/float32 memmap, or :class:`Int8Rows` when it has scales."""
    from pathlib import Path

    from tracer.index import files as F

    from tracer.errors import IndexCorruptError

    root = Path(root)
    bounds = block_bounds(layout)
    mat = F.load_array(root / F.feature_file(view, ckpt), mmap=True)
    if mat.ndim != 2 or mat.shape[1] != bounds[-1]:
        raise IndexCorruptError(f"{root / F.feature_file(view, ckpt)} has shape {mat.shape}; the layout is "
                                f"{bounds[-1]} wide")
    if mat.dtype != np.int8:
        return mat
    scales = F.load_array(root / F.scale_file(view, ckpt), mmap=True)
    pre = root / F.prescale_file(ckpt)
    sigma = F.load_array(pre) if pre.exists() else None
    try:
        return Int8Rows(mat, scales, bounds, sigma)
    except ValueError as exc:
        raise IndexCorruptError(f"{root / F.feature_file(view, ckpt)}: {exc}") from None


def release_pages(*arrays: Any) -> None:
    """Drop the resident pages of memory-mapped arrays (``MADV_DONTNEED``; the data stays in the page cache).

    Streaming stages read every row once; without this the mapped file pages of every feature
    matrix they touched count toward the process's resident set until the map is closed.
    """
    import mmap

    for arr in arrays:
        if isinstance(arr, Int8Rows):
            release_pages(arr.q, arr.scales)
            continue
        base = arr
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "_mmap", None) or getattr(base, "base", None)
        if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            try:
                base.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed or not madvisable: nothing to release
                pass
