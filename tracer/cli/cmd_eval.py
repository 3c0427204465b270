"""``tracer eval``: run the fact-tracing benchmark and write the report (in-process or over gRPC)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from tracer.cli.options import add_model_overrides, comma_list, model_overrides
from tracer.errors import DataError

DEFAULT_METHODS = "bm25,embedding,tracin,tracin_cos,influence,trak,random"
DEFAULT_SEED = 0  # seed of the --max-queries sample

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="run the benchmark: metrics per method, report, TREC runs")
    p.add_argument("--index", required=True, help="index directory (or index name with --server)")
    p.add_argument("--queries", required=True, help="queries.jsonl with proponents")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    p.add_argument("--fuse", action="append", default=[], help="add a reciprocal-rank fusion, e.g. bm25+tracin_cos "
                   "(repeatable; in-process only)")
    p.add_argument("--candidates", default="bm25", help="bm25 | embedding | gradient | union | full")
    p.add_argument("--num-candidates", type=int, default=100)
    p.add_argument("--policy", default="candidates", help="candidates | ftrace | full")
    p.add_argument("--slice", default="learned", help="learned (FTRACE) | all")
    p.add_argument("--train-report", help="train_report.json defining the learned slice "
                                          "(default: next to the index's checkpoints)")
    p.add_argument("--max-queries", type=int, help="evaluate a seeded sample of N queries, stratified by relation")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the --max-queries sample (default {DEFAULT_SEED})")
    p.add_argument("--tail-patch", action="store_true", help="run the tail-patch causal check")
    p.add_argument("--tail-patch-queries", type=int, default=200)
    p.add_argument("--tail-patch-lr", type=float, default=1e-2,
                   help="SGD step of the tail-patch (default 1e-2, for models trained from scratch at ~1e-2; "
                        "use about the fine-tuning lr for a pretrained model)")
    p.add_argument("--cascade-budgets", default=None, metavar="MS,MS,...",
                   help="also measure MRR against latency for every fixed cascade and for candidates=auto at these "
                        "budgets (ms), on the same queries: a Pareto plot in report.html (in-process only)")
    p.add_argument("--cascade-method", default="tracin", help="reranking method of the cascades (default tracin)")
    p.add_argument("--cascade-queries", type=int, default=200,
                   help="queries for the cascades: half calibrate, half are timed (default 200)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--server", help="HOST:PORT of a tracer server (evaluate remotely)")
    p.add_argument("--token-file", help="auth token file for --server")
    p.add_argument("--timeout", type=float, default=3600.0, help="deadline in seconds for --server")
    add_model_overrides(p)
    p.set_defaults(func=run)


def select_queries(queries: list[Any], slice_: str, report_path: Path | None, max_queries: int | None,
                   seed: int = DEFAULT_SEED) -> list[Any]:
    """The FTRACE learned slice (or all queries), optionally sampled down to ``max_queries``."""
    if max_queries is not None and max_queries < 1:
        raise DataError(f"--max-queries must be >= 1, got {max_queries}")
    if slice_ not in ("learned", "all"):
        raise DataError(f"--slice must be learned or all, got {slice_!r}")
    if slice_ == "learned":
        if report_path is None:
            raise DataError("could not locate a train_report.json for the learned slice; "
                            "pass --train-report or --slice all")
        if not report_path.is_file():
            raise DataError(f"the learned slice needs {report_path}, which does not exist; "
                            "pass --train-report or --slice all")
        try:
            learned = set(json.loads(report_path.read_text())["learned_query_ids"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"{report_path} is not a tracer train report ({type(exc).__name__}: {exc})") from None
        queries = [q for q in queries if q.query_id in learned]
        if not queries:
            raise DataError(f"the learned slice of {report_path} is empty (no query is right at the last "
                            "checkpoint and wrong at the first); use --slice all")
    return stratified_sample(queries, max_queries, seed) if max_queries else queries


def stratified_sample(queries: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` queries drawn without replacement, each relation keeping its share; file order kept.

    Shares are ``n * size / total`` rounded by largest remainder (ties by relation name), so the
    per-relation tables of a sample look like those of the whole set. Same queries, ``n`` and
    ``seed`` give the same sample.

    Args:
        queries: Queries with an optional ``relation`` (``None`` forms its own group).
        n: Sample size; ``n >= len(queries)`` returns every query.
        seed: Seed of the draw.

    Returns:
        The sampled queries, in their original order.
    """
    import numpy as np

    if n >= len(queries):
        return list(queries)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(q.relation or "", []).append(i)
    names = sorted(groups)
    exact = [n * len(groups[g]) / len(queries) for g in names]
    quota = [int(x) for x in exact]
    by_remainder = sorted(range(len(names)), key=lambda j: (quota[j] - exact[j], names[j]))
    for j in by_remainder[: n - sum(quota)]:
        quota[j] += 1
    rng = np.random.default_rng(seed)
    picked = [int(i) for g, k in zip(names, quota) for i in rng.choice(groups[g], size=k, replace=False)]
    return [queries[i] for i in sorted(picked)]


class StageBars:
    """The eval progress callback: one bar per stage, made on the stage's first report and then updated."""

    def __init__(self, make_bar: Callable[..., Any] | None = None) -> None:
        if make_bar is None:
            from tqdm.auto import tqdm

            make_bar = tqdm
        self._make_bar = make_bar
        self.bars: dict[str, Any] = {}

    def __call__(self, done: int, total: int, stage: str) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = self._make_bar(total=total, desc=f"eval {stage}", unit="query")
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def default_train_report(index_dir: str) -> Path | None:
    from tracer.index.manifest import read_manifest

    manifest = Path(index_dir) / "manifest.json"
    if not manifest.is_file():
        read_manifest(Path(index_dir))  # raises the precise error: no index directory / not an index
    ck = json.loads(manifest.read_text())["checkpoints"]
    return Path(ck[-1]["path"]).parent / "train_report.json" if ck else None


def run(args: argparse.Namespace) -> int:
    from tracer.corpus import load_queries
    from tracer.metrics.report import markdown_table, write_report

    report_path = Path(args.train_report) if args.train_report else (
        None if args.server else default_train_report(args.index))
    budgets = parse_budgets(args.cascade_budgets)
    queries = select_queries(load_queries(args.queries), args.slice, report_path, args.max_queries, args.seed)
    methods = [m for m in args.methods.split(",") if m]
    progress = StageBars()
    kw = dict(methods=methods, candidates=args.candidates, num_candidates=args.num_candidates, policy=args.policy,
              tail_patch=args.tail_patch, tail_patch_max_queries=args.tail_patch_queries,
              tail_patch_lr=args.tail_patch_lr)
    out = Path(args.out)
    try:
        if args.server:
            if args.fuse:
                raise DataError("--fuse is computed in-process; run without --server")
            if args.cascade_budgets:
                raise DataError("--cascade-budgets times the cascades in-process; run without --server")
            if kw.pop("tail_patch_lr") != 1e-2:
                raise DataError("--tail-patch-lr is in-process only (the server steps at 1e-2); run without --server")
            report = _remote(args, queries, kw, progress)
        else:
            report = _local(args, queries, kw, progress, out, budgets)
    finally:
        progress.close()
    write_report(out, report)
    print(markdown_table(report))
    settings = report["settings"]
    dropped = settings.get("n_queries_without_proponents", 0)
    left_out = f", {dropped} without proponents left out" if dropped else ""
    print(f"eval: {settings.get('n_queries', len(queries))} queries ({args.slice} slice{left_out}) "
          f"-> {out}/report.html")
    return 0


def parse_budgets(text: str | None) -> list[float]:
    """``--cascade-budgets``: comma-separated positive milliseconds (empty or ``None``: no cascades)."""
    if not text:
        return []
    budgets = comma_list(text, float, "--cascade-budgets", "milliseconds")
    if not budgets or any(not (b > 0) for b in budgets):
        raise DataError(f"--cascade-budgets must be positive milliseconds, got {text!r}")
    return budgets


def _local(args: argparse.Namespace, queries: list[Any], kw: dict[str, Any], progress: Any, out: Path,
           budgets: Sequence[float] = ()) -> dict:
    from tracer.evaluation import EvalConfig, run_evaluation
    from tracer.metrics.trec import write_qrels, write_run
    from tracer.tracer import Tracer

    tracer = Tracer.open(args.index, **model_overrides(args))
    res = run_evaluation(tracer.retriever, queries, EvalConfig(**kw, fusions=tuple(args.fuse)), on_progress=progress)
    if budgets:
        from tracer import cascade

        res.report["cascade"] = cascade.pareto(tracer, queries, method=args.cascade_method, budgets=budgets,
                                               max_queries=args.cascade_queries, seed=args.seed)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for m, run_ in res.runs.items():
        write_run(out / "runs" / f"{m}.trec", run_, tag=f"tracer-{m}")
    write_qrels(out / "qrels.txt", res.qrels)
    res.report["settings"]["slice"] = args.slice
    return res.report


def _remote(args: argparse.Namespace, queries: list[Any], kw: dict[str, Any], progress: Any) -> dict:
    from tracer.client import TracerClient

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    with TracerClient(args.server, token=token, timeout=args.timeout) as client:
        report = client.evaluate(queries, index=args.index, on_progress=progress, **kw)
    report["settings"]["slice"] = args.slice
    _warn_counts(report["settings"], args.queries, args.index)  # the server logged them on its side only
    return report


def _warn_counts(settings: dict[str, Any], queries_path: str, index: str) -> None:
    """The warnings an in-process evaluation logs, from the counts in a remote report's settings."""
    dropped, unknown = settings.get("n_queries_without_proponents", 0), settings.get("n_unknown_proponents", 0)
    if dropped:
        log.warning("%d queries in %s have no proponents; they are left out of the metrics", dropped, queries_path)
    if unknown:
        log.warning("%d proponent ids in %s are not in index %s; they count as misses", unknown, queries_path, index)
