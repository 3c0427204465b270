"""LDS: the math against scipy and hand-computed values, synthetic datamodels, and the pipeline end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tracer.lds import (
    format_table,
    lds,
    lds_per_query,
    sample_subsets,
    spearman_rows,
    subset_sums,
    summarize_lds,
)
from tracer.lds.retrain import cache_key
from tracer.lds.score import average_ranks

from conftest import RTOL64

scipy_stats = pytest.importorskip("scipy.stats")


# --- subsets
def test_subsets_have_exact_size_and_are_seeded():
    m = sample_subsets(101, 8, alpha=0.5, seed=3)
    assert m.shape == (8, 101) and m.dtype == bool
    assert (m.sum(axis=1) == 50).all()  # round(50.5) = 50 (banker's rounding), exactly, every subset
    assert np.array_equal(m, sample_subsets(101, 8, alpha=0.5, seed=3))
    assert not np.array_equal(m, sample_subsets(101, 8, alpha=0.5, seed=4))
    assert len({r.tobytes() for r in m}) == 8  # distinct subsets
    assert (sample_subsets(10, 3, alpha=0.3).sum(axis=1) == 3).all()


def test_more_subsets_keep_the_first_ones():
    # cached subset models stay valid when M grows
    assert np.array_equal(sample_subsets(50, 4, seed=1), sample_subsets(50, 9, seed=1)[:4])


@pytest.mark.parametrize("kw", [dict(n_docs=1, n_subsets=2), dict(n_docs=10, n_subsets=0),
                                dict(n_docs=10, n_subsets=2, alpha=0.0),
                                dict(n_docs=10, n_subsets=2, alpha=1.0)])
def test_subsets_reject_bad_arguments(kw):
    with pytest.raises(ValueError):
        sample_subsets(**kw)


def test_subset_sums_equal_the_loop():
    rng = np.random.default_rng(0)
    scores, masks = rng.normal(size=(5, 30)), sample_subsets(30, 6, seed=2)
    loop = np.array([[scores[q][masks[j]].sum() for j in range(6)] for q in range(5)])
    np.testing.assert_allclose(subset_sums(scores, masks), loop, rtol=RTOL64)
    with pytest.raises(ValueError, match="non-finite"):
        subset_sums(np.full((1, 30), np.nan), masks)
    with pytest.raises(ValueError):
        subset_sums(scores[:, :29], masks)


# --- Spearman
def test_average_ranks_match_scipy_with_ties():
    x = np.random.default_rng(1).integers(0, 5, size=(20, 12)).astype(float)  # many ties
    expected = np.stack([scipy_stats.rankdata(r) for r in x])
    np.testing.assert_allclose(average_ranks(x), expected, rtol=RTOL64)


def test_spearman_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(30, 16))
    b = a + rng.normal(size=a.shape)
    a[:10] = np.round(a[:10])  # ties in some rows
    b[5:15] = np.round(b[5:15] * 2)
    expected = [scipy_stats.spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(spearman_rows(a, b), expected, rtol=RTOL64, atol=1e-12)


def test_spearman_hand_computed():
    # one swapped pair of 4: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    rho = spearman_rows(np.array([[1.0, 2, 3, 4]]), np.array([[10.0, 30, 20, 40]]))[0]
    assert rho == pytest.approx(0.8, RTOL64)
    assert spearman_rows(np.array([[1.0, 2, 3]]), np.array([[3.0, 2, 1]]))[0] == pytest.approx(-1.0, RTOL64)
    # a constant row has no rank correlation
    assert np.isnan(spearman_rows(np.array([[1.0, 1, 1]]), np.array([[1.0, 2, 3]]))[0])


# --- LDS on synthetic datamodels with known truth
def _linear_world(n_q=200, n_docs=60, m=32, noise=0.0, seed=0):
    """Losses that ARE a linear datamodel: loss_q(S) = b_q - sum_{z in S} theta[q, z] (+ noise)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_q, n_docs))
    masks = sample_subsets(n_docs, m, seed=seed)
    losses = 5.0 - theta @ masks.T + noise * rng.normal(size=(n_q, m))
    return theta, masks, losses


def test_true_linear_datamodel_scores_one():
    theta, masks, losses = _linear_world()
    r = lds(theta, masks, losses, n_boot=200)
    assert r["mean"] == pytest.approx(1.0, abs=1e-12) and r["n"] == 200 and r["n_undefined"] == 0
    # a monotone transform of the predictions changes nothing: LDS is a rank correlation
    assert lds_per_query(np.exp(subset_sums(theta, masks) / 10), losses) == pytest.approx(1.0, abs=1e-12)


def test_noisy_linear_datamodel_scores_high_and_sign_is_minus_loss():
    theta, masks, losses = _linear_world(noise=1.0)
    assert lds(theta, masks, losses, n_boot=200)["mean"] > 0.9
    # higher score must mean LOWER loss: the negated scorer is anti-correlated
    assert lds(-theta, masks, losses, n_boot=200)["mean"] < -0.9


def test_random_scorer_scores_zero():
    theta, masks, losses = _linear_world()
    noise = np.random.default_rng(9).normal(size=theta.shape)
    r = lds(noise, masks, losses, n_boot=500)
    # per query rho has sd ~ 1/sqrt(M - 1) = 0.18; the mean of 200 has sd ~ 0.013
    assert abs(r["mean"]) < 0.06
    assert r["lo"] < 0.0 < r["hi"]


def test_constant_predictions_count_as_zero():
    theta, masks, losses = _linear_world(n_q=4)
    scores = theta.copy()
    scores[0] = 0.0  # e.g. BM25 with no term overlap: every subset predicts the same
    r = lds(scores, masks, losses, n_boot=50)
    assert r["n_undefined"] == 1
    assert r["mean"] == pytest.approx(0.75, abs=1e-12)  # (0 + 1 + 1 + 1) / 4


def test_summary_interval_brackets_the_mean_and_is_seeded():
    v = np.random.default_rng(3).uniform(-1, 1, size=40)
    s = summarize_lds(v, n_boot=300, seed=1, label="tracin")
    assert s["lo"] <= s["mean"] <= s["hi"] and s["n"] == 40
    assert s["mean"] == pytest.approx(v.mean(), RTOL64)
    assert s == summarize_lds(v, n_boot=300, seed=1, label="tracin")
    assert summarize_lds(np.array([0.3]), n_boot=10) == {"mean": 0.3, "lo": 0.3, "hi": 0.3, "n": 1}
    with pytest.raises(ValueError):
        summarize_lds(np.zeros(0))


def test_cache_key_changes_with_what_defines_a_model():
    from tracer.model.train import TRAIN_PRESETS

    base = cache_key("c" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.5, 0)["key"]
    assert base == cache_key("c" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.5, 0)["key"]
    others = [cache_key("d" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.5, 0),
              cache_key("c" * 64, dataclasses.replace(TRAIN_PRESETS["tiny"], epochs=4), "t" * 64, 0.5, 0),
              cache_key("c" * 64, TRAIN_PRESETS["tiny"], "u" * 64, 0.5, 0),
              cache_key("c" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.4, 0),
              cache_key("c" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.5, 1)]
    assert base not in {k["key"] for k in others}
    # keys of from-scratch recipes are what they were before fine-tuning recipes existed (caches stay valid)
    assert base == "54aae7921f454d4a"
    assert "finetuned_from" not in cache_key("c" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.5, 0)
    assert cache_key("c" * 64, TRAIN_PRESETS["tiny"], "t" * 64, 0.5, 0, base_fingerprint="b" * 64)["key"] != base
    # the intermediate checkpoints saved do not change the model: they are not part of the key
    assert base == cache_key("c" * 64, dataclasses.replace(TRAIN_PRESETS["tiny"], checkpoints=(0.5, 1.0)),
                             "t" * 64, 0.5, 0)["key"]


def test_format_table_orders_by_lds():
    rep = {"methods": {"a": {"lds": {"mean": 0.1, "lo": 0.0, "hi": 0.2, "n": 3, "n_undefined": 0},
                             "score_seconds": 1.0},
                       "b": {"lds": {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 3, "n_undefined": 1},
                             "score_seconds": 2.0}}}
    lines = format_table(rep).splitlines()
    assert lines[2].startswith("| b | 0.500 | [0.400, 0.600] | 3 | 1 |") and lines[3].startswith("| a |")


# --- end to end (slow): subset models on the tiny benchmark, every method, cache reuse
@pytest.mark.slow
def test_lds_end_to_end_with_cache_reuse(tiny_bench, tiny_run, tiny_index, tmp_path, request):
    import torch

    from tracer.cli.main import main
    from tracer.index.store import IndexStore
    from tracer.lds import LdsConfig, run_lds
    from tracer.retrieval import Retriever

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))  # later tests train with the usual count
    queries = list(tiny_bench.queries[:24])
    cfg = LdsConfig(n_subsets=4, n_boot=100)
    cache = tmp_path / "cache"
    report = run_lds(tiny_index, queries, tiny_run, cache, cfg)

    offered = Retriever(IndexStore.open(tiny_index)).available_methods()
    assert set(offered) >= {"bm25", "embedding", "tracin", "tracin_cos", "influence", "trak", "random"}
    assert set(report["methods"]) == set(offered) | {"proponents*"}
    for name, r in report["methods"].items():
        v = r["lds"]
        assert np.isfinite(v["mean"]) and -1.0 <= v["lo"] <= v["mean"] <= v["hi"] <= 1.0, name
        assert v["n"] == len(queries) and 0 <= v["n_undefined"] <= len(queries)
    assert report["cost"]["models_trained_now"] == 4 and report["cost"]["train_seconds_per_model"] > 0
    assert report["settings"]["loss_std_over_subsets"] > 0  # the subset models differ in what they predict

    # each cached model was trained on exactly its subset, with the full run's tokenizer
    family = next(p for p in cache.iterdir() if p.is_dir())
    masks = sample_subsets(len(tiny_bench.documents), 4, 0.5, 0)
    for j in range(4):
        meta = json.loads((family / f"subset-{j:03d}" / "subset.json").read_text())
        assert meta["rows"] == np.flatnonzero(masks[j]).tolist()
        assert meta["recipe"]["checkpoints"] == [1.0]
        tok = json.loads((family / f"subset-{j:03d}" / "tokenizer" / "tokenizer.json").read_text())
        assert tok == json.loads((tiny_run / "tokenizer" / "tokenizer.json").read_text())
    assert not list(family.glob("*.partial"))

    # a second run (through the CLI) trains nothing and reproduces every figure
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in queries))
    out = tmp_path / "report"
    assert main(["lds", "--index", str(tiny_index), "--queries", str(qfile), "--run", str(tiny_run),
                 "--cache", str(cache), "--subsets", "4", "--n-boot", "100", "--out", str(out)]) == 0
    again = json.loads((out / "lds.json").read_text())
    assert again["cost"]["models_trained_now"] == 0
    figures = {m: r["lds"] for m, r in report["methods"].items()}
    assert {m: r["lds"] for m, r in again["methods"].items()} == figures
    assert (out / "lds.md").read_text().count("\n| ") == len(report["methods"]) + 1


def test_top_k_scores_keeps_each_querys_largest_and_zeroes_the_rest():
    from tracer.lds.score import top_k_scores

    s = np.array([[0.1, 3.0, -2.0, 3.0, 0.5],
                  [-1.0, -0.5, -3.0, -0.2, -4.0]])
    got = top_k_scores(s, 2)
    np.testing.assert_array_equal(got, [[0.0, 3.0, 0.0, 3.0, 0.0],   # the tie at 3.0: both kept (k = 2)
                                        [0.0, -0.5, 0.0, -0.2, 0.0]])  # negatives too: the 2 largest
    np.testing.assert_array_equal(top_k_scores(s, 1), [[0, 3.0, 0, 0, 0], [0, 0, 0, -0.2, 0]])  # first of a tie
    np.testing.assert_array_equal(top_k_scores(s, 9), s)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        top_k_scores(s, 0)
    # a datamodel whose signal sits on 3 documents: truncating the scores to them scores as high as the full
    rng = np.random.default_rng(0)
    masks = sample_subsets(60, 40, 0.5, 0)
    w = np.zeros((5, 60))
    w[:, :3] = 1.0
    losses = -(masks.astype(float) @ w.T).T + 0.1 * rng.normal(size=(5, 40))
    noisy = w + 0.02 * rng.normal(size=w.shape)
    full, top = lds(noisy, masks, losses)["mean"], lds(top_k_scores(noisy, 3), masks, losses)["mean"]
    assert top >= full - 1e-9 and top > 0.8
