"""How an example becomes token ids and labels — the one place the loss-masking policy lives.

An example is ``(prompt, target)``: the ids are ``prefix + tok(prompt) + tok(target)`` and
the labels are ``-100`` on the prefix and prompt tokens, so the loss is taken on the target
tokens only. ``prefix`` is what the tokenizer itself puts before a text (:func:`special_prefix`):
Llama's ``<s>``, OPT's ``</s>``, nothing for GPT-2 or SmolLM2; tracer's own tokenizers prepend
``<|endoftext|>``. A plain text is ``prompt="", target=text`` (every token is a target).
Training, featurizing and evaluation all call :func:`encode_example`, so the model is
always asked about a fact exactly the way it saw facts in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, bos, padding)


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids of one example and its labels (``-100`` where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


_PROBE = "the capital of France"


def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The special token ids the tokenizer puts before a text (``add_special_tokens=True``), e.g. BOS.

    Read from the tokenizer's own template (``add_bos_token`` / post-processor), so a model is asked
    the way it was trained; memoised on the tokenizer object.
    """
    cached = getattr(tokenizer, "_tracer_prefix", None)
    if cached is not None:
        return cached
    plain = tokenizer.encode(_PROBE, add_special_tokens=False)
    full = tokenizer.encode(_PROBE, add_special_tokens=True)
    n = next((i for i in range(len(full)) if full[i:i + len(plain)] == plain), 0)
    prefix = tuple(int(x) for x in full[:n])
    try:
        tokenizer._tracer_prefix = prefix
    except AttributeError:  # a tokenizer that refuses attributes is probed each time
        pass
    return prefix


def with_prefix(tokenizer: Any, prefix: Sequence[int]) -> Any:
    """Pin the prefix ``encode_example`` uses with ``tokenizer`` (an index's recorded one)."""
    tokenizer._tracer_prefix = tuple(int(x) for x in prefix)
    return tokenizer


def encode_example(tokenizer: Any, prompt: str, target: str, max_length: int = 128) -> Encoded:
    """Tokenize ``prompt + target`` with the loss masked to the target.

    Args:
        tokenizer: A transformers tokenizer (its :func:`special_prefix` is prepended).
        prompt: Context without loss; may be empty.
        target: The completion the loss is taken on; must tokenize to >= 1 token.
        max_length: Longest sequence kept; longer examples lose *prompt* tokens from the left
            first, then target tokens from the right.

    Returns:
        The encoded example.

    Raises:
        ValueError: If the target is empty after tokenization.
    """
    bos = list(special_prefix(tokenizer))
    p = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    t = tokenizer.encode(target, add_special_tokens=False)
    if not t:
        raise ValueError("target tokenizes to zero tokens; the loss would be empty")
    t = t[: max(1, max_length - len(bos))]
    keep_p = max(0, max_length - len(bos) - len(t))
    p = p[len(p) - keep_p:] if keep_p else []
    ids = bos + p + t
    labels = [IGNORE_INDEX] * (len(bos) + len(p)) + t
    return Encoded(tuple(ids), tuple(labels))


def pad_batch(examples: Sequence[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad encoded examples into a batch.

    Args:
        examples: Encoded examples.
        pad_id: Token id used for padding (its label is ``-100`` and its attention mask 0).
        side: ``"right"`` or ``"left"``.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (each ``(batch, max_len)`` int64) and
        ``position_ids`` (positions count real tokens only, so left padding changes nothing).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    pos = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        m = len(e.input_ids)
        sl = slice(0, m) if side == "right" else slice(n - m, n)
        ids[i, sl] = torch.tensor(e.input_ids)
        labels[i, sl] = torch.tensor(e.labels)
        mask[i, sl] = 1
        pos[i, sl] = torch.arange(m)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": pos}


def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy, zero where the label is ignored.

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)`` int64 with ``-100`` for ignored positions.

    Returns:
        ``(batch, seq - 1)`` float losses aligned with ``labels[:, 1:]``.
    """
    lg = logits[:, :-1].float()
    lb = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), lb.reshape(-1).clamp_min(0), reduction="none"
    ).view(lb.shape)
    return loss * (lb != IGNORE_INDEX)


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss: the **sum** of target-token cross-entropies, ``(batch,)``.

    The sum (not the mean) makes the gradient of one example independent of its
    length normalisation; tracer records this policy (``loss_reduction="sum"``).
    """
    return shifted_token_losses(logits, labels).sum(dim=1)
