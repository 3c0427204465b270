"""Cascades on the benchmark: MRR against latency for every fixed cascade, and for ``auto`` at budgets.

The queries (those with proponents in the index) are split in two with a seed: the first half
calibrates the index (recall ceilings and stage costs, :mod:`tracer.cascade`), the second is
evaluated. Each evaluated query is featurized once; every cascade (source x size, and the full
scan) then gathers candidates and reranks with ``--method``, timed, so a cascade's latency is the
query's featurize time plus its own stages. For each budget, ``auto`` picks from the calibration
alone; it is compared with the best fixed cascade whose *measured* p50 fits the budget. The
measurement is :func:`tracer.cascade.pareto`, the same as ``tracer eval --cascade-budgets``; with
``--html`` the Pareto chart and tables are written as a page of their own (the section
``report.html`` shows)::

    python eval/cascade.py --index runs/demo/index --queries runs/demo/bench/queries.jsonl --json runs/cascade.json \\
        --html runs/cascade.html
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--method", default="tracin")
    p.add_argument("--max-queries", type=int, default=200)
    p.add_argument("--budgets", default="150,200,250,300,400,600")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the table as JSON")
    p.add_argument("--html", default=None, help="write the Pareto chart and tables as a self-contained page")
    args = p.parse_args()

    from tracer import cascade
    from tracer.corpus import load_queries
    from tracer.metrics.page import render_cascade_page
    from tracer.tracer import Tracer

    budgets = [float(x) for x in args.budgets.split(",") if x]
    with Tracer.open(args.index) as t:
        block = cascade.pareto(t, load_queries(args.queries), method=args.method, budgets=budgets,
                               max_queries=args.max_queries, seed=args.seed)
    block = {"index": args.index, **block}
    for row in block["budgets"]:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(block, indent=1) + "\n")
    if args.html:
        Path(args.html).write_text(render_cascade_page(block, f"cascades on {args.index}"), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
