"""The fact-tracing benchmark: rank proponents for every query, score the rankings, tail-patch.

Candidate policies (always labelled in the report):
* ``candidates`` — the configured source (``bm25``, ``union``...) with ``num_candidates``;
* ``ftrace`` — FTRACE's (Akyürek et al. 2022): the query's proponents + BM25 top-100 +
  up to 100 examples containing the target string + 100 random; since the proponents are
  always candidates, MRR here is an upper bound of what full retrieval would give;
* ``full`` — the whole corpus (blockwise scan, running top-k).
Metrics per method: MRR, recall@k, success@k, precision@k, nDCG@10, per relation, with
95% bootstrap intervals; optionally the tail-patch log-probability increase. The report also
carries ``provenance`` and a per-query ``details`` block (:mod:`tracer.metrics.details`) for
the HTML report's curves, paired tests and drill-down.
"""

from __future__ import annotations

import logging
import zlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from tracer.errors import DeadlineExceededError, InvalidRequestError
from tracer.metrics import aggregate, evaluate_run
from tracer.metrics.details import run_details
from tracer.methods.base import QueryFeatures
from tracer.methods.task import fit_task_corrections
from tracer.retrieval import Retriever, stopper
from tracer.types import Query

log = logging.getLogger(__name__)

POLICIES = ("candidates", "ftrace", "full")


@dataclass(frozen=True)
class EvalConfig:
    """What the benchmark run computes."""

    methods: tuple[str, ...] = field(default=("bm25", "embedding", "tracin", "tracin_cos", "influence", "trak",
                                              "random"), metadata={"help": "methods to compare"})
    candidates: str = field(default="bm25", metadata={"help": "candidate source under policy=candidates"})
    num_candidates: int = field(default=100, metadata={"help": "candidates per source"})
    policy: str = field(default="candidates", metadata={"help": "candidates | ftrace | full"})
    ks: tuple[int, ...] = field(default=(1, 3, 10, 25, 100), metadata={"help": "cutoffs"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples"})
    seed: int = field(default=0, metadata={"help": "seed of random candidates and bootstrap"})
    batch_size: int = field(default=32, metadata={"help": "queries featurized together"})
    fusions: tuple[str, ...] = field(default=(), metadata={
        "help": "reciprocal-rank fusions to add, each 'm1+m2' over methods in `methods`"})
    tail_patch: bool = field(default=False, metadata={"help": "run the tail-patch causal check"})
    tail_patch_k: int = field(default=3, metadata={"help": "top examples stepped on per query and method"})
    tail_patch_lr: float = field(default=1e-2, metadata={"help": "SGD step size of the tail-patch"})
    tail_patch_checkpoint: int = field(default=0, metadata={"help": "checkpoint stepped from (index; -1 = last)"})
    tail_patch_max_queries: int = field(default=200, metadata={"help": "queries used for the tail-patch"})
    stability: bool = field(default=True, metadata={
        "help": "per-hit stability over checkpoints of each gradient method's top hits (candidate policies "
                "only: a full scan would double the cost)"})

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidRequestError(f"unknown policy {self.policy!r}; expected one of {', '.join(POLICIES)}")
        if not self.methods:
            raise InvalidRequestError("methods must name at least one method")
        if not self.tail_patch_lr > 0:
            raise InvalidRequestError(f"tail_patch_lr must be > 0, got {self.tail_patch_lr}")
        if self.num_candidates < 1 or not self.ks or min(self.ks) < 1:
            raise InvalidRequestError("num_candidates and every k must be >= 1")
        for fusion in self.fusions:
            parts = fusion.split("+")
            if len(parts) < 2 or any(p not in self.methods for p in parts):
                raise InvalidRequestError(f"fusion {fusion!r} must join 2+ of the evaluated methods with '+'")

    @property
    def run_names(self) -> tuple[str, ...]:
        """Methods plus fusions (named ``rrf(m1+m2)``), in report order."""
        return tuple(self.methods) + tuple(f"rrf({f})" for f in self.fusions)


@dataclass
class EvalResult:
    report: dict[str, Any]
    runs: dict[str, dict[str, list[tuple[str, float]]]]  # method -> qid -> ranked (doc_id, score)
    qrels: dict[str, set[str]]


Runs = dict[str, dict[str, list[tuple[str, float]]]]
StabilityRuns = dict[str, dict[str, list[Any]]]  # method -> qid -> per-hit [topk_fraction, stable, low, high]


def _ftrace_rows(retriever: Retriever, q: Query, qf: QueryFeatures, texts: list[str],
                 rng: np.random.Generator) -> np.ndarray:
    store = retriever.store
    parts = [store.rows([p for p in q.proponents if p in store.row_of])]
    if store.has("bm25"):
        parts.append(retriever.candidates(qf, "bm25", 100))
    needle = q.target.strip()
    sharing = [i for i, t in enumerate(texts) if needle and needle in t][:100]
    parts.append(np.asarray(sharing, dtype=np.int64))
    parts.append(rng.choice(store.n_documents, size=min(100, store.n_documents), replace=False))
    return np.unique(np.concatenate(parts))


def _rank_all(retriever: Retriever, queries: Sequence[Query], cfg: EvalConfig,
              on_progress: Callable[[int, int, str], None] | None,
              deadline: float | None) -> tuple[Runs, StabilityRuns]:
    """Every method's ranked run, and per-hit stability of the gradient methods' top :data:`HITS_K`."""
    from tracer.index.seeds import extend_stability
    from tracer.metrics.details import HITS_K
    from tracer.metrics.stability import stability_block
    from tracer.retrieval import Retrieval

    store = retriever.store
    k = max(cfg.ks)
    texts = [store.document(i).text for i in range(store.n_documents)] if cfg.policy == "ftrace" else []
    runs: Runs = {m: {} for m in cfg.methods}
    stab: StabilityRuns = {}
    stab_methods = [m for m in cfg.methods if cfg.stability and cfg.policy != "full" and _has_stability(retriever, m)]
    source = cfg.candidates if cfg.policy == "candidates" else ("bm25" if cfg.policy == "ftrace" else "full")
    done = 0
    for s in range(0, len(queries), cfg.batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError(f"deadline exceeded after {done} of {len(queries)} queries")
        batch = queries[s:s + cfg.batch_size]
        feats = retriever.features([(q.prompt, q.target) for q in batch], cfg.methods, source, deadline)
        retriever.prepare_queries(feats, cfg.methods)
        for i, (q, qf) in enumerate(zip(batch, feats)):
            if deadline is not None and time.monotonic() > deadline:  # per query: one call never overruns far
                raise DeadlineExceededError(f"deadline exceeded after {done + i} of {len(queries)} queries")
            rng = np.random.default_rng([cfg.seed, zlib.crc32(q.query_id.encode())])  # stable across processes
            rows = None
            if cfg.policy == "ftrace":
                rows = _ftrace_rows(retriever, q, qf, texts, rng)
            elif cfg.policy == "candidates":
                rows = retriever.candidates(qf, cfg.candidates, cfg.num_candidates)
            ranked = retriever.rank_many(qf, cfg.methods, k, rows, stopper(deadline))
            for m, (scores, top) in ranked.items():
                runs[m][q.query_id] = [(store.doc_ids[int(r)], float(sc)) for sc, r in zip(scores, top)]
            for m in stab_methods:  # the same measure as Tracer.trace's hits: top-HITS_K of these candidates
                scores, top = ranked[m]
                n = min(HITS_K, len(top))
                r = Retrieval(qf, scores[:n], top[:n], len(rows), {}, candidate_rows=rows)
                st = extend_stability(retriever, retriever.stability(r, m, HITS_K), q.prompt, q.target, m, HITS_K,
                                      rows, top[:n])  # x projection seeds where the index has seed siblings
                stab.setdefault(m, {})[q.query_id] = stability_block(st, n)
            qf.cache.clear()  # keep memory flat across queries
        done += len(batch)
        if on_progress:
            on_progress(done, len(queries), "rank")
    for fusion in cfg.fusions:
        runs[f"rrf({fusion})"] = _fuse([runs[m] for m in fusion.split("+")], k)
    return runs, stab


def _has_stability(retriever: Retriever, method: str) -> bool:
    """Whether ``method``'s hits get a stability measure: a gradient method over 2+ checkpoints."""
    from tracer.methods.base import GradientMethod

    m = retriever.method(method)
    return isinstance(m, GradientMethod) and len(m.checkpoint_indices()) > 1


def _fuse(method_runs: list[dict[str, list[tuple[str, float]]]], k: int) -> dict[str, list[tuple[str, float]]]:
    """Reciprocal-rank fusion (Cormack et al. 2009) of per-method runs, query by query."""
    from tracer.retrieval import reciprocal_rank_fusion

    fused: dict[str, list[tuple[str, float]]] = {}
    for qid in method_runs[0]:
        ids = sorted({d for r in method_runs for d, _ in r[qid]})
        index = {d: i for i, d in enumerate(ids)}
        rankings = [np.array([index[d] for d, _ in r[qid]], dtype=np.int64) for r in method_runs]
        scores, rows = reciprocal_rank_fusion(rankings)
        fused[qid] = [(ids[int(r)], float(s)) for s, r in zip(scores[:k], rows[:k])]
    return fused


def evaluate(retriever: Retriever, queries: Sequence[Query], cfg: EvalConfig,
             on_progress: Callable[[int, int, str], None] | None = None,
             deadline: float | None = None) -> dict[str, Any]:
    """Run the benchmark and return the report dict (see ``tracer.metrics.report``)."""
    return run_evaluation(retriever, queries, cfg, on_progress, deadline).report


def run_evaluation(retriever: Retriever, queries: Sequence[Query], cfg: EvalConfig,
                   on_progress: Callable[[int, int, str], None] | None = None,
                   deadline: float | None = None) -> EvalResult:
    """Like :func:`evaluate`, also returning the ranked runs and qrels (for TREC files).

    Queries without proponents are left out of the metrics and proponent ids the index lacks
    count as misses; each is logged once as a warning with its count, and the counts go into
    ``settings`` (``n_queries_without_proponents``, ``n_unknown_proponents``).
    """
    n_given = len(queries)
    queries = [q for q in queries if q.proponents]
    if not queries:
        raise InvalidRequestError("no query has ground-truth proponents; nothing to evaluate")
    n_dropped = n_given - len(queries)
    if n_dropped:
        log.warning("%d of %d queries have no proponents; they are left out of the metrics", n_dropped, n_given)
    n_unknown = len({p for q in queries for p in q.proponents if p not in retriever.store.row_of})
    if n_unknown:
        log.warning("%d proponent ids in the queries are not in index %s; they count as misses",
                    n_unknown, retriever.store.name)
    for m in cfg.methods:
        retriever.method(m)  # fail fast on unknown / unavailable methods
    task = fit_task_corrections(retriever, [(q.prompt, q.target) for q in queries], cfg.methods, cfg.batch_size,
                                deadline)  # R_eval of task-corrected methods (TrackStar): these very queries
    if cfg.policy == "candidates":
        retriever.check_candidates(cfg.candidates)
    t0 = time.perf_counter()
    runs, stab = _rank_all(retriever, queries, cfg, on_progress, deadline)
    qrels = {q.query_id: set(q.proponents) for q in queries}
    groups = {q.query_id: q.relation or "?" for q in queries}
    methods: dict[str, Any] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for m in cfg.run_names:
        per_query[m] = evaluate_run({qid: [d for d, _ in r] for qid, r in runs[m].items()}, qrels, cfg.ks)
        methods[m] = {"candidates": _label(cfg), **aggregate(per_query[m], groups, n_boot=cfg.n_boot, seed=cfg.seed)}
    details = run_details(runs, qrels, per_query, max(cfg.ks), stab)
    if cfg.tail_patch:
        patched = _add_tail_patch(retriever, queries, runs, cfg, methods, on_progress)
        for m, rows in patched.items():
            for qid, row in rows.items():
                details["per_query"][m][qid].update(row)
    store = retriever.store
    settings = {**asdict(cfg), "index": store.name, "index_fingerprint": store.fingerprint,
                "n_queries": len(queries), "n_queries_without_proponents": n_dropped,
                "n_unknown_proponents": n_unknown, "n_documents": store.n_documents,
                "seconds": round(time.perf_counter() - t0, 1)}
    if task:
        settings["task_corrections"] = task
    details["queries"] = {q.query_id: {"prompt": q.prompt, "target": q.target, "relation": q.relation,
                                       "proponents": list(q.proponents)} for q in queries}
    details["documents"] = _shown_documents(retriever, details)
    report = {"title": f"tracer benchmark on {store.name}", "settings": settings, "methods": methods,
              "provenance": provenance(retriever), "details": details}
    if stab:
        from tracer.index.seeds import n_views

        report["stability"] = stability_summary(details, qrels, cfg.n_boot, cfg.seed)
        report["stability"]["views"] = details["stability_views"] = {m: n_views(retriever, m) for m in stab}
    return EvalResult(report, runs, qrels)


def stability_summary(details: dict[str, Any], qrels: dict[str, set[str]], n_boot: int,
                      seed: int) -> dict[str, Any]:
    """The report's stability table: per method, proponent rates of stable vs unstable hits at equal rank
    (:func:`tracer.metrics.stability.summarize`) over the top :data:`~tracer.metrics.details.HITS_K`."""
    from tracer.metrics.details import HITS_K
    from tracer.metrics.stability import hit_matrix, summarize

    return {"k": HITS_K, "methods": {
        m: summarize(hit_matrix(details["hits"][m], st, qrels, HITS_K), n_boot=n_boot, seed=seed)
        for m, st in details["stability"].items()}}


def _shown_documents(retriever: Retriever, details: dict[str, Any]) -> dict[str, str]:
    """Truncated text of every doc the drill-down shows: each method's top hits and each proponent."""
    from tracer.metrics.details import TEXT_CHARS

    store = retriever.store
    ids = {d for hits in details["hits"].values() for ranked in hits.values() for d, _ in ranked}
    ids |= {p for q in details["queries"].values() for p in q["proponents"] if p in store.row_of}
    return {d: store.document(int(store.row_of[d])).text[:TEXT_CHARS] for d in sorted(ids)}


def provenance(retriever: Retriever) -> dict[str, Any]:
    """Where the numbers come from: the index (fingerprint, checkpoints and their lr, features) and the
    versions of the libraries that computed them."""
    import platform
    from importlib import metadata

    store = retriever.store
    m = store.manifest
    feat = m.get("featurize") or {}
    versions = {}
    for dist in ("tracer", "torch", "transformers", "faiss-cpu", "numpy", "bm25s", "ir-measures"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return {"index": store.name, "fingerprint": store.fingerprint, "n_documents": store.n_documents,
            "created": m.get("created"), "index_tracer_version": m.get("tracer_version"),
            "checkpoints": [{k: c.get(k) for k in ("path", "step", "lr")} for c in m.get("checkpoints", [])],
            "featurize": {k: v for k, v in feat.items() if isinstance(v, (str, int, float, bool)) or v is None},
            "versions": versions}


def _label(cfg: EvalConfig) -> str:
    if cfg.policy == "ftrace":
        return "ftrace*"  # proponents + bm25@100 + target@100 + random@100: MRR is an upper bound
    if cfg.policy == "full":
        return "full corpus"
    return f"{cfg.candidates}@{cfg.num_candidates}"


def _add_tail_patch(retriever: Retriever, queries: Sequence[Query], runs: dict[str, dict[str, list[tuple[str, float]]]],
                    cfg: EvalConfig, methods: dict[str, Any],
                    on_progress: Callable[[int, int, str], None] | None) -> dict[str, dict[str, dict[str, float]]]:
    from tracer.causal import tail_patch_deltas
    from tracer.featurize.checkpoint import encode_documents
    from tracer.model.loading import load_model
    from tracer.model.tokenization import encode_example

    store, encoder = retriever.store, retriever.encoder
    tok = encoder.tokenizer
    model = load_model(encoder.dirs[cfg.tail_patch_checkpoint], attn_implementation="eager")  # honours moved models
    max_len = encoder.cfg.max_length if encoder.cfg else 128
    subset = list(queries)[: cfg.tail_patch_max_queries]
    per_method: dict[str, dict[str, dict[str, float]]] = {m: {} for m in cfg.run_names}
    for i, q in enumerate(subset):
        tops = {m: [d for d, _ in runs[m][q.query_id][: cfg.tail_patch_k]] for m in cfg.run_names}
        uniq = sorted({d for ds in tops.values() for d in ds})
        docs = store.documents(uniq)
        deltas = dict(zip(uniq, tail_patch_deltas(model, tok, encode_example(tok, q.prompt, q.target, max_len),
                                                  encode_documents(tok, docs, max_len), cfg.tail_patch_lr)))
        for m, ds in tops.items():
            per_method[m][q.query_id] = {"tail_patch": float(np.mean([deltas[d] for d in ds]))}
        if on_progress:
            on_progress(i + 1, len(subset), "tail_patch")
    for m in cfg.run_names:
        methods[m]["tail_patch"] = aggregate(per_method[m], n_boot=cfg.n_boot, seed=cfg.seed)["all"]["tail_patch"]
    return per_method
