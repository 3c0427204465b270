"""Train a small causal LM from scratch on a corpus, or fine-tune a local pretrained one, saving
checkpoints TracIn can use.

Each checkpoint is an ordinary ``save_pretrained`` directory (safetensors) plus the
learning rate in effect (``tracer_checkpoint.json``) and Adam's second moment
(``optimizer_v.safetensors``) for optimizer-corrected gradients. ``train_report.json``
records per checkpoint the accuracy on training-template and held-out-template prompts
and the FTRACE "learned" slice (right at the last checkpoint, wrong at the first).

:func:`finetune` (``tracer train --init-from MODEL_DIR``) starts from a pretrained causal LM and
its own tokenizer instead: the same checkpoints and report, with the *base model* recorded as
checkpoint 0 of the report (``name="base"``, step 0, its accuracies), so the learned slice is
FTRACE's: right after fine-tuning, wrong before it. The base is not copied into the run and not
listed in ``checkpoints.json`` (it has no optimizer state and no learning rate to weight TracIn).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tracer.model.loading import CHECKPOINT_META, OPTIMIZER_V, RUN_CHECKPOINTS
from tracer.model.scoring import target_stats
from tracer.model.tiny import ArchConfig, build_model, train_tokenizer
from tracer.model.tokenization import Encoded, encode_example, example_losses, pad_batch
from tracer.types import Document, Query

log = logging.getLogger(__name__)

TRAIN_CONFIG = "train_config.json"  # the TrainConfig of the run
TRAIN_REPORT = "train_report.json"  # accuracies per checkpoint, learned slice, timings
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class TrainConfig:
    """How to train the benchmark LM."""

    arch: ArchConfig = field(default_factory=ArchConfig, metadata={"help": "model architecture"})
    epochs: int = field(default=30, metadata={"help": "passes over the corpus"})
    batch_size: int = field(default=32, metadata={"help": "documents per step"})
    lr: float = field(default=5e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup_frac: float = field(default=0.05, metadata={"help": "linear warmup, fraction of steps"})
    min_lr_frac: float = field(default=0.1, metadata={"help": "cosine decay floor, fraction of lr"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    checkpoints: tuple[float, ...] = field(default=(0.25, 0.5, 1.0),
                                           metadata={"help": "fractions of training where checkpoints are saved"})
    max_length: int = field(default=96, metadata={"help": "token cap per document"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("TrainConfig.epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not self.checkpoints or any(not 0 < c <= 1 for c in self.checkpoints) \
                or list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"TrainConfig.checkpoints must be increasing fractions in (0, 1], got {self.checkpoints}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["arch"] = ArchConfig(**d.get("arch", {}))
        d["checkpoints"] = tuple(d.get("checkpoints", (0.25, 0.5, 1.0)))
        return cls(**d)


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a pretrained causal LM on a corpus (``tracer train --init-from``).

    The defaults suit a ~100M-parameter model and a corpus of ~1k sentences: a few epochs of AdamW
    at a peak lr of 2e-4, short warmup, cosine decay, two checkpoints (each holds the full weights
    and Adam's second moment, ~1 GB for SmolLM2-135M).
    """

    epochs: int = field(default=3, metadata={"help": "passes over the corpus"})
    batch_size: int = field(default=8, metadata={"help": "documents per step"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    warmup_frac: float = field(default=0.05, metadata={"help": "linear warmup, fraction of steps"})
    min_lr_frac: float = field(default=0.1, metadata={"help": "cosine decay floor, fraction of lr"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    checkpoints: tuple[float, ...] = field(default=(0.5, 1.0), metadata={
        "help": "fractions of training where checkpoints are saved"})
    max_length: int = field(default=128, metadata={"help": "token cap per document (the model's tokenizer)"})
    group_by_length: bool = field(default=True, metadata={
        "help": "batch documents of similar length (halves the padding of Wikipedia sentences)"})
    seed: int = field(default=0, metadata={"help": "random seed (batch order)"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 2:
            raise ValueError("FinetuneConfig.epochs and batch_size must be >= 1, max_length >= 2")
        if not self.lr > 0:
            raise ValueError(f"FinetuneConfig.lr must be > 0, got {self.lr}")
        if not self.checkpoints or any(not 0 < c <= 1 for c in self.checkpoints) \
                or list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"FinetuneConfig.checkpoints must be increasing fractions in (0, 1], "
                             f"got {self.checkpoints}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        d = {k: v for k, v in d.items() if k not in ("kind", "init_from")}
        for k in ("betas", "checkpoints"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def read_recipe(run_dir: str | Path) -> tuple[TrainConfig | FinetuneConfig, Path | None]:
    """A ``tracer train`` run's recipe (``train_config.json``) and, for a fine-tuning run, its base model.

    Raises:
        DataError: The run has no readable recipe, or its base model is gone.
    """
    from tracer.errors import DataError

    path = Path(run_dir) / TRAIN_CONFIG
    try:
        d = json.loads(path.read_text())
        if d.get("kind") != "finetune":
            return TrainConfig.from_dict({k: v for k, v in d.items() if k != "kind"}), None
        recipe, base = FinetuneConfig.from_dict(d), Path(d["init_from"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path}: not a readable tracer train recipe ({e})") from None
    if not base.is_dir():
        raise DataError(f"{path}: the fine-tuning run's base model {base} is gone; it is needed to retrain")
    return recipe, base


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(arch=ArchConfig(n_layer=2, d_model=32, n_head=2, vocab_size=512), epochs=3,
                        batch_size=16),
    "small": TrainConfig(),
    "medium": TrainConfig(arch=ArchConfig(n_layer=4, d_model=256, n_head=4, vocab_size=8192), epochs=20),
}


def lr_at(cfg: TrainConfig | FinetuneConfig, step: int, total: int) -> float:
    """Learning rate at ``step`` (1-based) of ``total``: linear warmup then cosine to ``min_lr_frac``."""
    warm = max(1, int(cfg.warmup_frac * total))
    if step <= warm:
        return cfg.lr * step / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_checkpoint(model: Any, tok: Any, opt: torch.optim.Optimizer, path: Path, step: int, lr: float,
                     epoch: float) -> None:
    from safetensors.torch import save_file

    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    names = {id(p): n for n, p in model.named_parameters()}
    state = {names[id(p)]: opt.state[p]["exp_avg_sq"].contiguous().clone()
             for g in opt.param_groups for p in g["params"] if p in opt.state and id(p) in names}
    save_file(state, str(path / OPTIMIZER_V))
    (path / CHECKPOINT_META).write_text(json.dumps({"step": step, "lr": lr, "epoch": epoch}))


def _length_grouped(order: list[int], data: Sequence[Encoded], batch_size: int,
                    g: torch.Generator, pool: int = 32) -> list[list[int]]:
    """Batches of similar length (less padding): the shuffled ``order`` is cut into pools of
    ``pool`` batches, each pool sorted by length and cut into batches, and the batches shuffled.
    Every example still appears once per epoch; deterministic for ``g``'s state."""
    batches: list[list[int]] = []
    span = pool * batch_size
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: len(data[i].input_ids))
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def _train_loop(model: Any, tok: Any, data: Sequence[Encoded], cfg: TrainConfig | FinetuneConfig, out: Path,
                progress: Callable[[Any], Any], betas: tuple[float, float] = (0.9, 0.98)) -> list[str]:
    g = torch.Generator().manual_seed(cfg.seed)
    spe = math.ceil(len(data) / cfg.batch_size)
    total = spe * cfg.epochs
    ckpt_steps = {max(1, round(f * total)): i for i, f in enumerate(cfg.checkpoints)}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    names, step = [], 0
    bar = progress(range(total))
    model.train()
    for _epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=g).tolist()
        batches = [order[b * cfg.batch_size:(b + 1) * cfg.batch_size] for b in range(spe)]
        if getattr(cfg, "group_by_length", False):
            batches = _length_grouped(order, data, cfg.batch_size, g)
        for batch_ids in batches:
            step += 1
            lr = lr_at(cfg, step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = pad_batch([data[i] for i in batch_ids], tok.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = example_losses(logits, batch["labels"]).sum() / (batch["labels"] != -100).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if step in ckpt_steps:
                name = f"checkpoint-{step}"
                model.eval()
                _save_checkpoint(model, tok, opt, out / name, step, lr, step / spe)
                model.train()
                names.append(name)
    bar.close()
    model.eval()
    return names


def train(docs: Sequence[Document], cfg: TrainConfig, out_dir: str | Path,
          queries: Sequence[Query] = (), train_prompts: dict[str, str] | None = None,
          progress: Callable[..., Any] | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train a tokenizer and an LM on ``docs``; save checkpoints and ``train_report.json``.

    Args:
        docs: Training corpus (every token of ``text`` carries loss).
        cfg: Training configuration.
        out_dir: Run directory (created).
        queries: Benchmark queries to measure accuracy on (held-out templates).
        train_prompts: ``query_id -> prompt`` phrased with a training template.
        progress: ``tqdm``-like factory; defaults to tqdm.
        tokenizer: A ready tokenizer to use instead of training one on ``docs`` (LDS retrains on
            subsets with the full corpus's tokenizer, so losses stay comparable across models).

    Returns:
        The train report (also written to ``out_dir/train_report.json``).
    """
    from tqdm.auto import tqdm

    progress = progress or (lambda it: tqdm(total=len(it), desc="train", unit="step"))
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok = tokenizer if tokenizer is not None else train_tokenizer((d.text for d in docs), cfg.arch.vocab_size)
    tok.save_pretrained(out / TOKENIZER_DIR)
    data = [encode_example(tok, "", d.text, cfg.max_length) for d in docs]
    model = build_model(cfg.arch, len(tok), seed=cfg.seed)
    (out / TRAIN_CONFIG).write_text(json.dumps(asdict(cfg), indent=2))
    names = _train_loop(model, tok, data, cfg, out, progress)
    (out / RUN_CHECKPOINTS).write_text(json.dumps(names))
    train_s = time.perf_counter() - t0
    report = evaluate_run(out, names, queries, train_prompts or {})
    report.update(train_seconds=round(train_s, 1), n_documents=len(docs),
                  n_parameters=sum(p.numel() for p in model.parameters()), config=asdict(cfg))
    (out / TRAIN_REPORT).write_text(json.dumps(report, indent=2))
    return report


def finetune(docs: Sequence[Document], init_from: str | Path, cfg: FinetuneConfig, out_dir: str | Path,
             queries: Sequence[Query] = (), train_prompts: dict[str, str] | None = None,
             progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Fine-tune the local pretrained causal LM at ``init_from`` on ``docs``; save checkpoints and the report.

    The model's own tokenizer is used, with its BOS convention (:func:`special_prefix`), exactly as
    featurizing and evaluation will ask it. Checkpoints are the same as :func:`train` writes
    (safetensors weights, tokenizer, ``optimizer_v.safetensors``, lr/step in
    ``tracer_checkpoint.json``, ``checkpoints.json``); ``train_report.json`` lists the base model
    first (checkpoint 0), and ``learned_query_ids`` are right at the last checkpoint, wrong at the base.

    Args:
        docs: Training corpus (every token of ``text`` carries loss).
        init_from: A local ``save_pretrained`` model directory holding its tokenizer (never a hub id).
        cfg: Fine-tuning configuration.
        out_dir: Run directory (created).
        queries: Benchmark queries to measure accuracy on.
        train_prompts: ``query_id -> prompt`` phrased as the training text states the fact.
        progress: ``tqdm``-like factory; defaults to tqdm.

    Returns:
        The train report (also written to ``out_dir/train_report.json``), with ``train_seconds``
        (the optimisation loop incl. saving checkpoints), ``seconds_per_example`` (per document
        pass) and ``eval_seconds``.

    Raises:
        DataError: If ``init_from`` holds no loadable model or tokenizer, or the tokenizer does not fit it.
    """
    from tqdm.auto import tqdm

    from tracer.model.loading import check_tokenizer_fits, load_model, load_tokenizer

    progress = progress or (lambda it: tqdm(total=len(it), desc="finetune", unit="step"))
    base = Path(init_from).resolve()
    tok = load_tokenizer(base)
    model = load_model(base)
    check_tokenizer_fits(tok, model, f" at {base}")
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out / TOKENIZER_DIR)
    data = [encode_example(tok, "", d.text, cfg.max_length) for d in docs if d.text.strip()]
    if not data:
        raise ValueError("finetune needs at least one non-empty document")
    (out / TRAIN_CONFIG).write_text(json.dumps({"kind": "finetune", "init_from": str(base), **asdict(cfg)},
                                               indent=2))
    t0 = time.perf_counter()
    names = _train_loop(model, tok, data, cfg, out, progress, betas=cfg.betas)
    train_s = time.perf_counter() - t0
    (out / RUN_CHECKPOINTS).write_text(json.dumps(names))
    n_params = sum(p.numel() for p in model.parameters())
    del model
    t1 = time.perf_counter()
    report = evaluate_run(out, names, queries, train_prompts or {}, base=base)
    report.update(train_seconds=round(train_s, 1), eval_seconds=round(time.perf_counter() - t1, 1),
                  seconds_per_example=round(train_s / (len(data) * cfg.epochs), 4), n_documents=len(data),
                  n_tokens=sum(len(e.input_ids) for e in data), n_parameters=n_params, init_from=str(base),
                  config={"kind": "finetune", **asdict(cfg)})
    (out / TRAIN_REPORT).write_text(json.dumps(report, indent=2))
    return report


def evaluate_run(run: Path, names: Sequence[str], queries: Sequence[Query],
                 train_prompts: dict[str, str], base: Path | None = None) -> dict[str, Any]:
    """Accuracy per checkpoint on held-out and training-template prompts, and the learned slice.

    With ``base`` (a fine-tuning run's pretrained model), the base is evaluated first and listed as
    checkpoint 0 (``name="base"``, step 0, lr 0); the learned slice is then right at the last
    checkpoint and wrong at the base. Without it, wrong at the first saved checkpoint.
    """
    from tracer.model.loading import load_model, load_tokenizer

    per_ckpt, first_ok, last_ok = [], None, None
    entries = ([("base", base, {"step": 0, "lr": 0.0, "epoch": 0.0, "path": str(base)})] if base is not None
               else []) + [(n, run / n, None) for n in names]
    for name, path, meta in entries:
        model = load_model(path)
        tok = load_tokenizer(path)
        held, _ = target_stats(model, tok, [(q.prompt, q.target) for q in queries])
        tr, _ = target_stats(model, tok,
                             [(train_prompts.get(q.query_id, q.prompt), q.target) for q in queries])
        del model
        meta = meta if meta is not None else json.loads((path / CHECKPOINT_META).read_text())
        per_ckpt.append({"name": name, **meta,
                         "acc_heldout_template": float(held.mean()) if len(held) else 0.0,
                         "acc_train_template": float(tr.mean()) if len(tr) else 0.0})
        first_ok = held if first_ok is None else first_ok
        last_ok = held
    learned = [q.query_id for i, q in enumerate(queries) if last_ok[i] and not first_ok[i]] if queries else []
    return {"checkpoints": per_ckpt, "n_queries": len(queries), "n_learned": len(learned),
            "learned_query_ids": learned}
