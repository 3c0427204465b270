"""``tracer train``: train the benchmark LM from scratch, or fine-tune a local pretrained LM
(``--init-from MODEL_DIR``), with checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a small causal LM on a benchmark corpus (or fine-tune one)")
    p.add_argument("--data", required=True, help="benchmark directory (from tracer synth)")
    p.add_argument("--out", required=True, help="run directory for checkpoints")
    p.add_argument("--preset", default=None,
                   help="tiny | small | medium (default: small; not with --init-from)")
    p.add_argument("--arch", choices=["gpt2", "llama"],
                   help="override the architecture (not with --init-from)")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="fine-tune this local pretrained causal LM (a save_pretrained directory with its "
                        "tokenizer; never a hub id) instead of training from scratch; the base model is "
                        "checkpoint 0 of the report's learned slice")
    p.add_argument("--epochs", type=int, help="override the number of epochs (fine-tuning default 3)")
    p.add_argument("--lr", type=float, help="override the peak learning rate (fine-tuning default 2e-4)")
    p.add_argument("--batch-size", type=int, help="override documents per step (fine-tuning default 8)")
    p.add_argument("--seed", type=int, help="override the seed")
    p.set_defaults(func=run)


def _load_data(data: Path) -> tuple[list, list, dict[str, str]]:
    from tracer.corpus import load_corpus, load_queries

    docs = load_corpus(data / "corpus.jsonl")
    queries, train_prompts = [], {}
    if (data / "queries.jsonl").is_file():
        queries = load_queries(data / "queries.jsonl")
        with open(data / "queries.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "train_prompt" in row:
                    train_prompts[str(row["id"])] = row["train_prompt"]
    return docs, queries, train_prompts


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    for flag, key in (("epochs", "epochs"), ("lr", "lr"), ("batch_size", "batch_size")):
        value = getattr(args, flag, None)
        if value is not None:
            if not value > 0:
                raise DataError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
            out[key] = value
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    return out


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm.auto import tqdm

    from tracer.model.train import TRAIN_PRESETS, FinetuneConfig, finetune, train

    data = Path(args.data)
    if not data.is_dir():
        raise DataError(f"benchmark directory not found: {data}")
    init_from = getattr(args, "init_from", None)
    if init_from:
        if args.preset is not None or args.arch:
            raise DataError("--preset and --arch describe a model trained from scratch; --init-from takes "
                            "the pretrained model's own architecture")
        if not Path(init_from).is_dir():
            raise DataError(f"--init-from: model directory not found: {init_from} "
                            "(tracer loads local paths only, never a hub id)")
        cfg = dataclasses.replace(FinetuneConfig(), **_overrides(args))
        docs, queries, train_prompts = _load_data(data)
        report = finetune(docs, init_from, cfg, args.out, queries, train_prompts,
                          progress=lambda it: tqdm(total=len(it), desc="finetune", unit="step"))
        print(f"train: fine-tuned {report['n_parameters']:,} parameters from {report['init_from']}, "
              f"{report['n_documents']} documents x {cfg.epochs} epochs in {report['train_seconds']:.0f}s "
              f"({report['seconds_per_example']:.3f} s/example) -> {args.out}")
        _print_checkpoints(report, "base")
        return 0
    preset = args.preset or "small"
    if preset not in TRAIN_PRESETS:
        raise DataError(f"unknown preset {preset!r}; expected one of {', '.join(TRAIN_PRESETS)}")
    cfg = TRAIN_PRESETS[preset]
    if args.arch:
        cfg = dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, arch=args.arch))
    cfg = dataclasses.replace(cfg, **_overrides(args))
    docs, queries, train_prompts = _load_data(data)
    report = train(docs, cfg, args.out, queries, train_prompts,
                   progress=lambda it: tqdm(total=len(it), desc="train", unit="step"))
    print(f"train: {report['n_parameters']:,} parameters, {len(report['checkpoints'])} checkpoints in "
          f"{report['train_seconds']:.0f}s -> {args.out}")
    _print_checkpoints(report, "the first checkpoint")
    return 0


def _print_checkpoints(report: dict, first: str) -> None:
    last = report["checkpoints"][-1]
    for c in report["checkpoints"]:
        print(f"  {c['name']:<18} lr={c['lr']:.2e}  acc(train templates)={c['acc_train_template']:.3f}  "
              f"acc(held-out templates)={c['acc_heldout_template']:.3f}")
    print(f"  learned slice (right at {last['name']}, wrong at {first}): {report['n_learned']} queries")
