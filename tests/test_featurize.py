"""Oracle tests of the projected gradient featurizer against exact torch.func gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.exact import exact_features
from tracer.featurize.gradients import GradientFeaturizer
from tracer.featurize.layout import build_layout
from tracer.featurize.views import adam_view, raw_view
from tracer.model.tokenization import encode_example, pad_batch

ATOL = 1e-5


def _examples(tok, bench, n=6):
    qs = bench.queries[:n]
    enc = [encode_example(tok, q.prompt, q.target) for q in qs[: n // 2]]
    enc += [encode_example(tok, "", d.text) for d in bench.documents[: n - n // 2]]
    return enc


def _setup(model, cfg):
    layout = build_layout(model, cfg.layers, cfg.k_in, cfg.k_out, cfg.include_norms, cfg.include_biases)
    return layout, raw_view(layout, cfg)


@pytest.mark.parametrize("side", ["right", "left"])
def test_identity_projection_equals_exact_gradients(tiny_model, tiny_tokenizer, tiny_bench, side):
    cfg = FeaturizeConfig.exact()
    layout, view = _setup(tiny_model, cfg)
    batch = pad_batch(_examples(tiny_tokenizer, tiny_bench), tiny_tokenizer.pad_token_id, side)
    feats, _ = GradientFeaturizer(tiny_model, layout, {"raw": view}).featurize(batch)
    exact = exact_features(tiny_model, layout, view, pad_batch(
        _examples(tiny_tokenizer, tiny_bench), tiny_tokenizer.pad_token_id, "right"))
    assert feats["raw"].abs().max() > 0.1  # non-trivial gradients
    torch.testing.assert_close(feats["raw"], exact, rtol=1e-4, atol=ATOL)


def test_projected_features_equal_projected_exact_gradients(tiny_model, tiny_tokenizer, tiny_bench):
    cfg = FeaturizeConfig(k_in=8, k_out=8, projection="orthogonal")
    layout, view = _setup(tiny_model, cfg)
    batch = pad_batch(_examples(tiny_tokenizer, tiny_bench), tiny_tokenizer.pad_token_id)
    feats, _ = GradientFeaturizer(tiny_model, layout, {"raw": view}).featurize(batch)
    torch.testing.assert_close(feats["raw"], exact_features(tiny_model, layout, view, batch), rtol=1e-4, atol=ATOL)


def test_batch_size_and_order_invariance(tiny_model, tiny_tokenizer, tiny_bench):
    cfg = FeaturizeConfig(k_in=8, k_out=8, projection="orthogonal")
    layout, view = _setup(tiny_model, cfg)
    fz = GradientFeaturizer(tiny_model, layout, {"raw": view})
    enc = _examples(tiny_tokenizer, tiny_bench)
    pad = tiny_tokenizer.pad_token_id
    full, _ = fz.featurize(pad_batch(enc, pad))
    singles = torch.cat([fz.featurize(pad_batch([e], pad))[0]["raw"] for e in enc])
    rev, _ = fz.featurize(pad_batch(enc[::-1], pad))
    torch.testing.assert_close(full["raw"], singles, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(full["raw"], rev["raw"].flip(0), rtol=1e-4, atol=ATOL)


def test_prompt_tokens_contribute_nothing(tiny_model, tiny_tokenizer):
    """Changing the target changes the features; prompt-token *losses* are never included:
    the features equal those of the exact loss on target tokens only (checked above), and a
    target-free example is rejected."""
    with pytest.raises(ValueError, match="target"):
        encode_example(tiny_tokenizer, "a prompt", "")
    e = encode_example(tiny_tokenizer, "Zapeik was born in", " Runam")
    n_prompt = len(tiny_tokenizer.encode("Zapeik was born in", add_special_tokens=False)) + 1  # + BOS
    assert all(x == -100 for x in e.labels[:n_prompt]) and all(x != -100 for x in e.labels[n_prompt:])


def test_adam_view_exact_matches_elementwise_correction_for_exact_groups(tiny_model, tiny_tokenizer, tiny_bench):
    """Bias/norm groups are corrected exactly; weight blocks with a rank-one v are corrected exactly too."""
    cfg = FeaturizeConfig.exact()
    layout, raw = _setup(tiny_model, cfg)
    g = torch.Generator().manual_seed(3)
    conv = {n for n, m in tiny_model.named_modules() if type(m).__name__ == "Conv1D"}
    v = {}
    for n, p in tiny_model.named_parameters():
        if p.dim() == 2:  # rank-one second moment: the factorisation is exact
            v[n] = (torch.rand(p.shape[0], 1, generator=g) + 0.1) @ (torch.rand(1, p.shape[1], generator=g) + 0.1)
        else:
            v[n] = torch.rand(p.shape, generator=g) + 0.01
    view = adam_view(layout, cfg, raw, v, conv)
    batch = pad_batch(_examples(tiny_tokenizer, tiny_bench), tiny_tokenizer.pad_token_id)
    feats, _ = GradientFeaturizer(tiny_model, layout, {"adam": view}).featurize(batch)
    plain, _ = GradientFeaturizer(tiny_model, layout, {"raw": raw}).featurize(batch)
    from tracer.featurize.layout import param_name
    expect = plain["raw"].clone()
    for b in layout:
        vv = v[param_name(b)]
        if b.kind == "linear" and b.module in conv:
            vv = vv.T
        sl = slice(b.offset, b.offset + b.size)
        expect[:, sl] = expect[:, sl] / (vv.reshape(-1).sqrt() + cfg.adam_eps)
    torch.testing.assert_close(feats["adam"], expect, rtol=1e-3, atol=1e-5)


def test_projection_inner_products_within_jl_bound(tiny_tokenizer, tiny_bench):
    """|<Pg,Pg'> - <g,g'>| <= eps ||g|| ||g'||, eps ~ c / sqrt(k_in k_out), over many seeds."""
    from conftest import make_tiny_model

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    exact_cfg = FeaturizeConfig.exact(include_biases=False, include_norms=False)
    layout_e, view_e = _setup(model, exact_cfg)
    batch = pad_batch(_examples(tiny_tokenizer, tiny_bench, 4), tiny_tokenizer.pad_token_id)
    ge = GradientFeaturizer(model, layout_e, {"raw": view_e}).featurize(batch)[0]["raw"].double()
    true = ge @ ge.T
    norms = ge.norm(dim=1)
    errs = {}
    for k in (4, 16):
        worst = []
        for seed in range(12):
            cfg = FeaturizeConfig(k_in=k, k_out=k, seed=seed, include_biases=False, include_norms=False,
                                  projection="orthogonal")
            layout, view = _setup(model, cfg)
            gp = GradientFeaturizer(model, layout, {"raw": view}).featurize(batch)[0]["raw"].double()
            rel = ((gp @ gp.T) - true).abs() / torch.outer(norms, norms)
            worst.append(rel.max().item())
        errs[k] = float(np.quantile(worst, 0.9))
        # A Kronecker sketch (P_out ⊗ P_in) of a rank-one gradient delta x^T estimates
        # <delta,delta'><x,x'> as a product of two JL estimates, each with relative std
        # <= sqrt(2/k): eps(k) ~ sqrt(2/k_in + 2/k_out) = 2/sqrt(k) (not 1/k). Sums over tokens
        # only help. The 90% quantile of the worst pair stays below 2 such std.
        assert errs[k] <= 2 * (2 / k + 2 / k) ** 0.5, errs
    assert errs[16] < 0.75 * errs[4], errs  # shrinks like 1/sqrt(k): theory ratio 0.5
