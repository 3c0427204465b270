"""Per-hit stability across checkpoints, against brute-force per-checkpoint scores."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.featurize.views import RAW


def _brute(t, q, method):
    """``(C, n)`` per-checkpoint TracIn scores of every row, on the combined scale (C * lr_c * <g_q, g_z>)."""
    store = t.store
    feats = t.features([(q.prompt, q.target)], [method], "full")[0]
    n, cks = store.n_documents, store.checkpoints
    return np.stack([len(cks) * c["lr"] * (np.asarray(store.features(RAW, ci)[np.arange(n)], dtype=np.float64)
                                           @ feats.grads[RAW][ci].astype(np.float64))
                     for ci, c in enumerate(cks)])


@pytest.mark.parametrize("candidates", ["bm25", "full"])
def test_tracin_checkpoint_scores_and_topk_fraction_match_brute_force(tiny_index, tiny_bench, candidates):
    from tracer import Tracer

    q = tiny_bench.queries[2]
    k = 8
    with Tracer.open(tiny_index) as t:
        r = t.trace(q.prompt, q.target, method="tracin", candidates=candidates, k=k, num_candidates=60,
                    stability=True)
        brute = _brute(t, q, "tracin")
        if candidates == "bm25":
            rows = t.retriever.retrieve(q.prompt, q.target, method="tracin", candidates="bm25", k=k,
                                        num_candidates=60).candidate_rows
        else:
            rows = np.arange(t.n_documents)
        pos = t.store.rows([h.doc_id for h in r.hits])
    assert len(r.hits) == k and all(len(h.checkpoint_scores) == 3 for h in r.hits)
    got = np.array([h.checkpoint_scores for h in r.hits]).T
    np.testing.assert_allclose(got, brute[:, pos], rtol=2e-3, atol=2e-3 * np.abs(brute).max())
    np.testing.assert_allclose([h.score for h in r.hits], got.mean(axis=0), rtol=1e-6, atol=1e-9)
    tops = [set(rows[np.argsort(-b[rows], kind="stable")[:k]].tolist()) for b in brute]
    want = [sum(int(p) in s for s in tops) / 3 for p in pos]
    assert [h.topk_fraction for h in r.hits] == pytest.approx(want)
    assert [h.stable for h in r.hits] == [w == 1.0 for w in want]
    for h in r.hits:
        lo, hi = h.interval
        assert lo <= h.score <= hi


@pytest.mark.parametrize("method", ["tracin_cos", "influence"])
def test_score_is_the_mean_of_checkpoint_scores(tiny_index, tiny_bench, method):
    from tracer import Tracer

    q = tiny_bench.queries[3]
    with Tracer.open(tiny_index) as t:
        r = t.trace(q.prompt, q.target, method=method, k=6)
    for h in r.hits:
        assert np.mean(h.checkpoint_scores) == pytest.approx(h.score, rel=1e-5, abs=1e-9)
        assert 0 < h.topk_fraction <= 1 or h.topk_fraction == 0


def test_stability_is_absent_where_it_means_nothing(tiny_index, tiny_bench):
    from tracer import Tracer

    q = tiny_bench.queries[0]
    with Tracer.open(tiny_index) as t:
        for m in ("bm25", "trak"):  # not built from per-checkpoint gradient products
            assert all(h.stable is None and h.checkpoint_scores == () for h in t.trace(q.prompt, q.target,
                                                                                         method=m).hits)
        full = t.trace(q.prompt, q.target, method="tracin", candidates="full", k=3)  # default: off for full scans
        assert all(h.stable is None for h in full.hits) and "stability_ms" not in full.timings_ms
        off = t.trace(q.prompt, q.target, method="tracin", k=3, stability=False)
        assert all(h.topk_fraction is None for h in off.hits)


def test_rank_matched_difference_by_hand():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("stab", Path(__file__).parents[1] / "eval" / "stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # rank 1: stable hits are proponents (2 of 2), the unstable one is not; rank 2: only stable hits (skipped)
    x = np.array([[[1, 1], [1, 0]], [[1, 1], [1, 1]], [[0, 0], [-1, -1]]], dtype=np.int8)
    diff, ps, pu = mod.rank_matched_difference(x)
    assert (diff, ps, pu) == (1.0, 1.0, 0.0)
    x[2, 0] = (0, 1)  # now the unstable one is a proponent too
    assert mod.rank_matched_difference(x)[0] == 0.0
    s = mod.summarize(x, n_boot=50)
    assert s["hits"] == 5 and s["stable_share"] == 0.8


def test_side_by_side_marks_the_overlap(tiny_index, tiny_bench):
    from tracer import Tracer
    from tracer.errors import InvalidRequestError

    q = tiny_bench.queries[0]
    with Tracer.open(tiny_index) as t:
        sbs = t.side_by_side(q.prompt, q.target, k=8)
        ev = t.trace(q.prompt, q.target, method="bm25", k=8)
        inf = t.trace(q.prompt, q.target, method="tracin_cos", k=8)
        with pytest.raises(InvalidRequestError, match="a text method"):
            t.side_by_side(q.prompt, q.target, evidence="tracin")
        with pytest.raises(InvalidRequestError, match="a gradient method"):
            t.side_by_side(q.prompt, q.target, influence="bm25")
    assert [h.doc_id for h in sbs.evidence.hits] == [h.doc_id for h in ev.hits]
    assert [h.doc_id for h in sbs.influence.hits] == [h.doc_id for h in inf.hits]
    assert sbs.overlap == tuple(h.doc_id for h in inf.hits if h.doc_id in {e.doc_id for e in ev.hits})
    assert sbs.to_dict()["overlap"] == list(sbs.overlap)
