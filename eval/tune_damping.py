"""Choose a method's parameter (damping by default) on queries the evaluation never sees.

Two objectives, each on an explicit, seeded split:

* ``--objective retrieval`` (MRR, recall@10 over union@100 candidates, as ``tracer eval``):
  ``--split unlearned`` samples ``--n`` queries the final checkpoint did NOT learn (the
  evaluation is the learned slice, so they are disjoint); ``--split learned-half`` tunes on half
  A of a seeded split of the learned slice, and prints half B's figures too, for the value it
  picks (``eval/attribution_quality.py --half B`` evaluates half B alone).
* ``--objective lds`` (the tiny LDS benchmark's cached subset models, ``eval/lds.py``): a
  seeded half A of the queries tunes, half B reports.

The default grid spans 10 decades, relative to the mean eigenvalue (influence: per K-FAC block;
``tracin_cos``: over the whole checkpoint):

    python eval/tune_damping.py --index runs/demo/index --queries runs/demo/bench/queries.jsonl \\
        --train-report runs/demo/run/train_report.json --method influence --split learned-half
    OMP_NUM_THREADS=1 python eval/tune_damping.py --objective lds --workdir runs/lds --method influence
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

GRID = "1e-6,1e-5,1e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1,1,3,10,100,1e3,1e4"


def _halves(items: list, seed: int) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(items))
    a = set(order[: len(items) // 2].tolist())
    return [q for i, q in enumerate(items) if i in a], [q for i, q in enumerate(items) if i not in a]


def _retrieval(args: argparse.Namespace, values: list[float], extra: dict) -> list[dict]:
    from tracer import Tracer
    from tracer.corpus import load_queries

    learned = set(json.load(open(args.train_report))["learned_query_ids"])
    queries = load_queries(args.queries)
    if args.split == "unlearned":
        held_out = [q for q in queries if q.query_id not in learned]
        rng = np.random.default_rng(args.seed)
        tune = [held_out[i] for i in sorted(rng.choice(len(held_out), min(args.n, len(held_out)), replace=False))]
        report_on: list = []
    else:
        tune, report_on = _halves([q for q in queries if q.query_id in learned], args.seed)
    rows = []
    for value in values:
        row = {"method": args.method, args.param: value, "split": args.split, "seed": args.seed}
        params = {args.method: {**extra, args.param: value}}
        with Tracer.open(args.index, method_params=params) as t:
            for name, qs in (("tune", tune), ("report", report_on)):
                if not qs:
                    continue
                m = t.evaluate(qs, methods=[args.method], candidates="union", num_candidates=100,
                               n_boot=10)["methods"][args.method]["all"]
                row[name] = {"n": len(qs), "mrr": round(m["mrr"]["mean"], 4),
                             "recall@10": round(m["recall@10"]["mean"], 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _lds(args: argparse.Namespace, values: list[float], extra: dict) -> list[dict]:
    from tracer.corpus import load_queries
    from tracer.lds import LdsConfig, method_lds, subset_data

    w = Path(args.workdir)
    queries = load_queries(w / "bench" / "queries.jsonl")
    tune, report_on = _halves(queries, args.seed)
    cfg = LdsConfig(n_subsets=args.subsets, methods=(args.method,), n_boot=200)
    parts = {name: (qs, subset_data(w / "index", qs, w / "run", w / "subsets", cfg))
             for name, qs in (("tune", tune), ("report", report_on))}
    rows = []
    for value in values:
        row = {"method": args.method, args.param: value, "split": "queries-half", "seed": args.seed}
        for name, (qs, data) in parts.items():
            res, _ = method_lds(data, qs, cfg, {args.method: {**extra, args.param: value}})
            v = res[args.method]["lds"]
            row[name] = {"n": len(qs), "lds": round(v["mean"], 4), "lo": round(v["lo"], 3), "hi": round(v["hi"], 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", choices=("retrieval", "lds"), default="retrieval")
    ap.add_argument("--index", help="retrieval: the index")
    ap.add_argument("--queries", help="retrieval: queries.jsonl")
    ap.add_argument("--train-report", help="retrieval: train_report.json (its learned_query_ids)")
    ap.add_argument("--split", choices=("unlearned", "learned-half"), default="learned-half")
    ap.add_argument("--n", type=int, default=120, help="unlearned split: queries sampled")
    ap.add_argument("--workdir", default="runs/lds", help="lds: eval/lds.py's workdir (bench, run, index, subsets)")
    ap.add_argument("--subsets", type=int, default=32, help="lds: M")
    ap.add_argument("--method", required=True)
    ap.add_argument("--param", default="damping", help="the parameter tuned (default damping)")
    ap.add_argument("--values", default=GRID, help=f"comma-separated (default {GRID})")
    ap.add_argument("--extra", default="{}", help='other method params as JSON, e.g. {"checkpoints": "last"}')
    ap.add_argument("--seed", type=int, default=0, help="split seed")
    ap.add_argument("--out", help="write the rows as JSON")
    args = ap.parse_args()
    values = [float(v) for v in args.values.split(",")]
    extra = json.loads(args.extra)
    if args.objective == "retrieval" and not (args.index and args.queries and args.train_report):
        ap.error("--objective retrieval needs --index, --queries and --train-report")
    rows = (_lds if args.objective == "lds" else _retrieval)(args, values, extra)
    key = "lds" if args.objective == "lds" else "mrr"
    best = max(rows, key=lambda r: r["tune"][key])
    print(json.dumps({"best_on_tune": best}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "best_on_tune": best, "extra": extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
