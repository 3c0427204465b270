"""Tail-patch (Chang et al. 2024, TrackStar): does training on a retrieved example raise the fact?

For a query ``(prompt, target)`` and a training example ``z``: take ONE SGD step on ``z``'s
loss from a checkpoint (tracer's benchmark uses the *first* one, where the learned slice's
facts are not yet known; TrackStar used the final one), ``theta' = theta - lr * grad L(z)``, and measure
``log p_theta'(target | prompt) - log p_theta(target | prompt)``. A retrieval method whose
top examples raise the target's log-probability more is finding causally supportive
examples — the check retrieval metrics alone miss. All candidate steps for one query
are evaluated in one vectorised pass (``torch.func``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from tracer.model.tokenization import Encoded, example_losses, pad_batch


STEP_MEMORY = 2 << 30  # bytes the vectorised steps of one chunk may hold (grads and stepped copies)
MAX_CHUNK = 8


def step_chunk(model: Any, budget: int = STEP_MEMORY) -> int:
    """Examples stepped at once: each holds about three parameter-sized tensors (its gradient, its stepped
    copy, and vmap's working set), so 8 for small models and 1 for a 135M-parameter one (540 MB of
    float32 weights); 8 at once there took over 20 GB."""
    per = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, min(MAX_CHUNK, budget // max(per, 1)))


def tail_patch_deltas(model: Any, tokenizer: Any, query: Encoded, examples: Sequence[Encoded],
                      lr: float, chunk: int | None = None) -> np.ndarray:
    """Change in the query target's log-probability after one SGD step on each example.

    Args:
        model: The final checkpoint (not modified).
        tokenizer: Its tokenizer (for the pad id).
        query: The encoded query (prompt masked).
        examples: Encoded training examples.
        lr: SGD step size.
        chunk: Examples stepped at once (memory: a few parameter copies each); default
            :func:`step_chunk`, sized to the model.

    Returns:
        ``(len(examples),)`` float64 deltas (positive = the step supports the fact).
    """
    from torch.func import functional_call, grad, vmap

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = {n: p.detach() for n, p in model.named_parameters()}
    qb = pad_batch([query], pad)

    def loss_of(p: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (), {"input_ids": ids[None], "attention_mask": mask[None],
                                             "position_ids": pos[None]})
        return example_losses(out.logits, labels[None])[0]

    def query_logprob(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return -loss_of(p, qb["input_ids"][0], qb["attention_mask"][0], qb["labels"][0], qb["position_ids"][0])

    with torch.no_grad():
        base = float(query_logprob(params))
    chunk = chunk or step_chunk(model)
    out = []
    for s in range(0, len(examples), chunk):
        b = pad_batch(list(examples[s:s + chunk]), pad)
        grads = vmap(grad(loss_of), in_dims=(None, 0, 0, 0, 0))(
            params, b["input_ids"], b["attention_mask"], b["labels"], b["position_ids"])
        stepped = {n: params[n][None] - lr * grads[n] for n in params}
        with torch.no_grad():
            out.append(vmap(query_logprob)(stepped).double().numpy() - base)
    return np.concatenate(out) if out else np.zeros(0)
