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
    # Nothing fits and the cheapest is within 5% of a far better ceiling: take the better ceiling.
    close = _cal(cost_ms={"bm25": [10.0, 0.1], "gradient": [10.5, 0.1]})  # bm25@25 112.5, gradient@25 113.0
    opt, fits = cascade.choose(close, 50)
    assert (opt.source, opt.n, fits) == ("gradient", 25, False)  # 113.0 <= 112.5 * 1.05, ceiling 0.6 > 0.5
    # (bm25@100, 120 ms, ceiling 0.8, is beyond the slack: 120 > 118.1)
    far = _cal(recall={"bm25": {25: 0.5}, "gradient": {25: 0.9}}, cost_ms={"bm25": [0.0, 0.1], "gradient": [20.0, 0.1]})
    assert _pick(far, 50) == ("bm25", 25)  # gradient@25 is 20% dearer: the cheapest stays
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


def test_frontier_by_hand():
    pts = [(10.0, 0.5), (12.0, 0.7), (12.0, 0.6), (20.0, 0.7), (8.0, 0.2), (30.0, 0.9), (10.0, 0.5)]
    # (12, 0.6) is beaten by (12, 0.7); (20, 0.7) by (12, 0.7); the two (10, 0.5) tie: neither dominates
    assert cascade.frontier(pts) == [4, 0, 6, 1, 5]
    assert cascade.frontier([]) == []


def _svg_points(svg: str, gid: str) -> list[tuple[float, float]]:
    import re

    group = re.search(rf'<g id="{re.escape(gid)}">(.*?)</g>\s*</g>', svg, re.S)
    assert group, gid
    return [(float(x), float(y)) for x, y in re.findall(r'<use [^>]*x="([-\d.]+)" y="([-\d.]+)"', group.group(1))]


def test_pareto_measures_every_cascade_and_the_chart_draws_each_point(tiny_index, tiny_bench, tmp_path):
    """MRR of each fixed cascade equals Tracer.trace's on the evaluated queries; the SVG puts each point
    where its (p50, MRR) maps under one affine map; the HTML section lists the budgets."""
    from tracer import Tracer
    from tracer.metrics.charts import pareto_svg, point_id
    from tracer.metrics.page import cascade_section, render_cascade_page

    qs = [q for q in tiny_bench.queries if q.proponents][:10]
    with Tracer.open(tiny_index) as t:
        block = cascade.pareto(t, qs, method="tracin", budgets=[1e-3, 1e6], max_queries=10, seed=1, sizes=(5, 20),
                               progress=False)
        held = [q for q in qs if q.query_id in set(block["evaluated_ids"])]
        assert block["calibration_queries"] == 5 and block["evaluated_queries"] == len(held) == 5
        for row in block["fixed"]:
            if row["source"] in ("bm25", "gradient"):
                rr = []
                for q in held:
                    hits = t.trace(q.prompt, q.target, method="tracin", candidates=row["source"],
                                   num_candidates=row["n"], k=10, stability=False).hits
                    ranks = [h.rank for h in hits if h.doc_id in q.proponents]
                    rr.append(1 / ranks[0] if ranks else 0.0)
                assert row["mrr"] == pytest.approx(float(np.mean(rr)), abs=1e-4), row
        with pytest.raises(InvalidRequestError, match="budgets must be > 0"):
            cascade.pareto(t, qs, budgets=[0])
    names = {(r["source"], r["n"]) for r in block["fixed"]}
    assert ("full", 0) in names and ("bm25", 5) in names and ("union", 20) in names
    import json

    cal = cascade.Calibration.from_json(json.dumps(block["calibration"]))
    for b in block["budgets"]:
        opt, fits = cascade.choose(cal, b["budget_ms"])
        assert (b["auto"], b["auto_fits_estimate"]) == (cascade.cascade_name(opt.source, opt.n), fits)
    assert block["budgets"][0]["auto_fits_estimate"] is False and block["budgets"][1]["auto_fits_estimate"]
    front = block["frontier"]
    assert front and all(not any(o["p50_ms"] <= block["fixed"][i]["p50_ms"] and o["mrr"] > block["fixed"][i]["mrr"]
                                 for o in block["fixed"]) for i in front)

    svg = pareto_svg(block)
    pts = {i: _svg_points(svg, point_id(r["source"], r["n"])) for i, r in enumerate(block["fixed"])}
    assert all(len(p) == 1 for p in pts.values())  # one marker per cascade
    data = np.array([[r["p50_ms"], r["mrr"]] for r in block["fixed"]])
    drawn = np.array([pts[i][0] for i in range(len(data))])
    for axis in (0, 1):
        if np.ptp(data[:, axis]) > 0:  # drawn = a * value + b, one (a, b) for every point
            a, b = np.polyfit(data[:, axis], drawn[:, axis], 1)
            assert np.allclose(a * data[:, axis] + b, drawn[:, axis], atol=0.02)
            assert (a > 0) if axis == 0 else (a < 0)  # SVG's y grows downwards
    for b in block["budgets"]:
        ring = _svg_points(svg, "auto-" + b["auto"].replace("@", "-"))
        src, _, n = b["auto"].partition("@")
        assert ring == pts[[(r["source"], r["n"]) for r in block["fixed"]].index((src, int(n or 0)))]
    section = cascade_section(block)
    assert section.count("<tr><td>") == len(block["budgets"]) + len(block["fixed"])
    assert f'<td>1e+06 ms</td><td>{block["budgets"][1]["auto"]}</td>' in section
    assert "nothing fits the estimate" in section
    page = render_cascade_page(block, "cascades")
    assert page.startswith("<!DOCTYPE html>") and 'id="cascade-chart"' in page and "<?xml" not in page


def test_eval_cascade_budgets_add_the_pareto_section(tiny_index, tiny_bench, tmp_path, capsys):
    import json

    from tracer.cli.main import main

    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps({"id": q.query_id, "prompt": q.prompt, "target": q.target,
                                         "relation": q.relation, "proponents": list(q.proponents)}) + "\n"
                             for q in tiny_bench.queries if q.proponents))
    out = tmp_path / "rep"
    assert main(["eval", "--index", str(tiny_index), "--queries", str(qfile), "--slice", "all", "--max-queries", "6",
                 "--methods", "bm25,tracin", "--cascade-budgets", "1000,100000", "--cascade-queries", "6",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [b["budget_ms"] for b in metrics["cascade"]["budgets"]] == [1000.0, 100000.0]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="cascade-chart"' in page and 'id="cascade-budgets"' in page and 'id="stability"' in page
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Cascades" in md and md.count(" ms | ") >= 2
    capsys.readouterr()
    assert main(["eval", "--index", str(tiny_index), "--queries", str(qfile), "--slice", "all",
                 "--cascade-budgets", "fast", "--out", str(out)]) != 0
    assert "--cascade-budgets must be comma-separated milliseconds, got 'fast'" in capsys.readouterr().err
