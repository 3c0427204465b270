"""Benchmark the gradient featurizer: speed against the forward+backward floor, and fidelity.

Prints JSON with, per checkpoint, ``examples_per_s`` (tracer's projected featurizer),
``fwd_bwd_examples_per_s`` (a plain training-style forward+backward computing every
parameter gradient, no optimizer step, over the very same batches: the floor) and
``ratio_to_floor`` (tracer time / floor time; <= 1.0 means faster than the floor). Then
fidelity against exact TracIn over the same tracked parameters (identity projection =
exact per-example gradients): Spearman and top-10 overlap, for the default features, for
weights-only / biases+norms-only, and for a TRAK-style dense projection; and the factored
Adam correction against the exact corrected-then-projected gradient.

``budgets``: the bytes-per-example axis. For each budget (KB per example per checkpoint)
and storage dtype, fidelity of the K-FAC eigenbasis with the energy-split budget against a
uniform random orthogonal ``k x k`` projection (exact biases/norms when they fit) of the
same size. int8 rows are quantised and dequantised exactly as the index stores them. The
K-FAC fit (``fit_seconds``) is reported apart: it runs once per checkpoint per build.

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
from tracer.model.loading import load_checkpoints, load_model, load_tokenizer
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


def fit(ck, tok, cfg, enc_all, model=None):
    """(factors, seconds) of the K-FAC fit over the seeded sample of ``enc_all``."""
    from tracer.featurize.checkpoint import fit_checkpoint, fit_sample

    rows = fit_sample(len(enc_all), cfg)
    t0 = time.perf_counter()
    factors = fit_checkpoint(ck, tok, cfg, [enc_all[int(r)] for r in rows], model=model)
    return factors, time.perf_counter() - t0


def kfac_featurizer(ck, tok, cfg, factors, model=None, views=("raw",)):
    from tracer.featurize.budget import allocate
    from tracer.featurize.layout import tracked_groups

    model = model if model is not None else load_model(ck.path)
    widths = None
    if cfg.budgeted:
        groups = tracked_groups(model, cfg.layers, cfg.include_norms, cfg.include_biases)
        widths, _ = allocate([factors], groups, cfg.dim, cfg.fit_floor, cfg.exact_share)
    return CheckpointFeaturizer(ck, tok, cfg, list(views), model=model, factors=factors, widths=widths)


def speed(ck, tok, cfg, enc, reps: int, enc_all) -> dict:
    factors, fit_s = fit(ck, tok, cfg, enc_all) if cfg.projection == "kfac" else (None, 0.0)
    fz = kfac_featurizer(ck, tok, cfg, factors) if factors else CheckpointFeaturizer(ck, tok, cfg, ["raw"])
    batches = [pad_batch(enc[s:s + cfg.batch_size], tok.pad_token_id) for s in range(0, len(enc), cfg.batch_size)]
    tracer_seconds(fz, batches[:2]), floor_seconds(fz.model, batches[:2])  # warm-up
    ours, floor = [], []
    for _ in range(reps):  # interleaved, best of reps: robust to noise from other processes
        floor.append(floor_seconds(fz.model, batches))
        ours.append(tracer_seconds(fz, batches))
    return {"checkpoint": ck.path.name, "examples": len(enc), "examples_per_s": round(len(enc) / min(ours), 1),
            "fwd_bwd_examples_per_s": round(len(enc) / min(floor), 1),
            "ratio_to_floor": round(min(ours) / min(floor), 3), "feature_dim": fz.dim,
            "fit_seconds": round(fit_s, 2), "fit_examples": min(len(enc_all), cfg.fit_docs)}


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


def _stored(x: np.ndarray, layout, dtype: str, factors=None) -> np.ndarray:
    """Rows as the index stores and reads them back (a K-FAC index divides by the prescale first)."""
    from tracer.featurize.kfac import prescale
    from tracer.index.quant import block_bounds, dequantize, quantize

    if dtype == "int8":
        bounds = block_bounds([b.to_dict() for b in layout])
        sigma = np.ones(x.shape[1], np.float32) if factors is None else prescale(layout, factors).numpy()
        return dequantize(*quantize(x / sigma, bounds), bounds) * sigma
    return x.astype(dtype).astype(np.float32)


def _bytes(layout, dtype: str) -> int:
    width = sum(b.size for b in layout)
    return width + 4 * len(layout) if dtype == "int8" else width * np.dtype(dtype).itemsize


def _uniform_k(model, cfg, dim: int) -> tuple[int, bool]:
    """Largest uniform k (k x k per linear) fitting ``dim``, with exact biases/norms when they fit."""
    from tracer.featurize.layout import tracked_groups

    groups = tracked_groups(model, cfg.layers)
    lin = [(di, do) for _, k, di, do in groups if k == LINEAR]
    vec = sum(do for _, k, _, do in groups if k != LINEAR)

    def size(k: int, vectors: bool) -> int:
        return sum(min(k, di) * min(k, do) for di, do in lin) + (vec if vectors else 0)

    for vectors in (True, False):
        k = 0
        while size(k + 1, vectors) <= dim and k < max(max(d) for d in lin):
            k += 1
        if k >= 1:
            return k, vectors
    return 1, False


def budget_curve(ck, tok, docs_enc, q_enc, exact_scores, enc_all, budgets_kb, model) -> list[dict]:
    rows = []
    factors, fit_s = fit(ck, tok, FeaturizeConfig(), enc_all, model=model)
    for kb in budgets_kb:
        for dtype in ("int8", "float16"):
            budget = int(kb * 1024)
            n_groups = len(factors)
            dim = budget - 4 * n_groups if dtype == "int8" else budget // 2
            cfg = FeaturizeConfig(dim=dim, dtype=dtype)
            fz = kfac_featurizer(ck, tok, cfg, factors, model=model)
            d, q = fz.featurize(docs_enc)[0]["raw"], fz.featurize(q_enc)[0]["raw"]
            d, q = _stored(d, fz.layout, dtype, factors), _stored(q, fz.layout, dtype, factors)
            rows.append({"kb": kb, "dtype": dtype, "features": "kfac", "dim": fz.dim,
                         "bytes": _bytes(fz.layout, dtype), **_agreement(exact_scores, q @ d.T)})
            k, vectors = _uniform_k(model, cfg, dim if dtype != "int8" else budget - 4 * n_groups)
            rcfg = FeaturizeConfig(projection="orthogonal", k_in=k, k_out=k, dtype=dtype, include_biases=vectors,
                                   include_norms=vectors)
            rz = CheckpointFeaturizer(ck, tok, rcfg, ["raw"], model=model)
            d, q = rz.featurize(docs_enc)[0]["raw"], rz.featurize(q_enc)[0]["raw"]
            d, q = _stored(d, rz.layout, dtype), _stored(q, rz.layout, dtype)
            rows.append({"kb": kb, "dtype": dtype, "features": f"orthogonal {k}x{k}" + (" + exact b/n" if vectors
                         else ""), "dim": rz.dim, "bytes": _bytes(rz.layout, dtype),
                         **_agreement(exact_scores, q @ d.T)})
    return [{"fit_seconds": round(fit_s, 2)}] + rows


def fidelity(ck, tok, cfg, docs_enc, q_enc, dense_k: int, enc_all=None, budgets_kb=()) -> dict:
    from tracer.featurize.dense import DenseProjector

    exact_fz = CheckpointFeaturizer(ck, tok, FeaturizeConfig.exact(batch_size=8), ["raw"])
    factors = None
    if cfg.projection == "kfac":
        factors, _ = fit(ck, tok, cfg, enc_all, model=exact_fz.model)
        proj_fz = kfac_featurizer(ck, tok, cfg, factors, model=exact_fz.model, views=("raw", "adam"))
    else:
        proj_fz = CheckpointFeaturizer(ck, tok, cfg, ["raw", "adam"], model=exact_fz.model)
    ex_d, ex_q = exact_fz.featurize(docs_enc)[0]["raw"], exact_fz.featurize(q_enc)[0]["raw"]
    pr_d, pr_q = proj_fz.featurize(docs_enc)[0], proj_fz.featurize(q_enc)[0]
    exact_scores = ex_q.astype(np.float64) @ ex_d.T.astype(np.float64)
    out = {"n_docs": len(docs_enc), "n_queries": len(q_enc), "dim": proj_fz.dim, "exact_dim": exact_fz.dim,
           "kronecker": _agreement(exact_scores, pr_q["raw"] @ pr_d["raw"].T)}
    fac = factors if cfg.projection == "kfac" else None
    sd, sq = _stored(pr_d["raw"], proj_fz.layout, cfg.dtype, fac), _stored(pr_q["raw"], proj_fz.layout, cfg.dtype, fac)
    out["kronecker_as_stored"] = {"dtype": cfg.dtype, "bytes": _bytes(proj_fz.layout, cfg.dtype),
                                  **_agreement(exact_scores, sq @ sd.T)}
    if budgets_kb:
        out["budgets"] = budget_curve(ck, tok, docs_enc, q_enc, exact_scores, enc_all, budgets_kb, exact_fz.model)
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
        exact_blocks = {(b.module, b.kind): b for b in el}
        for pb in proj_fz.layout:
            eb = exact_blocks[(pb.module, pb.kind)]
            g = torch.from_numpy(x[:, eb.offset:eb.offset + eb.size]).double()
            vv = v[param_name(eb)].double()
            if eb.kind == LINEAR:
                vv = vv.T if eb.module in conv else vv
                g = g.view(-1, *vv.shape) / (vv.sqrt() + proj_fz.cfg.adam_eps)
                g = raw.p_out[eb.module].double() @ g @ raw.p_in[eb.module].double().T
            else:
                g = g / (vv.sqrt() + proj_fz.cfg.adam_eps)
                p = raw.p_vec.get((pb.module, pb.kind))
                g = g if p is None else g @ p.double().T
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
    ap.add_argument("--budgets", default="2,4,8,16", help="KB per example per checkpoint for the bytes axis ('' = skip)")
    ap.add_argument("--projection", default="kfac", help="features timed and checked: kfac (default) or orthogonal")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    cks = load_checkpoints(args.run)
    cks = cks[-1:] if args.checkpoints == "last" else cks
    tok = load_tokenizer(cks[-1].path)
    cfg = FeaturizeConfig() if args.projection == "kfac" else FeaturizeConfig(projection=args.projection)
    docs = load_corpus(Path(args.data) / "corpus.jsonl")
    enc_all = encode_documents(tok, docs, cfg.max_length)
    enc = (enc_all * (args.n // len(enc_all) + 1))[: args.n]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    queries = load_queries(Path(args.data) / "queries.jsonl")[: args.n_queries]
    result = {"config": cfg.to_dict(), "threads": torch.get_num_threads(),
              "speed": [speed(ck, tok, cfg, enc, args.reps, enc_all) for ck in cks],
              "fidelity": fidelity(cks[-1], tok, cfg, enc[: args.n_fidelity],
                                   [encode_example(tok, q.prompt, q.target) for q in queries], args.dense_k,
                                   enc_all, budgets)}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
