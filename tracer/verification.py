"""Verify on demand: did training on these examples actually raise the fact? (tail-patch, per example)

For a fact ``(prompt, target)`` and a few training examples, take ONE SGD step on each example's
loss from a chosen checkpoint and report the change in ``log p(target | prompt)`` — the same
computation as ``tracer eval --tail-patch`` (:func:`tracer.causal.tail_patch_deltas`), for a user's
own fact, where no ground truth exists. A few seeded random examples of the corpus are stepped on
too, as the baseline a real supporter should beat. Bounded: at most ``max_examples`` per call, and a
deadline checked between chunks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from tracer.errors import InvalidRequestError, LimitExceededError

DEFAULT_LR = 1e-2  # the eval's tail-patch step (EvalConfig.tail_patch_lr)
DEFAULT_CHECKPOINT = 0  # the eval's tail-patch checkpoint: the first, where facts are not yet learned
MAX_EXAMPLES = 32  # examples (asked + random) per call
CHUNK = 8  # examples per deadline check (stepped at once up to tracer.causal.step_chunk's memory bound)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One example's causal check.

    Attributes:
        doc_id: The training example.
        delta_logprob: ``log p(target | prompt)`` after one SGD step on the example, minus before.
        ms: Wall time of its step, amortised over the chunk it was stepped in.
        baseline: A seeded random example (the baseline), not one that was asked about.
    """

    doc_id: str
    delta_logprob: float
    ms: float
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class Verification:
    """The answer of :meth:`tracer.Tracer.verify`.

    Attributes:
        prompt, target: The fact.
        checkpoint: Index of the checkpoint stepped from.
        lr: SGD step size.
        examples: One verdict per asked example, in the order asked.
        baseline: Verdicts of the random examples.
        timings_ms: ``load_ms`` (model, first call only), ``step_ms`` (all steps), ``total_ms``.
    """

    prompt: str
    target: str
    checkpoint: int
    lr: float
    examples: tuple[Verdict, ...]
    baseline: tuple[Verdict, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def baseline_mean(self) -> float:
        return float(np.mean([v.delta_logprob for v in self.baseline])) if self.baseline else float("nan")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"prompt": self.prompt, "target": self.target, "checkpoint": self.checkpoint, "lr": self.lr,
                "examples": [asdict(v) for v in self.examples], "baseline": [asdict(v) for v in self.baseline],
                "baseline_mean": self.baseline_mean, "timings_ms": dict(self.timings_ms)}


def random_baseline(n_documents: int, exclude: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` distinct rows not in ``exclude``, the same for the same ``(n_documents, exclude, n, seed)``."""
    rng = np.random.default_rng([seed, n_documents])
    pool = np.setdiff1d(np.arange(n_documents), np.asarray(exclude, dtype=np.int64))
    return sorted(int(x) for x in rng.choice(pool, size=min(n, len(pool)), replace=False))


class Verifier:
    """Runs tail-patch checks for one index; holds one eager model per checkpoint, loaded on first use.

    ``torch.func.functional_call`` swaps a module's parameters while it runs, so calls on the same
    checkpoint's model are serialised by a lock (other checkpoints proceed in parallel).
    """

    def __init__(self, retriever: Any) -> None:
        self.retriever = retriever
        self._models: dict[int, Any] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def _model(self, ci: int) -> tuple[Any, threading.Lock, float]:
        from tracer.model.loading import load_model

        with self._lock:
            lock = self._locks.setdefault(ci, threading.Lock())
        with lock:
            if ci in self._models:
                return self._models[ci], lock, 0.0
            t0 = time.perf_counter()
            self._models[ci] = load_model(self.retriever.encoder.dirs[ci], attn_implementation="eager")
            return self._models[ci], lock, (time.perf_counter() - t0) * 1e3

    def verify(self, prompt: str, target: str, example_ids: Sequence[str], *, checkpoint: int = DEFAULT_CHECKPOINT,
               lr: float = DEFAULT_LR, n_random: int = 3, seed: int = 0, max_examples: int = MAX_EXAMPLES,
               stop: Callable[[str], None] | None = None) -> Verification:
        """See :meth:`tracer.Tracer.verify`."""
        from tracer.causal import tail_patch_deltas
        from tracer.featurize.checkpoint import encode_documents
        from tracer.model.tokenization import encode_example

        t0 = time.perf_counter()
        store = self.retriever.store
        n_ck = len(store.checkpoints)
        if not -n_ck <= checkpoint < n_ck:
            raise InvalidRequestError(f"checkpoint must be in [{-n_ck}, {n_ck - 1}] (the index has {n_ck}), "
                                      f"got {checkpoint}")
        if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
            raise InvalidRequestError(f"lr must be a positive number, got {lr!r}")
        if n_random < 0:
            raise InvalidRequestError(f"n_random must be >= 0, got {n_random}")
        ids = list(example_ids)
        if not ids:
            raise InvalidRequestError("example_ids: give at least one training example id")
        if len(set(ids)) != len(ids):
            raise InvalidRequestError("example_ids: an id is repeated")
        if len(ids) + n_random > max_examples:
            raise LimitExceededError(f"example_ids: {len(ids)} examples + {n_random} random exceed the cap of "
                                     f"{max_examples} per call")
        rows = store.rows(ids)  # NotFoundError names an unknown id
        base_rows = random_baseline(store.n_documents, rows, n_random, seed)
        ci = checkpoint % n_ck
        model, lock, load_ms = self._model(ci)
        enc = self.retriever.encoder
        tok, max_len = enc.tokenizer, enc.cfg.max_length if enc.cfg else 128
        all_rows = [int(r) for r in rows] + base_rows
        docs = [store.document(r) for r in all_rows]
        query = encode_example(tok, prompt, target, max_len)
        examples = encode_documents(tok, docs, max_len)
        deltas, ms = [], []
        t1 = time.perf_counter()
        with lock:
            for s in range(0, len(examples), CHUNK):
                if stop is not None:
                    stop(f"verify chunk {s // CHUNK}")
                c0 = time.perf_counter()
                part = examples[s:s + CHUNK]
                deltas.extend(tail_patch_deltas(model, tok, query, part, float(lr)).tolist())
                ms.extend([(time.perf_counter() - c0) * 1e3 / len(part)] * len(part))
        step_ms = (time.perf_counter() - t1) * 1e3
        verdicts = [Verdict(store.doc_ids[r], float(d), float(m), i >= len(ids))
                    for i, (r, d, m) in enumerate(zip(all_rows, deltas, ms))]
        return Verification(prompt, target, ci, float(lr), tuple(verdicts[:len(ids)]), tuple(verdicts[len(ids):]),
                            {"load_ms": load_ms, "step_ms": step_ms, "total_ms": (time.perf_counter() - t0) * 1e3})

    def close(self) -> None:
        with self._lock:
            self._models.clear()
