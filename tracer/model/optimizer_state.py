"""Adam's second moment (``exp_avg_sq``) from a checkpoint, keyed by parameter name.

Two sources, in order:

1. ``optimizer_v.safetensors`` — written by ``tracer train``, already keyed by name (safe to read).
2. ``optimizer.pt`` — written by the Hugging Face ``Trainer`` (or ``torch.save(opt.state_dict())``).
   Its state is keyed by *position* in the optimizer's parameter groups, so positions are mapped to
   names by replaying how the groups were formed from the model's ``named_parameters()``: one group
   in model order (a plain training loop), or the Trainer's decay / no-decay split (current and older
   transformers rules). A grouping is accepted only when every group's size and every tensor's shape
   agree; none or several disagreeing ones is an error that says so, never a silent guess.

``optimizer.pt`` is a pickle: a file from a stranger can run code when unpickled. It is read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers; a file
that needs more is refused with a message (convert it to safetensors where you trust it).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from tracer.errors import DataError

OPTIMIZER_PT = "optimizer.pt"  # torch.save(optimizer.state_dict()) by the Hugging Face Trainer

# The Trainer's no-weight-decay name patterns (transformers >= 4.50), and the older rule ("bias" only);
# both also exclude every parameter inside an nn.LayerNorm.
_NO_DECAY_NOW = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_NO_DECAY_OLD = (r"bias",)


def _layernorm_params(model: torch.nn.Module) -> set[str]:
    return {f"{m}.{n}" if m else n for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
            for n, _ in mod.named_parameters(recurse=False)}


def _trainer_groups(patterns: tuple[str, ...]) -> Callable[[torch.nn.Module, list[str]], list[list[str]]]:
    regs = [re.compile(p) for p in patterns]

    def groups(model: torch.nn.Module, names: list[str]) -> list[list[str]]:
        ln = _layernorm_params(model)
        no_decay = {n for n in names if n in ln or any(r.search(n.lower()) for r in regs)}
        return [[n for n in names if n not in no_decay], [n for n in names if n in no_decay]]

    return groups


GROUPINGS: dict[str, Callable[[torch.nn.Module, list[str]], list[list[str]]]] = {
    "one group in model order": lambda model, names: [names],
    "Trainer decay/no-decay groups": _trainer_groups(_NO_DECAY_NOW),
    "Trainer decay/no-decay groups (transformers < 4.50)": _trainer_groups(_NO_DECAY_OLD),
}


def load_optimizer_pt(path: str | Path) -> dict[str, Any]:
    """``optimizer.pt`` read with ``weights_only=True`` (no arbitrary code), or a ``DataError``."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notice; the error below says what matters
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        raise DataError(f"{p}: not readable as a weights-only optimizer state ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); tracer never unpickles code. "
                        "Save exp_avg_sq to optimizer_v.safetensors or pass --no-optimizer-correction") from None
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise DataError(f"{p}: not an optimizer state_dict (no 'state' / 'param_groups')")
    return sd


def map_exp_avg_sq(sd: dict[str, Any], model: torch.nn.Module, where: str = OPTIMIZER_PT
                   ) -> tuple[dict[str, torch.Tensor], str]:
    """Name -> ``exp_avg_sq`` from an optimizer ``state_dict``, and the grouping that matched.

    Raises:
        DataError: No grouping, or several with different mappings, fits the groups' sizes and shapes;
            or the state holds no ``exp_avg_sq`` (not Adam).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    ids = [list(g.get("params", [])) for g in sd["param_groups"]]
    state = sd["state"]
    if not any("exp_avg_sq" in s for s in state.values()):
        raise DataError(f"{where}: the optimizer state holds no exp_avg_sq (not Adam/AdamW?)")
    fits: dict[tuple[tuple[str, int], ...], str] = {}
    for label, grouping in GROUPINGS.items():
        groups = grouping(model, names)
        if [len(g) for g in groups] != [len(g) for g in ids]:
            continue
        pairs = tuple((n, i) for g, gi in zip(groups, ids) for n, i in zip(g, gi))
        if all(i not in state or "exp_avg_sq" not in state[i] or tuple(state[i]["exp_avg_sq"].shape) == shapes[n]
               for n, i in pairs):
            fits.setdefault(pairs, label)
    if len(fits) != 1:
        sizes = [len(g) for g in ids]
        why = "no grouping of the model's parameters" if not fits else f"{len(fits)} different groupings"
        raise DataError(f"{where}: {why} fits the optimizer's parameter groups (sizes {sizes}, model has "
                        f"{len(names)} trainable parameters); save exp_avg_sq by name to optimizer_v.safetensors "
                        "or pass --no-optimizer-correction")
    (pairs, label), = fits.items()
    out = {n: state[i]["exp_avg_sq"].detach().float() for n, i in pairs if i in state and "exp_avg_sq" in state[i]}
    return out, label
