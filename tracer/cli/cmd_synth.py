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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tracer.benchmark import PRESETS, generate, write_benchmark

    if args.preset not in PRESETS:
        raise DataError(f"unknown preset {args.preset!r}; expected one of {', '.join(PRESETS)}")
    t0 = time.perf_counter()
    bench = generate(dataclasses.replace(PRESETS[args.preset], seed=args.seed))
    out = write_benchmark(bench, args.out)
    print(f"synth: {len(bench.documents)} documents, {len(bench.facts)} facts, {len(bench.queries)} queries "
          f"-> {out} ({time.perf_counter() - t0:.1f}s)")
    return 0
