"""Choose a method's damping on queries OUTSIDE the learned slice (the evaluation slice stays untouched).

Prints MRR and recall@10 per value, on a seeded sample of the queries the final checkpoint did
not learn (union@100 candidates, as ``tracer eval --candidates union``):

    python eval/tune_damping.py --index runs/demo/index --queries runs/demo/bench/queries.jsonl \\
        --train-report runs/demo/run/train_report.json --method influence --values 0.001,0.01,0.1,1,10
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--train-report", required=True, help="train_report.json (its learned_query_ids are excluded)")
    ap.add_argument("--method", required=True)
    ap.add_argument("--values", required=True, help="comma-separated damping values")
    ap.add_argument("--extra", default="{}", help='other method params as JSON, e.g. {"checkpoints": "last"}')
    ap.add_argument("--n", type=int, default=120, help="held-out queries sampled (seeded)")
    args = ap.parse_args()

    from tracer import Tracer
    from tracer.corpus import load_queries

    learned = set(json.load(open(args.train_report))["learned_query_ids"])
    held_out = [q for q in load_queries(args.queries) if q.query_id not in learned]
    rng = np.random.default_rng(0)
    queries = [held_out[i] for i in sorted(rng.choice(len(held_out), min(args.n, len(held_out)), replace=False))]
    for value in (float(v) for v in args.values.split(",")):
        params = {args.method: {**json.loads(args.extra), "damping": value}}
        report = Tracer.open(args.index, method_params=params).evaluate(
            queries, methods=[args.method], candidates="union", num_candidates=100, n_boot=10)
        m = report["methods"][args.method]["all"]
        print(json.dumps({"method": args.method, "damping": value, "n": len(queries),
                          "mrr": round(m["mrr"]["mean"], 3), "recall@10": round(m["recall@10"]["mean"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
