"""``tracer lds``: the linear datamodeling score of every method of an index (subset models cached)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lds", help="linear datamodeling score: retrain on random subsets, "
                                   "correlate with scores")
    p.add_argument("--index", required=True, help="index directory built from --run's checkpoints")
    p.add_argument("--queries", required=True, help="queries.jsonl")
    p.add_argument("--run", required=True, help="the full-corpus tracer train run (its recipe and tokenizer)")
    p.add_argument("--cache", required=True, help="subset-model cache directory (reused across runs)")
    p.add_argument("--subsets", type=int, default=32, help="M, subset models (default 32)")
    p.add_argument("--alpha", type=float, default=0.5, help="fraction of the corpus per subset (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="subset sampling seed (default 0)")
    p.add_argument("--methods", default="", help="comma-separated (default: every method the index offers)")
    p.add_argument("--slice", default="all", help="all (default) | learned")
    p.add_argument("--max-queries", type=int, help="use at most N queries")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over queries")
    p.add_argument("--top-k", type=int, default=0,
                   help="predict from each method's top-K scores per query only (default 0: all, standard LDS)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--params", default="",
                   help='method parameters as JSON, e.g. \'{"tracin_cos": {"task_lambda": 0.5}}\' (recorded in the report)')
    p.add_argument("--out", help="write lds.json and lds.md into this directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.batching import intra_op_threads

    with intra_op_threads(max(1, args.threads)):  # restored after: `tracer lds` may run inside a process
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tracer.cli.cmd_eval import select_queries
    from tracer.corpus import load_queries
    from tracer.lds import LdsConfig, format_table, run_lds

    for flag, path in (("--index", args.index), ("--run", args.run)):
        if not Path(path).is_dir():
            raise DataError(f"{flag} directory not found: {path}")
    queries = select_queries(load_queries(args.queries), args.slice, Path(args.run) / "train_report.json",
                             args.max_queries)
    try:
        cfg = LdsConfig(n_subsets=args.subsets, alpha=args.alpha, seed=args.seed, n_boot=args.n_boot,
                        methods=tuple(m for m in args.methods.split(",") if m), top_k=args.top_k)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise DataError(f"--params is not JSON: {exc}") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise DataError('--params must map method names to objects, e.g. {"influence": {"damping": 0.01}}')
    report = run_lds(args.index, queries, args.run, args.cache, cfg,
                     on_progress=lambda d, t, stage: print(f"  {stage} {d}/{t}", flush=True), method_params=params)
    table = format_table(report)
    print(table)
    c = report["cost"]
    print(f"cost: {c['train_seconds_per_model']:.1f}s per subset model "
          f"({c['models_trained_now']} trained now), "
          f"{c['train_seconds_total']:.0f}s training in all; wall {c['wall_seconds']:.0f}s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "lds.json").write_text(json.dumps(report, indent=2))
        (out / "lds.md").write_text(f"# {report['title']}\n\n{table}\n")
    return 0
