"""Fidelity of an index's TracIn scores against exact per-example gradients, on any model directory.

For ``--docs`` documents and ``--queries`` facts, the exact TracIn score is ``lr * <g_query, g_doc>``
over the tracked parameters, with full per-example gradients from ``torch.func`` (one example at a
time where vmap does not apply). A real model is too large for full per-example gradients of every
layer, so both sides track the same subset: the linears of the last ``--blocks`` decoder blocks
(the family's attention and MLP modules) plus the norms. The index side is built through
``tracer.build_index`` with the default features, at two budgets:

- ``--dim`` coordinates (default 7680, the default per-example budget): generous here, since it
  covers only ``--blocks`` blocks instead of the whole model;
- the same budget *per block* as the default build gives the whole model (7680 * blocks / n_blocks).

Reports, per budget, the mean over queries of the Spearman correlation between exact and index
scores over all documents, and the mean overlap of the top-10 sets::

    python eval/fidelity.py --model runs/smollm2/model --corpus runs/demo/bench/corpus.jsonl \
        --queries runs/demo/bench/queries.jsonl --docs 100 --n-queries 10 --blocks 2 --json runs/fidelity.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_BLOCK_NO = re.compile(r"\.(\d+)\.")


def last_block_modules(model: Any, blocks: int) -> tuple[list[str], int]:
    """The tracked linear modules (``--layers auto``) of the last ``blocks`` blocks, and the block count."""
    from tracer.featurize.architectures import resolve_patterns
    from tracer.featurize.layout import LINEAR, build_layout

    layout = build_layout(model, resolve_patterns(model, ("auto",)), 0, 0, include_norms=False,
                          include_biases=False)
    mods = [b.module for b in layout if b.kind == LINEAR]
    nos = sorted({int(m.group(1)) for b in mods if (m := _BLOCK_NO.search(b))})
    keep = set(nos[-blocks:])
    return [b for b in mods if (m := _BLOCK_NO.search(b)) and int(m.group(1)) in keep], len(nos)


def exact_scores(model: Any, tokenizer: Any, layers: Sequence[str], docs: Sequence[Any], queries: Sequence[Any],
                 max_length: int, batch: int = 4) -> np.ndarray:
    """``(n_queries, n_docs)`` exact gradient inner products over the parameters tracer tracks for ``layers``."""
    import torch

    from tracer.featurize.exact import per_example_grads
    from tracer.featurize.layout import build_layout, param_name
    from tracer.model.tokenization import encode_example, pad_batch

    names = sorted({param_name(b) for b in build_layout(model, layers, 0, 0)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def grads(encs: list[Any]) -> torch.Tensor:
        out = []
        for s in range(0, len(encs), batch):
            g = per_example_grads(model, pad_batch(encs[s:s + batch], pad), names)
            out.append(torch.cat([g[n].flatten(1) for n in names], dim=1))
        return torch.cat(out)

    q = grads([encode_example(tokenizer, x.prompt, x.target, max_length) for x in queries])
    d = [encode_example(tokenizer, x.prompt or "", x.target if x.target is not None else x.text, max_length)
         for x in docs]
    cols = []
    for s in range(0, len(d), 16):  # keep only 16 documents' full gradients at a time
        cols.append((q.double() @ grads(d[s:s + 16]).double().T).numpy())
    return np.concatenate(cols, axis=1)


def compare(exact: np.ndarray, approx: np.ndarray, top: int = 10) -> dict[str, float]:
    """Mean Spearman over queries and mean top-``top`` overlap between two score matrices."""
    from scipy.stats import spearmanr

    rho = [float(spearmanr(e, a).statistic) for e, a in zip(exact, approx)]
    overlap = [len(set(np.argsort(-e)[:top]) & set(np.argsort(-a)[:top])) / top for e, a in zip(exact, approx)]
    return {"spearman": round(float(np.mean(rho)), 4), "spearman_min": round(float(np.min(rho)), 4),
            f"top{top}_overlap": round(float(np.mean(overlap)), 4)}


def index_scores(index: Path, docs: Sequence[Any], queries: Sequence[Any], lr: float) -> np.ndarray:
    """``(n_queries, n_docs)`` TracIn scores / lr from the index, in document order."""
    from tracer.tracer import Tracer

    out = np.zeros((len(queries), len(docs)))
    with Tracer.open(index) as t:
        pos = {d: i for i, d in enumerate(t.store.doc_ids)}
        for qi, q in enumerate(queries):
            r = t.trace(q.prompt, q.target, method="tracin", candidates="full", k=len(docs))
            for h in r.hits:
                out[qi, pos[h.doc_id]] = h.score / lr
    return out


def run(model_dir: Path, docs: Sequence[Any], queries: Sequence[Any], work: Path, *, blocks: int, dims: Sequence[int],
        fit_docs: int, projection: str = "kfac", max_length: int = 128, tokenizer: Path | None = None
        ) -> dict[str, Any]:
    """Exact scores, then one index per budget in ``dims`` (0: the per-block default share); their fidelity."""
    import tracer
    from tracer.featurize.config import DEFAULT_DIM, FeaturizeConfig
    from tracer.index.build import IndexConfig
    from tracer.model.loading import load_model, load_tokenizer, read_checkpoint

    model = load_model(model_dir, attn_implementation="eager")
    tok = load_tokenizer(tokenizer or model_dir)
    layers, n_blocks = last_block_modules(model, blocks)
    report: dict[str, Any] = {"model": str(model_dir), "docs": len(docs), "queries": len(queries),
                              "blocks": f"last {blocks} of {n_blocks}", "tracked_linears": len(layers)}
    t0 = time.perf_counter()
    exact = exact_scores(model, tok, layers, docs, queries, max_length)
    report["exact_seconds"] = round(time.perf_counter() - t0, 1)
    del model
    lr = read_checkpoint(model_dir).lr
    report["budgets"] = []
    for dim in dims:
        d = dim or max(64, DEFAULT_DIM * blocks // n_blocks)
        fcfg = FeaturizeConfig(layers=tuple(layers), projection=projection, dim=d if projection == "kfac" else 0,
                               fit_docs=fit_docs, batch_size=8, max_length=max_length,
                               k_in=0 if projection == "identity" else 64, k_out=0 if projection == "identity" else 64)
        cfg = IndexConfig(featurize=fcfg, influence=False, trak=False, embeddings=False)
        t0 = time.perf_counter()
        idx = tracer.build_index(list(docs), model_dir, tokenizer=tokenizer, out=work / f"index-{projection}-{d}",
                                 config=cfg, overwrite=True, progress=False)
        row = {"projection": projection, "dim": d if projection == "kfac" else "full", "build_seconds": round(time.perf_counter() - t0, 1),
               **compare(exact, index_scores(idx, docs, queries, lr))}
        print("fidelity:", row, flush=True)
        report["budgets"].append(row)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a model directory (save_pretrained)")
    p.add_argument("--tokenizer", type=Path, default=None)
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--n-queries", type=int, default=10)
    p.add_argument("--blocks", type=int, default=2, help="decoder blocks tracked on both sides (the last ones)")
    p.add_argument("--dim", type=int, action="append", default=None,
                   help="kfac budgets to test (repeatable; 0 = the default budget's per-block share)")
    p.add_argument("--fit-docs", type=int, default=100)
    p.add_argument("--projection", default="kfac")
    p.add_argument("--work", type=Path, default=Path("runs/fidelity"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from tracer.corpus import load_corpus, load_queries
    from tracer.featurize.config import DEFAULT_DIM

    docs = load_corpus(args.corpus)[: args.docs]
    queries = load_queries(args.queries)[: args.n_queries]
    report = run(args.model, docs, queries, args.work, blocks=args.blocks, dims=args.dim or [DEFAULT_DIM, 0],
                 fit_docs=args.fit_docs, projection=args.projection, tokenizer=args.tokenizer)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
