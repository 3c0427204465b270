"""The query path: one :class:`Retriever` per index owns it from ``(prompt, target)`` to ranked rows.

Two-stage retrieval: candidate rows from a source, exact scores from a method, a tie-aware top-k.
Candidate sources (:data:`SOURCES`, the one table of them): ``bm25`` (lexical top-n),
``embedding`` (FAISS cosine top-n), ``gradient`` (FAISS inner product in TracIn space, top-n),
``union`` of the three, or ``full`` (every row). Full-corpus scoring is blockwise with a running
top-k, so no ``n_docs x n_queries`` matrix ever exists. Ties break by ``(-score, row)``.

Concurrency: query featurizing goes through a :class:`~tracer.batching.MicroBatcher` (concurrent
queries share one batched forward+backward per checkpoint; the hooked models are used by one
batch at a time), and scoring runs in the caller's thread with no lock: methods load their
per-index constants once (``prepare``) before they are shared, and the store's lazy loads are
locked. A :class:`Retriever` is therefore safe to call from many threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tracer.batching import BatchingConfig, MicroBatcher, intra_op_threads
from tracer.errors import CancelledError, DeadlineExceededError, IndexNotReadyError, InvalidRequestError
from tracer.featurize.views import RAW
from tracer.index.store import IndexStore
from tracer.methods.base import GradientMethod, Method, QueryFeatures
from tracer.methods.registry import METHODS, create_method, method_class

BLOCK = 8192  # rows scored per block in full-corpus scans


@dataclass(frozen=True)
class Source:
    """A candidate source: the index stage it searches (``None``: needs none) and the query feature it uses."""

    stage: str | None
    needs: str | None


SOURCES: dict[str, Source] = {
    "bm25": Source("bm25", None),
    "embedding": Source("embeddings", "embedding"),
    "gradient": Source("gradient_faiss", "grads"),
    "union": Source(None, None),  # every built source above
    "full": Source(None, None),
}
CANDIDATE_SOURCES: tuple[str, ...] = tuple(SOURCES)
SOURCE_STAGE = {name: s.stage for name, s in SOURCES.items() if s.stage}  # source -> index stage

Stop = Callable[[str], None]  # raises DeadlineExceededError / CancelledError when the call must end


def stopper(deadline: float | None = None, cancelled: Callable[[], bool] | None = None) -> Stop:
    """A check to call between (and inside) stages: raises once ``deadline`` passed or ``cancelled()``."""

    def check(stage: str) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError(f"deadline exceeded before stage {stage!r}")
        if cancelled is not None and cancelled():
            raise CancelledError(f"cancelled by the client before stage {stage!r}")

    return check


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, rows)``, ordered by ``(-score, row)``; NaN scores rank last."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    if len(s) > k:
        # argpartition, then keep every row tied with the k-th score so the tie-break is exact
        kth = np.partition(-s, k - 1)[k - 1]
        keep = np.nonzero(-s <= kth)[0]
        s, rows = s[keep], rows[keep]
    order = np.lexsort((rows, -s))[:k]
    return s[order], rows[order]


_EMPTY = (np.empty(0), np.empty(0, dtype=np.int64))  # the top-k of no rows
OPPONENT = "-"  # rank_many's key prefix for a method's lowest scores


def scan_full(score_fn: Callable[[np.ndarray], np.ndarray], n_rows: int, k: int,
              block: int = BLOCK, stop: Stop | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Score every row blockwise keeping a running top-``k``; ``stop`` is checked before each block."""
    return scan_full_many(lambda rows: {"": score_fn(rows)}, n_rows, k, block, stop).get("", _EMPTY)


def scan_full_many(score_fn: Callable[[np.ndarray], dict[str, np.ndarray]], n_rows: int, k: int,
                   block: int = BLOCK, stop: Stop | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`scan_full` for several score sets from one pass (``score_fn`` returns name -> scores)."""
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for lo in range(0, n_rows, block):
        if stop is not None:
            stop(f"full scan at row {lo}")
        rows = np.arange(lo, min(n_rows, lo + block), dtype=np.int64)
        for name, s in score_fn(rows).items():
            s0, r0 = best.get(name, _EMPTY)
            best[name] = top_k(np.concatenate([s0, s]), np.concatenate([r0, rows]), k)
    return best


def tracin_query_vector(store: IndexStore, q: QueryFeatures) -> np.ndarray:
    """The query in the gradient FAISS space (``<q, z>`` ~ TracIn over the stored coordinates)."""
    from tracer.methods.tracin import tracin_space

    coords = store.gradient_coords()
    return tracin_space([q.grads[RAW][i][coords[i]] for i in range(len(store.checkpoints))],
                        [c["lr"] for c in store.checkpoints])


def candidate_rows(store: IndexStore, q: QueryFeatures, source: str, n: int) -> np.ndarray:
    """Candidate rows for a query, sorted ascending (their order carries no meaning).

    Raises:
        InvalidRequestError: Unknown source or ``n < 1``.
        IndexNotReadyError: The source's index was not built.
    """
    from tracer.index.dense import search
    from tracer.methods.baselines import bm25_scores

    if n < 1:
        raise InvalidRequestError(f"num_candidates must be >= 1, got {n}")
    if source not in SOURCES:
        raise InvalidRequestError(f"unknown candidates source {source!r}; expected one of "
                                  f"{', '.join(CANDIDATE_SOURCES)}")
    if source == "full":
        return np.arange(store.n_documents, dtype=np.int64)
    if source == "union":
        parts = [candidate_rows(store, q, s, n) for s in SOURCE_STAGE if store.has(SOURCE_STAGE[s])]
        return np.unique(np.concatenate(parts)) if parts else np.arange(0, dtype=np.int64)
    store.require(SOURCES[source].stage or "", f"candidates={source!r}")
    if source == "bm25":
        every = np.arange(store.n_documents, dtype=np.int64)
        return np.sort(top_k(bm25_scores(store, q), every, n)[1])
    if source == "embedding":
        assert q.embedding is not None  # computed by Retriever.features whenever the index has embeddings
        _, rows = search(store.faiss("embedding"), q.embedding[None], min(n, store.n_documents))
    else:
        _, rows = search(store.faiss("gradient"), tracin_query_vector(store, q)[None], min(n, store.n_documents))
    return np.sort(rows[0][rows[0] >= 0])


@dataclass
class Retrieval:
    """The ranked rows of one query and what it cost."""

    features: QueryFeatures
    scores: np.ndarray
    rows: np.ndarray
    n_candidates: int
    timings_ms: dict[str, float]
    opponent_scores: np.ndarray = field(default_factory=lambda: np.empty(0))  # most negative first
    opponent_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    candidate_rows: np.ndarray | None = None  # the rows that were ranked (None: the whole corpus)
    #: the pipelined rerank's per-checkpoint products of ``candidate_rows`` (reused for stability)
    checkpoint_products: dict[int, Any] | None = None


@dataclass(frozen=True)
class Stability:
    """How a query's top-``k`` hits hold up across checkpoints (arrays aligned with the hits).

    Attributes:
        checkpoint_scores: ``(k, C)`` each hit's score under each checkpoint alone, on the score's
            scale (the score is their mean; see :func:`tracer.methods.kernel.checkpoint_scores`).
        topk_fraction: ``(k,)`` fraction of checkpoints whose own top-``k`` (over the same rows) holds the hit.
        low, high: ``(k,)`` 95% t-interval of the mean over checkpoints (``C - 1`` degrees of freedom).
    """

    checkpoint_scores: np.ndarray
    topk_fraction: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def stable(self) -> np.ndarray:
        """In the top-``k`` under every checkpoint."""
        return self.topk_fraction >= 1.0


class _Pipeline:
    """One query's rerank, scored checkpoint by checkpoint in the retriever's pool as gradients arrive."""

    def __init__(self, retriever: Retriever, method: GradientMethod, rows: np.ndarray) -> None:
        self.retriever, self.method, self.rows = retriever, method, rows
        self.futures: dict[int, Any] = {}
        self.per_ckpt: dict[int, Any] = {}

    def on_checkpoint(self, ci: int, q: QueryFeatures) -> None:
        if ci in self.method.checkpoint_indices() and ci not in self.futures:  # a retried batch calls again
            self.futures[ci] = self.retriever._pool().submit(self._score, q, ci)

    def _score(self, q: QueryFeatures, ci: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        from tracer.methods.kernel import checkpoint_dots

        with intra_op_threads(self.retriever.batching.torch_threads):
            return checkpoint_dots(self.retriever.store, q, self.rows, [self.method], ci)

    def scores(self, q: QueryFeatures) -> np.ndarray:
        """The method's scores of ``rows`` (waits for the checkpoints in flight, scores any missed)."""
        from tracer.methods.kernel import combine

        for ci in self.method.checkpoint_indices():
            if ci not in self.futures:
                self.on_checkpoint(ci, q)
        self.per_ckpt = {ci: f.result() for ci, f in self.futures.items()}
        return combine([self.method], self.per_ckpt)[self.method.name]


class Retriever:
    """Owns one index's query path: store, query encoder, method cache, candidates, ranking.

    Args:
        store: The opened index.
        checkpoint_dirs: Checkpoint paths if the models moved since the build.
        method_params: Per-method parameters, e.g. ``{"influence": {"damping": 0.1}}``.
        batching: How concurrent queries are gathered for featurizing.
        encoder: A ready query encoder (built lazily from the manifest when ``None``).
        tokenizer: Tokenizer directory overriding the one recorded in the manifest.
    """

    def __init__(self, store: IndexStore, *, checkpoint_dirs: Sequence[str | Path] | None = None,
                 method_params: dict[str, dict[str, Any]] | None = None,
                 batching: BatchingConfig = BatchingConfig(), encoder: Any = None,
                 tokenizer: str | Path | None = None) -> None:
        self.store = store
        self.tokenizer_path = tokenizer
        self.batching = batching
        self.checkpoint_dirs = checkpoint_dirs
        self.method_params = method_params or {}
        self._encoder = encoder
        self._methods: dict[str, Method] = {}
        self._executor: Any = None
        self._lock = threading.RLock()
        self.batcher: MicroBatcher[tuple[str, str, bool, bool, Any], QueryFeatures] = MicroBatcher(
            self._encode_batch, batching)

    # --- what the index offers
    def available_methods(self) -> list[str]:
        return [m for m in METHODS if all(self.store.has(s) for s in method_class(m).requires)]

    def available_candidates(self) -> list[str]:
        return [s for s, src in SOURCES.items() if src.stage is None or self.store.has(src.stage)]

    def check_candidates(self, candidates: str) -> None:
        """``InvalidRequestError`` for an unknown source, ``IndexNotReadyError`` for one not built."""
        if candidates not in SOURCES:
            raise InvalidRequestError(f"unknown candidates source {candidates!r}; expected one of "
                                      f"{', '.join(CANDIDATE_SOURCES)}")
        stage = SOURCES[candidates].stage
        if stage and not self.store.has(stage):
            raise IndexNotReadyError(f"index {self.store.name!r} was built without {stage!r}, "
                                     f"which candidates={candidates!r} needs")

    # --- lazily built, shared state (built once under the lock)
    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    from tracer.encoder import QueryEncoder

                    self._encoder = QueryEncoder(self.store, self.checkpoint_dirs, tokenizer=self.tokenizer_path)
        return self._encoder

    def method(self, name: str) -> Method:
        m = self._methods.get(name)
        if m is None:
            with self._lock:
                m = self._methods.get(name)
                if m is None:
                    m = create_method(name, self.store, **self.method_params.get(name, {}))
                    m.check_ready()
                    m.prepare()
                    self._methods[name] = m
        return m

    # --- featurizing
    def _needs(self, methods: Sequence[str], candidates: str) -> tuple[bool, bool]:
        needs = {n for m in methods for n in method_class(m).needs}
        sources = [candidates] if candidates != "union" else [s for s in SOURCE_STAGE]
        for s in sources:
            src = SOURCES.get(s)
            if src is not None and src.needs and src.stage and self.store.has(src.stage):
                needs.add(src.needs)
        return "grads" in needs, "embedding" in needs

    def _encode_batch(self, items: list[tuple[str, str, bool, bool, Any]]) -> list[QueryFeatures]:
        grads = any(i[2] for i in items)
        emb = any(i[3] for i in items)
        pairs = [(i[0], i[1]) for i in items]
        if not (grads or emb):
            return [QueryFeatures(text=p + t) for p, t in pairs]
        sinks = [i[4] for i in items]

        def on_checkpoint(ci: int, feats: list[QueryFeatures]) -> None:
            for sink, q in zip(sinks, feats):
                if sink is not None:
                    sink(ci, q)

        return self.encoder.encode_many(pairs, grads, emb, on_checkpoint if any(sinks) else None)

    def features(self, pairs: Sequence[tuple[str, str]], methods: Sequence[str], candidates: str = "bm25",
                 deadline: float | None = None,
                 sinks: Sequence[Callable[[int, QueryFeatures], None]] | None = None) -> list[QueryFeatures]:
        """Query features for the given methods and candidate source (computed once, shared).

        Goes through the micro-batcher, so concurrent callers share batched forward+backward passes.
        ``sinks[i](ci, features)`` is called as soon as query ``i``'s checkpoint ``ci`` is featurized.
        """
        grads, emb = self._needs(methods, candidates)
        if not (grads or emb):
            return [QueryFeatures(text=p + t) for p, t in pairs]
        _ = self.encoder  # load models (and check fingerprints) outside the batch
        sinks = list(sinks) if sinks is not None else [None] * len(pairs)
        return self.batcher.submit([(p, t, grads, emb, s) for (p, t), s in zip(pairs, sinks)], deadline)

    def prepare_queries(self, qs: list[QueryFeatures], methods: Sequence[str]) -> None:
        """Let each method transform a batch of queries together (e.g. TRAK's sketch in one GEMM)."""
        for name in methods:
            self.method(name).prepare_queries(qs)

    # --- ranking
    def candidates(self, q: QueryFeatures, source: str, n: int) -> np.ndarray:
        return candidate_rows(self.store, q, source, n)

    def rank(self, q: QueryFeatures, method: str, k: int, rows: np.ndarray | None = None,
             stop: Stop | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` of one query over ``rows`` (``None``: the whole corpus, blockwise)."""
        return self.rank_many(q, [method], k, rows, stop)[method]

    def rank_many(self, q: QueryFeatures, methods: Sequence[str], k: int, rows: np.ndarray | None = None,
                  stop: Stop | None = None, opponents: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Top-``k`` of several methods; gradient methods share one read of the rows (the kernel).

        With ``opponents``, the same pass also keeps each method's ``opponents`` *lowest* scores, under
        the key ``OPPONENT + method``, ordered most negative first (scores as the method gives them)."""
        with intra_op_threads(self.batching.torch_threads):
            return self._rank_many(q, methods, k, rows, stop, opponents)

    def _rank_many(self, q: QueryFeatures, methods: Sequence[str], k: int, rows: np.ndarray | None,
                   stop: Stop | None, opponents: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from tracer.methods.kernel import score_together

        ms = [self.method(m) for m in methods]
        grad = [m for m in ms if isinstance(m, GradientMethod)]
        other = [m for m in ms if not isinstance(m, GradientMethod)]

        def score_all(r: np.ndarray) -> dict[str, np.ndarray]:
            out = score_together(self.store, q, r, grad) if grad else {}
            out.update({m.name: m.score(q, r) for m in other})
            return out

        if rows is not None:
            scored = score_all(rows)
            got = {m: top_k(scored[m], rows, k) for m in methods}
            got.update({OPPONENT + m: top_k(-scored[m], rows, opponents) for m in methods if opponents})
        else:
            def both(r: np.ndarray) -> dict[str, np.ndarray]:
                out = score_all(r)
                return {**out, **{OPPONENT + m: -s for m, s in out.items()}} if opponents else out

            got = scan_full_many(both, self.store.n_documents, max(k, opponents), stop=stop)
            got = {name: top_k(*sr, opponents if name.startswith(OPPONENT) else k) for name, sr in got.items()}
        res = {m: got.get(m, _EMPTY) for m in methods}
        res.update({OPPONENT + m: (-got[OPPONENT + m][0], got[OPPONENT + m][1]) for m in methods
                    if opponents and OPPONENT + m in got})
        return res

    def retrieve(self, prompt: str, target: str, *, method: str, candidates: str, k: int, num_candidates: int,
                 deadline: float | None = None, cancelled: Callable[[], bool] | None = None,
                 opponents: int = 0) -> Retrieval:
        """Featurize, gather candidates, rank: the whole query path of one (validated) query."""
        return self.retrieve_many([(prompt, target)], method=method, candidates=candidates, k=k,
                                  num_candidates=num_candidates, deadline=deadline, cancelled=cancelled,
                                  opponents=opponents)[0]

    def _pool(self) -> Any:
        with self._lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tracer-score")
            return self._executor

    def retrieve_many(self, pairs: Sequence[tuple[str, str]], *, method: str, candidates: str, k: int,
                      num_candidates: int, deadline: float | None = None,
                      cancelled: Callable[[], bool] | None = None, opponents: int = 0) -> list[Retrieval]:
        """:meth:`retrieve` for several queries, featurized in one batch.

        ``opponents``: also return the rows with the lowest scores (most negative first) among the
        same rows that were ranked: the candidates, or the whole corpus with ``candidates="full"``.

        With ``bm25`` candidates (which need only the query text) and a gradient method, the
        candidates are found first and each checkpoint is scored in a background thread as soon as
        its gradients are in, while the next checkpoint is featurized: the rerank hides behind the
        forward+backward passes, and only the last checkpoint's scoring is left after them.
        """
        stop = stopper(deadline, cancelled)
        t0 = time.perf_counter()
        m = self.method(method)
        early: list[np.ndarray] | None = None
        pipes: list[_Pipeline] = []
        if candidates == "bm25" and isinstance(m, GradientMethod):
            early = [self.candidates(QueryFeatures(text=p + t), "bm25", num_candidates) for p, t in pairs]
            pipes = [_Pipeline(self, m, r) for r in early]
        t1 = time.perf_counter()
        feats = self.features(pairs, [method], candidates, deadline, sinks=[p.on_checkpoint for p in pipes] or None)
        featurize_ms = (time.perf_counter() - t1) * 1e3 / max(1, len(pairs))
        early_ms = (t1 - t0) * 1e3 / max(1, len(pairs))
        out = []
        for i, q in enumerate(feats):
            stop("candidates")
            t1 = time.perf_counter()
            rows = None if candidates == "full" else early[i] if early is not None else \
                self.candidates(q, candidates, num_candidates)
            t2 = time.perf_counter()
            stop("rerank")
            opp = _EMPTY
            if pipes:
                all_scores = pipes[i].scores(q)
                scores, top = top_k(all_scores, rows, k)  # type: ignore[arg-type]
                if opponents:
                    neg, opp_rows = top_k(-all_scores, rows, opponents)  # type: ignore[arg-type]
                    opp = (-neg, opp_rows)
            else:
                got = self.rank_many(q, [method], k, rows, stop, opponents)
                scores, top = got[method]
                opp = got.get(OPPONENT + method, _EMPTY)
            t3 = time.perf_counter()
            timings = {"featurize_ms": featurize_ms, "candidates_ms": (t2 - t1) * 1e3 + early_ms,
                       "rerank_ms": (t3 - t2) * 1e3}
            out.append(Retrieval(q, scores, top, self.store.n_documents if rows is None else len(rows), timings,
                                 opp[0], opp[1], rows, pipes[i].per_ckpt if pipes else None))
        return out

    def stability(self, r: Retrieval, method: str, k: int, stop: Stop | None = None) -> Stability | None:
        """Per-checkpoint view of ``r``'s hits (``None`` for methods not built from checkpoints, or one
        checkpoint). Over candidates it rescores them per checkpoint (cheap); over the whole corpus it
        is one more blockwise scan keeping each checkpoint's top-``k``."""
        from scipy.stats import t as student

        from tracer.methods.kernel import checkpoint_scores, per_checkpoint_scores

        m = self.method(method)
        if not isinstance(m, GradientMethod) or len(m.checkpoint_indices()) < 2 or not len(r.rows):
            return None
        q, hits = r.features, r.rows
        with intra_op_threads(self.batching.torch_threads):
            if r.candidate_rows is not None:
                cand = r.candidate_rows
                reuse = r.checkpoint_products  # the pipelined rerank already multiplied these rows
                per = per_checkpoint_scores(m, reuse) if reuse is not None and all(
                    m.name in reuse.get(ci, {}) for ci in m.checkpoint_indices()) else checkpoint_scores(
                    self.store, q, cand, m)
                tops = [set(top_k(s, cand, k)[1].tolist()) for s in per]
                pos = {int(x): i for i, x in enumerate(cand)}
                mine = per[:, [pos[int(h)] for h in hits]]
            else:
                best = scan_full_many(lambda rows: {str(c): s for c, s in
                                                    enumerate(checkpoint_scores(self.store, q, rows, m))},
                                      self.store.n_documents, k, stop=stop)
                tops = [set(best[str(c)][1].tolist()) for c in range(len(m.checkpoint_indices()))]
                mine = checkpoint_scores(self.store, q, hits, m)
        n_c = mine.shape[0]
        frac = np.array([sum(int(h) in t for t in tops) / n_c for h in hits])
        half = student.ppf(0.975, n_c - 1) * mine.std(axis=0, ddof=1) / np.sqrt(n_c)
        mean = mine.mean(axis=0)
        return Stability(mine.T.copy(), frac, mean - half, mean + half)

    # --- lifecycle
    def warm(self) -> None:
        """Load everything lazily loaded (checkpoints, FAISS, BM25, method constants) so the first query is fast.

        Raises:
            IndexMismatchError: The checkpoints on disk are not the ones the index was built from.
        """
        if self.store.has("gradients") or self.store.has("embeddings"):
            _ = self.encoder
        for m in self.available_methods():
            self.method(m)
        if len(self.store.checkpoints) > 1:
            import scipy.stats  # noqa: F401 - stability's t-interval; importing it costs ~0.6 s once
        if self.store.has("bm25"):
            self.store.bm25()
        for which, stage in (("gradient", "gradient_faiss"), ("embedding", "embeddings")):
            if self.store.has(stage):
                self.store.faiss(which)

    def close(self) -> None:
        """Release models, memory maps and indexes (they reload if used again)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._methods.clear()
            self._encoder = None
            self.store.clear_caches()


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """RRF (Cormack et al. 2009): ``sum_r 1 / (k + rank_r(row))`` over rankings of rows.

    Returns:
        ``(scores, rows)`` over the union of rows, ordered by ``(-score, row)``.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (k + rank)
    rows = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    return top_k(scores, rows, len(rows))
