"""Gradient featurization by shard: the unit of resumable (and distributable) build work.

A shard is ``shard_size`` consecutive rows of the corpus under one checkpoint, aligned to
featurize batches, so a shard's features do not depend on where or in which order it is
computed. The build (``tracer.index.build``) plans the shards a checkpoint still lacks
(``plan_shards``), asks an *engine* for their arrays, stores each into the feature memmaps
(``store_shard``) and leaves a done-marker. Two engines exist:

* ``LocalEngine`` (here): the build's own process featurizes the shards in order;
* ``tracer.index.distributed.RayEngine``: Ray actors featurize them, one model replica per
  actor per checkpoint, and hand each shard back as a file under the partial directory
  (``save_shard`` / ``load_shard``), which every worker of a cluster must see.

Either way the same ``ShardFeaturizer`` turns examples into stored rows (features divided by
the fitted per-coordinate scale and quantized to int8, or cast to float16/float32), so the
engines write the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from tracer.featurize.checkpoint import CheckpointFeaturizer
from tracer.featurize.config import FeaturizeConfig
from tracer.index import files as F
from tracer.model.loading import Checkpoint
from tracer.model.tokenization import Encoded

FEATURE_KEY = "feat-{}"  # shard array: stored rows of one view ((rows, dim) int8/float16/float32)
SCALE_KEY = "scale-{}"  # shard array: int8 scales of one view ((rows, n_blocks) float32)
BAD_KEY = "bad-{}"  # shard array: rows of one view with non-finite features ((k,) int64, usually empty)
LOSS_KEY = "loss"  # shard array: per-example losses ((rows,) float32)
STORED_DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class ShardJob:
    """What any worker needs to featurize shards of one checkpoint (picklable; ``root`` on shared storage).

    Attributes:
        root: The build's partial directory (it holds the fitted K-FAC factors and scales).
        ci: Checkpoint position, oldest first.
        checkpoint: The checkpoint.
        cfg: Featurize configuration.
        views: Views to compute (``raw``, ``adam``).
        widths: Per-group widths of the dimension budget (fit stage), or ``None``.
    """

    root: Path
    ci: int
    checkpoint: Checkpoint
    cfg: FeaturizeConfig
    views: tuple[str, ...]
    widths: Mapping[str, Sequence[int]] | None = None


def plan_shards(n: int, shard_size: int,
                done: Callable[[int], bool] = lambda s: False) -> list[tuple[int, int, int]]:
    """The shards ``(s, lo, hi)`` of ``n`` rows that are not ``done``, in row order.

    Args:
        n: Rows in the corpus.
        shard_size: Rows per shard (a multiple of the featurize batch size).
        done: Whether shard ``s`` is already stored.

    Raises:
        ValueError: ``n < 0`` or ``shard_size < 1``.
    """
    if n < 0 or shard_size < 1:
        raise ValueError(f"plan_shards: n ({n}) must be >= 0 and shard_size ({shard_size}) >= 1")
    return [(s, s * shard_size, min(n, (s + 1) * shard_size))
            for s in range((n + shard_size - 1) // shard_size) if not done(s)]


class ShardFeaturizer:
    """One checkpoint's model replica and the conversion of its features into stored rows.

    Args:
        job: The checkpoint's job.
        tokenizer: The tokenizer shared by all checkpoints.
    """

    def __init__(self, job: ShardJob, tokenizer: Any) -> None:
        from tracer.featurize.kfac import load_factors
        from tracer.index.quant import block_bounds

        kfac = job.cfg.projection == "kfac"
        factors = load_factors(job.root / F.kfac_file(job.ci)) if kfac else None
        self.featurizer = CheckpointFeaturizer(job.checkpoint, tokenizer, job.cfg, job.views, factors=factors,
                                               widths=job.widths)
        self.job = job
        self.int8 = job.cfg.dtype == "int8"
        self.bounds = block_bounds([b.to_dict() for b in self.layout])
        self.sigma = np.load(job.root / F.prescale_file(job.ci)) if self.int8 and kfac else None

    @property
    def dim(self) -> int:
        return self.featurizer.dim

    @property
    def layout(self) -> list[Any]:
        return self.featurizer.layout

    def run(self, examples: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Stored rows of ``examples``: ``FEATURE_KEY``, ``SCALE_KEY``, ``BAD_KEY`` per view; ``LOSS_KEY``."""
        from tracer.index.quant import quantize

        feats, loss = self.featurizer.featurize(examples)
        out = {LOSS_KEY: loss}
        for v in self.job.views:
            out[BAD_KEY.format(v)] = np.nonzero(~np.isfinite(feats[v]).all(axis=1))[0].astype(np.int64)
            if self.int8:
                x = feats[v] if self.sigma is None else feats[v] / self.sigma
                out[FEATURE_KEY.format(v)], out[SCALE_KEY.format(v)] = quantize(x, self.bounds)
            else:
                out[FEATURE_KEY.format(v)] = feats[v].astype(STORED_DTYPES[self.job.cfg.dtype])
        return out


class ShardOutputs:
    """The feature, scale and loss memmaps of one checkpoint, opened (or reopened, on resume) for writing."""

    def __init__(self, job: ShardJob, n: int, dim: int, n_blocks: int) -> None:
        dtype = STORED_DTYPES[job.cfg.dtype]
        self.views, self.ci = job.views, job.ci
        self.mats = {v: open_matrix(job.root / F.feature_file(v, job.ci), (n, dim), dtype) for v in job.views}
        self.scales = {v: open_matrix(job.root / F.scale_file(v, job.ci), (n, n_blocks), np.float32)
                       for v in job.views} if job.cfg.dtype == "int8" else {}
        self.losses = open_matrix(job.root / F.loss_file(job.ci), (n,), np.float32)

    def store(self, lo: int, hi: int, arrays: Mapping[str, np.ndarray], doc_ids: Sequence[str]) -> None:
        """Write one shard's rows ``lo:hi`` and flush them.

        Raises:
            ValueError: A row has non-finite features (named by ``doc_ids``, the corpus's ids).
        """
        from tracer.index.quant import release_pages

        for v in self.views:
            bad = arrays[BAD_KEY.format(v)]
            if len(bad):
                raise ValueError(f"non-finite gradient features for documents "
                                 f"{[doc_ids[lo + int(i)] for i in bad[:5]]} at checkpoint {self.ci} "
                                 f"(the loss overflowed?); fix or drop them")
            self.mats[v][lo:hi] = arrays[FEATURE_KEY.format(v)]
            self.mats[v].flush()
            if v in self.scales:
                self.scales[v][lo:hi] = arrays[SCALE_KEY.format(v)]
                self.scales[v].flush()
        self.losses[lo:hi] = arrays[LOSS_KEY]
        self.losses.flush()
        release_pages(*self.mats.values(), *self.scales.values())  # written and flushed: not ours to hold


def open_matrix(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """An ``.npy`` memmap for writing: the existing file (a resumed build) or a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return np.load(path, mmap_mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def save_shard(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a shard's arrays to ``path`` (``.npz``) atomically: a killed writer leaves no shard file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_shard(path: Path) -> dict[str, np.ndarray]:
    """The arrays ``save_shard`` wrote (never a pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class ShardEngine(Protocol):
    """Where a checkpoint's missing shards are featurized."""

    def featurize(self, job: ShardJob, local: ShardFeaturizer, todo: Sequence[tuple[int, int, int]],
                  examples: Sequence[Encoded]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield ``(s, arrays)`` for every shard of ``todo``, in any order.

        Args:
            job: The checkpoint's job.
            local: A featurizer already loaded in the build's process (an engine may ignore it).
            todo: Shards ``(s, lo, hi)`` to featurize.
            examples: The whole corpus, encoded, in row order: in a build, a lazy sequence
                (``tracer.featurize.checkpoint.EncodedDocuments``) that tokenizes rows ``lo:hi`` when it
                is sliced, so an engine should slice one shard at a time, as it dispatches it.
        """
        ...


class LocalEngine:
    """Featurize every shard in the build's own process, in row order."""

    def featurize(self, job: ShardJob, local: ShardFeaturizer, todo: Sequence[tuple[int, int, int]],
                  examples: Sequence[Encoded]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for s, lo, hi in todo:
            yield s, local.run(examples[lo:hi])
