"""What a model says about a fact: greedy correctness and log-probability of the target."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from tracer.model.tokenization import IGNORE_INDEX, encode_example, pad_batch, shifted_token_losses


@torch.no_grad()
def target_stats(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64,
                 max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced greedy correctness and summed log-probability of each target.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        pairs: ``(prompt, target)`` pairs.
        batch_size: Examples per forward pass.
        max_length: Token cap per example.

    Returns:
        ``correct`` ``(n,)`` bool — every target token is the argmax given the prefix —
        and ``logprob`` ``(n,)`` float64 — ``sum_t log p(target_t | prefix)``.
    """
    correct = np.zeros(len(pairs), dtype=bool)
    logprob = np.zeros(len(pairs), dtype=np.float64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(pairs), batch_size):
        enc = [encode_example(tokenizer, p, t, max_length) for p, t in pairs[start:start + batch_size]]
        batch = pad_batch(enc, pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        mask = labels[:, 1:] != IGNORE_INDEX
        hit = (logits[:, :-1].argmax(-1) == labels[:, 1:]) | ~mask
        correct[start:start + len(enc)] = hit.all(dim=1).numpy()
        logprob[start:start + len(enc)] = -shifted_token_losses(logits, labels).sum(1).double().numpy()
    return correct, logprob
