"""Oracle tests of the K-FAC basis, the dimension budget, EK-FAC influence and int8 storage.

The oracles are explicit: K-FAC statistics from plain autograd (``retain_grad`` on every
tracked output), exact per-example gradients from ``torch.func``, and numpy eigendecompositions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import build_tiny_index
from tracer.featurize.budget import allocate, energy_kept
from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.exact import exact_features
from tracer.featurize.gradients import GradientFeaturizer
from tracer.featurize.kfac import fit_factors, kfac_view, load_factors, save_factors
from tracer.featurize.layout import LINEAR, build_layout, group_key, tracked_groups
from tracer.featurize.views import raw_view
from tracer.model.tokenization import encode_example, example_losses, pad_batch


def _batch(tok, bench, n=12):
    enc = [encode_example(tok, q.prompt, q.target) for q in bench.queries[: n // 2]]
    enc += [encode_example(tok, "", d.text) for d in bench.documents[: n - n // 2]]
    return pad_batch(enc, tok.pad_token_id)


def _explicit_statistics(model, batch, groups):
    """A = mean over tokens of x x^T and S = mean over examples of sum_t delta delta^T, by plain autograd."""
    mods = dict(model.named_modules())
    inputs, outputs = {}, {}
    handles = []
    for name, kind, _, _ in groups:
        if kind == LINEAR:
            def hook(m, i, o, name=name):
                inputs[name] = i[0].detach().double()
                o.retain_grad()
                outputs[name] = o
            handles.append(mods[name].register_forward_hook(hook))
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits
    example_losses(logits, batch["labels"]).sum().backward()
    for h in handles:
        h.remove()
    mask = batch["attention_mask"].double()
    stats = {}
    for name in inputs:
        x = inputs[name] * mask[..., None]
        d = outputs[name].grad.double()
        a = torch.einsum("bti,btj->ij", x, x) / mask.sum()
        s = torch.einsum("bti,btj->ij", d, d) / len(d)
        stats[name] = (a.numpy(), s.numpy())
    return stats


def test_fit_factors_equal_explicit_kfac_statistics(tiny_model, tiny_tokenizer, tiny_bench):
    batch = _batch(tiny_tokenizer, tiny_bench)
    groups = tracked_groups(tiny_model, FeaturizeConfig().layers)
    factors = fit_factors(tiny_model, groups, [batch])
    stats = _explicit_statistics(tiny_model, batch, groups)
    for name, (a, s) in stats.items():
        f = factors[group_key(name, LINEAR)]
        rec_a = (f.in_vecs.T * f.in_vals) @ f.in_vecs
        rec_s = (f.out_vecs.T * f.out_vals) @ f.out_vecs
        # float32 products per batch: agreement to float32 precision
        np.testing.assert_allclose(rec_a.numpy(), a, atol=1e-5 * np.abs(a).max())
        np.testing.assert_allclose(rec_s.numpy(), s, atol=1e-5 * np.abs(s).max())
        assert torch.all(f.in_vals[:-1] >= f.in_vals[1:]) and torch.all(f.out_vals[:-1] >= f.out_vals[1:])
    # energies: E_z ||g_z||^2 of every group from exact torch.func per-example gradients
    layout = build_layout(tiny_model, FeaturizeConfig().layers, 0, 0)
    exact = exact_features(tiny_model, layout, raw_view(layout, FeaturizeConfig.exact()), batch)
    for b in layout:
        want = float((exact[:, b.offset:b.offset + b.size].double() ** 2).sum(1).mean())
        assert factors[group_key(b.module, b.kind)].energy == pytest.approx(want, rel=1e-4, abs=1e-10)


def test_full_width_kfac_features_are_the_exact_gradients_rotated(tiny_model, tiny_tokenizer, tiny_bench):
    """At full width, features = Q_S^T G Q_A of the exact per-example gradient, where Q_A, Q_S diagonalise the
    explicitly computed A and S (checked directly: eigenvectors of near-equal eigenvalues are not unique)."""
    batch = _batch(tiny_tokenizer, tiny_bench)
    groups = tracked_groups(tiny_model, FeaturizeConfig().layers)
    factors = fit_factors(tiny_model, groups, [batch])
    layout = build_layout(tiny_model, FeaturizeConfig().layers, 0, 0)
    feats = GradientFeaturizer(tiny_model, layout, {"raw": kfac_view(layout, factors)}).featurize(batch)[0]["raw"]
    exact = exact_features(tiny_model, layout, raw_view(layout, FeaturizeConfig.exact()), batch).double().numpy()
    stats = _explicit_statistics(tiny_model, batch, groups)
    n = len(exact)
    for b in layout:
        got = feats[:, b.offset:b.offset + b.size].double().numpy()
        g = exact[:, b.offset:b.offset + b.size]
        if b.kind != LINEAR:
            np.testing.assert_allclose(got, g, atol=1e-4 * np.abs(g).max())  # kept exactly
            continue
        f = factors[group_key(b.module, LINEAR)]
        qa, qs = f.in_vecs.numpy(), f.out_vecs.numpy()  # rows = eigenvectors
        for q, m, vals in ((qa, stats[b.module][0], f.in_vals.numpy()), (qs, stats[b.module][1], f.out_vals.numpy())):
            rot = q @ m @ q.T  # an eigenbasis of the explicit matrix diagonalises it, eigenvalues descending
            np.testing.assert_allclose(rot, np.diag(vals), atol=1e-5 * np.abs(m).max())
            np.testing.assert_allclose(q @ q.T, np.eye(len(q)), atol=1e-9)
        rotated = np.einsum("jo,boi,ki->bjk", qs, g.reshape(n, b.d_out, b.d_in), qa).reshape(n, -1)
        np.testing.assert_allclose(got, rotated, atol=2e-4 * np.abs(g).max())
        np.testing.assert_allclose(got @ got.T, g @ g.T, rtol=1e-4, atol=1e-4 * np.abs(g @ g.T).max())


def test_factors_round_trip_through_safetensors(tmp_path, tiny_model, tiny_tokenizer, tiny_bench):
    groups = tracked_groups(tiny_model, FeaturizeConfig().layers)
    factors = fit_factors(tiny_model, groups, [_batch(tiny_tokenizer, tiny_bench, 4)])
    save_factors(factors, tmp_path / "f.safetensors")
    back = load_factors(tmp_path / "f.safetensors")
    assert back.keys() == factors.keys()
    for k, f in factors.items():
        assert back[k].energy == f.energy and back[k].kind == f.kind
        for field in ("in_vals", "in_vecs", "out_vals", "out_vecs"):
            a, b = getattr(f, field), getattr(back[k], field)
            assert (a is None and b is None) or torch.equal(a.to(b.dtype), b)


def test_budget_split_respects_budget_floor_and_energy_order(tiny_model, tiny_tokenizer, tiny_bench):
    groups = tracked_groups(tiny_model, FeaturizeConfig().layers)
    factors = fit_factors(tiny_model, groups, [_batch(tiny_tokenizer, tiny_bench)])
    total = sum(di * do if k == LINEAR else do for _, k, di, do in groups)
    kept_prev = 0.0
    for dim in (400, 1200, 4000, total):
        widths, kept = allocate([factors], groups, dim, floor=2)
        used = sum(int(np.prod(w)) for w in widths.values())
        assert used <= dim
        assert all(w[0] >= 2 and w[1] >= 2 for k, w in widths.items() if k.endswith(":linear"))
        share = energy_kept(kept, [factors])
        assert share >= kept_prev - 1e-12  # a larger budget never keeps less energy
        kept_prev = share
    assert kept_prev == pytest.approx(1.0, abs=1e-9)  # the full budget keeps everything
    with pytest.raises(ValueError, match="below the floor"):
        allocate([factors], groups, 10, floor=4)
    # the exact share is for bias/norm vectors alone: floors of 4x4 on every linear (>= 0.1 * dim) do not eat it
    widths, _ = allocate([factors], groups, 1000, floor=4, exact_share=0.1)
    exact = [k for (m, kind, _, d) in groups if kind != LINEAR for k in [group_key(m, kind)]
             if widths.get(k) == [d]]
    assert sum(d for (m, kind, _, d) in groups if group_key(m, kind) in exact) == 96  # three 32-wide vectors


def test_budget_gives_dims_to_high_energy_groups():
    """Two layers, one with 100x the energy: it gets the larger share; a flat spectrum costs more to cover."""
    from tracer.featurize.kfac import GroupSpectrum

    def spec(energy, decay):
        vals = torch.tensor([decay ** i for i in range(16)], dtype=torch.float64)
        eye = torch.eye(16, dtype=torch.float64)
        return GroupSpectrum(LINEAR, energy, vals, eye, vals.clone(), eye)

    factors = {"big:linear": spec(100.0, 0.7), "small:linear": spec(1.0, 0.7)}
    groups = [("big", LINEAR, 16, 16), ("small", LINEAR, 16, 16)]
    widths, kept = allocate([factors], groups, 64, floor=1)
    assert np.prod(widths["big:linear"]) > np.prod(widths["small:linear"])
    assert kept["big:linear"] > kept["small:linear"]


def _explicit_ekfac_scores(index, bench, run, damping):
    """Numpy EK-FAC at the final checkpoint: explicit A, S over the fit sample; exact rotated gradients."""
    from tracer.featurize.checkpoint import encode_documents
    from tracer.model.loading import load_checkpoints, load_model, load_tokenizer

    ck = load_checkpoints(run)[-1]
    model = load_model(ck.path)
    model.config._attn_implementation = "eager"
    tok = load_tokenizer(ck.path)
    groups = tracked_groups(model, FeaturizeConfig().layers)
    layout = build_layout(model, FeaturizeConfig().layers, 0, 0)
    ident = raw_view(layout, FeaturizeConfig.exact())
    docs = encode_documents(tok, bench.documents, 128)
    batches = [pad_batch(docs[s:s + 16], tok.pad_token_id) for s in range(0, len(docs), 16)]
    # A and S summed over all batches, exactly as defined (tokens / examples)
    a_sum, s_sum, n_tok, n_ex = {}, {}, 0.0, 0
    exact = []
    for batch in batches:
        for name, (a, s) in _explicit_statistics(model, batch, groups).items():
            m = float(batch["attention_mask"].sum())
            a_sum[name] = a_sum.get(name, 0) + a * m
            s_sum[name] = s_sum.get(name, 0) + s * len(batch["input_ids"])
        n_tok += float(batch["attention_mask"].sum())
        n_ex += len(batch["input_ids"])
        exact.append(exact_features(model, layout, ident, batch).double().numpy())
    exact = np.concatenate(exact)
    q = bench.queries[:4]
    qb = pad_batch([encode_example(tok, x.prompt, x.target) for x in q], tok.pad_token_id)
    exact_q = exact_features(model, layout, ident, qb).double().numpy()
    n = len(exact)
    rot_d, rot_q, bounds = [], [], [0]
    for b in layout:
        g, gq = exact[:, b.offset:b.offset + b.size], exact_q[:, b.offset:b.offset + b.size]
        if b.kind == LINEAR:
            qa = np.linalg.eigh(a_sum[b.module] / n_tok)[1]
            qs = np.linalg.eigh(s_sum[b.module] / n_ex)[1]
            g = np.einsum("oj,boi,ik->bjk", qs, g.reshape(n, b.d_out, b.d_in), qa).reshape(n, -1)
            gq = np.einsum("oj,boi,ik->bjk", qs, gq.reshape(len(gq), b.d_out, b.d_in), qa).reshape(len(gq), -1)
        rot_d.append(g)
        rot_q.append(gq)
    scores = []
    for gd, gq in zip(rot_d, rot_q):
        lam = (gd ** 2).mean(0)
        scores.append((gq / (lam + damping * lam.mean())) @ gd.T)
    return q, np.sum(scores, axis=0)


def test_ekfac_influence_equals_explicit_numpy_ekfac(tmp_path, tiny_bench, tiny_run):
    from tracer import Tracer
    from tracer.methods.base import QueryFeatures  # noqa: F401  (API the Tracer uses)

    idx = build_tiny_index(tmp_path / "full", tiny_bench, tiny_run, trak=False, embeddings=False,
                           featurize=dict(k_in=0, k_out=0, dim=0, dtype="float32", fit_docs=100_000))
    queries, want = _explicit_ekfac_scores(idx, tiny_bench, tiny_run, damping=0.1)
    t = Tracer.open(idx, method_params={"influence": {"damping": 0.1, "checkpoints": "last"}})
    for i, q in enumerate(queries):
        res = t.trace(q.prompt, q.target, method="influence", candidates="full", k=len(tiny_bench.documents))
        got = np.zeros(len(tiny_bench.documents))
        rows = t.store.rows([h.doc_id for h in res.hits])
        got[rows] = [h.score for h in res.hits]
        scale = np.abs(want[i]).max()
        np.testing.assert_allclose(got, want[i], rtol=0, atol=2e-3 * scale)
        assert np.corrcoef(got, want[i])[0, 1] > 0.9999


def test_int8_dot_products_within_bound_of_float32(tmp_path, tiny_bench, tiny_run, tiny_index):
    """int8 rows: every coordinate within s/2 of float32, TracIn scores within the implied bound, ranks kept."""
    from scipy.stats import spearmanr

    from tracer.index import IndexStore
    from tracer.index.quant import block_bounds

    f32 = build_tiny_index(tmp_path / "f32", tiny_bench, tiny_run, trak=False, embeddings=False, influence=False,
                           featurize=dict(dtype="float32"))
    s8, s32 = IndexStore.open(tiny_index), IndexStore.open(f32)
    assert json.loads((tiny_index / "manifest.json").read_text())["featurize"]["dtype"] == "int8"
    bounds = block_bounds(s8.layout)
    for c in range(len(s8.checkpoints)):
        q8, x32 = s8.features("raw", c), np.asarray(s32.features("raw", c))
        x8 = q8[:]
        assert q8.prescale is not None and q8.prescale.min() > 0  # a K-FAC index stores x / predicted std
        half = np.repeat(np.asarray(q8.scales), np.diff(bounds), axis=1) / 2 * q8.prescale
        assert np.all(np.abs(x8 - x32) <= half * (1 + 1e-4) + 1e-12)
        # the prescale keeps small coordinates precise: relative error of the per-coordinate second
        # moments (what EK-FAC and whitening divide by) stays small even for the lowest-energy ones
        m8, m32 = (x8.astype(np.float64) ** 2).mean(0), (x32.astype(np.float64) ** 2).mean(0)
        live = m32 > 1e-20
        assert np.median(np.abs(m8[live] - m32[live]) / m32[live]) < 0.02
        queries = x32[:20]
        exact, approx = queries @ x32.T, queries @ x8.T
        bound = np.abs(queries) @ half.T
        assert np.all(np.abs(exact - approx) <= bound * (1 + 1e-4) + 1e-9)
        rho = np.mean([spearmanr(e, a).statistic for e, a in zip(exact, approx)])
        assert rho > 0.995, rho


def test_old_format_index_says_how_to_rebuild(tmp_path, tiny_index):
    import shutil

    from tracer.errors import IndexMismatchError
    from tracer.index import IndexStore
    from tracer.index.manifest import _self_checksum

    old = tmp_path / "old"
    shutil.copytree(tiny_index, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    m["manifest_sha256"] = _self_checksum(m)
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexMismatchError, match="predates.*rebuild it with `tracer build`"):
        IndexStore.open(old)


@pytest.fixture(scope="module")
def kfac_exact_index(tmp_path_factory, tiny_bench, tiny_run):
    """One tracked Conv1D layer + bias at full width in the K-FAC basis, float32: a rotation of exact gradients."""
    from tracer.index.build import IndexConfig, build_index
    from tracer.model.loading import load_checkpoints

    fcfg = FeaturizeConfig(layers=("*h.0.attn.c_proj*",), include_norms=False, k_in=0, k_out=0, dim=0,
                           dtype="float32", batch_size=8)
    out = tmp_path_factory.mktemp("kfac_exact") / "idx"
    build_index(tiny_bench.documents[:40], load_checkpoints(tiny_run), out,
                IndexConfig(featurize=fcfg, shard_size=16, trak=False, embeddings=False), progress=False)
    return out


def _scores(t, q, method):
    res = t.trace(q.prompt, q.target, method=method, candidates="full", k=t.n_documents)
    out = np.empty(t.n_documents)
    out[t.store.rows([h.doc_id for h in res.hits])] = [h.score for h in res.hits]
    return out


def test_tracin_in_the_kfac_basis_equals_exact_gradient_dot_products(kfac_exact_index, tiny_bench, tiny_run):
    from test_methods import _exact_grads
    from tracer import Tracer
    from tracer.model.loading import load_checkpoints

    t = Tracer.open(kfac_exact_index)
    q = tiny_bench.queries[0]
    expect = 0.0
    for ck in load_checkpoints(tiny_run):
        g_docs = _exact_grads(ck.path, t.encoder.tokenizer, [("", d.text) for d in tiny_bench.documents[:40]])
        g_q = _exact_grads(ck.path, t.encoder.tokenizer, [(q.prompt, q.target)])[0]
        expect = expect + ck.lr * g_docs @ g_q
    np.testing.assert_allclose(_scores(t, q, "tracin"), expect, rtol=1e-4, atol=1e-5 * np.abs(expect).max())


def test_whitened_tracin_cos_and_ensembled_ekfac_equal_numpy(kfac_exact_index, tiny_bench):
    from tracer import Tracer
    from tracer.index.quant import block_bounds

    t = Tracer.open(kfac_exact_index, method_params={"tracin_cos": {"damping": 0.3}, "influence": {"damping": 0.05}})
    q = tiny_bench.queries[1]
    qf = t.features([(q.prompt, q.target)], ["tracin_cos"])[0]
    bounds = block_bounds(t.store.layout)
    cos, infl = np.zeros(t.n_documents), np.zeros(t.n_documents)
    for ci in range(3):
        x = np.asarray(t.store.features("raw", ci), dtype=np.float64)
        g = qf.grads["raw"][ci].astype(np.float64)
        lam = (x ** 2).mean(0)  # the corrected diagonal, recomputed from the stored rows
        w = 1 / np.sqrt(lam + 0.3 * lam.mean())
        cos += (x * w) @ (g * w) / np.linalg.norm(x * w, axis=1) / np.linalg.norm(g * w) / 3
        damp = np.concatenate([np.full(hi - lo, 0.05 * lam[lo:hi].mean()) for lo, hi in zip(bounds[:-1], bounds[1:])])
        infl += x @ (g / (lam + damp)) / 3
    np.testing.assert_allclose(_scores(t, q, "tracin_cos"), cos, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_scores(t, q, "influence"), infl, rtol=1e-4, atol=1e-6 * np.abs(infl).max())
