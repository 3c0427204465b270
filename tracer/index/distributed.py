"""Ray as the build's distributed engine: gradient shards featurized on Ray actors.

``tracer build --engine ray`` runs the same build as a local one (``tracer.index.build``):
the driver fits the K-FAC factors, then, checkpoint by checkpoint, hands the shards it still
lacks to a pool of Ray actors (``ray.util.ActorPool``). Each actor holds one model replica of
the current checkpoint (loaded on its first shard of that checkpoint), receives the shard's
examples tokenized by the driver when the shard is dispatched (the driver never holds the corpus
tokenized: ``ActorPool`` builds a task's arguments only when an actor is free), featurizes them into
stored rows with the build's own ``ShardFeaturizer`` and writes them as one file under the
build's partial directory, ``<out>.partial/build_state/shards/``: that path must be on storage
every worker sees. The driver stores each shard file into the feature memmaps, leaves the
shard's done-marker and deletes the file; the later stages (moments, FAISS, influence, TRAK,
embeddings, BM25) and the manifest run on the driver as in a local build, so the index format
is the same.

Resume holds per shard, through Ray's own fault tolerance and the build's markers:

* a worker that dies (``kill -9``, a lost node) is restarted by Ray (``max_restarts``) and its
  in-flight shard is retried (``max_task_retries``); shard files are written to a temporary
  name and renamed, so a killed writer leaves none;
* a driver that dies leaves the done-markers of merged shards and the files of finished but
  unmerged ones; the rerun reuses both and featurizes only the rest.

Featurization is deterministic per shard (shards are aligned to batches), so the index a Ray
build writes equals the local build's byte for byte on the same machine (tests check it).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tracer.index import files as F
from tracer.index.shards import ShardFeaturizer, ShardJob, load_shard, save_shard
from tracer.model.tokenization import Encoded

log = logging.getLogger(__name__)

SHARDS_DIR = f"{F.BUILD_STATE}/shards"  # in the partial dir: shard files workers wrote, not yet merged


def shard_file(ci: int, s: int) -> str:
    """A worker's output for shard ``s`` of checkpoint ``ci``, relative to the partial directory."""
    return f"{SHARDS_DIR}/ckpt{ci}-shard{s}.npz"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray build runs.

    Attributes:
        address: ``None`` starts a local Ray with ``workers * cpus_per_worker`` CPUs; ``"auto"`` joins
            the cluster this machine belongs to (``ray start``); ``HOST:PORT`` joins that head (GCS address).
            A Ray already initialized in this process is used as it is.
        workers: Actors, each holding one model replica.
        cpus_per_worker: CPUs Ray reserves per actor; also its torch thread count.
        max_restarts: Times Ray restarts a dead actor (its in-flight shard is retried on the new one).
        kill_worker_at: Test and measurement hook: the actor featurizing ``(checkpoint, shard)`` kills
            itself with SIGKILL, once per build (a marker in the partial directory says it happened).
    """

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    max_restarts: int = 3
    kill_worker_at: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.max_restarts < 0:
            raise ValueError(f"RayOptions: workers ({self.workers}) must be >= 1, cpus_per_worker "
                             f"({self.cpus_per_worker}) > 0 and max_restarts ({self.max_restarts}) >= 0")


class ShardWorker:
    """A Ray actor's state: the tokenizer and the model replica of the checkpoint it is working on.

    Args:
        tokenizer: The build's tokenizer directory (on storage every worker sees), or the tokenizer itself.
        threads: torch intra-op threads.
        kill_at: ``RayOptions.kill_worker_at``.
    """

    def __init__(self, tokenizer: Any, threads: int, kill_at: tuple[int, int] | None = None) -> None:
        import torch

        from tracer.model.loading import load_tokenizer

        torch.set_num_threads(threads)
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.kill_at = kill_at
        self._key: tuple[str, int] | None = None
        self._featurizer: ShardFeaturizer | None = None

    def featurize(self, job: ShardJob, s: int, examples: Sequence[Encoded]) -> tuple[int, int]:
        """Featurize shard ``s`` of ``job`` into its shard file; returns ``s`` and this worker's pid."""
        key = (str(job.root), job.ci)
        featurizer = self._featurizer
        if featurizer is None or key != self._key:  # a new checkpoint: drop the old replica, load the next
            self._featurizer = None
            featurizer = self._featurizer = ShardFeaturizer(job, self.tokenizer)
            self._key = key
        if self.kill_at == (job.ci, s):
            _die_once(job.root / F.BUILD_STATE / f"killed-ckpt{job.ci}-shard{s}")
        arrays = featurizer.run(examples)
        save_shard(job.root / shard_file(job.ci, s), arrays)
        return s, os.getpid()

    def ready(self) -> int:
        """This worker's pid, once its constructor has run."""
        return os.getpid()


def _die_once(marker: Path) -> None:
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


class RayEngine:
    """Gradient shards on a pool of Ray actors (a ``tracer.index.shards.ShardEngine``).

    Use it as a context manager around ``build_index(..., engine=...)``: Ray is joined (or
    started) on the first shard, so a build that has nothing left to featurize never starts it,
    and the actors (and a Ray this engine started) are released on exit.

    Raises:
        ImportError: Ray is not installed (``pip install 'tracer[ray]'``).
    """

    def __init__(self, options: RayOptions | None = None) -> None:
        import ray  # noqa: F401  (fail at once, not after the fit stage)

        self.options = options or RayOptions()
        self._pool: Any = None
        self._actors: list[Any] = []
        self._started_ray = False
        self.featurized = 0  # shards featurized by the actors (not reused from files)
        self.worker_pids: set[int] = set()  # processes that featurized them (a restarted actor adds one)
        self.startup_seconds = 0.0  # joining or starting Ray and constructing the actors

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the actors; shut Ray down if this engine started it."""
        import ray

        for a in self._actors:
            ray.kill(a)
        self._actors, self._pool = [], None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def featurize(self, job: ShardJob, local: ShardFeaturizer, todo: Sequence[tuple[int, int, int]],
                  examples: Sequence[Encoded]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield ``(s, arrays)`` per shard of ``todo`` as shard files arrive; ``local`` is not used.

        Shard files an interrupted run left are merged first, without featurizing again.
        """
        pending = []
        for s, lo, hi in todo:
            path = job.root / shard_file(job.ci, s)
            if path.is_file():
                log.info("reusing shard file %s", path)
                yield from _merged(s, path)
            else:
                pending.append((s, lo, hi))
        if not pending:
            return
        # absolute paths: a worker on another machine has another working directory
        job = replace(job, root=job.root.resolve(), checkpoint=replace(job.checkpoint,
                                                                       path=job.checkpoint.path.resolve()))
        pool, job_ref = self._start(local.featurizer.tokenizer), _put(job)
        for s, pid in pool.map_unordered(lambda a, t: a.featurize.remote(job_ref, t[0], examples[t[1]:t[2]]),
                                         pending):
            self.featurized += 1
            self.worker_pids.add(pid)
            yield from _merged(s, job.root / shard_file(job.ci, s))

    def _start(self, tokenizer: Any) -> Any:
        import ray
        from ray.util import ActorPool

        if self._pool is not None:
            return self._pool
        t0 = time.perf_counter()
        opts = self.options
        if not ray.is_initialized():
            if opts.address is None:
                ray.init(num_cpus=max(1, int(np.ceil(opts.workers * opts.cpus_per_worker))),
                         include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=opts.address, log_to_driver=False)
            self._started_ray = True
        actor = ray.remote(num_cpus=opts.cpus_per_worker, max_restarts=opts.max_restarts,
                           max_task_retries=opts.max_restarts)(ShardWorker)
        # a directory travels inline with the actor's spec: a restarted actor never needs a freed object
        path = str(getattr(tokenizer, "name_or_path", "") or "")
        tok = str(Path(path).resolve()) if path and Path(path).is_dir() else tokenizer
        threads = max(1, int(opts.cpus_per_worker))
        self._actors = [actor.remote(tok, threads, opts.kill_worker_at) for _ in range(opts.workers)]
        ray.get([a.ready.remote() for a in self._actors])
        self._pool = ActorPool(self._actors)
        self.startup_seconds = time.perf_counter() - t0
        log.info("Ray: %d workers x %g CPUs on %s, ready in %.1fs", opts.workers, opts.cpus_per_worker,
                 ray.get_runtime_context().gcs_address, self.startup_seconds)
        return self._pool


def _put(obj: Any) -> Any:
    import ray

    return ray.put(obj)


def _merged(s: int, path: Path) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield a shard file's arrays; delete the file once the build has stored them (the generator resumes)."""
    yield s, load_shard(path)
    path.unlink()
