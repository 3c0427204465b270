"""Build the feature views of a checkpoint: raw projections and Adam-corrected ones (TrackStar).

Adam's update divides the gradient elementwise by ``sqrt(v) + eps``. An elementwise
rescaling does not commute with the Kronecker projection, so for weight matrices tracer
uses the Adafactor-style factorisation ``v_ij ≈ r_i c_j / mean(r)`` (``r``, ``c`` the row
and column means of ``v``), whose inverse square root is a rank-one product
``a_i b_j``: the correction folds into the projections as ``P_out diag(a)`` and
``P_in diag(b)``. Exact groups (biases, norms) are divided exactly. How close the factored
correction is to the exact one is measured by ``tests/test_featurize.py`` and the bench.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.gradients import View
from tracer.featurize.layout import LINEAR, Block, param_name
from tracer.featurize.projection import projection_matrix

RAW, ADAM = "raw", "adam"  # view names: plain gradients, optimizer-corrected gradients


def raw_view(layout: Sequence[Block], cfg: FeaturizeConfig) -> View:
    """Plain seeded projections (identity when ``cfg.projection == "identity"``)."""
    p_in: dict[str, torch.Tensor | None] = {}
    p_out: dict[str, torch.Tensor | None] = {}
    for b in layout:
        if b.kind != LINEAR:
            continue
        ident = cfg.projection == "identity"
        k_out, k_in = b.shape
        p_in[b.module] = None if ident else projection_matrix(cfg.seed, b.module, "in", k_in, b.d_in, cfg.projection)
        p_out[b.module] = None if ident else projection_matrix(cfg.seed, b.module, "out", k_out, b.d_out,
                                                               cfg.projection)
    return View(p_in, p_out, {})


def factored_inv_sqrt(v: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``a_i b_j ≈ 1 / (sqrt(v_ij) + eps)`` for a ``(d_out, d_in)`` second moment ``v``."""
    r = v.mean(1).clamp_min(1e-30)
    c = v.mean(0).clamp_min(1e-30)
    m = r.mean()
    # sqrt(r_i c_j / m) = sqrt(r_i / sqrt(m)) * sqrt(c_j / sqrt(m)). Adam's eps is not separable;
    # it acts here as a floor on each factor (it matters only where v ~ eps^2).
    a = 1.0 / (r / m.sqrt()).sqrt().clamp_min(eps**0.5)
    b = 1.0 / (c / m.sqrt()).sqrt().clamp_min(eps**0.5)
    return a, b


def adam_view(layout: Sequence[Block], cfg: FeaturizeConfig, raw: View, second_moment: Mapping[str, torch.Tensor],
              conv1d_modules: set[str]) -> View:
    """The optimizer-corrected view built on top of ``raw``.

    Args:
        layout: Feature layout.
        cfg: Featurize config (``adam_eps``).
        raw: The raw view (its projections are rescaled).
        second_moment: Parameter name -> Adam ``exp_avg_sq`` (parameter's own shape).
        conv1d_modules: Modules storing weights as ``(d_in, d_out)`` (GPT-2 ``Conv1D``).

    Raises:
        KeyError: If a tracked parameter has no second moment.
    """
    p_in, p_out, scale = dict(raw.p_in), dict(raw.p_out), {}
    for b in layout:
        v = second_moment[param_name(b)].float()
        if b.kind == LINEAR:
            v = v.T if b.module in conv1d_modules else v
            a, c = factored_inv_sqrt(v, cfg.adam_eps)
            po, pi = raw.p_out[b.module], raw.p_in[b.module]
            p_out[b.module] = torch.diag(a) if po is None else po * a
            p_in[b.module] = torch.diag(c) if pi is None else pi * c
        else:
            scale[(b.module, b.kind)] = 1.0 / (v.sqrt() + cfg.adam_eps)
    return View(p_in, p_out, scale, dict(raw.p_vec))


def load_second_moment(checkpoint_dir: str | Path, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Adam's ``exp_avg_sq`` by parameter name: ``optimizer_v.safetensors`` (``tracer train``), else the
    Hugging Face Trainer's ``optimizer.pt`` mapped through ``model``'s parameter order (see
    :mod:`tracer.model.optimizer_state`)."""
    from safetensors.torch import load_file

    from tracer.model.loading import OPTIMIZER_V
    from tracer.model.optimizer_state import OPTIMIZER_PT, load_optimizer_pt, map_exp_avg_sq

    d = Path(checkpoint_dir)
    if (d / OPTIMIZER_V).is_file() or model is None:
        return load_file(str(d / OPTIMIZER_V))
    return map_exp_avg_sq(load_optimizer_pt(d / OPTIMIZER_PT), model, str(d / OPTIMIZER_PT))[0]
