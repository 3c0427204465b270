"""Is a hit's ``stable`` flag evidence? Proponent rate of stable vs unstable hits at the same rank.

A hit is *stable* when it is in the top-k under every checkpoint alone (``Hit.stable``). For each
gradient method, over every query with known proponents, this compares the share of proponents among
stable and among unstable hits rank by rank, and pools the per-rank differences (weighted by the
number of hits that have both kinds at that rank), with a bootstrap CI over queries. The statistic is
:func:`tracer.metrics.stability.summarize`, the same function behind ``tracer eval``'s stability table,
so the two agree on the same hits::

    python eval/stability.py --index runs/demo/index --queries runs/demo/bench/queries.jsonl --json runs/stability.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import numpy as np

from tracer.metrics.stability import rank_matched_difference, summarize  # noqa: F401 - the report's statistic


def collect(t: Any, queries: Sequence[Any], method: str, k: int, num_candidates: int,
            batch: int = 16) -> np.ndarray:
    """``(n_queries, k, 2)`` of (stable, proponent) per query and rank (-1 where a rank is missing)."""
    out = -np.ones((len(queries), k, 2), dtype=np.int8)
    for s in range(0, len(queries), batch):
        for i, r in enumerate(t.trace_batch(list(queries[s:s + batch]), method=method, k=k,
                                            num_candidates=num_candidates, stability=True), start=s):
            for h in r.hits:
                out[i, h.rank - 1] = (int(bool(h.stable)), int(bool(h.proponent)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--methods", default="tracin,tracin_cos,influence")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--num-candidates", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the queries")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from tracer.corpus import load_queries
    from tracer.tracer import Tracer

    report: dict[str, Any] = {}
    with Tracer.open(args.index) as t:
        known = set(t.store.doc_ids)
        qs = [q for q in load_queries(args.queries) if set(q.proponents) & known]
        qs = qs[: args.max_queries] if args.max_queries else qs
        report["queries"] = len(qs)
        for m in args.methods.split(","):
            report[m] = summarize(collect(t, qs, m, args.k, args.num_candidates), n_boot=args.n_boot, seed=args.seed)
            print(m, report[m], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
