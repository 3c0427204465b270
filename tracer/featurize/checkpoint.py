"""Featurize examples through one checkpoint: the glue between a model directory and the featurizer.

Used by both sides of tracer: the index build (corpus documents, in shards) and the
query path (one fact at a time), so a query's features are made exactly like the
corpus's.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.gradients import GradientFeaturizer
from tracer.featurize.kfac import Factors, fit_factors, kfac_view
from tracer.featurize.layout import Block, build_layout, tracked_groups
from tracer.featurize.views import ADAM, RAW, adam_view, load_second_moment, raw_view
from tracer.model.loading import Checkpoint, check_tokenizer_fits, load_model
from tracer.model.tokenization import Encoded, encode_example, pad_batch
from tracer.types import Document


def encode_documents(tokenizer: Any, docs: Sequence[Document], max_length: int) -> list[Encoded]:
    """Encode training documents: ``(prompt, target)`` when split, else loss on every token."""
    return [encode_example(tokenizer, d.prompt or "", d.target if d.target is not None else d.text, max_length)
            for d in docs]


class EncodedDocuments(Sequence[Encoded]):
    """Documents encoded on demand: ``enc[lo:hi]`` tokenizes only rows ``lo:hi`` (a list).

    What the build's gradient stage hands a shard engine instead of the whole corpus encoded, so
    tokenized examples exist for one shard at a time. Encoding is per document and deterministic,
    so a slice equals the same rows of ``encode_documents(tokenizer, docs, max_length)``.

    Args:
        tokenizer: The tokenizer.
        docs: Documents (a list, or a lazy ``tracer.corpus.DocumentFile``).
        max_length: Token limit per example.
    """

    def __init__(self, tokenizer: Any, docs: Sequence[Document], max_length: int) -> None:
        self.tokenizer, self.docs, self.max_length = tokenizer, docs, max_length

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return encode_documents(self.tokenizer, self.docs[i], self.max_length)
        return encode_documents(self.tokenizer, [self.docs[i]], self.max_length)[0]


def view_names(cfg: FeaturizeConfig, checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Views an index builds: ``raw`` always; ``adam`` for random projections when requested and every
    checkpoint has ``v``. A kfac index stores ``raw`` only: its per-coordinate second moments (the
    moments stage) correct ``tracin_cos`` in the eigenbasis, so a second copy would buy nothing."""
    if cfg.projection == "kfac":
        return [RAW]
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
        factors: This checkpoint's fitted K-FAC factors (needed when ``cfg.projection == "kfac"``).
        widths: Per-group widths from the budget (``cfg.budgeted``).

    Raises:
        ValueError: A kfac config without factors, or a budgeted one without widths.
    """

    def __init__(self, checkpoint: Checkpoint, tokenizer: Any, cfg: FeaturizeConfig,
                 views: Sequence[str] = (RAW,), model: Any = None, factors: Factors | None = None,
                 widths: Mapping[str, Sequence[int]] | None = None) -> None:
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.cfg = cfg
        if cfg.budgeted and widths is None:
            raise ValueError("a kfac dimension budget needs the fitted per-group widths")
        if cfg.projection == "kfac" and factors is None:
            raise ValueError("projection 'kfac' needs the checkpoint's fitted K-FAC factors (the build's fit stage)")
        self.model = model if model is not None else load_model(checkpoint.path)
        check_tokenizer_fits(tokenizer, self.model, f" at {checkpoint.path}")
        self.layout: list[Block] = build_layout(self.model, cfg.layers, cfg.k_in, cfg.k_out,
                                                cfg.include_norms, cfg.include_biases,
                                                widths=widths if cfg.budgeted else None)
        raw = kfac_view(self.layout, factors) if factors is not None else raw_view(self.layout, cfg)
        built = {RAW: raw}
        if ADAM in views:
            conv = {n for n, m in self.model.named_modules() if type(m).__name__ == "Conv1D"}
            built[ADAM] = adam_view(self.layout, cfg, raw, load_second_moment(checkpoint.path, self.model), conv)
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


def fit_checkpoint(checkpoint: Checkpoint, tokenizer: Any, cfg: FeaturizeConfig, examples: Sequence[Encoded],
                   model: Any = None, progress: Any = None) -> Factors:
    """K-FAC factors of one checkpoint over ``examples`` (the seeded fit sample).

    Args:
        progress: Optional callable receiving the number of examples done per batch.
    """
    model = model if model is not None else load_model(checkpoint.path)
    check_tokenizer_fits(tokenizer, model, f" at {checkpoint.path}")
    groups = tracked_groups(model, cfg.layers, cfg.include_norms, cfg.include_biases)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for s in range(0, len(examples), cfg.batch_size):
            chunk = examples[s:s + cfg.batch_size]
            yield pad_batch(chunk, pad, cfg.padding_side)
            if progress is not None:
                progress(len(chunk))

    return fit_factors(model, groups, batches(), cfg.loss_reduction)


def fit_sample(n_docs: int, cfg: FeaturizeConfig) -> np.ndarray:
    """Sorted rows of the seeded factor-fit sample (``cfg.fit_docs`` of ``n_docs``)."""
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(n_docs, size=min(n_docs, cfg.fit_docs), replace=False))


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
