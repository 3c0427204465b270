"""``Tracer``: the library API — open an index, trace facts, fetch documents, evaluate.

A thin facade over :class:`tracer.retrieval.Retriever` (which owns the query path): it
validates input once, retrieves, and turns rows into hits. The same object backs the gRPC
service (``tracer.service``) and the CLI; it knows nothing about transports. Errors are
``TracerError`` subclasses naming the offending field. It is safe to call from many threads
(``thread_safe``): concurrent queries are featurized in shared batches and scored in parallel.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tracer.batching import BatchingConfig
from tracer.errors import InvalidRequestError
from tracer.index.store import IndexStore
from tracer.methods.base import Method, QueryFeatures
from tracer.methods.registry import method_class
from tracer.retrieval import Retriever
from tracer.types import Document, Hit, Query, SideBySide, TraceResult

TEXT_PREVIEW = 300  # characters of document text returned with a hit


class Tracer:
    """Trace facts to the training examples that support them, over one index.

    Example:
        >>> t = Tracer.open("indexes/demo")  # doctest: +SKIP
        >>> t.trace("Marie Curie was born in", " Warsaw", method="tracin", k=5)  # doctest: +SKIP
    """

    thread_safe = True  # the service calls it from many threads without a lock

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.store = retriever.store
        self._verifier: Any = None
        self._verifier_lock = threading.Lock()
        self._calibration: Any = None  # None: not looked for yet; False: the index has none

    @classmethod
    def open(cls, index_dir: str | Path, *, verify: bool = False, checkpoint_dirs: Sequence[str | Path] | None = None,
             method_params: dict[str, dict[str, Any]] | None = None,
             batching: BatchingConfig = BatchingConfig(), tokenizer: str | Path | None = None) -> Tracer:
        """Open an index; models are loaded lazily on the first query that needs them (or by :meth:`warm`).

        Args:
            index_dir: Index directory.
            verify: Check file checksums (otherwise sizes only).
            checkpoint_dirs: Checkpoint paths if the models moved since the build.
            method_params: Per-method parameters, e.g. ``{"influence": {"damping": 0.1}}``.
            batching: How concurrent queries share featurizing batches.
            tokenizer: Tokenizer directory, if not the one recorded at build time.
        """
        store = IndexStore.open(index_dir, verify=verify)
        return cls(Retriever(store, checkpoint_dirs=checkpoint_dirs, method_params=method_params,
                             batching=batching, tokenizer=tokenizer))

    # --- identity ---
    @property
    def name(self) -> str:
        return self.store.name

    @property
    def fingerprint(self) -> str:
        return self.store.fingerprint

    @property
    def n_documents(self) -> int:
        return self.store.n_documents

    def available_methods(self) -> list[str]:
        return self.retriever.available_methods()

    def available_candidates(self) -> list[str]:
        return self.retriever.available_candidates()

    def info(self) -> dict[str, Any]:
        """A JSON-able summary of the index."""
        m = self.store.manifest
        return {
            "name": self.name, "fingerprint": self.fingerprint, "n_documents": self.n_documents,
            "methods": self.available_methods(), "candidates": self.available_candidates(),
            "checkpoints": [{k: c[k] for k in ("path", "lr", "step")} for c in m["checkpoints"]],
            "featurize": m.get("featurize"), "views": m.get("views", []), "created": m.get("created"),
            "tracer_version": m.get("tracer_version"), "stages": sorted(m.get("stages", {})),
            "size_bytes": sum(f["size"] for f in m.get("files", {}).values()),
            "bytes_per_example": self.store.bytes_per_example(),
            "tracked": self.store.tracked_modules(),
            "build_seconds": m.get("build_seconds", {}),
        }

    # --- the query path (delegated) ---
    @property
    def encoder(self) -> Any:
        return self.retriever.encoder

    def method(self, name: str) -> Method:
        return self.retriever.method(name)

    def check_candidates(self, candidates: str) -> None:
        self.retriever.check_candidates(candidates)

    def features(self, pairs: Sequence[tuple[str, str]], methods: Sequence[str],
                 candidates: str = "bm25") -> list[QueryFeatures]:
        """Query features for the given methods and candidate source (computed once, shared)."""
        return self.retriever.features(pairs, methods, candidates)

    def _validate(self, prompt: str, target: str, method: str, candidates: str, k: int, num_candidates: int) -> None:
        if not isinstance(target, str) or not target.strip():
            raise InvalidRequestError("target must be a non-empty string")
        if not isinstance(prompt, str):
            raise InvalidRequestError("prompt must be a string")
        if not prompt.strip():
            raise InvalidRequestError("prompt must be a non-empty string")
        method_class(method)
        self.check_candidates(candidates)
        if k < 1:
            raise InvalidRequestError(f"k must be >= 1, got {k}")
        if num_candidates < 1:
            raise InvalidRequestError(f"num_candidates must be >= 1, got {num_candidates}")

    # --- public API ---
    def trace(self, prompt: str | Query, target: str | None = None, *, method: str = "tracin",
              candidates: str = "bm25", k: int = 10, num_candidates: int = 100, include_text: bool = False,
              deadline: float | None = None, query_id: str = "", cancelled: Callable[[], bool] | None = None,
              opponents: int = 0, stability: bool | None = None, budget_ms: float | None = None) -> TraceResult:
        """Rank training examples by how much they support ``target`` after ``prompt``.

        Args:
            prompt: The fact's context, e.g. ``"Marie Curie was born in"`` — or a whole :class:`Query`
                (then ``target`` is omitted): its known proponents are marked on the hits (``Hit.proponent``).
            target: The completion, e.g. ``" Warsaw"`` (loss is taken on it only).
            method: One of ``METHODS``.
            candidates: One of ``CANDIDATE_SOURCES``.
            k: Hits returned.
            num_candidates: Candidates retrieved per source before reranking.
            include_text: Attach (truncated) document text to each hit.
            deadline: Absolute ``time.monotonic()`` deadline, checked between stages and inside full scans.
            query_id: Echoed in the result.
            cancelled: Polled like the deadline; once it returns True the call raises ``CancelledError``.
            opponents: Also return this many *opponents*: the lowest-scored of the ranked rows (the
                candidates, or the whole corpus with ``candidates="full"``), most negative first.
            budget_ms: With ``candidates="auto"``: the latency budget; the cascade (source and size,
                or a full scan) with the highest recall ceiling whose estimated latency fits is used
                (needs the index's calibration, :meth:`calibrate`).
            stability: Give each hit its per-checkpoint scores, top-k fraction, ``stable`` flag and
                interval (gradient methods over several checkpoints). ``None`` (default): on, except
                with ``candidates="full"``, where it costs a second scan of the corpus.

        Raises:
            InvalidRequestError, IndexNotReadyError, DeadlineExceededError, CancelledError.
        """
        q = self._as_query(prompt, target, query_id)
        candidates, num_candidates, plan = self._plan(candidates, num_candidates, budget_ms)
        self._validate(q.prompt, q.target, method, candidates, k, num_candidates)
        self._check_opponents(opponents)
        t0 = time.perf_counter()
        r = self.retriever.retrieve(q.prompt, q.target, method=method, candidates=candidates, k=k,
                                    num_candidates=num_candidates, deadline=deadline, cancelled=cancelled,
                                    opponents=opponents)
        st = self._stability(r, method, candidates, k, stability, deadline, cancelled, q)
        r.timings_ms["total_ms"] = (time.perf_counter() - t0) * 1e3
        res = self._result(q, method, candidates, r, include_text, r.timings_ms, st)
        return self._with_ceiling(res, candidates, num_candidates, plan)

    # --- cascades
    @property
    def calibration(self) -> Any:
        """The index's :class:`tracer.cascade.Calibration` (``None`` when it has none)."""
        from tracer import cascade

        if self._calibration is None:
            self._calibration = cascade.load(self.store.root, self.fingerprint) or False
        return self._calibration or None

    def calibrate(self, queries: Sequence[Query] | None = None, *, method: str = "tracin", save: bool = True,
                  **kw: Any) -> Any:
        """Measure the index's recall ceilings and stage costs (:func:`tracer.cascade.calibrate`) on
        held-out ``queries`` (else corpus pseudo-queries), and keep them beside the index."""
        from tracer import cascade

        cal = cascade.calibrate(self, queries, method=method, **kw)
        if save:
            cascade.save(cal, self.store.root)
        self._calibration = cal
        return cal

    def _plan(self, candidates: str, num_candidates: int, budget_ms: float | None) -> tuple[str, int, Any]:
        """``candidates="auto"``: the source and size :func:`tracer.cascade.choose` picks for the budget."""
        from tracer import cascade
        from tracer.errors import IndexNotReadyError

        if candidates != "auto":
            if budget_ms is not None:
                raise InvalidRequestError('budget_ms applies to candidates="auto"')
            return candidates, num_candidates, None
        if budget_ms is None:
            raise InvalidRequestError('candidates="auto" needs budget_ms (a latency budget in ms)')
        cal = self.calibration
        if cal is None:
            raise IndexNotReadyError(f"index {self.name!r} has no calibration for candidates='auto': run "
                                     "`tracer calibrate --index DIR` (or Tracer.calibrate())")
        opt, fits = cascade.choose(cal, float(budget_ms))
        plan = {"budget_ms": float(budget_ms), "source": opt.source, "num_candidates": opt.n,
                "est_ms": round(opt.est_ms, 2), "fits_budget": fits}
        return opt.source, max(opt.n, 1), plan

    def _with_ceiling(self, res: TraceResult, candidates: str, n: int, plan: Any) -> TraceResult:
        import dataclasses

        from tracer.errors import IndexMismatchError

        try:
            cal = self.calibration
        except IndexMismatchError:  # a stale calibration fails "auto" loudly, never a plain query
            cal = None
        ceiling = cal.ceiling(candidates, n) if cal is not None else None
        if ceiling is None and plan is None:
            return res
        return dataclasses.replace(res, recall_ceiling=ceiling, cascade=plan)

    def _stability(self, r: Any, method: str, candidates: str, k: int, stability: bool | None,
                   deadline: float | None, cancelled: Callable[[], bool] | None, q: Query | None = None) -> Any:
        from tracer.index.seeds import extend_stability
        from tracer.retrieval import stopper

        if not (stability if stability is not None else candidates != "full"):
            return None
        t0 = time.perf_counter()
        st = self.retriever.stability(r, method, k, stopper(deadline, cancelled))
        if q is not None:  # over checkpoints x projection seeds where the index has seed siblings
            st = extend_stability(self.retriever, st, q.prompt, q.target, method, k, r.candidate_rows, r.rows)
        r.timings_ms["stability_ms"] = (time.perf_counter() - t0) * 1e3
        return st

    @staticmethod
    def _as_query(prompt: str | Query, target: str | None, query_id: str) -> Query:
        if isinstance(prompt, Query):
            if target is not None:
                raise InvalidRequestError("trace(query): the target comes from the Query; do not pass one")
            return prompt
        if target is None:
            raise InvalidRequestError("trace needs a target (or a Query as its first argument)")
        return Query(query_id, prompt, target)

    @staticmethod
    def _check_opponents(opponents: int) -> None:
        if not isinstance(opponents, int) or opponents < 0:
            raise InvalidRequestError(f"opponents must be an integer >= 0, got {opponents!r}")

    def _result(self, q: Query, method: str, candidates: str, r: Any, include_text: bool,
                timings: dict[str, float], stability: Any = None) -> TraceResult:
        known = frozenset(q.proponents) or None
        return TraceResult(q, method, candidates, self._hits(r.scores, r.rows, include_text, known, stability),
                           timings, self.fingerprint, r.n_candidates,
                           self._hits(r.opponent_scores, r.opponent_rows, include_text, known))

    def _hits(self, scores: np.ndarray, rows: np.ndarray, include_text: bool,
              proponents: frozenset[str] | None = None, st: Any = None) -> tuple[Hit, ...]:
        out = []
        for i, (s, r) in enumerate(zip(scores, rows), start=1):
            text = self.store.document(int(r)).text[:TEXT_PREVIEW] if include_text else None
            doc_id = self.store.doc_ids[int(r)]
            extra: dict[str, Any] = {}
            if st is not None:
                j = i - 1
                extra = dict(checkpoint_scores=tuple(float(x) for x in st.checkpoint_scores[j]),
                             topk_fraction=float(st.topk_fraction[j]), stable=bool(st.stable[j]),
                             interval=(float(st.low[j]), float(st.high[j])))
            out.append(Hit(doc_id, i, float(s), text, None if proponents is None else doc_id in proponents,
                           **extra))
        return tuple(out)

    def trace_batch(self, queries: Sequence[Query], *, method: str = "tracin", candidates: str = "bm25", k: int = 10,
                    num_candidates: int = 100, include_text: bool = False, deadline: float | None = None,
                    cancelled: Callable[[], bool] | None = None, opponents: int = 0,
                    stability: bool | None = None) -> list[TraceResult]:
        """``trace`` for each query, featurized in one batch (an invalid query raises; the service
        then retries one by one to isolate it). Known proponents are marked as in :meth:`trace`."""
        for q in queries:
            self._validate(q.prompt, q.target, method, candidates, k, num_candidates)
        self._check_opponents(opponents)
        t0 = time.perf_counter()
        rs = self.retriever.retrieve_many([(q.prompt, q.target) for q in queries], method=method,
                                          candidates=candidates, k=k, num_candidates=num_candidates,
                                          deadline=deadline, cancelled=cancelled, opponents=opponents)
        total = (time.perf_counter() - t0) * 1e3 / max(1, len(queries))
        sts = [self._stability(r, method, candidates, k, stability, deadline, cancelled, q)
               for q, r in zip(queries, rs)]
        return [self._result(q, method, candidates, r, include_text, {**r.timings_ms, "total_ms": total}, st)
                for q, r, st in zip(queries, rs, sts)]

    def side_by_side(self, prompt: str | Query, target: str | None = None, *, evidence: str = "bm25",
                     influence: str = "tracin_cos", k: int = 10, **kw: Any) -> SideBySide:
        """Evidence (a text method's hits) and influence (a gradient method's hits) for one fact, with the
        documents in both marked (``overlap``). Other keyword arguments go to :meth:`trace` for both."""
        if "grads" in method_class(evidence).needs:
            raise InvalidRequestError(f"evidence={evidence!r}: a text method (bm25, embedding), not a gradient one")
        if "grads" not in method_class(influence).needs:
            raise InvalidRequestError(f"influence={influence!r}: a gradient method (tracin, tracin_cos, influence)")
        ev = self.trace(prompt, target, method=evidence, k=k, **kw)
        inf = self.trace(prompt, target, method=influence, k=k, **kw)
        seen = {h.doc_id for h in ev.hits}
        return SideBySide(ev, inf, tuple(h.doc_id for h in inf.hits if h.doc_id in seen))

    def verify(self, prompt: str, target: str, example_ids: Sequence[str], *, checkpoint: int = 0,
               lr: float = 1e-2, n_random: int = 3, seed: int = 0, max_examples: int = 32,
               deadline: float | None = None, cancelled: Callable[[], bool] | None = None) -> Any:
        """Tail-patch on demand: the change in ``log p(target | prompt)`` after one SGD step on each example.

        Args:
            prompt, target: The fact.
            example_ids: Training examples to check (e.g. the doc ids of a trace's hits).
            checkpoint: Checkpoint stepped from (index into the index's checkpoints; ``-1`` = last).
                Default 0, as ``tracer eval --tail-patch``: the first, where facts are not yet learned.
            lr: SGD step size (default the eval's).
            n_random: Seeded random corpus examples stepped on too, as the baseline.
            seed: Seed of the random baseline (results are deterministic for a seed).
            max_examples: Cap on ``len(example_ids) + n_random`` (``LimitExceededError`` beyond).
            deadline, cancelled: As for :meth:`trace`, checked between chunks of 8 examples.

        Returns:
            A :class:`tracer.verification.Verification`: a verdict (delta, ms) per example and per
            baseline example.

        Raises:
            InvalidRequestError, NotFoundError, LimitExceededError, DeadlineExceededError, CancelledError.
        """
        from tracer.retrieval import stopper
        from tracer.verification import Verifier

        self._validate(prompt, target, "bm25", "bm25", 1, 1)
        with self._verifier_lock:
            if self._verifier is None:
                self._verifier = Verifier(self.retriever)
        return self._verifier.verify(prompt, target, example_ids, checkpoint=checkpoint, lr=lr, n_random=n_random,
                                     seed=seed, max_examples=max_examples, stop=stopper(deadline, cancelled))

    def get_documents(self, doc_ids: Sequence[str]) -> list[Document]:
        """Documents by id; ``NotFoundError`` names the first unknown id."""
        return self.store.documents(doc_ids)

    def evaluate(self, queries: Sequence[Query], *, methods: Sequence[str], candidates: str = "bm25",
                 num_candidates: int = 100, policy: str = "candidates", tail_patch: bool = False,
                 on_progress: Callable[[int, int, str], None] | None = None,
                 deadline: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run the benchmark; see :func:`tracer.evaluation.evaluate`."""
        from tracer.evaluation import EvalConfig, evaluate

        cfg = EvalConfig(methods=tuple(methods), candidates=candidates, num_candidates=num_candidates,
                         policy=policy, tail_patch=tail_patch, **kwargs)
        return evaluate(self.retriever, queries, cfg, on_progress=on_progress, deadline=deadline)

    def warm(self) -> None:
        """Load everything lazily loaded (checkpoints, FAISS, BM25), so the first query is fast.

        Raises:
            IndexMismatchError: The checkpoints on disk are not the ones the index was built from.
        """
        self.retriever.warm()

    def close(self) -> None:
        """Release models, memory maps and indexes (the object reloads them if used again)."""
        if self._verifier is not None:
            self._verifier.close()
        self.retriever.close()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
