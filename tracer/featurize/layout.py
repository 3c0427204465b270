"""Which parameters a gradient feature covers, and where each block sits in the feature vector.

Tracked groups, in module order:
* every linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) selected by name: its weight
  gradient projected to a ``k_out x k_in`` block (LoGra), and its bias gradient;
* every normalisation layer (LayerNorm / RMSNorm): weight (and bias) gradients.

Bias and norm groups ("vector groups") are kept **exactly** unless a width below their size is
given (the K-FAC budget does this when they do not fit), then they are projected to ``(k,)``.
Widths are uniform (``k_in x k_out`` everywhere) or per group (``widths``, from
:func:`tracer.featurize.budget.allocate`).
Weight gradients are always taken in ``(d_out, d_in)`` orientation, whatever the module
stores (``Conv1D`` keeps ``(d_in, d_out)``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

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
        shape: ``(k_out, k_in)`` for ``linear``, ``(k,)`` otherwise (``k < d_out``: projected).
        d_in: Input width of the module (linear only; 0 otherwise).
        d_out: Output width of the module (the vector's length for bias / norm groups).
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

    @property
    def projected(self) -> bool:
        """A vector group stored in fewer than its ``d_out`` coordinates."""
        return self.kind != LINEAR and self.size < self.d_out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Block:
        return cls(d["module"], d["kind"], int(d["offset"]), int(d["size"]), tuple(d["shape"]), int(d["d_in"]),
                   int(d["d_out"]))


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
    """``("auto",)``: the attention and MLP linears of the model's family
    (:mod:`tracer.featurize.architectures`; never embeddings or the LM head)."""
    return ("auto",)


def tracked_groups(model: torch.nn.Module, patterns: Sequence[str], include_norms: bool = True,
                   include_biases: bool = True) -> list[tuple[str, str, int, int]]:
    """``(module, kind, d_in, d_out)`` of every tracked parameter group, in module order.

    Raises:
        ValueError: If no linear layer matches ``patterns``.
    """
    from tracer.featurize.architectures import resolve_patterns

    resolved = resolve_patterns(model, patterns)
    groups: list[tuple[str, str, int, int]] = []
    for name, mod in model.named_modules():
        if is_linear(mod) and any(fnmatch.fnmatch(name, p) for p in resolved):
            d_in, d_out = linear_dims(mod)
            groups.append((name, LINEAR, d_in, d_out))
            if include_biases and getattr(mod, "bias", None) is not None:
                groups.append((name, BIAS, d_in, d_out))
        elif include_norms and is_norm(mod) and getattr(mod, "weight", None) is not None:
            d = int(mod.weight.shape[0])
            groups.append((name, NORM_WEIGHT, 0, d))
            if getattr(mod, "bias", None) is not None:
                groups.append((name, NORM_BIAS, 0, d))
    if not any(g[1] == LINEAR for g in groups):
        raise ValueError(f"no linear layer of the model matches layer patterns {list(patterns)}")
    return groups


def group_key(module: str, kind: str) -> str:
    """The key of a parameter group in ``widths`` mappings and stored factor files."""
    return f"{module}:{kind}"


def build_layout(model: torch.nn.Module, patterns: Sequence[str], k_in: int, k_out: int,
                 include_norms: bool = True, include_biases: bool = True,
                 widths: Mapping[str, Sequence[int]] | None = None) -> list[Block]:
    """The feature layout for ``model``.

    Args:
        model: A causal LM.
        patterns: fnmatch patterns over module names selecting tracked linear layers.
        k_in: Input projection width (``<= 0`` means identity: ``k_in = d_in``).
        k_out: Output projection width (``<= 0`` means identity).
        include_norms: Track LayerNorm / RMSNorm parameters exactly.
        include_biases: Track linear biases exactly.
        widths: Per group (:func:`group_key`) widths overriding ``k_in``/``k_out``: ``[k_out, k_in]``
            for a linear weight, ``[k]`` for a bias / norm vector (``k < d`` = projected). Groups
            absent from ``widths`` are dropped when it is given.

    Returns:
        Blocks in module order with offsets; ``sum(size)`` is the feature width.

    Raises:
        ValueError: If no linear layer matches ``patterns``.
    """
    blocks: list[Block] = []
    off = 0
    for name, kind, d_in, d_out in tracked_groups(model, patterns, include_norms, include_biases):
        key = group_key(name, kind)
        if widths is not None:
            if key not in widths:
                continue
            shape = tuple(int(w) for w in widths[key])
        elif kind == LINEAR:
            shape = (d_out if k_out <= 0 else min(k_out, d_out), d_in if k_in <= 0 else min(k_in, d_in))
        else:
            shape = (d_out,)
        size = int(torch.tensor(shape).prod())
        blocks.append(Block(name, kind, off, size, shape, d_in, d_out))
        off += size
    if not any(b.kind == LINEAR for b in blocks):
        raise ValueError(f"no linear layer of the model matches layer patterns {list(patterns)}")
    return blocks


def feature_dim(layout: Sequence[Block]) -> int:
    return sum(b.size for b in layout)


def param_name(block: Block) -> str:
    """The ``named_parameters`` name a block's gradient belongs to."""
    suffix = "bias" if block.kind in (BIAS, NORM_BIAS) else "weight"
    return f"{block.module}.{suffix}"
