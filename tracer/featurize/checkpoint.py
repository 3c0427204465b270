"""Featurize examples through one checkpoint: the glue between a model directory and the featurizer.

Used by both sides of tracer: the index build (corpus documents, in shards) and the
query path (one fact at a time), so a query's features are made exactly like the
corpus's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.gradients import GradientFeaturizer
from tracer.featurize.layout import Block, build_layout
from tracer.featurize.views import ADAM, RAW, adam_view, load_second_moment, raw_view
from tracer.model.loading import Checkpoint, load_model
from tracer.model.tokenization import Encoded, encode_example, pad_batch
from tracer.types import Document


def encode_documents(tokenizer: Any, docs: Sequence[Document], max_length: int) -> list[Encoded]:
    """Encode training documents: ``(prompt, target)`` when split, else loss on every token."""
    return [encode_example(tokenizer, d.prompt or "", d.target if d.target is not None else d.text, max_length)
            for d in docs]


def view_names(cfg: FeaturizeConfig, checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Views an index builds: ``raw`` always, ``adam`` when requested and every checkpoint has ``v``."""
    if cfg.optimizer_correction and checkpoints and all(c.has_optimizer_state for c in checkpoints):
        return [RAW, ADAM]
    return [RAW]


class CheckpointFeaturizer:
    """Projected per-example gradients of examples under one checkpoint.

    Args:
        checkpoint: The checkpoint (model directory, lr, optional Adam state).
        tokenizer: The tokenizer shared by all checkpoints.
        cfg: Featurize configuration.
        views: View names to compute (``raw``, ``adam``).
        model: An already-loaded model for ``checkpoint`` (loaded from disk when ``None``).
    """

    def __init__(self, checkpoint: Checkpoint, tokenizer: Any, cfg: FeaturizeConfig,
                 views: Sequence[str] = (RAW,), model: Any = None) -> None:
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.model = model if model is not None else load_model(checkpoint.path)
        self.layout: list[Block] = build_layout(self.model, cfg.layers, cfg.k_in, cfg.k_out,
                                                cfg.include_norms, cfg.include_biases)
        raw = raw_view(self.layout, cfg)
        built = {RAW: raw}
        if ADAM in views:
            conv = {n for n, m in self.model.named_modules() if type(m).__name__ == "Conv1D"}
            built[ADAM] = adam_view(self.layout, cfg, raw, load_second_moment(checkpoint.path), conv)
        self._fz = GradientFeaturizer(self.model, self.layout, {v: built[v] for v in views}, cfg.loss_reduction)

    @property
    def dim(self) -> int:
        return self._fz.dim

    def featurize(self, examples: Sequence[Encoded]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Features of ``examples`` in batches of ``cfg.batch_size``.

        Returns:
            View -> ``(n, dim)`` float32 features, and ``(n,)`` float32 per-example losses.
        """
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        parts: dict[str, list[np.ndarray]] = {v: [] for v in self._fz.views}
        losses: list[np.ndarray] = []
        for s in range(0, len(examples), self.cfg.batch_size):
            batch = pad_batch(examples[s:s + self.cfg.batch_size], pad, self.cfg.padding_side)
            feats, loss = self._fz.featurize(batch)
            for v, f in feats.items():
                parts[v].append(f.numpy())
            losses.append(loss.numpy())
        return {v: np.concatenate(p) for v, p in parts.items()}, np.concatenate(losses).astype(np.float32)


@torch.no_grad()
def embed_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64,
                max_length: int = 128) -> np.ndarray:
    """Mean-pooled final hidden states, L2-normalised: ``(n, d_model)`` float32."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for s in range(0, len(texts), batch_size):
        enc = [encode_example(tokenizer, "", t, max_length) for t in texts[s:s + batch_size]]
        batch = pad_batch(enc, pad)
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=batch["position_ids"], output_hidden_states=True).hidden_states[-1]
        m = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
