"""``tracer eval``: run the fact-tracing benchmark and write the report (in-process or over gRPC)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tracer.cli.options import add_model_overrides, model_overrides
from tracer.errors import DataError

DEFAULT_METHODS = "bm25,embedding,tracin,tracin_cos,influence,trak,random"


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
    p.add_argument("--max-queries", type=int, help="evaluate at most N queries")
    p.add_argument("--tail-patch", action="store_true", help="run the tail-patch causal check")
    p.add_argument("--tail-patch-queries", type=int, default=200)
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--server", help="HOST:PORT of a tracer server (evaluate remotely)")
    p.add_argument("--token-file", help="auth token file for --server")
    p.add_argument("--timeout", type=float, default=3600.0, help="deadline in seconds for --server")
    add_model_overrides(p)
    p.set_defaults(func=run)


def select_queries(queries: list[Any], slice_: str, report_path: Path | None, max_queries: int | None) -> list[Any]:
    """The FTRACE learned slice (or all queries), optionally truncated."""
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
    return queries[:max_queries] if max_queries else queries


def default_train_report(index_dir: str) -> Path | None:
    from tracer.index.manifest import read_manifest

    manifest = Path(index_dir) / "manifest.json"
    if not manifest.is_file():
        read_manifest(Path(index_dir))  # raises the precise error: no index directory / not an index
    ck = json.loads(manifest.read_text())["checkpoints"]
    return Path(ck[-1]["path"]).parent / "train_report.json" if ck else None


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tracer.corpus import load_queries
    from tracer.metrics.report import markdown_table, write_report

    report_path = Path(args.train_report) if args.train_report else (
        None if args.server else default_train_report(args.index))
    queries = select_queries(load_queries(args.queries), args.slice, report_path, args.max_queries)
    methods = [m for m in args.methods.split(",") if m]
    bars: dict[str, Any] = {}

    def progress(done: int, total: int, stage: str) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=f"eval {stage}", unit="query"))
        bar.update(done - bar.n)

    kw = dict(methods=methods, candidates=args.candidates, num_candidates=args.num_candidates, policy=args.policy,
              tail_patch=args.tail_patch, tail_patch_max_queries=args.tail_patch_queries)
    out = Path(args.out)
    if args.server:
        if args.fuse:
            raise DataError("--fuse is computed in-process; run without --server")
        report = _remote(args, queries, kw, progress)
    else:
        report = _local(args, queries, kw, progress, out)
    for bar in bars.values():
        bar.close()
    write_report(out, report)
    print(markdown_table(report))
    print(f"eval: {len(queries)} queries ({args.slice} slice) -> {out}/report.html")
    return 0


def _local(args: argparse.Namespace, queries: list[Any], kw: dict[str, Any], progress: Any, out: Path) -> dict:
    from tracer.evaluation import EvalConfig, run_evaluation
    from tracer.metrics.trec import write_qrels, write_run
    from tracer.tracer import Tracer

    tracer = Tracer.open(args.index, **model_overrides(args))
    res = run_evaluation(tracer.retriever, queries, EvalConfig(**kw, fusions=tuple(args.fuse)), on_progress=progress)
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
    return report
