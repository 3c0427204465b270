"""``tracer synth``: generate the FTRACE-style synthetic benchmark."""

from __future__ import annotations

import argparse
import time

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the synthetic fact-tracing benchmark")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="small", help="tiny | small | medium (default: small)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--distractors", default="standard", choices=("standard", "hard"),
                   help="hard: a co-mention of subject and true object per fact (another relation), and "
                        "proponents worded with the templates sharing the fewest words with the query's")
    p.add_argument("--docs", type=int, default=None, metavar="N",
                   help="a large corpus of exactly N documents (300k-1M and more), streamed to disk block by "
                        "block with a growing knowledge base (replaces --preset; writes no kb.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tracer.benchmark import PRESETS, generate, write_benchmark

    if args.docs is not None:
        return _run_large(args)
    if args.preset not in PRESETS:
        raise DataError(f"unknown preset {args.preset!r}; expected one of {', '.join(PRESETS)}")
    t0 = time.perf_counter()
    bench = generate(dataclasses.replace(PRESETS[args.preset], seed=args.seed, distractors=args.distractors))
    out = write_benchmark(bench, args.out)
    print(f"synth: {len(bench.documents)} documents, {len(bench.facts)} facts, {len(bench.queries)} queries "
          f"-> {out} ({time.perf_counter() - t0:.1f}s)")
    return 0


def _run_large(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tracer.benchmark.large import write_large

    if args.docs < 1:
        raise DataError(f"--docs must be >= 1, got {args.docs}")
    t0 = time.perf_counter()
    with tqdm(total=args.docs, desc="synth", unit="doc") as bar:
        meta = write_large(args.out, args.docs, seed=args.seed, on_docs=bar.update)
    print(f"synth: {meta['n_documents']} documents, {meta['n_facts']} facts, {meta['n_queries']} queries "
          f"-> {args.out} ({time.perf_counter() - t0:.1f}s, streamed)")
    return 0
