"""How well an index's gradient FAISS finds the exact top hits: recall of the full-corpus top-k.

For each query, ``trace(method, candidates="full")`` scans every document (the exact ranking) and
``trace(method, candidates="gradient", num_candidates=C)`` reranks FAISS's top-C; recall@k is the
share of the exact top-k that the FAISS path returns. Given several indexes of the same corpus (e.g.
one grown by ``tracer add``, whose FAISS space was fitted on the original documents, and one built
from scratch), it prints the figure for each, on the same queries, and the top-k overlap between them.

    python eval/faiss_recall.py --index GROWN --index SCRATCH --queries queries.jsonl --n 32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", action="append", required=True, help="index directory (repeat)")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--n", type=int, default=32, help="queries (the first N)")
    ap.add_argument("--method", default="tracin")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--num-candidates", type=int, default=100)
    args = ap.parse_args()

    from tracer import Tracer
    from tracer.corpus import load_queries

    queries = load_queries(args.queries)[:args.n]
    if not queries:
        raise SystemExit(f"no queries in {args.queries}")
    tops: list[list[list[str]]] = []
    out = {}
    for path in args.index:
        with Tracer.open(path) as t:
            t0 = time.perf_counter()
            recalls, fast = [], []
            for q in queries:
                exact = [h.doc_id for h in t.trace(q.prompt, q.target, method=args.method, candidates="full",
                                                   k=args.k).hits]
                got = [h.doc_id for h in t.trace(q.prompt, q.target, method=args.method, candidates="gradient",
                                                 k=args.k, num_candidates=args.num_candidates).hits]
                recalls.append(len(set(exact) & set(got)) / max(len(exact), 1))
                fast.append(got)
            tops.append(fast)
            out[path] = {"recall_at_k": float(np.mean(recalls)), "min": float(np.min(recalls)),
                         "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{path}: recall@{args.k} of the exact top-{args.k} from FAISS@{args.num_candidates}: "
                  f"{np.mean(recalls):.3f} (min {np.min(recalls):.2f}) over {len(queries)} queries")
    if len(tops) > 1:
        overlap = np.mean([len(set(a) & set(b)) / max(len(a), len(b), 1) for a, b in zip(tops[0], tops[1])])
        out["overlap_first_two"] = float(overlap)
        print(f"top-{args.k} overlap of the first two indexes' FAISS paths: {overlap:.3f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
