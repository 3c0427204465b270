"""The HTML report: per-query details from an evaluation, paired tests, agreement, self-contained page."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from tracer.metrics import evaluate_run
from tracer.metrics.compare import paired_test, topk_jaccard
from tracer.metrics.details import proponent_ranks, score_histogram
from tracer.metrics.report import write_report

RTOL = 1e-9


def test_proponent_ranks_hand_values() -> None:
    assert proponent_ranks(["a", "b", "c", "b", "d"], {"b", "d", "z"}) == [2, 5]
    assert proponent_ranks([], {"a"}) == []


def test_score_histogram_standardizes_per_list_and_counts_every_doc() -> None:
    run = {"q1": [("a", 10.0), ("b", 5.0), ("c", 0.0)], "q2": [("x", 1.0), ("y", 1.0)]}  # q2: no spread, skipped
    h = score_histogram(run, {"q1": {"a"}, "q2": {"x"}}, edges=(-3.0, 0.0, 3.0))
    assert h["proponents"] == [0, 1] and h["others"] == [1, 1]  # z of a, b, c = 1.22, 0, -1.22


def test_paired_test_counts_and_p_values() -> None:
    a = {f"q{i}": 1.0 for i in range(30)}
    b = {f"q{i}": 0.0 if i < 20 else 1.0 for i in range(30)}
    t = paired_test(a, b, n_resamples=2000, seed=0)
    assert (t["wins"], t["ties"], t["losses"], t["n"]) == (20, 10, 0, 30)
    assert math.isclose(t["mean_diff"], 20 / 30, rel_tol=RTOL) and t["lo"] <= t["mean_diff"] <= t["hi"]
    assert t["p_value"] < 0.01  # 20 wins, no loss: every sign flip lowers |mean|
    same = paired_test(a, a, n_resamples=100)
    assert same["p_value"] == 1.0 and same["ties"] == 30
    # Symmetric noise: the test must not call it.
    rng = np.random.default_rng(1)
    noise = {f"q{i}": float(x) for i, x in enumerate(rng.normal(size=200))}
    zero = {q: 0.0 for q in noise}
    assert paired_test(noise, zero, n_resamples=2000, seed=0)["p_value"] > 0.05
    with pytest.raises(ValueError, match="share no query"):
        paired_test({"a": 1.0}, {"b": 1.0})


def test_topk_jaccard_hand_values() -> None:
    a = {"q1": ["a", "b", "c"], "q2": ["x"]}
    b = {"q1": ["c", "d", "a"], "q2": ["x"], "q3": ["z"]}
    assert math.isclose(topk_jaccard(a, b, k=3), (2 / 4 + 1.0) / 2, rel_tol=RTOL)
    assert math.isclose(topk_jaccard(a, b, k=1), (0.0 + 1.0) / 2, rel_tol=RTOL)
    assert math.isnan(topk_jaccard({"q": ["a"]}, {"r": ["a"]}))


@pytest.fixture(scope="module")
def evaluated(tiny_index, tiny_bench):
    from tracer.evaluation import EvalConfig, run_evaluation
    from tracer.tracer import Tracer

    queries = [q for q in tiny_bench.queries if q.proponents][:8]
    with Tracer.open(tiny_index) as t:
        cfg = EvalConfig(methods=("bm25", "tracin", "random"), candidates="bm25", num_candidates=20,
                         tail_patch=True, tail_patch_max_queries=3, n_boot=100)
        return run_evaluation(t.retriever, queries, cfg), queries


def test_evaluation_details_agree_with_the_runs_and_aggregates(evaluated) -> None:
    res, queries = evaluated
    d = res.report["details"]
    assert set(d["queries"]) == {q.query_id for q in queries}
    for m, run in res.runs.items():
        want = evaluate_run({q: [x for x, _ in r] for q, r in run.items()}, res.qrels)
        for qid, row in d["per_query"][m].items():
            assert math.isclose(row["mrr"], want[qid]["mrr"], rel_tol=RTOL)
            assert row["ranks"] == proponent_ranks([x for x, _ in run[qid]], res.qrels[qid])
            assert [h[0] for h in d["hits"][m][qid]] == [x for x, _ in run[qid][:10]]
        mean = np.mean([row["mrr"] for row in d["per_query"][m].values()])
        assert math.isclose(mean, res.report["methods"][m]["all"]["mrr"]["mean"], rel_tol=1e-9)
        patched = [row["tail_patch"] for row in d["per_query"][m].values() if "tail_patch" in row]
        assert len(patched) == 3
        assert math.isclose(np.mean(patched), res.report["methods"][m]["tail_patch"]["mean"], rel_tol=1e-9)
    shown = {x for hits in d["hits"].values() for r in hits.values() for x, _ in r}
    assert shown <= set(d["documents"])
    prov = res.report["provenance"]
    assert prov["fingerprint"] == res.report["settings"]["index_fingerprint"]
    assert len(prov["checkpoints"]) == 3 and all(c["lr"] > 0 for c in prov["checkpoints"])
    assert {"torch", "ir-measures", "python"} <= set(prov["versions"])


def test_report_page_is_self_contained_and_complete(evaluated, tmp_path) -> None:
    res, queries = evaluated
    report = json.loads(json.dumps(res.report))  # as it arrives over gRPC
    paths = write_report(tmp_path / "rep", report)
    page = paths["html"].read_text(encoding="utf-8")
    for section in ('id="summary"', 'id="paired"', 'id="agreement"', 'id="dd-data"', 'id="provenance"',
                    'id="settings"', "recall@k and success@k curves", "rank of the first proponent",
                    "score distributions", "MRR per relation", "learned slice", "tail-patch"):
        assert section in page, section
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched: works offline
    assert page.count("data:image/png;base64,") >= 5
    # The best MRR is marked.
    best = max(report["methods"], key=lambda m: report["methods"][m]["all"]["mrr"]["mean"])
    row = re.search(rf"<tr><td>{best}</td>.*?</tr>", page).group(0)
    assert "★" in row
    # Settings read as words, below the results.
    assert page.index('id="settings"') > page.index('id="dd-data"')
    assert "<td>methods</td><td>bm25, tracin, random</td>" in page and "<td>tail-patch check</td><td>yes</td>" in page
    # metrics.json: the summary; per_query.jsonl: one line per query with every method's metrics.
    summary = json.loads(paths["json"].read_text())
    assert "details" not in summary and summary["methods"] == report["methods"]
    lines = [json.loads(x) for x in paths["per_query"].read_text().splitlines()]
    assert [x["query_id"] for x in lines] == list(report["details"]["queries"])
    first = lines[0]
    assert set(first["methods"]) == {"bm25", "tracin", "random"}
    assert first["methods"]["bm25"]["mrr"] == report["details"]["per_query"]["bm25"][first["query_id"]]["mrr"]
    assert first["methods"]["bm25"]["top"] == report["details"]["hits"]["bm25"][first["query_id"]]


def test_markdown_report_carries_the_pages_paired_tests(evaluated, tmp_path) -> None:
    """report.md's paired table: every other method against the best by MRR, the same numbers as
    compare.pairwise (so the HTML page's), tail-patch included."""
    from tracer.metrics.compare import pairwise
    from tracer.metrics.page import PAIRED_RESAMPLES

    res, _ = evaluated
    report = json.loads(json.dumps(res.report))
    md = write_report(tmp_path / "rep", report)["markdown"].read_text(encoding="utf-8")
    best = max(report["methods"], key=lambda m: report["methods"][m]["all"]["mrr"]["mean"])
    assert f"## Paired tests against {best} (best MRR)" in md
    per_query = report["details"]["per_query"]
    for metric in ("mrr", "tail_patch"):
        tests = pairwise(per_query, metric, best, n_resamples=PAIRED_RESAMPLES, seed=report["settings"]["seed"])
        assert set(tests) == set(per_query) - {best}
        for m, t in tests.items():
            row = next(x for x in md.splitlines() if x.startswith(f"| {m} |") and "p=" in x)
            cell = (f"{t['mean_diff']:+.3f} [{t['lo']:+.2f}, {t['hi']:+.2f}] p={t['p_value']:.2g} "
                    f"{t['wins']}/{t['ties']}/{t['losses']}")
            assert cell in row, (m, metric, row)
    # The report's seed drives the resampling.
    report["settings"]["seed"] = 7
    md7 = write_report(tmp_path / "rep7", report)["markdown"].read_text(encoding="utf-8")
    other = next(m for m in per_query if m != best)
    t7 = pairwise(per_query, "mrr", best, n_resamples=PAIRED_RESAMPLES, seed=7)[other]
    assert f"{t7['mean_diff']:+.3f} [{t7['lo']:+.2f}, {t7['hi']:+.2f}] p={t7['p_value']:.2g}" in md7
    # Without per-query details (a summary from an older server) there is no paired table.
    assert "Paired tests" not in write_report(tmp_path / "bare", {k: v for k, v in report.items()
                                                                    if k != "details"})["markdown"].read_text()


def test_evaluation_records_each_top_hit_stability_as_trace_does(evaluated, tiny_index) -> None:
    """The eval's per-hit stability equals Tracer.trace's on the same candidates; its table equals the script's."""
    import importlib.util
    from pathlib import Path

    from tracer.metrics.stability import summarize
    from tracer.tracer import Tracer

    res, queries = evaluated
    d = res.report["details"]
    assert set(d["stability"]) == {"tracin"}  # bm25 and random have no checkpoints to disagree
    with Tracer.open(tiny_index) as t:
        traced = t.trace_batch(queries, method="tracin", candidates="bm25", k=10, num_candidates=20, stability=True)
        spec = importlib.util.spec_from_file_location("stab", Path(__file__).parents[1] / "eval" / "stability.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        x = script.collect(t, queries, "tracin", 10, 20)
    for q, r in zip(queries, traced):
        assert [h[0] for h in d["hits"]["tracin"][q.query_id]] == [h.doc_id for h in r.hits]
        for got, h in zip(d["stability"]["tracin"][q.query_id], r.hits):
            assert got[0] == pytest.approx(h.topk_fraction, rel=1e-5) and got[1] == h.stable
            assert got[2:] == pytest.approx(list(h.interval), rel=1e-5, abs=1e-9)
    # The report's table is the script's statistic on the same hits.
    want = summarize(x, n_boot=res.report["settings"]["n_boot"], seed=res.report["settings"]["seed"])
    assert res.report["stability"]["methods"]["tracin"] == want
    assert res.report["stability"]["k"] == 10 and want["hits"] == sum(len(r.hits) for r in traced)


def test_report_shows_the_stability_table_and_markers(evaluated, tmp_path) -> None:
    res, _ = evaluated
    report = json.loads(json.dumps(res.report))
    paths = write_report(tmp_path / "rep", report)
    page = paths["html"].read_text(encoding="utf-8")
    table = re.search(r'<table id="stability">.*?</table>', page, re.S).group(0)
    s = report["stability"]["methods"]["tracin"]
    row = re.search(r"<tr><td>tracin</td>.*?</tr>", table).group(0)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[1:4] == ["3", str(s["queries"]), str(s["hits"])]  # views: 3 checkpoints, no seed siblings
    assert report["stability"]["views"] == {"tracin": 3}
    assert cells[4] == f"{100 * s['stable_share']:.1f}%"
    rate = (lambda v: "—" if v is None else f"{v:.3f}")
    assert cells[5:7] == [rate(s["proponent_rate_stable"]), rate(s["proponent_rate_unstable"])]
    assert "bm25" not in table and "random" not in table  # no stability: no row
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "## Stability" in md and f"| tracin | {s['hits']} | {cells[4]} | {cells[5]} | {cells[6]} |" in md
    # The drill-down carries the per-hit entries (the markers are drawn from them).
    blob = json.loads(re.search(r'<script type="application/json" id="dd-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    assert blob["stability"] == report["details"]["stability"] and blob["n_checkpoints"] == 3
    assert blob["views"] == {"tracin": 3}
    assert "class=\"stab st\"" in page and "'stab'+(ok?' st':'')" in page
    # per_query.jsonl: one record per top hit, aligned with "top".
    lines = [json.loads(x) for x in paths["per_query"].read_text().splitlines()]
    for line in lines:
        tr = line["methods"]["tracin"]
        assert len(tr["stability"]) == len(tr["top"]) and "stability" not in line["methods"]["bm25"]
        for rec, e in zip(tr["stability"], report["details"]["stability"]["tracin"][line["query_id"]]):
            assert rec == {"topk_fraction": e[0], "stable": e[1], "interval": [e[2], e[3]]}
    # A report without stability (old reports, full-scan policy) renders without the section.
    del report["stability"], report["details"]["stability"]
    assert 'id="stability"' not in write_report(tmp_path / "old", report)["html"].read_text(encoding="utf-8")
