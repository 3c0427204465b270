"""Which parameters a gradient feature covers, and where each block sits in the feature vector.

Tracked groups, in module order:
* every linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) selected by name: its weight
  gradient projected to a ``k_out x k_in`` block (LoGra), and its bias gradient **exactly**;
* every normalisation layer (LayerNorm / RMSNorm): weight (and bias) gradients exactly.
Weight gradients are always taken in ``(d_out, d_in)`` orientation, whatever the module
stores (``Conv1D`` keeps ``(d_in, d_out)``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

LINEAR, BIAS, NORM_WEIGHT, NORM_BIAS = "linear", "bias", "norm_weight", "norm_bias"


@dataclass(frozen=True, slots=True)
class Block:
    """One contiguous slice of a feature vector.

    Attributes:
        module: Module name in ``model.named_modules()``.
        kind: ``linear`` (projected weight), ``bias``, ``norm_weight`` or ``norm_bias``.
        offset: Start column.
        size: Width (``k_out * k_in`` for ``linear``).
        shape: ``(k_out, k_in)`` for ``linear``, ``(d,)`` otherwise.
        d_in: Input width of the module (linear only; 0 otherwise).
        d_out: Output width of the module.
    """

    module: str
    kind: str
    offset: int
    size: int
    shape: tuple[int, ...]
    d_in: int
    d_out: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def linear_dims(module: torch.nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a linear or ``Conv1D`` module."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    w = module.weight  # Conv1D stores (d_in, d_out)
    return int(w.shape[0]), int(w.shape[1])


def default_layer_patterns() -> tuple[str, ...]:
    """Attention and MLP linears of GPT-2 / Llama-style blocks (not embeddings or lm_head)."""
    return ("*attn*", "*mlp*")


def build_layout(model: torch.nn.Module, patterns: Sequence[str], k_in: int, k_out: int,
                 include_norms: bool = True, include_biases: bool = True) -> list[Block]:
    """The feature layout for ``model``.

    Args:
        model: A causal LM.
        patterns: fnmatch patterns over module names selecting tracked linear layers.
        k_in: Input projection width (``<= 0`` means identity: ``k_in = d_in``).
        k_out: Output projection width (``<= 0`` means identity).
        include_norms: Track LayerNorm / RMSNorm parameters exactly.
        include_biases: Track linear biases exactly.

    Returns:
        Blocks in module order with offsets; ``sum(size)`` is the feature width.

    Raises:
        ValueError: If no linear layer matches ``patterns``.
    """
    blocks: list[Block] = []
    off = 0

    def add(name: str, kind: str, shape: tuple[int, ...], d_in: int, d_out: int) -> None:
        nonlocal off
        size = int(torch.tensor(shape).prod())
        blocks.append(Block(name, kind, off, size, shape, d_in, d_out))
        off += size

    for name, mod in model.named_modules():
        if is_linear(mod) and any(fnmatch.fnmatch(name, p) for p in patterns):
            d_in, d_out = linear_dims(mod)
            ki = d_in if k_in <= 0 else min(k_in, d_in)
            ko = d_out if k_out <= 0 else min(k_out, d_out)
            add(name, LINEAR, (ko, ki), d_in, d_out)
            if include_biases and getattr(mod, "bias", None) is not None:
                add(name, BIAS, (d_out,), d_in, d_out)
        elif include_norms and is_norm(mod) and getattr(mod, "weight", None) is not None:
            d = int(mod.weight.shape[0])
            add(name, NORM_WEIGHT, (d,), 0, d)
            if getattr(mod, "bias", None) is not None:
                add(name, NORM_BIAS, (d,), 0, d)
    if not any(b.kind == LINEAR for b in blocks):
        raise ValueError(f"no linear layer of the model matches layer patterns {list(patterns)}")
    return blocks


def feature_dim(layout: Sequence[Block]) -> int:
    return sum(b.size for b in layout)


def param_name(block: Block) -> str:
    """The ``named_parameters`` name a block's gradient belongs to."""
    suffix = "bias" if block.kind in (BIAS, NORM_BIAS) else "weight"
    return f"{block.module}.{suffix}"
