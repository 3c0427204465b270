"""``Tracer``: the library API — open an index, trace facts, fetch documents, evaluate.

The same object backs the gRPC service (``tracer.service``) and the CLI; it knows
nothing about transports. Input is validated here and reported with ``TracerError``
subclasses naming the offending field.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tracer.encoder import QueryEncoder
from tracer.errors import DeadlineExceededError, IndexNotReadyError, InvalidRequestError
from tracer.index.store import IndexStore
from tracer.methods.base import Method, QueryFeatures
from tracer.methods.registry import CANDIDATE_SOURCES, METHODS, create_method, method_class
from tracer.retrieval import SOURCE_STAGE, candidate_rows, scan_full, top_k
from tracer.types import Document, Hit, Query, TraceResult

TEXT_PREVIEW = 300  # characters of document text returned with a hit


def _check_deadline(deadline: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError(f"deadline exceeded before stage {stage!r}")


class Tracer:
    """Trace facts to the training examples that support them, over one index.

    Example:
        >>> t = Tracer.open("indexes/demo")  # doctest: +SKIP
        >>> t.trace("Marie Curie was born in", " Warsaw", method="tracin", k=5)  # doctest: +SKIP
    """

    def __init__(self, store: IndexStore, encoder: QueryEncoder | None = None,
                 method_params: dict[str, dict[str, Any]] | None = None) -> None:
        self.store = store
        self._encoder = encoder
        self._method_params = method_params or {}
        self._methods: dict[str, Method] = {}

    @classmethod
    def open(cls, index_dir: str | Path, *, verify: bool = False, checkpoint_dirs: Sequence[str | Path] | None = None,
             method_params: dict[str, dict[str, Any]] | None = None) -> Tracer:
        """Open an index; models are loaded lazily on the first query that needs them.

        Args:
            index_dir: Index directory.
            verify: Check file checksums (otherwise sizes only).
            checkpoint_dirs: Checkpoint paths if the models moved since the build.
            method_params: Per-method parameters, e.g. ``{"influence": {"damping": 0.1}}``.
        """
        t = cls(IndexStore.open(index_dir, verify=verify), method_params=method_params)
        t._checkpoint_dirs = checkpoint_dirs
        return t

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
        return [m for m in METHODS if all(self.store.has(s) for s in method_class(m).requires)]

    def available_candidates(self) -> list[str]:
        return [s for s in CANDIDATE_SOURCES if s in ("full", "union") or self.store.has(SOURCE_STAGE[s])]

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

    # --- internals ---
    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            self._encoder = QueryEncoder(self.store, getattr(self, "_checkpoint_dirs", None))
        return self._encoder

    def method(self, name: str) -> Method:
        if name not in self._methods:
            m = create_method(name, self.store, **self._method_params.get(name, {}))
            m.check_ready()
            self._methods[name] = m
        return self._methods[name]

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

    def check_candidates(self, candidates: str) -> None:
        """``InvalidRequestError`` for an unknown source, ``IndexNotReadyError`` for one not built."""
        if candidates not in CANDIDATE_SOURCES:
            raise InvalidRequestError(f"unknown candidates source {candidates!r}; expected one of "
                                      f"{', '.join(CANDIDATE_SOURCES)}")
        if candidates in SOURCE_STAGE and not self.store.has(SOURCE_STAGE[candidates]):
            raise IndexNotReadyError(f"index {self.name!r} was built without {SOURCE_STAGE[candidates]!r}, "
                                     f"which candidates={candidates!r} needs")

    def features(self, pairs: Sequence[tuple[str, str]], methods: Sequence[str],
                 candidates: str = "bm25") -> list[QueryFeatures]:
        """Query features for the given methods and candidate source (computed once, shared)."""
        needs = {n for m in methods for n in method_class(m).needs}
        if candidates in ("gradient", "union") and self.store.has("gradient_faiss"):
            needs.add("grads")
        if candidates in ("embedding", "union") and self.store.has("embeddings"):
            needs.add("embedding")
        if not needs:
            return [QueryFeatures(text=p + t) for p, t in pairs]
        return self.encoder.encode_many(pairs, "grads" in needs, "embedding" in needs)

    def rank(self, q: QueryFeatures, method: str, candidates: str, k: int, num_candidates: int,
             rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` of one query: candidates (or given ``rows``), then exact scores."""
        m = self.method(method)
        if rows is None and candidates == "full":
            return scan_full(lambda r: m.score(q, r), self.n_documents, k)
        if rows is None:
            rows = candidate_rows(self.store, q, candidates, num_candidates)
        return top_k(m.score(q, rows), rows, k)

    # --- public API ---
    def trace(self, prompt: str, target: str, *, method: str = "tracin", candidates: str = "bm25", k: int = 10,
              num_candidates: int = 100, include_text: bool = False, deadline: float | None = None,
              query_id: str = "") -> TraceResult:
        """Rank training examples by how much they support ``target`` after ``prompt``.

        Args:
            prompt: The fact's context, e.g. ``"Marie Curie was born in"``.
            target: The completion, e.g. ``" Warsaw"`` (loss is taken on it only).
            method: One of ``METHODS``.
            candidates: One of ``CANDIDATE_SOURCES``.
            k: Hits returned.
            num_candidates: Candidates retrieved per source before reranking.
            include_text: Attach (truncated) document text to each hit.
            deadline: Absolute ``time.monotonic()`` deadline, checked between stages.
            query_id: Echoed in the result.

        Raises:
            InvalidRequestError, IndexNotReadyError, DeadlineExceededError.
        """
        self._validate(prompt, target, method, candidates, k, num_candidates)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.method(method)
        q = self.features([(prompt, target)], [method], candidates)[0]
        timings["featurize_ms"] = (time.perf_counter() - t0) * 1e3
        _check_deadline(deadline, "candidates")
        t1 = time.perf_counter()
        rows = None if candidates == "full" else candidate_rows(self.store, q, candidates, num_candidates)
        timings["candidates_ms"] = (time.perf_counter() - t1) * 1e3
        _check_deadline(deadline, "rerank")
        t2 = time.perf_counter()
        scores, top = self.rank(q, method, candidates, k, num_candidates, rows)
        timings["rerank_ms"] = (time.perf_counter() - t2) * 1e3
        hits = self._hits(scores, top, include_text)
        timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        n_cand = self.n_documents if rows is None else len(rows)
        return TraceResult(Query(query_id, prompt, target), method, candidates, hits, timings, self.fingerprint,
                           n_cand)

    def _hits(self, scores: np.ndarray, rows: np.ndarray, include_text: bool) -> tuple[Hit, ...]:
        out = []
        for i, (s, r) in enumerate(zip(scores, rows), start=1):
            text = self.store.document(int(r)).text[:TEXT_PREVIEW] if include_text else None
            out.append(Hit(self.store.doc_ids[int(r)], i, float(s), text))
        return tuple(out)

    def trace_batch(self, queries: Sequence[Query], **kwargs: Any) -> list[TraceResult]:
        """``trace`` for each query (errors raise; the service isolates them per query)."""
        return [self.trace(q.prompt, q.target, query_id=q.query_id, **kwargs) for q in queries]

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
        return evaluate(self, queries, cfg, on_progress=on_progress, deadline=deadline)

    def warm(self) -> None:
        """Load everything lazily loaded (checkpoints, FAISS, BM25), so the first query is fast.

        Raises:
            IndexMismatchError: The checkpoints on disk are not the ones the index was built from.
        """
        if self.store.has("gradients") or self.store.has("embeddings"):
            _ = self.encoder
        for m in self.available_methods():
            self.method(m)
        if self.store.has("bm25"):
            self.store.bm25()
        for which, stage in (("gradient", "gradient_faiss"), ("embedding", "embeddings")):
            if self.store.has(stage):
                self.store.faiss(which)

    def close(self) -> None:
        """Release models, memory maps and indexes (the object reloads them if used again)."""
        self._methods.clear()
        self._encoder = None
        self.store.clear_caches()
