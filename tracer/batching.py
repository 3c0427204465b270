"""Dynamic micro-batching: concurrent callers share one batched call, as inference servers batch requests.

:class:`MicroBatcher` wraps a batch function ``fn(items) -> results``. Callers :meth:`submit`
their items from any thread; whichever caller finds no batch running becomes the leader: it
waits up to ``max_wait_s`` for company (not at all by default — requests that arrive while a
batch runs queue up and form the next one, so batches grow with load and a lone request never
waits), takes pending requests in arrival order up to ``max_batch`` items, runs ``fn`` once, and
hands every caller its own results. Only one batch runs at a time, so ``fn`` needs no locking
of its own (the query encoder's hooked models are not thread-safe).

A request that is still waiting when its deadline passes is withdrawn and raises
:class:`~tracer.errors.DeadlineExceededError`; one already in a running batch finishes with it.
When a batch of several requests fails, each request is retried alone, so one bad query fails
only its own caller.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from tracer.errors import DeadlineExceededError

X = TypeVar("X")
Y = TypeVar("Y")


@dataclass(frozen=True)
class BatchingConfig:
    """How queries are gathered into batches."""

    max_batch: int = field(default=16, metadata={"help": "most items featurized in one batch"})
    max_wait_ms: float = field(default=0.0, metadata={
        "help": "how long a batch leader waits for more requests (0: only those queued while busy)"})
    torch_threads: int = field(default=1, metadata={
        "help": "torch intra-op threads per query-path thread (1: concurrency comes from requests)"})

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"BatchingConfig.max_batch must be >= 1, got {self.max_batch}")
        if self.torch_threads < 1:
            raise ValueError(f"BatchingConfig.torch_threads must be >= 1, got {self.torch_threads}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"BatchingConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads in this thread, then restore the previous count.

    OpenMP's thread count is per calling thread, so this does not touch other threads. On a small
    machine serving concurrent requests, two intra-op threads per request thread measured 2-3x
    slower featurizing than one (``eval/bench_service.py``): the OpenMP teams spin against each
    other and against the scoring threads.
    """
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


class _Request:
    __slots__ = ("items", "results", "error", "taken", "done")

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)
        self.results: list[Any] | None = None
        self.error: BaseException | None = None
        self.taken = False
        self.done = False


class MicroBatcher(Generic[X, Y]):
    """Gathers concurrent :meth:`submit` calls into batched calls of ``fn`` (see the module doc)."""

    def __init__(self, fn: Callable[[list[X]], list[Y]], cfg: BatchingConfig = BatchingConfig()) -> None:
        self._fn = fn
        self.cfg = cfg
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._running = False
        self.batches = 0  # batches run (for benchmarks and tests)
        self.items = 0  # items featurized

    def submit(self, items: Sequence[X], deadline: float | None = None) -> list[Y]:
        """Results of ``fn`` for ``items`` (in order), computed in a batch with other callers' items.

        Raises:
            DeadlineExceededError: ``deadline`` (a ``time.monotonic()`` value) passed while waiting.
            Whatever ``fn`` raises for these items.
        """
        req = _Request(items)
        with self._cv:
            self._pending.append(req)
            while not req.done:
                if not self._running and self._pending and self._pending[0] is req:
                    self._lead()
                    continue
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0 and not req.taken:
                    self._pending.remove(req)
                    self._cv.notify_all()
                    raise DeadlineExceededError("deadline exceeded while waiting for a featurizing batch")
                self._cv.wait(timeout if not req.taken else None)
        if req.error is not None:
            raise req.error
        assert req.results is not None
        return req.results

    def _lead(self) -> None:
        """Run one batch (called with the condition held; releases it while ``fn`` runs)."""
        wait = self.cfg.max_wait_ms / 1e3
        if wait > 0:
            end = time.monotonic() + wait
            while sum(len(r.items) for r in self._pending) < self.cfg.max_batch and time.monotonic() < end:
                self._cv.wait(end - time.monotonic())
        batch: list[_Request] = []
        size = 0
        for r in self._pending:
            if batch and size + len(r.items) > self.cfg.max_batch:
                break
            batch.append(r)
            size += len(r.items)
        for r in batch:
            self._pending.remove(r)
            r.taken = True
        self._running = True
        self._cv.release()
        try:
            self._run(batch)
        finally:
            self._cv.acquire()
            self._running = False
            for r in batch:
                r.done = True
            self._cv.notify_all()

    def _run(self, batch: list[_Request]) -> None:
        items = [x for r in batch for x in r.items]
        try:
            with intra_op_threads(self.cfg.torch_threads):
                results = self._fn(items)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                batch[0].error = exc
                return
            for r in batch:  # isolate the failing request
                try:
                    with intra_op_threads(self.cfg.torch_threads):
                        r.results = self._fn(r.items)
                except BaseException as one:  # noqa: BLE001
                    r.error = one
            return
        self.batches += 1
        self.items += len(items)
        pos = 0
        for r in batch:
            r.results = results[pos:pos + len(r.items)]
            pos += len(r.items)
