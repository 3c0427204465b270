"""Cascades on the benchmark: MRR against latency for every fixed cascade, and for ``auto`` at budgets.

The queries (those with proponents in the index) are split in two with a seed: the first half
calibrates the index (recall ceilings and stage costs, :mod:`tracer.cascade`), the second is
evaluated. Each evaluated query is featurized once; every cascade (source x size, and the full
scan) then gathers candidates and reranks with ``--method``, timed, so a cascade's latency is the
query's featurize time plus its own stages. For each budget, ``auto`` picks from the calibration
alone; it is compared with the best fixed cascade whose *measured* p50 fits the budget::

    python eval/cascade.py --index runs/demo/index --queries runs/demo/bench/queries.jsonl --json runs/cascade.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def reciprocal_rank(rows: np.ndarray, props: np.ndarray) -> float:
    hit = np.nonzero(np.isin(rows, props))[0]
    return 1.0 / (hit[0] + 1) if len(hit) else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--method", default="tracin")
    p.add_argument("--max-queries", type=int, default=200)
    p.add_argument("--budgets", default="150,200,250,300,400,600")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from tracer import cascade
    from tracer.corpus import load_queries
    from tracer.tracer import Tracer

    with Tracer.open(args.index) as t:
        known = set(t.store.doc_ids)
        qs = [q for q in load_queries(args.queries) if set(q.proponents) & known]
        rng = np.random.default_rng(args.seed)
        qs = [qs[i] for i in rng.permutation(len(qs))[: args.max_queries]]
        calib, held = qs[: len(qs) // 2], qs[len(qs) // 2:]
        cal = t.calibrate(calib, method=args.method, save=False)
        opts = cal.options()
        r = t.retriever
        rr: dict[tuple[str, int], list[float]] = {(o.source, o.n): [] for o in opts}
        ms: dict[tuple[str, int], list[float]] = {(o.source, o.n): [] for o in opts}
        for q in held:
            t0 = time.perf_counter()
            f = r.features([(q.prompt, q.target)], [args.method], "union")[0]
            feat = (time.perf_counter() - t0) * 1e3
            props = t.store.rows([d for d in q.proponents if d in known])
            for o in opts:
                t0 = time.perf_counter()
                rows = None if o.source == cascade.FULL else r.candidates(f, o.source, o.n)
                _, top = r.rank(f, args.method, 10, rows)
                ms[(o.source, o.n)].append(feat + (time.perf_counter() - t0) * 1e3)
                rr[(o.source, o.n)].append(reciprocal_rank(top, props))
        table = [{"source": s, "n": n, "mrr@10": round(float(np.mean(rr[(s, n)])), 4),
                  "p50_ms": round(float(np.median(ms[(s, n)])), 1), "ceiling_calibrated": cal.ceiling(s, n)}
                 for s, n in rr]
        budgets = []
        for b in (float(x) for x in args.budgets.split(",")):
            opt, fits = cascade.choose(cal, b)
            auto = next(row for row in table if (row["source"], row["n"]) == (opt.source, opt.n))
            fixed = [row for row in table if row["p50_ms"] <= b]
            best = max(fixed, key=lambda row: row["mrr@10"]) if fixed else None
            budgets.append({"budget_ms": b, "auto": f"{opt.source}@{opt.n}", "auto_fits_estimate": fits,
                            "auto_mrr": auto["mrr@10"], "auto_p50_ms": auto["p50_ms"],
                            "best_fixed": f"{best['source']}@{best['n']}" if best else None,
                            "best_fixed_mrr": best["mrr@10"] if best else None,
                            "auto_over_best": round(auto["mrr@10"] / best["mrr@10"], 3) if best and best["mrr@10"] else None})
    report: dict[str, Any] = {"index": args.index, "method": args.method, "calibration_queries": len(calib),
                              "evaluated_queries": len(held), "calibration": json.loads(cal.to_json()),
                              "fixed": table, "budgets": budgets}
    for row in budgets:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
