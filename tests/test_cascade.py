"""Budget-aware cascades: calibration against brute-force ceilings, the choice rule, auto end to end."""

from __future__ import annotations

import numpy as np
import pytest

from tracer import cascade
from tracer.errors import IndexMismatchError, IndexNotReadyError, InvalidRequestError


def _cal(**kw):
    base = dict(index_fingerprint="f", method="tracin", origin="benchmark", n_queries=10,
                recall={"bm25": {25: 0.5, 100: 0.8}, "gradient": {25: 0.6, 100: 0.9}},
                cost_ms={"bm25": [10.0, 0.1], "gradient": [20.0, 0.2]}, featurize_ms=100.0, full_ms=500.0)
    base.update(kw)
    return cascade.Calibration(**base)


def _pick(cal, budget):
    opt = cascade.choose(cal, budget)[0]
    return opt.source, opt.n


def test_choose_takes_the_best_ceiling_that_fits():
    cal = _cal()
    # estimates: bm25@25 112.5, bm25@100 120, gradient@25 125, gradient@100 140, full 600
    assert _pick(cal, 121) == ("bm25", 100)
    assert _pick(cal, 130) == ("bm25", 100)  # 0.8 > gradient@25's 0.6
    assert _pick(cal, 140) == ("gradient", 100)
    assert _pick(cal, 1000) == ("full", 0)
    opt, fits = cascade.choose(cal, 50)
    assert (opt.source, opt.n, fits) == ("bm25", 25, False)  # nothing fits: the cheapest, flagged
    with pytest.raises(InvalidRequestError, match="budget_ms must be > 0"):
        cascade.choose(cal, 0)
    assert cal.ceiling("bm25", 99) == 0.5 and cal.ceiling("bm25", 10) is None and cal.ceiling("full", 0) == 1.0
    assert cascade.Calibration.from_json(cal.to_json()) == cal


def test_pseudo_queries_are_seeded_and_name_their_document(tiny_bench):
    a = cascade.pseudo_queries(tiny_bench.documents, 10, seed=1)
    assert a == cascade.pseudo_queries(tiny_bench.documents, 10, seed=1) and len(a) == 10
    docs = {d.doc_id: d.text for d in tiny_bench.documents}
    for q in a:
        (d,) = q.proponents
        assert " ".join(docs[d].split()).startswith(q.prompt + q.target)


def test_calibration_ceilings_equal_brute_force_and_auto_uses_them(tiny_index, tiny_bench, tmp_path):
    import shutil

    from tracer import Tracer

    idx = tmp_path / "idx"
    shutil.copytree(tiny_index, idx)
    qs = [q for q in tiny_bench.queries if q.proponents][:6]
    with Tracer.open(idx) as t:
        with pytest.raises(IndexNotReadyError, match="tracer calibrate"):
            t.trace(qs[0].prompt, qs[0].target, candidates="auto", budget_ms=100)
        plain = t.trace(qs[0].prompt, qs[0].target)
        assert plain.recall_ceiling is None and plain.cascade is None
        cal = t.calibrate(qs, sizes=(5, 20))
        assert cal.origin == "benchmark" and cal.n_queries == 6 and (idx / "calibration.json").is_file()
        feats = t.retriever.features([(q.prompt, q.target) for q in qs], ["tracin"], "union")
        for s in ("bm25", "gradient"):  # brute force: does the source's top-n hold a proponent?
            for n in (5, 20):
                want = np.mean([bool(np.isin(t.store.rows(list(q.proponents)),
                                             t.retriever.candidates(f, s, n)).any()) for q, f in zip(qs, feats)])
                assert cal.recall[s][n] == pytest.approx(want)
        r = t.trace(qs[1].prompt, qs[1].target, candidates="auto", budget_ms=1e6)  # everything fits
        best = max(cal.options(), key=lambda o: (o.recall, -o.est_ms))
        assert (r.cascade["source"], r.cascade["num_candidates"]) == (best.source, best.n)
        assert r.candidates == best.source and r.recall_ceiling == best.recall == 1.0
        tight = t.trace(qs[1].prompt, qs[1].target, candidates="auto", budget_ms=1e-3)
        assert tight.cascade["fits_budget"] is False
        assert t.trace(qs[1].prompt, qs[1].target, num_candidates=20).recall_ceiling == cal.recall["bm25"][20]
        with pytest.raises(InvalidRequestError, match="needs budget_ms"):
            t.trace(qs[1].prompt, qs[1].target, candidates="auto")
        with pytest.raises(InvalidRequestError, match='budget_ms applies to candidates="auto"'):
            t.trace(qs[1].prompt, qs[1].target, budget_ms=5)
    with Tracer.open(idx) as t2:  # the calibration travels with the index
        assert t2.calibration == cal
    cascade.save(cascade.Calibration(**{**cal.__dict__, "index_fingerprint": "other"}), idx)
    with Tracer.open(idx) as t3:
        with pytest.raises(IndexMismatchError, match="measured on another index"):
            t3.trace(qs[1].prompt, qs[1].target, candidates="auto", budget_ms=100)
        assert t3.trace(qs[1].prompt, qs[1].target).recall_ceiling is None  # plain queries still work
