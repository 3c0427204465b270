"""``tracer calibrate``: measure an index's recall ceilings and stage costs for ``--candidates auto``.

Writes ``calibration.json`` beside the index's files (see :mod:`tracer.cascade`) and prints, per
candidate source, the recall ceiling at each size and the estimated latency.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="measure recall ceilings and costs for --candidates auto",
                              description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, metavar="DIR")
    p.add_argument("--queries", default=None, metavar="FILE",
                   help="held-out queries with proponents (default: pseudo-queries from the corpus)")
    p.add_argument("--method", default="tracin", help="reranking method whose cost is measured")
    p.add_argument("--pseudo", type=int, default=64, metavar="N", help="pseudo-queries when no --queries")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.corpus import load_queries
    from tracer.tracer import Tracer

    queries = load_queries(args.queries) if args.queries else None
    with Tracer.open(args.index) as t:
        cal = t.calibrate(queries, method=args.method, n_pseudo=args.pseudo, seed=args.seed)
    print(f"calibrated {args.index} on {cal.n_queries} {cal.origin} queries ({args.method}); "
          f"featurize {cal.featurize_ms:.0f} ms, full scan {cal.full_ms:.0f} ms")
    for o in cal.options():
        label = "full" if o.source == "full" else f"{o.source}@{o.n}"
        print(f"  {label:<16} recall ceiling {o.recall:.3f}  est. {o.est_ms:7.1f} ms")
    return 0
