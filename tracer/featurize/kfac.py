"""K-FAC factors of one checkpoint, and the data-aware basis they define (EK-FAC's eigenbasis).

For a tracked linear layer ``y_t = W x_t`` with output-gradients ``delta_t`` the per-example
weight gradient is ``G = sum_t delta_t x_t^T``. K-FAC (Martens & Grosse 2015) approximates
its second moment by a Kronecker product of

* ``A = E_t[x_t x_t^T]`` (mean over non-padding tokens), and
* ``S = E_z[sum_t delta_t delta_t^T]`` (mean over examples, loss on the data's own labels:
  the empirical Fisher, the same loss the features are taken of).

With ``A = Q_A diag(a) Q_A^T`` and ``S = Q_S diag(s) Q_S^T``, the rotated gradient
``Q_S^T G Q_A`` has (approximately) uncorrelated coordinates of variance ``~ s_j a_i``:
keeping the top eigenvectors as ``P_out = Q_S[:, :k_out]^T`` and ``P_in = Q_A[:, :k_in]^T``
keeps the directions where gradients actually live (LoGra's PCA initialisation, Choe et al.
2024), and in that basis EK-FAC's Hessian is diagonal (Grosse et al. 2023): influence is a
per-coordinate rescale by the eigenvalue-corrected ``Lambda = E[(P_out G P_in^T)^2]``.

Bias and norm groups (vectors ``g``) get the eigenbasis of their own second moment
``C = E_z[g g^T]``, used only when the dimension budget cannot keep them exactly.

Each group also records its exact per-example energy ``E_z ||g||^2`` (for a linear layer
``sum_{t,s} (delta_t . delta_s)(x_t . x_s)``), which puts the K-FAC spectra of different
layers on one scale for the budget (:mod:`tracer.featurize.budget`).

The fit is one forward+backward per sample batch with frozen weights, through the same
hooks as the featurizer, and costs ``O(T d^2)`` per layer per example on top.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from tracer.featurize.gradients import View, _frozen, _normalized, as_btd
from tracer.featurize.layout import BIAS, LINEAR, NORM_BIAS, NORM_WEIGHT, Block, group_key
from tracer.model.tokenization import IGNORE_INDEX, example_losses

MAX_VECTOR_COV = 8192  # bias / norm groups wider than this get no covariance (kept exactly or dropped)


@dataclass(frozen=True)
class GroupSpectrum:
    """The fitted second-moment structure of one parameter group.

    Attributes:
        kind: ``linear``, ``bias``, ``norm_weight`` or ``norm_bias``.
        energy: ``E_z ||g_z||^2`` of the group's exact per-example gradient.
        in_vals, in_vecs: Eigenvalues (descending) and eigenvectors (rows) of ``A`` (linear only).
        out_vals, out_vecs: Of ``S`` (linear) or of ``C = E[g g^T]`` (vector groups; ``None`` when
            the group is wider than ``MAX_VECTOR_COV``).
    """

    kind: str
    energy: float
    in_vals: torch.Tensor | None
    in_vecs: torch.Tensor | None
    out_vals: torch.Tensor | None
    out_vecs: torch.Tensor | None


Factors = dict[str, GroupSpectrum]  # group_key -> spectrum, one checkpoint


def _eig_desc(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors as **rows** of a symmetric PSD matrix."""
    vals, vecs = torch.linalg.eigh(0.5 * (m + m.T))
    return vals.flip(0).clamp_min(0.0), vecs.flip(1).T.contiguous()


class _Accumulator:
    """Running sums of one group's statistics (float64)."""

    def __init__(self, kind: str, d_in: int, d_out: int, want_cov: bool) -> None:
        self.kind = kind
        self.a = torch.zeros(d_in, d_in, dtype=torch.float64) if kind == LINEAR else None
        self.s = torch.zeros(d_out, d_out, dtype=torch.float64) if kind == LINEAR or want_cov else None
        self.energy = 0.0


def fit_factors(model: Any, groups: Sequence[tuple[str, str, int, int]], batches: Iterable[Mapping[str, Any]],
                loss_reduction: str = "sum") -> Factors:
    """Fit K-FAC factors (and vector-group second moments) over ``batches``.

    Args:
        model: A causal LM (its parameters are frozen while fitting).
        groups: ``(module, kind, d_in, d_out)`` from :func:`tracer.featurize.layout.tracked_groups`.
        batches: Padded batches (``input_ids``, ``attention_mask``, ``labels``, ``position_ids``).
        loss_reduction: ``sum`` or ``mean`` over target tokens, as the features use.

    Returns:
        Group key -> :class:`GroupSpectrum`.

    Raises:
        ValueError: If ``batches`` is empty.
    """
    modules = dict(model.named_modules())
    acc: dict[str, _Accumulator] = {}
    by_module: dict[str, list[str]] = {}
    for name, kind, d_in, d_out in groups:
        key = group_key(name, kind)
        acc[key] = _Accumulator(kind, d_in, d_out, want_cov=kind != LINEAR and d_out <= MAX_VECTOR_COV)
        by_module.setdefault(name, []).append(key)
    n_examples, n_tokens = 0, 0.0
    for batch in batches:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        with _fit_hooks(model, modules, by_module, acc, mask), _frozen(model):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"]).logits
            losses = example_losses(logits, batch["labels"])
            if loss_reduction == "mean":
                losses = losses / (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).clamp_min(1)
            losses.sum().backward()
        n_examples += int(batch["input_ids"].shape[0])
        n_tokens += float(mask.sum())
    if n_examples == 0:
        raise ValueError("fit_factors needs at least one batch")
    out: Factors = {}
    for key, a in acc.items():
        in_vals = in_vecs = out_vals = out_vecs = None
        if a.a is not None:
            in_vals, in_vecs = _eig_desc(a.a / max(n_tokens, 1.0))
        if a.s is not None:
            out_vals, out_vecs = _eig_desc(a.s / n_examples)
        out[key] = GroupSpectrum(a.kind, a.energy / n_examples, in_vals, in_vecs, out_vals, out_vecs)
    return out


@contextlib.contextmanager
def _fit_hooks(model: Any, modules: dict[str, Any], by_module: dict[str, list[str]], acc: dict[str, _Accumulator],
               mask: torch.Tensor) -> Iterator[None]:
    handles = [model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.detach().requires_grad_(True))]

    def make(name: str) -> Any:
        keys = by_module[name]
        module = modules[name]

        def forward_hook(mod: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            # float32 products per batch (BLAS speed), float64 running sums (no drift over many batches)
            x = as_btd(inputs[0].detach().float(), mask)
            first = acc[keys[0]]
            if first.kind == LINEAR:
                xm = x * mask
                flat = xm.reshape(-1, xm.shape[-1])
                first.a += (flat.T @ flat).double()  # type: ignore[operator]
            else:
                xm = _normalized(module, x) * mask
            output.register_hook(lambda g: _backward(keys, xm, as_btd(g.detach().float(), mask), acc))

        return forward_hook

    for name in by_module:
        handles.append(modules[name].register_forward_hook(make(name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _backward(keys: list[str], xm: torch.Tensor, delta: torch.Tensor, acc: dict[str, _Accumulator]) -> None:
    for key in keys:
        a = acc[key]
        if a.kind == LINEAR:
            flat = delta.reshape(-1, delta.shape[-1])
            a.s += (flat.T @ flat).double()  # type: ignore[operator]
            # exact ||sum_t delta_t x_t^T||_F^2 = sum_{t,s} (delta_t . delta_s)(x_t . x_s)
            grams = torch.bmm(delta, delta.transpose(1, 2)) * torch.bmm(xm, xm.transpose(1, 2))
            a.energy += float(grams.double().sum())
            continue
        g = torch.einsum("btd,btd->bd", delta, xm) if a.kind == NORM_WEIGHT else delta.sum(1)
        a.energy += float((g.double() ** 2).sum())
        if a.s is not None:
            a.s += (g.T @ g).double()


def kfac_view(layout: Sequence[Block], factors: Factors) -> View:
    """Projections onto the top eigenvectors: ``P_in = Q_A[:, :k_in]^T``, ``P_out = Q_S[:, :k_out]^T``.

    Rows are orthonormal, so at full width the features are an exact rotation of the gradient
    (inner products preserved), and truncated they keep the highest-energy directions.

    Raises:
        KeyError: If a block's group was not fitted.
        ValueError: If a projected vector group has no fitted covariance.
    """
    p_in: dict[str, torch.Tensor | None] = {}
    p_out: dict[str, torch.Tensor | None] = {}
    p_vec: dict[tuple[str, str], torch.Tensor] = {}
    for b in layout:
        f = factors[group_key(b.module, b.kind)]
        if b.kind == LINEAR:
            k_out, k_in = b.shape
            p_out[b.module] = f.out_vecs[:k_out].float()  # type: ignore[index]
            p_in[b.module] = f.in_vecs[:k_in].float()  # type: ignore[index]
        elif b.projected:
            if f.out_vecs is None:
                raise ValueError(f"{b.module} {b.kind} is projected but has no fitted covariance")
            p_vec[(b.module, b.kind)] = f.out_vecs[: b.size].float()
    return View(p_in, p_out, {}, p_vec)


def truncate_factors(factors: Factors, layout: Sequence[Block]) -> Factors:
    """Keep only the eigenvectors ``layout`` uses (all eigenvalues stay): what an index stores."""
    out: Factors = {}
    by_key = {group_key(b.module, b.kind): b for b in layout}
    for key, f in factors.items():
        b = by_key.get(key)
        if b is None:
            out[key] = GroupSpectrum(f.kind, f.energy, f.in_vals, None, f.out_vals, None)
        elif b.kind == LINEAR:
            k_out, k_in = b.shape
            out[key] = GroupSpectrum(f.kind, f.energy, f.in_vals, f.in_vecs[:k_in], f.out_vals,  # type: ignore
                                     f.out_vecs[:k_out])  # type: ignore[index]
        else:
            vecs = f.out_vecs[: b.size] if b.projected and f.out_vecs is not None else None
            out[key] = GroupSpectrum(f.kind, f.energy, f.in_vals, None, f.out_vals, vecs)
    return out


def prescale(layout: Sequence[Block], factors: Factors) -> torch.Tensor:
    """``(dim,)`` float32 predicted standard deviation of every stored coordinate (from untruncated factors).

    Linear ``(j, i)``: ``sqrt(s_j a_i)`` (K-FAC); projected vector coordinate ``k``: ``sqrt(vals_k)``;
    exact vector coordinate: ``sqrt(C_dd)``. int8 storage divides by it before quantising, so the
    low-energy coordinates that EK-FAC and whitening up-weight keep their precision. Values are
    floored at 1e-6 of their block's largest, so no coordinate is divided by zero.
    """
    parts = []
    for b in layout:
        f = factors[group_key(b.module, b.kind)]
        if b.kind == LINEAR:
            k_out, k_in = b.shape
            var = f.out_vals[:k_out, None] * f.in_vals[None, :k_in]  # type: ignore[index]
        elif f.out_vals is None:
            var = torch.ones(b.size, dtype=torch.float64)
        elif b.projected:
            var = f.out_vals[: b.size]
        else:
            if f.out_vecs is None or f.out_vecs.shape[0] < b.d_out:
                raise ValueError(f"{b.module} {b.kind}: prescale needs the untruncated eigenvectors")
            var = (f.out_vecs.double() ** 2 * f.out_vals.double()[:, None]).sum(0)  # diag(Q diag(vals) Q^T)
        sd = var.double().reshape(-1).clamp_min(0).sqrt()
        parts.append(sd.clamp_min(max(float(sd.max()), 1e-30) * 1e-6))
    return torch.cat(parts).float()


# --- storage: one pickle-free safetensors file per checkpoint ---

_FIELDS = ("in_vals", "in_vecs", "out_vals", "out_vecs")


def save_factors(factors: Factors, path: str | Path) -> None:
    """Write factors to ``path`` (safetensors; keys ``<group>/<field>``; eigenvalues float64, vectors float32)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for key, f in factors.items():
        tensors[f"{key}/energy"] = torch.tensor([f.energy], dtype=torch.float64)
        for name in _FIELDS:
            t = getattr(f, name)
            if t is not None:
                dtype = torch.float32 if name.endswith("vecs") else torch.float64
                tensors[f"{key}/{name}"] = t.to(dtype).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written factor file


def load_factors(path: str | Path) -> Factors:
    """Read factors written by :func:`save_factors`."""
    from safetensors.torch import load_file

    raw = load_file(str(path))
    keys = sorted({k.rsplit("/", 1)[0] for k in raw})
    out: Factors = {}
    for key in keys:
        kind = key.rsplit(":", 1)[1]
        if kind not in (LINEAR, BIAS, NORM_WEIGHT, NORM_BIAS):
            raise ValueError(f"{path}: unknown parameter group kind in key {key!r}")
        out[key] = GroupSpectrum(kind, float(raw[f"{key}/energy"][0]),
                                 *(raw.get(f"{key}/{name}") for name in _FIELDS))
    return out
