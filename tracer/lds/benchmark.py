"""The LDS benchmark over one index: subset models, measured losses, every method's full-corpus scores.

Lifecycle (each step cached or cheap, so methods can be added without retraining):

1. the corpus is the index's own documents, in row order (so subset rows are index rows);
2. :func:`~tracer.lds.score.sample_subsets` draws ``M`` seeded α-subsets;
3. :func:`~tracer.lds.retrain.ensure_subset_models` trains the missing subset models with the
   full run's recipe and tokenizer (``cache_dir``);
4. :func:`~tracer.lds.retrain.subset_losses` measures each query's target loss under each model;
5. :func:`attribution_scores` scores every (query, document) pair with each method on the index
   (the full corpus, exactly: no candidate stage);
6. :func:`~tracer.lds.score.lds` per method, with a bootstrap interval over queries.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tracer.lds.retrain import (
    KEY_FILE,
    cache_key,
    ensure_subset_models,
    subset_losses,
    tokenizer_fingerprint,
)
from tracer.lds.score import lds, sample_subsets, top_k_scores
from tracer.types import Query

log = logging.getLogger(__name__)

PROPONENTS = "proponents*"  # reference row: score 1 for a query's ground-truth proponents, else 0


@dataclass(frozen=True)
class LdsConfig:
    """What an LDS run computes."""

    n_subsets: int = field(default=32, metadata={"help": "M, subset models trained"})
    alpha: float = field(default=0.5, metadata={"help": "fraction of the corpus in each subset"})
    seed: int = field(default=0, metadata={"help": "subset sampling seed"})
    methods: tuple[str, ...] = field(default=(), metadata={
        "help": "methods to score (empty: every one the index offers)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples over queries"})
    batch_size: int = field(default=32, metadata={"help": "queries featurized together"})
    top_k: int = field(default=0, metadata={
        "help": "predict from each method's top-k scores per query only (0: every document's, standard LDS)"})

    def __post_init__(self) -> None:
        if self.n_subsets < 2:
            raise ValueError(f"LdsConfig.n_subsets must be >= 2 (a rank correlation needs 2), "
                             f"got {self.n_subsets}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"LdsConfig.alpha must be in (0, 1), got {self.alpha}")
        if self.n_boot < 1 or self.batch_size < 1 or self.top_k < 0:
            raise ValueError("LdsConfig.n_boot and batch_size must be >= 1, top_k >= 0")


def attribution_scores(retriever: Any, pairs: Sequence[tuple[str, str]], methods: Sequence[str],
                       batch_size: int = 32) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every method's score of every (query, document) pair, over the whole corpus.

    Args:
        retriever: A :class:`tracer.retrieval.Retriever` on the index.
        pairs: ``(prompt, target)`` queries.
        methods: Method names.
        batch_size: Queries featurized together.

    Returns:
        ``{method: (n_queries, n_docs) float64}`` (row order = index rows) and the seconds each
        method spent scoring (featurizing is shared and reported as ``"featurize"``).
    """
    from tracer.methods.task import fit_task_corrections

    n = retriever.store.n_documents
    every = np.arange(n, dtype=np.int64)
    out = {m: np.zeros((len(pairs), n)) for m in methods}
    secs = {m: 0.0 for m in (*methods, "featurize")}
    t0 = time.perf_counter()
    fit_task_corrections(retriever, pairs, methods, batch_size)  # R_eval of task-corrected methods: these queries
    secs["featurize"] += time.perf_counter() - t0
    for s in range(0, len(pairs), batch_size):
        t0 = time.perf_counter()
        feats = retriever.features(list(pairs[s:s + batch_size]), methods, "full")
        retriever.prepare_queries(feats, methods)
        secs["featurize"] += time.perf_counter() - t0
        for i, qf in enumerate(feats):
            for m in methods:
                t0 = time.perf_counter()
                scores, rows = retriever.rank(qf, m, n, every)
                out[m][s + i, rows] = scores
                secs[m] += time.perf_counter() - t0
            qf.cache.clear()
    return out, secs


def proponent_scores(queries: Sequence[Query], doc_ids: Sequence[str]) -> np.ndarray:
    """``(n_queries, n_docs)`` float64: 1 where the document is one of the query's proponents."""
    row_of = {d: i for i, d in enumerate(doc_ids)}
    out = np.zeros((len(queries), len(doc_ids)))
    for qi, q in enumerate(queries):
        out[qi, [row_of[p] for p in q.proponents if p in row_of]] = 1.0
    return out


@dataclass
class SubsetData:
    """What every method's LDS is measured against: the subsets and each query's loss under each model."""

    store: Any  # the IndexStore
    masks: np.ndarray  # (M, n_docs) bool
    losses: np.ndarray  # (n_queries, M) float64 target losses
    models: list[Any]  # SubsetModel per subset (train seconds, trained now)
    family: Path  # cache directory of this corpus/recipe/tokenizer/alpha/seed
    loss_seconds: float


def subset_data(index_dir: str | Path, queries: Sequence[Query], run_dir: str | Path, cache_dir: str | Path,
                cfg: LdsConfig = LdsConfig(), recipe: Any = None,
                on_progress: Callable[[int, int, str], None] | None = None) -> SubsetData:
    """Steps 1-4 of the module docstring: subsets, cached subset models (trained if missing), losses."""
    from tracer.corpus import corpus_fingerprint
    from tracer.errors import DataError
    from tracer.index.store import IndexStore
    from tracer.model.loading import weights_fingerprint
    from tracer.model.train import TRAIN_CONFIG, read_recipe

    run = Path(run_dir)
    if recipe is not None and not (run / TRAIN_CONFIG).is_file():  # an override and no recorded recipe
        run_recipe, base = recipe, None
    else:
        run_recipe, base = read_recipe(run)
    if recipe is None:
        recipe = run_recipe
    elif type(recipe) is not type(run_recipe):
        raise DataError(f"the recipe override is a {type(recipe).__name__}, but {run} is a "
                        f"{'fine-tuning' if base is not None else 'from-scratch'} run ({type(run_recipe).__name__})")
    store = IndexStore.open(index_dir)
    docs = [store.document(i) for i in range(store.n_documents)]
    masks = sample_subsets(len(docs), cfg.n_subsets, cfg.alpha, cfg.seed)
    key = cache_key(corpus_fingerprint(docs), recipe, tokenizer_fingerprint(run / "tokenizer"), cfg.alpha,
                    cfg.seed, base_fingerprint=weights_fingerprint(base) if base is not None else None)
    family = Path(cache_dir) / key["key"]
    family.mkdir(parents=True, exist_ok=True)
    (family / KEY_FILE).write_text(json.dumps(key, indent=2))
    models = ensure_subset_models(docs, masks, recipe, run / "tokenizer", family,
                                  (lambda d, t: on_progress(d, t, "train")) if on_progress else None, init_from=base)
    t0 = time.perf_counter()
    losses = subset_losses(models, run / "tokenizer", [(q.prompt, q.target) for q in queries])
    return SubsetData(store, masks, losses, list(models), family, time.perf_counter() - t0)


def method_lds(data: SubsetData, queries: Sequence[Query], cfg: LdsConfig = LdsConfig(),
               method_params: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 5-6: every method's LDS (with ``method_params``), plus the proponents reference row.

    Returns:
        ``({name: {"lds", "score_seconds"}}, extra settings: methods, task corrections, featurize seconds)``.
    """
    from tracer.retrieval import Retriever

    retriever = Retriever(data.store, method_params=method_params)
    methods = list(cfg.methods) or retriever.available_methods()
    pairs = [(q.prompt, q.target) for q in queries]
    try:
        scores, score_s = attribution_scores(retriever, pairs, methods, cfg.batch_size)
        task = {m: retriever.method(m).task_info() for m in methods
                if getattr(retriever.method(m), "wants_task_fit", False)}
    finally:
        retriever.close()
    if any(q.proponents for q in queries):
        scores[PROPONENTS] = proponent_scores(queries, data.store.doc_ids)
    if cfg.top_k:
        scores = {m: top_k_scores(s, cfg.top_k) for m, s in scores.items()}
    report = {m: {"lds": lds(s, data.masks, data.losses, cfg.n_boot, cfg.seed, m),
                  "score_seconds": round(score_s.get(m, 0.0), 2)} for m, s in scores.items()}
    extra = {"methods": methods, "method_params": method_params or {}, "task_corrections": task,
             "featurize_seconds": round(score_s["featurize"], 2)}
    return report, extra


def run_lds(index_dir: str | Path, queries: Sequence[Query], run_dir: str | Path, cache_dir: str | Path,
            cfg: LdsConfig = LdsConfig(), recipe: Any = None,
            on_progress: Callable[[int, int, str], None] | None = None,
            method_params: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The LDS of every method of an index (see the module docstring).

    Args:
        index_dir: An index built from ``run_dir``'s checkpoints.
        queries: The queries (target losses are measured on their ``(prompt, target)``).
        run_dir: The full-corpus ``tracer train`` run: its ``train_config.json`` is the recipe and
            its ``tokenizer/`` the tokenizer of every subset model.
        cache_dir: Where subset models are cached.
        cfg: Subsets, methods, bootstrap.
        recipe: A recipe overriding the run's, of the run's kind: a :class:`~tracer.model.train.TrainConfig`
            for a from-scratch run, a :class:`~tracer.model.train.FinetuneConfig` for a fine-tuning run.
        on_progress: ``(done, total, stage)``.
        method_params: Per-method parameters, e.g. ``{"tracin_cos": {"task_lambda": 0.5}}`` (recorded).

    Returns:
        The report: ``settings``, ``methods`` (``{name: {"lds": {mean, lo, hi, n, n_undefined},
        "score_seconds"}}``) and ``cost``.
    """
    t_start = time.perf_counter()
    data = subset_data(index_dir, queries, run_dir, cache_dir, cfg, recipe, on_progress)
    report_methods, extra = method_lds(data, queries, cfg, method_params)
    store, models = data.store, data.models
    trained = [m.train_seconds for m in models]
    cost = {"train_seconds_per_model": round(float(np.mean(trained)), 2),
            "train_seconds_total": round(float(np.sum(trained)), 1),
            "models_trained_now": sum(m.trained_now for m in models),
            "loss_seconds": round(data.loss_seconds, 2), "featurize_seconds": extra.pop("featurize_seconds"),
            "wall_seconds": round(time.perf_counter() - t_start, 1)}
    key = json.loads((data.family / KEY_FILE).read_text())
    settings = {**asdict(cfg), **extra, "index": str(index_dir),
                "index_fingerprint": store.fingerprint,
                "n_documents": store.n_documents, "n_queries": len(queries), "subset_size": int(data.masks[0].sum()),
                "cache": str(data.family), "recipe": key["recipe"],
                "loss_std_over_subsets": round(float(data.losses.std(axis=1).mean()), 4),
                "convention": "Spearman(sum of scores over the subset, -target loss) per query; "
                              "undefined (constant) = 0; mean over queries, 95% bootstrap CI"}
    return {"title": f"LDS on {store.name}", "settings": settings, "methods": report_methods, "cost": cost}


def format_table(report: dict[str, Any]) -> str:
    """A markdown table of a :func:`run_lds` report, best LDS first."""
    rows = sorted(report["methods"].items(), key=lambda kv: -kv[1]["lds"]["mean"])
    lines = ["| method | LDS | 95% CI | queries | undefined | scoring s |", "|---|---:|---|---:|---:|---:|"]
    for name, r in rows:
        v = r["lds"]
        lines.append(f"| {name} | {v['mean']:.3f} | [{v['lo']:.3f}, {v['hi']:.3f}] | {v['n']} | "
                     f"{v['n_undefined']} | {r['score_seconds']:.1f} |")
    return "\n".join(lines)
