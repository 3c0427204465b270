"""Benchmark the gradient featurizer: speed against the forward+backward floor, and fidelity.

Prints JSON with, per checkpoint, ``examples_per_s`` (tracer's projected featurizer),
``fwd_bwd_examples_per_s`` (a plain training-style forward+backward computing every
parameter gradient, no optimizer step, over the very same batches: the floor) and
``ratio_to_floor`` (tracer time / floor time; <= 1.0 means faster than the floor). Then
fidelity at the default dimension against exact TracIn over the same tracked
parameters (identity projection = exact per-example gradients): Spearman and top-10
overlap, for the default Kronecker projection, for weights-only / biases+norms-only,
and for a TRAK-style dense projection; and the factored Adam correction against the
exact corrected-then-projected gradient.

    python eval/bench_featurize.py --run runs/demo/run --data runs/demo/bench --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from tracer.corpus import load_corpus, load_queries
from tracer.featurize.checkpoint import CheckpointFeaturizer, encode_documents
from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.layout import BIAS, LINEAR, NORM_BIAS, NORM_WEIGHT
from tracer.model.loading import load_checkpoints, load_tokenizer
from tracer.model.tokenization import encode_example, example_losses, pad_batch


def floor_seconds(model, batches) -> float:
    """Plain forward+backward with all parameter gradients (no optimizer step)."""
    for p in model.parameters():
        p.requires_grad_(True)
    t0 = time.perf_counter()
    for b in batches:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits
        example_losses(logits, b["labels"]).sum().backward()
    return time.perf_counter() - t0


def tracer_seconds(fz, batches) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fz._fz.featurize(b)
    return time.perf_counter() - t0


def speed(ck, tok, cfg, enc, reps: int) -> dict:
    fz = CheckpointFeaturizer(ck, tok, cfg, ["raw"])
    batches = [pad_batch(enc[s:s + cfg.batch_size], tok.pad_token_id) for s in range(0, len(enc), cfg.batch_size)]
    tracer_seconds(fz, batches[:2]), floor_seconds(fz.model, batches[:2])  # warm-up
    ours, floor = [], []
    for _ in range(reps):  # interleaved, best of reps: robust to noise from other processes
        floor.append(floor_seconds(fz.model, batches))
        ours.append(tracer_seconds(fz, batches))
    return {"checkpoint": ck.path.name, "examples": len(enc), "examples_per_s": round(len(enc) / min(ours), 1),
            "fwd_bwd_examples_per_s": round(len(enc) / min(floor), 1),
            "ratio_to_floor": round(min(ours) / min(floor), 3), "feature_dim": fz.dim}


def _agreement(exact: np.ndarray, approx: np.ndarray) -> dict:
    """Mean Spearman and top-10 overlap of per-query score vectors ``(n_queries, n_docs)``."""
    rho = [spearmanr(e, a).statistic for e, a in zip(exact, approx)]
    top = [len(set(np.argsort(-e)[:10]) & set(np.argsort(-a)[:10])) / 10 for e, a in zip(exact, approx)]
    return {"spearman": round(float(np.mean(rho)), 3), "top10_overlap": round(float(np.mean(top)), 3)}


def _mask(layout, kinds) -> np.ndarray:
    m = np.zeros(sum(b.size for b in layout), dtype=bool)
    for b in layout:
        if b.kind in kinds:
            m[b.offset:b.offset + b.size] = True
    return m


def fidelity(ck, tok, cfg, docs_enc, q_enc, dense_k: int) -> dict:
    from tracer.featurize.dense import DenseProjector

    exact_fz = CheckpointFeaturizer(ck, tok, FeaturizeConfig.exact(batch_size=8), ["raw"])
    proj_fz = CheckpointFeaturizer(ck, tok, cfg, ["raw", "adam"], model=exact_fz.model)
    ex_d, ex_q = exact_fz.featurize(docs_enc)[0]["raw"], exact_fz.featurize(q_enc)[0]["raw"]
    pr_d, pr_q = proj_fz.featurize(docs_enc)[0], proj_fz.featurize(q_enc)[0]
    exact_scores = ex_q.astype(np.float64) @ ex_d.T.astype(np.float64)
    out = {"n_docs": len(docs_enc), "n_queries": len(q_enc), "dim": proj_fz.dim, "exact_dim": exact_fz.dim,
           "kronecker": _agreement(exact_scores, pr_q["raw"] @ pr_d["raw"].T)}
    w, rest = _mask(proj_fz.layout, {LINEAR}), _mask(proj_fz.layout, {BIAS, NORM_WEIGHT, NORM_BIAS})
    out["kronecker_weights_only"] = _agreement(exact_scores, pr_q["raw"][:, w] @ pr_d["raw"][:, w].T)
    out["exact_biases_norms_only"] = _agreement(exact_scores, pr_q["raw"][:, rest] @ pr_d["raw"][:, rest].T)
    dense = DenseProjector(exact_fz.model, cfg, dense_k, seed=cfg.seed)
    t0 = time.perf_counter()
    dd = dense.project(docs_enc, tok.pad_token_id)
    out["dense_trak_style"] = {"k": dense_k, **_agreement(exact_scores, dense.project(q_enc, tok.pad_token_id) @ dd.T),
                               "examples_per_s": round(len(docs_enc) / (time.perf_counter() - t0), 1)}
    out["adam_factored_vs_exact"] = _adam_fidelity(proj_fz, ex_d, ex_q, pr_d["adam"], pr_q["adam"])
    return out


def _adam_fidelity(proj_fz, ex_d, ex_q, ad_d, ad_q) -> dict:
    """Factored correction (folded into P) vs exact elementwise g / (sqrt(v) + eps), then projected."""
    from tracer.featurize.views import load_second_moment

    v = load_second_moment(proj_fz.checkpoint.path)
    conv = {n for n, m in proj_fz.model.named_modules() if type(m).__name__ == "Conv1D"}
    raw = proj_fz._fz.views["raw"]
    from tracer.featurize.layout import build_layout, param_name

    el = build_layout(proj_fz.model, proj_fz.cfg.layers, 0, 0, True, True)

    def corrected(x: np.ndarray) -> np.ndarray:
        parts = []
        for eb, pb in zip(el, proj_fz.layout):
            g = torch.from_numpy(x[:, eb.offset:eb.offset + eb.size]).double()
            vv = v[param_name(eb)].double()
            if eb.kind == LINEAR:
                vv = vv.T if eb.module in conv else vv
                g = g.view(-1, *vv.shape) / (vv.sqrt() + proj_fz.cfg.adam_eps)
                g = raw.p_out[eb.module].double() @ g @ raw.p_in[eb.module].double().T
            else:
                g = g / (vv.sqrt() + proj_fz.cfg.adam_eps)
            parts.append(g.reshape(len(x), -1).numpy())
        return np.concatenate(parts, 1)

    exact = corrected(ex_q) @ corrected(ex_d).T
    return _agreement(exact, ad_q.astype(np.float64) @ ad_d.T.astype(np.float64))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo/run", help="training run directory (tracer train)")
    ap.add_argument("--data", default="runs/demo/bench", help="benchmark directory (tracer synth)")
    ap.add_argument("--n", type=int, default=2000, help="examples timed")
    ap.add_argument("--n-fidelity", type=int, default=500, help="documents in the fidelity check")
    ap.add_argument("--n-queries", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    ap.add_argument("--dense-k", type=int, default=512)
    ap.add_argument("--checkpoints", default="all", help="'all' or 'last'")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    cks = load_checkpoints(args.run)
    cks = cks[-1:] if args.checkpoints == "last" else cks
    tok = load_tokenizer(cks[-1].path)
    cfg = FeaturizeConfig()
    docs = load_corpus(Path(args.data) / "corpus.jsonl")
    enc = encode_documents(tok, (docs * (args.n // len(docs) + 1))[: args.n], cfg.max_length)
    queries = load_queries(Path(args.data) / "queries.jsonl")[: args.n_queries]
    result = {"config": cfg.to_dict(), "threads": torch.get_num_threads(),
              "speed": [speed(ck, tok, cfg, enc, args.reps) for ck in cks],
              "fidelity": fidelity(cks[-1], tok, cfg, enc[: args.n_fidelity],
                                   [encode_example(tok, q.prompt, q.target) for q in queries], args.dense_k)}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
