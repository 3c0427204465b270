"""Which linear layers of a decoder block hold attention and MLP weights, by model family.

``layers=("auto",)`` (the default) resolves to the patterns of the model's family, looked up by
``config.model_type``. An architecture not in :data:`FAMILIES` gets every linear (or GPT-2
``Conv1D``) inside its decoder blocks (modules under a numbered layer list), never embeddings or
the LM head, and a warning names each block whose attention or MLP has no tracked module.
Explicit fnmatch patterns (``--layers``) bypass all of this.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Family:
    """fnmatch patterns (over ``named_modules`` names) of a family's attention and MLP linears."""

    attention: tuple[str, ...]
    mlp: tuple[str, ...]

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.attention + self.mlp


_LLAMA = Family(("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj"),
                ("*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj"))
_FUSED_QKV = Family(("*.self_attention.query_key_value", "*.self_attention.dense"),
                    ("*.mlp.dense_h_to_4h", "*.mlp.dense_4h_to_h"))

FAMILIES: dict[str, Family] = {
    "gpt2": Family(("*.attn.c_attn", "*.attn.c_proj"), ("*.mlp.c_fc", "*.mlp.c_proj")),
    "gpt_neox": Family(("*.attention.query_key_value", "*.attention.dense"),
                       ("*.mlp.dense_h_to_4h", "*.mlp.dense_4h_to_h")),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA, "gemma2": _LLAMA,
    "olmo": _LLAMA, "olmo2": _LLAMA,
    "opt": Family(("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.out_proj"),
                  ("*.layers.*.fc1", "*.layers.*.fc2")),
    "bloom": _FUSED_QKV,
    "falcon": _FUSED_QKV,
    "phi": Family(("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.dense"),
                  ("*.mlp.fc1", "*.mlp.fc2")),
    "phi3": Family(("*.self_attn.qkv_proj", "*.self_attn.o_proj"), ("*.mlp.gate_up_proj", "*.mlp.down_proj")),
}

_WARNED: set[str] = set()
_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.3.self_attn.q_proj" -> "model.layers.3"


def _is_linear(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def family_of(model: Any) -> Family | None:
    return FAMILIES.get(str(getattr(getattr(model, "config", None), "model_type", "")))


def resolve_patterns(model: Any, patterns: Sequence[str]) -> tuple[str, ...]:
    """Concrete fnmatch patterns for ``patterns`` (``("auto",)`` -> the family's, or every block linear)."""
    if tuple(patterns) != (AUTO,):
        return tuple(patterns)
    fam = family_of(model)
    if fam is not None:
        return fam.patterns
    names = [n for n, m in model.named_modules() if _is_linear(m) and _BLOCK.match(n)]
    model_type = str(getattr(getattr(model, "config", None), "model_type", "?"))
    if model_type not in _WARNED:  # once per architecture and process
        _WARNED.add(model_type)
        _warn_uncovered(model, names)
    return tuple(names) if names else ("*",)


def _warn_uncovered(model: Any, names: Sequence[str]) -> None:
    """Warn for each decoder block of an unknown architecture with no attention or no MLP linear."""
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    blocks: dict[str, list[str]] = {}
    for n, _ in model.named_modules():  # "h.3" or "model.layers.3": the first numbered level
        m = _BLOCK.match(n + ".")
        if m and m.group(1) == n:
            blocks[n] = []
    for n in names:
        b = _BLOCK.match(n).group(1)  # type: ignore[union-attr]
        blocks.setdefault(b, []).append(n[len(b) + 1:].lower())
    log.warning("architecture %r is not in tracer's table: tracking every linear of its %d decoder blocks",
                model_type, len(blocks))
    parts = (("attention", ("attn", "attention", "q_proj", "qkv")),
             ("MLP", ("mlp", "fc", "ffn", "feed_forward", "dense_h")))
    for block, members in blocks.items():
        missing = [part for part, keys in parts if not any(k in m for m in members for k in keys)]
        if missing:
            log.warning("decoder block %s: no tracked %s linear (choose modules with --layers)", block,
                        " or ".join(missing))


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)
