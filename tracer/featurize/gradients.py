"""Per-example projected loss gradients in ONE batched forward+backward (the LoGra trick).

For a linear layer ``y_t = W x_t + b`` the per-example weight gradient is
``G = sum_t delta_t x_t^T`` (``delta_t = dL/dy_t``). Its projection
``P_out G P_in^T = sum_t (P_out delta_t)(P_in x_t)^T`` needs only the projected
inputs (captured by a forward hook) and projected output-gradients (a hook on the
output tensor): a ``k_out x k_in`` block per example, never a full gradient (Choe et
al. 2024, LoGra). Bias gradients ``sum_t delta_t`` and normalisation gradients
``sum_t delta_t * xhat_t`` are kept exactly — they are tiny and carry much of the
ranking signal.

Parameters are frozen during featurization and only the embedding output requires
grad, so autograd computes activation gradients but never weight gradients: the pass
costs less than a training step's forward+backward.

Several *views* (e.g. raw and Adam-corrected projections) share one pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from tracer.featurize.layout import BIAS, LINEAR, NORM_BIAS, NORM_WEIGHT, Block, feature_dim
from tracer.model.tokenization import IGNORE_INDEX, example_losses


@dataclass(frozen=True)
class View:
    """Projections (and exact-group scales) defining one feature space.

    Attributes:
        p_in: Module name -> ``(k_in, d_in)`` float32 matrix (``None`` = identity).
        p_out: Module name -> ``(k_out, d_out)`` float32 matrix (``None`` = identity).
        scale: ``(module, kind)`` -> per-coordinate scale of a bias / norm group (optimizer
            correction), absent = 1.
        p_vec: ``(module, kind)`` -> ``(k, d)`` projection of a bias / norm group (applied after
            ``scale``), absent = kept exactly.
    """

    p_in: Mapping[str, torch.Tensor | None]
    p_out: Mapping[str, torch.Tensor | None]
    scale: Mapping[tuple[str, str], torch.Tensor]
    p_vec: Mapping[tuple[str, str], torch.Tensor] = field(default_factory=dict)


def _proj(x: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    return x if p is None else x @ p.T


class GradientFeaturizer:
    """Batched projected per-example gradients of one model.

    Args:
        model: A causal LM (parameters are frozen by this class while featurizing).
        layout: Feature layout from :func:`tracer.featurize.layout.build_layout`.
        views: View name -> :class:`View`.
        loss_reduction: ``sum`` or ``mean`` over target tokens.
    """

    def __init__(self, model: Any, layout: Sequence[Block], views: Mapping[str, View],
                 loss_reduction: str = "sum") -> None:
        self.model = model
        self.layout = list(layout)
        self.views = dict(views)
        self.loss_reduction = loss_reduction
        self.dim = feature_dim(layout)
        self._modules = dict(model.named_modules())
        self._by_module: dict[str, list[Block]] = {}
        for b in self.layout:
            self._by_module.setdefault(b.module, []).append(b)

    def featurize(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Features of one padded batch.

        Args:
            batch: ``input_ids``, ``attention_mask``, ``labels``, ``position_ids`` (``(B, T)``).

        Returns:
            View name -> ``(B, dim)`` float32 features, and ``(B,)`` float32 per-example losses.
        """
        n = batch["input_ids"].shape[0]
        out = {v: torch.empty(n, self.dim) for v in self.views}  # every column is written by a hook
        mask = batch["attention_mask"].unsqueeze(-1).float()
        with self._hooks(out, mask), _frozen(self.model):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=batch["position_ids"]).logits
            losses = example_losses(logits, batch["labels"])
            if self.loss_reduction == "mean":
                losses = losses / (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).clamp_min(1)
            losses.sum().backward()
        return out, losses.detach()

    @contextlib.contextmanager
    def _hooks(self, out: dict[str, torch.Tensor], mask: torch.Tensor) -> Iterator[None]:
        handles = [self.model.get_input_embeddings().register_forward_hook(
            lambda m, i, o: o.detach().requires_grad_(True))]
        for name, blocks in self._by_module.items():
            handles.append(self._modules[name].register_forward_hook(self._make_hook(name, blocks, out, mask)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _make_hook(self, name: str, blocks: list[Block], out: dict[str, torch.Tensor], mask: torch.Tensor) -> Any:
        module = self._modules[name]

        def forward_hook(mod: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            x = as_btd(inputs[0].detach(), mask)
            if blocks[0].kind == LINEAR:  # project first, then mask: k_in columns instead of d_in
                xs = {v: _proj(x, view.p_in.get(name)) * mask for v, view in self.views.items()}
            else:
                xhat = _normalized(module, x) * mask  # padding positions contribute nothing
                xs = {v: xhat for v in self.views}
            output.register_hook(lambda g: self._write(name, blocks, xs, g, out))

        return forward_hook

    def _write(self, name: str, blocks: list[Block], xs: dict[str, torch.Tensor], delta: torch.Tensor,
               out: dict[str, torch.Tensor]) -> None:
        delta = as_btd(delta.detach().float(), xs[next(iter(xs))])
        bias_grad = delta.sum(1)  # (B, d_out), shared by bias / norm_bias blocks
        for v, view in self.views.items():
            for b in blocks:
                sl = slice(b.offset, b.offset + b.size)
                if b.kind == LINEAR:
                    dproj = _proj(delta, view.p_out.get(name))
                    out[v][:, sl] = torch.bmm(dproj.transpose(1, 2), xs[v]).reshape(delta.shape[0], -1)
                    continue
                g = torch.einsum("btd,btd->bd", delta, xs[v]) if b.kind == NORM_WEIGHT else bias_grad
                s = view.scale.get((name, b.kind))
                g = g if s is None else g * s
                out[v][:, sl] = _proj(g, view.p_vec.get((name, b.kind)))


def as_btd(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as ``(B, T, d)``: some models (OPT's MLP) flatten activations to ``(B*T, d)``."""
    if t.dim() == 2:
        return t.view(like.shape[0], like.shape[1], t.shape[-1])
    return t


def _normalized(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``xhat`` of a LayerNorm / RMSNorm input: the factor multiplying the norm's weight."""
    x = x.float()
    if isinstance(module, torch.nn.LayerNorm):
        return torch.nn.functional.layer_norm(x, module.normalized_shape, eps=module.eps)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@contextlib.contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """Parameters do not require grad inside the block (no weight gradients are computed)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


__all__ = ["BIAS", "GradientFeaturizer", "View"]
