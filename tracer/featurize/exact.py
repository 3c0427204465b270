"""Exact per-example gradients with ``torch.func`` — the oracle the projected path is tested against.

Slow and memory-hungry (a full gradient per example); tests and tiny models only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from tracer.featurize.gradients import View
from tracer.featurize.layout import BIAS, LINEAR, NORM_BIAS, NORM_WEIGHT, Block, feature_dim, param_name
from tracer.model.tokenization import IGNORE_INDEX, example_losses


def per_example_grads(model: Any, batch: Mapping[str, torch.Tensor], names: Sequence[str],
                      loss_reduction: str = "sum") -> dict[str, torch.Tensor]:
    """Exact per-example gradients of the named parameters (``vmap(grad)``).

    Args:
        model: A causal LM (use ``attn_implementation="eager"`` for vmap-compatibility).
        batch: Padded batch as from :func:`tracer.model.tokenization.pad_batch`.
        names: Parameter names.
        loss_reduction: ``sum`` or ``mean`` over target tokens.

    Returns:
        Name -> ``(B, *param.shape)`` float32 gradients.
    """
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    tracked = {n: params[n] for n in names}
    frozen = {n: p for n, p in params.items() if n not in tracked}

    def loss_fn(tp: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**frozen, **tp}, (), {
            "input_ids": ids[None], "attention_mask": mask[None], "position_ids": pos[None]})
        loss = example_losses(out.logits, labels[None])[0]
        if loss_reduction == "mean":
            loss = loss / (labels[1:] != IGNORE_INDEX).sum().clamp_min(1)
        return loss

    args = (batch["input_ids"], batch["attention_mask"], batch["labels"], batch["position_ids"])
    try:
        return vmap(grad(loss_fn), in_dims=(None, 0, 0, 0, 0))(tracked, *args)
    except RuntimeError as exc:  # custom autograd.Functions (e.g. BLOOM's GELU) do not support vmap
        if "autograd.Function" not in str(exc):
            raise
    # the same exact gradients, one example at a time with plain autograd
    leaves = {n: p.clone().requires_grad_(True) for n, p in tracked.items()}
    rows = []
    for i in range(len(args[0])):
        loss = loss_fn(leaves, *(a[i] for a in args))
        rows.append(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True))))
    return {n: torch.stack([r[n] if r[n] is not None else torch.zeros_like(leaves[n]) for r in rows]).detach()
            for n in leaves}


def weight_grad_out_in(model: Any, module: str, g: torch.Tensor) -> torch.Tensor:
    """A weight gradient in ``(d_out, d_in)`` orientation (transposes GPT-2 ``Conv1D``)."""
    mod = dict(model.named_modules())[module]
    return g if isinstance(mod, torch.nn.Linear) else g.transpose(-1, -2)


def exact_features(model: Any, layout: Sequence[Block], view: View, batch: Mapping[str, torch.Tensor],
                   loss_reduction: str = "sum") -> torch.Tensor:
    """Features computed from exact per-example gradients: ``P_out G P_in^T`` per block.

    Returns:
        ``(B, dim)`` float32; equals :class:`GradientFeaturizer` output up to float error.
    """
    names = sorted({param_name(b) for b in layout})
    grads = per_example_grads(model, batch, names, loss_reduction)
    n = batch["input_ids"].shape[0]
    out = torch.zeros(n, feature_dim(layout))
    for b in layout:
        g = grads[param_name(b)].float()
        if b.kind == LINEAR:
            g = weight_grad_out_in(model, b.module, g)
            p_in, p_out = view.p_in.get(b.module), view.p_out.get(b.module)
            if p_out is not None:
                g = p_out @ g
            if p_in is not None:
                g = g @ p_in.T
        elif b.kind in (BIAS, NORM_WEIGHT, NORM_BIAS):
            s = view.scale.get((b.module, b.kind))
            g = g if s is None else g * s
            p = view.p_vec.get((b.module, b.kind))
            g = g if p is None else g @ p.T
        out[:, b.offset:b.offset + b.size] = g.reshape(n, -1)
    return out
