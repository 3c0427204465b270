"""FAISS indexes over dense vectors: inner-product search, scores higher = better.

The only module that imports ``faiss``. FAISS's ``D, I`` become ``scores, rows`` here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def _faiss():  # type: ignore[no-untyped-def]
    import faiss

    faiss.omp_set_num_threads(1)  # deterministic and polite on small machines
    return faiss


def check_factory(factory: str) -> None:
    """Raise ``ValueError`` naming a FAISS factory string FAISS cannot parse."""
    faiss = _faiss()
    try:
        faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"bad FAISS factory string {factory!r}: {str(exc).strip().splitlines()[-1]}") from exc


def build_faiss(dim: int, n: int, chunks: Callable[[], object], factory: str = "Flat",
                train_sample: Callable[[], np.ndarray] | None = None,
                on_rows: Callable[[int], object] | None = None) -> object:
    """An inner-product FAISS index filled from ``chunks()`` (an iterable of float32 row blocks).

    Args:
        dim: Vector width.
        n: Number of vectors (for logging/validation).
        chunks: Callable returning an iterator of ``(m, dim)`` float32 arrays, in row order.
        factory: FAISS factory string (``Flat``, ``IVF1024,PQ64``, ``HNSW32``...).
        train_sample: Returns vectors to train an index on; called only if the index needs training.
            Training is one FAISS call, so it is logged (start, then seconds taken) instead of a bar.
        on_rows: Called with the row count of each block once it is added (drives a progress bar).

    Raises:
        ValueError: For a bad factory string or a missing training sample.
    """
    faiss = _faiss()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"bad FAISS factory string {factory!r}: {exc}") from exc
    if not index.is_trained:
        if train_sample is None:
            raise ValueError(f"FAISS index {factory!r} needs training vectors")
        sample = np.ascontiguousarray(train_sample(), dtype=np.float32)
        log.info("training FAISS %s on %d x %d vectors", factory, *sample.shape)
        t0 = time.perf_counter()
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise ValueError(f"training FAISS index {factory!r} failed (too few vectors?): {exc}") from exc
        log.info("trained FAISS %s in %.1fs", factory, time.perf_counter() - t0)
    _add_rows(index, n, chunks, on_rows)
    return index


class CannotKeepError(ValueError):
    """A FAISS index that cannot keep a prefix of its vectors and drop the rest (HNSW and other graphs)."""


def _plain_codes(index: object) -> bool:
    """One code per row, in row order, and nothing else (``Flat``, ``SQ8``, ``PQ``): subclasses that keep more
    per row (e.g. ``FlatIPPanorama``'s cumulative sums) are excluded."""
    faiss = _faiss()
    return type(index) in (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2, faiss.IndexScalarQuantizer,
                           faiss.IndexPQ)


def _add_rows(index: object, n: int, chunks: Callable[[], object],
              on_rows: Callable[[int], object] | None) -> None:
    """Add ``chunks()`` to ``index`` until it holds ``n`` vectors.

    A plain flat-codes index (``Flat``, ``SQ8``, ``PQ``: one code per row, in row order) gets its code buffer
    sized once and each block's codes written in place (``sa_encode``, which is what its ``add`` stores):
    growing it block by block reallocates, and peaks at about twice the codes. If anything fails midway the
    buffer is cut back to the rows written, so the index stays consistent. Other indexes use ``add``.
    """
    faiss = _faiss()
    if not _plain_codes(index):
        for block in chunks():  # type: ignore[attr-defined]
            index.add(np.ascontiguousarray(block, dtype=np.float32))  # type: ignore[attr-defined]
            if on_rows is not None:
                on_rows(len(block))  # type: ignore[arg-type]
    else:
        cs, at = index.code_size, index.ntotal  # type: ignore[attr-defined]
        index.codes.resize(max(n, at) * cs)  # type: ignore[attr-defined]
        codes = None
        try:
            codes = faiss.rev_swig_ptr(index.codes.data(), max(n, at) * cs)  # type: ignore[attr-defined]
            for block in chunks():  # type: ignore[attr-defined]
                block = np.ascontiguousarray(block, dtype=np.float32)
                if at + len(block) > n:
                    raise ValueError(f"FAISS index would hold over {n} vectors")
                codes[at * cs:(at + len(block)) * cs] = index.sa_encode(block).ravel()  # type: ignore
                at += len(block)
                index.ntotal = at  # type: ignore[attr-defined]
                if on_rows is not None:
                    on_rows(len(block))  # type: ignore[arg-type]
        finally:
            del codes
            index.codes.resize(index.ntotal * cs)  # type: ignore[attr-defined]  # no-op when all went well
    if index.ntotal != n:  # type: ignore[attr-defined]
        raise ValueError(f"FAISS index holds {index.ntotal} vectors, expected {n}")  # type: ignore[attr-defined]


def keeps_prefix(index: object) -> bool:
    """Whether :func:`fill_faiss` can keep a prefix of this index's vectors (flat-codes and IVF indexes)."""
    return _plain_codes(index) or isinstance(index, _faiss().IndexIVF)


def fill_faiss(index: object, n: int, chunks: Callable[[], object], on_rows: Callable[[int], object] | None = None,
               keep: int = 0) -> object:
    """Reuse a trained FAISS ``index`` (read whole into memory, ``read_faiss(..., mmap=False)``): keep its first
    ``keep`` vectors, drop the rest, add ``chunks()``.

    The trained state (quantizer ranges, centroids) is kept, so for flat-codes and IVF indexes the result
    equals a fresh index of the same training filled with the same rows, byte for byte.

    Raises:
        CannotKeepError: ``keep > 0`` for an index that cannot drop vectors that way (HNSW, other graphs,
            whose insertion order and random levels a prefix would not reproduce): refill it with ``keep=0``.
        ValueError: ``keep`` is more than the index holds, or it ends with other than ``n`` vectors.
    """
    faiss = _faiss()
    if not 0 <= keep <= index.ntotal:  # type: ignore[attr-defined]
        raise ValueError(f"cannot keep {keep} of the {index.ntotal} vectors of a FAISS index")  # type: ignore
    if keep and not keeps_prefix(index):
        raise CannotKeepError(f"a FAISS {type(index).__name__} cannot keep a prefix of its vectors")
    if keep == 0:
        index.reset()  # type: ignore[attr-defined]
    elif keep < index.ntotal:  # type: ignore[attr-defined]
        try:
            index.remove_ids(faiss.IDSelectorRange(keep, index.ntotal))  # type: ignore[attr-defined]
        except RuntimeError as exc:
            raise CannotKeepError(f"this FAISS index cannot drop vectors: {str(exc).strip().splitlines()[-1]}") from exc
    _add_rows(index, n, chunks, on_rows)
    return index


def write_faiss(index: object, path: str | Path) -> None:
    _faiss().write_index(index, str(path))


def read_faiss(path: str | Path, mmap: bool = True) -> object:
    faiss = _faiss()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError:  # some index types cannot be mmapped
        return faiss.read_index(str(path))


def search(index: object, queries: np.ndarray, k: int, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product.

    Returns:
        ``scores`` ``(n_queries, k)`` float32 (higher = better) and ``rows`` ``(n_queries, k)`` int64;
        missing results (k > n) have row ``-1``.
    """
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe  # type: ignore[attr-defined]
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]
    return scores, rows
