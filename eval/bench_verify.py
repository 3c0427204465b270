"""Verify's cost: per-example latency of the on-demand tail-patch, and its sign agreement with the eval's.

For ``--queries`` facts, verifies each query's top ``-k`` tracin hits (plus the random baseline) and
reports the p50/p90 per-example milliseconds (after a warm-up call), and the fraction of (query,
example) pairs whose delta has the same sign as ``tracer.causal.tail_patch_deltas`` called the way
``tracer eval --tail-patch`` calls it (it must be 1.0: the same computation)::

    python eval/bench_verify.py --index runs/demo/index --queries runs/demo/bench/queries.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--n", type=int, default=20, help="queries")
    p.add_argument("-k", type=int, default=5, help="hits verified per query")
    args = p.parse_args()

    from tracer.causal import tail_patch_deltas
    from tracer.corpus import load_queries
    from tracer.featurize.checkpoint import encode_documents
    from tracer.model.loading import load_model
    from tracer.model.tokenization import encode_example
    from tracer.tracer import Tracer

    with Tracer.open(args.index) as t:
        qs = load_queries(args.queries)[: args.n]
        t.verify(qs[0].prompt, qs[0].target, [t.store.doc_ids[0]])  # warm-up: loads the checkpoint's model
        enc = t.retriever.encoder
        model = load_model(enc.dirs[0], attn_implementation="eager")
        ms, calls, agree = [], [], []
        for q in qs:
            ids = [h.doc_id for h in t.trace(q.prompt, q.target, method="tracin", k=args.k).hits]
            v = t.verify(q.prompt, q.target, ids)
            ms += [x.ms for x in v.examples + v.baseline]
            calls.append(v.timings_ms["total_ms"])
            docs = t.get_documents(ids + [b.doc_id for b in v.baseline])
            ref = tail_patch_deltas(model, enc.tokenizer, encode_example(enc.tokenizer, q.prompt, q.target, 128),
                                    encode_documents(enc.tokenizer, docs, 128), 1e-2)
            agree += list(np.sign(ref) == np.sign([x.delta_logprob for x in v.examples + v.baseline]))
    out = {"queries": len(qs), "examples_per_call": args.k + 3,
           "per_example_ms_p50": round(float(np.median(ms)), 1), "per_example_ms_p90": round(float(np.percentile(ms, 90)), 1),
           "call_ms_p50": round(float(np.median(calls)), 1), "sign_agreement_with_eval": float(np.mean(agree))}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
