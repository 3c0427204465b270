"""Before/after figures for method variants: MRR, recall@10, success@10 and tail-patch (with CIs).

``tracer eval`` has no flag for method parameters; this script runs the same evaluation through
the library with ``--params`` (``Tracer.open(..., method_params=...)``), on the learned slice
(FTRACE) or a seeded half of it, and prints one JSON line per method plus a markdown table:

    OMP_NUM_THREADS=1 python eval/attribution_quality.py --index runs/demo/index \\
        --queries runs/demo/bench/queries.jsonl --train-report runs/demo/run/train_report.json \\
        --methods tracin,tracin_cos,influence,trak --tail-patch \\
        --params '{"tracin_cos": {"task_lambda": 0.5}}' --out runs/quality/taskcorr.json

``--half B`` evaluates only half B of a seeded split of the learned slice (see
``eval/tune_damping.py --split learned-half``, which tunes on half A).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def learned_split(queries: list, learned: set[str], seed: int = 0) -> tuple[list, list]:
    """The learned slice split in two seeded halves ``(A, B)``, each in the input order."""
    sl = [q for q in queries if q.query_id in learned]
    order = np.random.default_rng(seed).permutation(len(sl))
    a = set(order[: len(sl) // 2].tolist())
    return [q for i, q in enumerate(sl) if i in a], [q for i, q in enumerate(sl) if i not in a]


def _ci(m: dict) -> str:
    return f"{m['mean']:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--train-report", required=True, help="train_report.json (its learned_query_ids)")
    ap.add_argument("--methods", default="bm25,tracin,tracin_cos,influence,trak")
    ap.add_argument("--params", default="{}", help="method_params as JSON")
    ap.add_argument("--candidates", default="union")
    ap.add_argument("--num-candidates", type=int, default=100)
    ap.add_argument("--half", choices=("all", "A", "B"), default="all", help="seeded half of the learned slice")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--tail-patch", action="store_true")
    ap.add_argument("--tail-patch-queries", type=int, default=100)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", help="write the report's methods block (JSON) here")
    args = ap.parse_args()

    from tracer import Tracer
    from tracer.corpus import load_queries

    learned = set(json.load(open(args.train_report))["learned_query_ids"])
    a, b = learned_split(load_queries(args.queries), learned, args.split_seed)
    queries = {"all": a + b, "A": a, "B": b}[args.half]
    methods = args.methods.split(",")
    params = json.loads(args.params)
    with Tracer.open(args.index, method_params=params) as t:
        report = t.evaluate(queries, methods=methods, candidates=args.candidates,
                            num_candidates=args.num_candidates, tail_patch=args.tail_patch,
                            tail_patch_max_queries=args.tail_patch_queries)
    rows = ["| method | n | MRR | recall@10 | success@10 | tail-patch |", "|---|---:|---:|---:|---:|---:|"]
    out = {"label": args.label, "params": params, "half": args.half, "split_seed": args.split_seed,
           "n_queries": len(queries), "methods": {}}
    for m in methods:
        r = report["methods"][m]
        al = r["all"]
        tp = r.get("tail_patch")
        out["methods"][m] = {"mrr": al["mrr"], "recall@10": al["recall@10"], "success@10": al["success@10"],
                             "tail_patch": tp}
        rows.append(f"| {m} | {len(queries)} | {_ci(al['mrr'])} | {_ci(al['recall@10'])} | "
                    f"{_ci(al['success@10'])} | {_ci(tp) if tp else '—'} |")
    print("\n".join(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
