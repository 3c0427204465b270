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
    from tracer.metrics.stability import rank_matched_difference, summarize

    # rank 1: stable hits are proponents (2 of 2), the unstable one is not; rank 2: only stable hits (skipped)
    x = np.array([[[1, 1], [1, 0]], [[1, 1], [1, 1]], [[0, 0], [-1, -1]]], dtype=np.int8)
    diff, ps, pu = rank_matched_difference(x)
    assert (diff, ps, pu) == (1.0, 1.0, 0.0)
    x[2, 0] = (0, 1)  # now the unstable one is a proponent too
    assert rank_matched_difference(x)[0] == 0.0
    s = summarize(x, n_boot=50)
    assert s["hits"] == 5 and s["stable_share"] == 0.8 and s["stable_hits"] == 4 and s["queries"] == 3


def test_pooled_rates_weight_each_rank_by_its_hits():
    """Hand-computed: rank 1 has 3 stable (2 proponents) and 1 unstable (0); rank 2 has 1 stable (1) and
    2 unstable (1); rank 3 only unstable hits (left out); query 4 lacks rank 2 and 3."""
    from tracer.metrics.stability import rank_matched_difference, summarize

    S, U, M = 1, 0, -1
    x = np.array([
        [[S, 1], [S, 1], [U, 1]],
        [[S, 1], [U, 0], [U, 0]],
        [[S, 0], [U, 1], [U, 1]],
        [[U, 0], [M, M], [M, M]],
    ], dtype=np.int8)
    # rank 1: w=4, stable 2/3, unstable 0/1 -> diff 2/3; rank 2: w=3, stable 1/1, unstable 1/2 -> diff 1/2
    want_diff = (4 * (2 / 3) + 3 * 0.5) / 7
    want_ps = (4 * (2 / 3) + 3 * 1.0) / 7
    want_pu = (4 * 0.0 + 3 * 0.5) / 7
    got = rank_matched_difference(x)
    assert np.allclose(got, (want_diff, want_ps, want_pu), rtol=1e-12)
    s = summarize(x, n_boot=400, seed=3)
    assert s["difference"] == round(want_diff, 4) and s["proponent_rate_stable"] == round(want_ps, 4)
    assert s["proponent_rate_unstable"] == round(want_pu, 4)
    assert s["hits"] == 10 and s["stable_hits"] == 4 and s["stable_share"] == 0.4
    lo, hi = s["ci95"]
    assert lo <= s["difference"] <= hi and lo < hi
    assert summarize(x, n_boot=400, seed=3) == s  # seeded
    # Identical queries never hold both kinds at one rank: no difference, no interval (not a fake 0).
    same = np.repeat(x[:1], 5, axis=0)
    assert summarize(same, n_boot=20)["difference"] is None and summarize(same, n_boot=20)["ci95"] is None
    # Two queries, rank 1: a stable proponent and an unstable non-proponent.
    s1 = summarize(np.array([[[S, 1]], [[U, 0]]], dtype=np.int8), n_boot=200)
    assert s1["difference"] == 1.0 and s1["ci95"][1] == 1.0
    with pytest.raises(ValueError, match="n_queries, k, 2"):
        summarize(np.zeros((3, 2)))


def test_hit_matrix_reads_the_report_blocks():
    from tracer.metrics.stability import hit_matrix, hit_records

    hits = {"q2": [["a", 3.0], ["b", 2.0]], "q1": [["c", 1.0], ["d", 0.5], ["e", 0.1]]}
    stab = {"q1": [[1.0, True, 0.5, 1.5], [0.5, False, 0.0, 1.0], None],
            "q2": [[2 / 3, False, 1.0, 5.0], [1.0, True, 1.0, 3.0]]}
    x = hit_matrix(hits, stab, {"q1": {"d"}, "q2": {"a", "z"}}, k=3)
    assert x.tolist() == [[[1, 0], [0, 1], [-1, -1]], [[0, 1], [1, 0], [-1, -1]]]  # q1 first (sorted ids)
    assert hit_records(stab["q1"])[0] == {"topk_fraction": 1.0, "stable": True, "interval": [0.5, 1.5]}
    assert hit_records(stab["q1"])[2] is None


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
