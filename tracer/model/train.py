"""Train a small causal LM from scratch on a corpus, saving checkpoints TracIn can use.

Each checkpoint is an ordinary ``save_pretrained`` directory (safetensors) plus the
learning rate in effect (``tracer_checkpoint.json``) and Adam's second moment
(``optimizer_v.safetensors``) for optimizer-corrected gradients. ``train_report.json``
records per checkpoint the accuracy on training-template and held-out-template prompts
and the FTRACE "learned" slice (right at the last checkpoint, wrong at the first).
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


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(arch=ArchConfig(n_layer=2, d_model=32, n_head=2, vocab_size=512), epochs=3,
                        batch_size=16),
    "small": TrainConfig(),
    "medium": TrainConfig(arch=ArchConfig(n_layer=4, d_model=256, n_head=4, vocab_size=8192), epochs=20),
}


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
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


def _train_loop(model: Any, tok: Any, data: Sequence[Encoded], cfg: TrainConfig, out: Path,
                progress: Callable[[Any], Any]) -> list[str]:
    g = torch.Generator().manual_seed(cfg.seed)
    spe = math.ceil(len(data) / cfg.batch_size)
    total = spe * cfg.epochs
    ckpt_steps = {max(1, round(f * total)): i for i, f in enumerate(cfg.checkpoints)}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    names, step = [], 0
    bar = progress(range(total))
    model.train()
    for _epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=g).tolist()
        for b in range(spe):
            step += 1
            lr = lr_at(cfg, step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = pad_batch([data[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]],
                              tok.pad_token_id)
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


def evaluate_run(run: Path, names: Sequence[str], queries: Sequence[Query],
                 train_prompts: dict[str, str]) -> dict[str, Any]:
    """Accuracy per checkpoint on held-out and training-template prompts, and the learned slice."""
    from tracer.model.loading import load_model

    tok = None
    per_ckpt, first_ok, last_ok = [], None, None
    for name in names:
        model = load_model(run / name)
        if tok is None:
            from tracer.model.loading import load_tokenizer
            tok = load_tokenizer(run / name)
        held, _ = target_stats(model, tok, [(q.prompt, q.target) for q in queries])
        tr, _ = target_stats(model, tok, [(train_prompts.get(q.query_id, q.prompt), q.target) for q in queries])
        meta = json.loads((run / name / CHECKPOINT_META).read_text())
        per_ckpt.append({"name": name, **meta, "acc_heldout_template": float(held.mean()) if len(held) else 0.0,
                         "acc_train_template": float(tr.mean()) if len(tr) else 0.0})
        first_ok = held if first_ok is None else first_ok
        last_ok = held
    learned = [q.query_id for i, q in enumerate(queries) if last_ok[i] and not first_ok[i]] if queries else []
    return {"checkpoints": per_ckpt, "n_queries": len(queries), "n_learned": len(learned),
            "learned_query_ids": learned}
