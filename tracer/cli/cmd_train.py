"""``tracer train``: train the benchmark LM from scratch with checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a small causal LM on a benchmark corpus")
    p.add_argument("--data", required=True, help="benchmark directory (from tracer synth)")
    p.add_argument("--out", required=True, help="run directory for checkpoints")
    p.add_argument("--preset", default="small", help="tiny | small | medium (default: small)")
    p.add_argument("--arch", choices=["gpt2", "llama"], help="override the architecture")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--seed", type=int, help="override the seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm.auto import tqdm

    from tracer.corpus import load_corpus, load_queries
    from tracer.model.train import TRAIN_PRESETS, train

    if args.preset not in TRAIN_PRESETS:
        raise DataError(f"unknown preset {args.preset!r}; expected one of {', '.join(TRAIN_PRESETS)}")
    data = Path(args.data)
    if not data.is_dir():
        raise DataError(f"benchmark directory not found: {data}")
    cfg = TRAIN_PRESETS[args.preset]
    if args.arch:
        cfg = dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, arch=args.arch))
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    docs = load_corpus(data / "corpus.jsonl")
    queries, train_prompts = [], {}
    if (data / "queries.jsonl").is_file():
        queries = load_queries(data / "queries.jsonl")
        with open(data / "queries.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "train_prompt" in row:
                    train_prompts[str(row["id"])] = row["train_prompt"]
    report = train(docs, cfg, args.out, queries, train_prompts,
                   progress=lambda it: tqdm(total=len(it), desc="train", unit="step"))
    last = report["checkpoints"][-1]
    print(f"train: {report['n_parameters']:,} parameters, {len(report['checkpoints'])} checkpoints in "
          f"{report['train_seconds']:.0f}s -> {args.out}")
    for c in report["checkpoints"]:
        print(f"  {c['name']:<18} lr={c['lr']:.2e}  acc(train templates)={c['acc_train_template']:.3f}  "
              f"acc(held-out templates)={c['acc_heldout_template']:.3f}")
    print(f"  learned slice (right at {last['name']}, wrong at the first checkpoint): {report['n_learned']} queries")
    return 0
