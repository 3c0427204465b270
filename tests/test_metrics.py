"""Metrics against hand-computed values; bootstrap, TREC I/O and report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tracer.metrics import (
    aggregate,
    evaluate_ranking,
    evaluate_run,
    format_ci,
    markdown_table,
    ndcg_at_k,
    precision_at_k,
    queries_without_relevant,
    read_qrels,
    read_run,
    recall_at_k,
    reciprocal_rank,
    run_doc_ids,
    success_at_k,
    write_qrels,
    write_report,
    write_run,
)

RTOL = 1e-9

# Shared example: 5 ranked docs, 3 relevant, one of which (d9) is never retrieved.
RANKED = ["d1", "d2", "d3", "d4", "d5"]
RELEVANT = {"d2", "d4", "d9"}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12)


# ---------------------------------------------------------------- retrieval


def test_reciprocal_rank_hand_values() -> None:
    # First relevant doc d2 sits at rank 2 -> 1/2.
    assert close(reciprocal_rank(RANKED, RELEVANT), 0.5)
    # No relevant doc retrieved -> 0.
    assert reciprocal_rank(["x", "y"], RELEVANT) == 0.0
    assert reciprocal_rank([], RELEVANT) == 0.0


def test_recall_success_precision_hand_values() -> None:
    # top1 = {d1}: 0 of 3 relevant.
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.0
    # top3 = {d1,d2,d3}: d2 -> 1/3.
    assert close(recall_at_k(RANKED, RELEVANT, 3), 1 / 3)
    # top5 holds d2, d4 -> 2/3.
    assert close(recall_at_k(RANKED, RELEVANT, 5), 2 / 3)
    # k=10 > n=5: same docs as top5 -> 2/3.
    assert close(recall_at_k(RANKED, RELEVANT, 10), 2 / 3)
    # success: no relevant at rank 1; d2 at rank 2.
    assert success_at_k(RANKED, RELEVANT, 1) == 0.0
    assert success_at_k(RANKED, RELEVANT, 2) == 1.0
    assert success_at_k(RANKED, RELEVANT, 100) == 1.0
    # precision@3 = 1 hit / 3; precision@10 (k > n) = 2 hits / 10, missing slots count as misses.
    assert close(precision_at_k(RANKED, RELEVANT, 3), 1 / 3)
    assert close(precision_at_k(RANKED, RELEVANT, 10), 0.2)


def test_ndcg_hand_values() -> None:
    # Hits at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5) = 0.6309298 + 0.4306766 = 1.0616064.
    # Ideal with min(5, 3) = 3 relevant: IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.6309298 + 0.5.
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1.0 + 1 / math.log2(3) + 0.5
    assert close(ndcg_at_k(RANKED, RELEVANT, 5), dcg / idcg)
    # 1.0616064 / 2.1309298 = 0.4981893
    assert abs(ndcg_at_k(RANKED, RELEVANT, 5) - 0.4981893) < 1e-7
    # k=10 > n: nothing more retrieved and IDCG still uses min(10, 3) = 3 -> same value.
    assert close(ndcg_at_k(RANKED, RELEVANT, 10), dcg / idcg)
    # k=2: DCG = 1/log2(3); IDCG over min(2, 3) = 2 slots = 1 + 1/log2(3) -> 0.3868528.
    assert abs(ndcg_at_k(RANKED, RELEVANT, 2) - 0.3868528) < 1e-7
    # k=1: d1 irrelevant -> 0.
    assert ndcg_at_k(RANKED, RELEVANT, 1) == 0.0
    # Perfect ranking -> 1.
    assert close(ndcg_at_k(["d2", "d4", "d9", "x"], RELEVANT, 10), 1.0)


def test_repeated_doc_counts_once() -> None:
    # d2 twice in the top 2: only the first copy is a hit -> precision@2 = 1/2, recall@2 = 1/1.
    assert close(precision_at_k(["d2", "d2"], {"d2"}, 2), 0.5)
    assert recall_at_k(["d2", "d2"], {"d2"}, 2) == 1.0


@pytest.mark.parametrize(
    "fn", [lambda r, rel: reciprocal_rank(r, rel)]
    + [lambda r, rel, f=f: f(r, rel, 3) for f in (recall_at_k, success_at_k, precision_at_k, ndcg_at_k)],
)
def test_no_relevant_docs_raises(fn) -> None:
    with pytest.raises(ValueError, match="no relevant"):
        fn(RANKED, set())


@pytest.mark.parametrize("f", [recall_at_k, success_at_k, precision_at_k, ndcg_at_k])
def test_bad_k_raises(f) -> None:
    with pytest.raises(ValueError, match="k must be positive"):
        f(RANKED, RELEVANT, 0)
    with pytest.raises(ValueError):
        f(RANKED, RELEVANT, -1)
    with pytest.raises(TypeError):
        f(RANKED, RELEVANT, 2.0)


def test_single_string_ranking_rejected() -> None:
    with pytest.raises(TypeError):
        recall_at_k("d2", {"d2"}, 1)


def test_evaluate_ranking_keys_and_values() -> None:
    m = evaluate_ranking(RANKED, RELEVANT, ks=(1, 3))
    assert set(m) == {"mrr", "recall@1", "success@1", "precision@1",
                      "recall@3", "success@3", "precision@3", "ndcg@10"}
    assert close(m["mrr"], 0.5) and close(m["recall@3"], 1 / 3) and m["success@3"] == 1.0
    with pytest.raises(ValueError):
        evaluate_ranking(RANKED, RELEVANT, ks=())


def test_evaluate_run_missing_and_empty_queries() -> None:
    run = {"q1": ["a", "b"], "q3": ["x"]}  # q3 has no qrels -> ignored
    qrels = {"q1": {"b"}, "q2": {"c"}, "q4": set()}  # q2 missing from run; q4 has no relevant docs
    out = evaluate_run(run, qrels, ks=(1, 10))
    assert list(out) == ["q1", "q2"]
    # q1: b at rank 2 -> RR 1/2, recall@1 0, recall@10 1/1, precision@10 = 1/10.
    assert close(out["q1"]["mrr"], 0.5) and out["q1"]["recall@1"] == 0.0
    assert out["q1"]["recall@10"] == 1.0 and close(out["q1"]["precision@10"], 0.1)
    # q2: empty ranking -> every metric 0.
    assert all(v == 0.0 for v in out["q2"].values())
    assert queries_without_relevant(qrels) == ["q4"]



def test_evaluate_run_ir_measures_equals_hand_oracle() -> None:
    """evaluate_run (ir-measures / trec_eval) must equal the hand-written functions pinned above,
    on seeded random rankings with repeats, k beyond the ranking, empty rankings and missing queries."""
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(30)]
    run, qrels = {}, {}
    for i in range(200):
        qid = f"q{i:03d}"
        qrels[qid] = set(rng.choice(docs, size=int(rng.integers(1, 6)), replace=False).tolist())
        if i % 17 == 0:
            continue  # judged but missing from the run: an empty ranking
        ranked = rng.choice(docs, size=int(rng.integers(0, 25)), replace=False).tolist()
        if i % 5 == 0 and ranked:
            ranked.insert(int(rng.integers(0, len(ranked))), ranked[0])  # a repeated doc id
        run[qid] = ranked
    ks = (1, 3, 10, 25, 100)
    got = evaluate_run(run, qrels, ks)
    assert list(got) == sorted(qrels)
    for qid, rel in qrels.items():
        want = evaluate_ranking(run.get(qid, []), rel, ks)
        assert set(got[qid]) == set(want)
        for name, value in want.items():
            assert close(got[qid][name], value), (qid, name, got[qid][name], value)
    # The shared example, by hand: d2 at 2 and d4 at 4 of 3 relevant.
    one = evaluate_run({"q": RANKED}, {"q": RELEVANT}, ks=(3,))["q"]
    assert close(one["mrr"], 0.5) and close(one["recall@3"], 1 / 3) and close(one["precision@3"], 1 / 3)

# ---------------------------------------------------------------- bootstrap

MRRS = [1.0, 0.5, 0.0, 0.25, 1.0, 0.2]
PER_QUERY = {f"q{i}": {"mrr": v, "recall@10": float(i % 2)} for i, v in enumerate(MRRS)}
GROUPS = {f"q{i}": "born_in" if i < 3 else "capital" for i in range(6)}


def test_aggregate_means_and_ci() -> None:
    agg = aggregate(PER_QUERY, GROUPS, n_boot=200, seed=0)
    a = agg["all"]
    assert a["n"] == 6
    # mean MRR = (1 + 0.5 + 0 + 0.25 + 1 + 0.2) / 6 = 2.95 / 6.
    assert close(a["mrr"]["mean"], 2.95 / 6)
    # recall@10 = odd ids (q1, q3, q5) -> 3 / 6.
    assert close(a["recall@10"]["mean"], 0.5)
    for stat in (a["mrr"], a["recall@10"]):
        assert 0.0 <= stat["lo"] <= stat["mean"] <= stat["hi"] <= 1.0
        assert stat["lo"] < stat["hi"]
    # born_in: (1 + 0.5 + 0) / 3 = 0.5; capital: (0.25 + 1 + 0.2) / 3 = 1.45 / 3.
    assert agg["by_group"]["born_in"]["n"] == 3
    assert close(agg["by_group"]["born_in"]["mrr"]["mean"], 0.5)
    assert close(agg["by_group"]["capital"]["mrr"]["mean"], 1.45 / 3)


def test_aggregate_deterministic_and_order_free() -> None:
    a = aggregate(PER_QUERY, GROUPS, n_boot=200, seed=7)
    b = aggregate(dict(reversed(list(PER_QUERY.items()))), GROUPS, n_boot=200, seed=7)
    assert a == b
    assert aggregate(PER_QUERY, None, n_boot=200, seed=8)["all"] != a["all"]
    # A group's CI does not move when another group is dropped.
    only_capital = {q: g for q, g in GROUPS.items() if g == "capital"}
    c = aggregate(PER_QUERY, only_capital, n_boot=200, seed=7)
    assert c["by_group"] == {"capital": a["by_group"]["capital"]}


def test_aggregate_single_query_and_errors() -> None:
    one = aggregate({"q": {"mrr": 0.25}}, n_boot=50)
    assert one == {"all": {"n": 1, "mrr": {"mean": 0.25, "lo": 0.25, "hi": 0.25}}, "by_group": {}}
    with pytest.raises(ValueError, match="zero queries"):
        aggregate({})
    with pytest.raises(ValueError):
        aggregate(PER_QUERY, n_boot=0)
    with pytest.raises(ValueError):
        aggregate(PER_QUERY, confidence=1.0)
    with pytest.raises(ValueError, match="metrics"):
        aggregate({"a": {"mrr": 1.0}, "b": {"ndcg@10": 1.0}})
    with pytest.raises(ValueError, match="non-finite"):
        aggregate({"a": {"mrr": float("nan")}})


# ---------------------------------------------------------------- TREC I/O


def test_run_round_trip(tmp_path) -> None:
    run = {"q2": [("b", 0.5), ("a", 2.0), ("c", 0.5)], "q1": [("z", np.float32(0.1))]}
    path = write_run(tmp_path / "runs" / "r.trec", run, tag="tracin")
    lines = path.read_text().splitlines()
    # Sorted by qid, then score desc; ties keep the given order (b before c); ranks 1-based.
    assert lines[0].split() == ["q1", "Q0", "z", "1", repr(float(np.float32(0.1))), "tracin"]
    assert [ln.split()[2:4] for ln in lines[1:]] == [["a", "1"], ["b", "2"], ["c", "3"]]
    back = read_run(path)
    assert back == {"q1": [("z", float(np.float32(0.1)))], "q2": [("a", 2.0), ("b", 0.5), ("c", 0.5)]}
    assert run_doc_ids(back) == {"q1": ["z"], "q2": ["a", "b", "c"]}


def test_read_run_sorts_by_score_ties_in_file_order(tmp_path) -> None:
    path = tmp_path / "r.trec"
    path.write_text("q Q0 x 1 1.0 t\n\nq Q0 y 2 3.0 t\nq Q0 w 3 1.0 t\n")
    assert read_run(path) == {"q": [("y", 3.0), ("x", 1.0), ("w", 1.0)]}


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("q Q0 a 1 1.0 t\nq Q0 b 2 0.5\n", r"r\.trec:2: expected 6 fields"),
        ("q Q0 a one 1.0 t\n", r"r\.trec:1: rank 'one'"),
        ("q Q0 a 1 high t\n", r"r\.trec:1: score 'high'"),
        ("q Q0 a 1 1.0 t\nq Q0 a 2 0.5 t\n", r"r\.trec:2: doc 'a' repeated"),
    ],
)
def test_read_run_malformed(tmp_path, text: str, msg: str) -> None:
    path = tmp_path / "r.trec"
    path.write_text(text)
    with pytest.raises(ValueError, match=msg):
        read_run(path)


def test_write_run_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="whitespace"):
        write_run(tmp_path / "r", {"q 1": [("a", 1.0)]}, tag="t")
    with pytest.raises(ValueError, match="non-finite"):
        write_run(tmp_path / "r", {"q": [("a", float("inf"))]}, tag="t")
    assert not (tmp_path / "r").exists()


def test_qrels_round_trip_and_errors(tmp_path) -> None:
    qrels = {"q2": {"b", "a"}, "q1": {"c"}}
    path = write_qrels(tmp_path / "q.qrels", qrels)
    assert path.read_text() == "q1 0 c 1\nq2 0 a 1\nq2 0 b 1\n"
    assert read_qrels(path) == qrels
    # Relevance 0 judgments are not relevant; a query with only those maps to an empty set.
    path.write_text("q1 0 a 0\nq2 0 b 2\n")
    assert read_qrels(path) == {"q1": set(), "q2": {"b"}}
    path.write_text("q1 0 a 1\nq1 0 b\n")
    with pytest.raises(ValueError, match=r"q\.qrels:2: expected 4 fields"):
        read_qrels(path)


# ---------------------------------------------------------------- report


def _report() -> dict:
    per_query = evaluate_run(
        {"q1": ["a", "b"], "q2": ["c"], "q3": ["x", "d"]}, {"q1": {"a"}, "q2": {"d"}, "q3": {"d"}}, ks=(1, 10)
    )
    groups = {"q1": "born_in", "q2": "born_in", "q3": "capital"}
    agg = aggregate(per_query, groups, n_boot=100, seed=0)
    return {
        "title": "tiny eval",
        "settings": {"k": 10, "seed": 0},
        "methods": {
            "tracin": {"candidates": "bm25", **agg, "tail_patch": {"mean": 0.812, "lo": 0.75, "hi": 0.86}},
            "bm25": {"candidates": "full", **agg},
        },
    }


def test_format_ci() -> None:
    assert format_ci({"mean": 0.812, "lo": 0.75, "hi": 0.86}) == "0.812 [0.75, 0.86]"
    assert format_ci(None) == "—"


def test_markdown_table_contents() -> None:
    report = _report()
    md = markdown_table(report)
    lines = md.splitlines()
    assert lines[0] == "| method | candidates | n | MRR | recall@10 | success@10 | nDCG@10 | tail_patch |"
    assert len(lines) == 4
    # MRR per query: q1 1, q2 0, q3 1/2 -> mean 0.5.
    mrr = format_ci(report["methods"]["tracin"]["all"]["mrr"])
    assert mrr.startswith("0.500 [")
    assert "| tracin | bm25 | 3 | " + mrr in md and "| bm25 | full | 3 | " + mrr in md
    assert "0.812 [0.75, 0.86]" in lines[2] and lines[3].endswith("| — |")
    with pytest.raises(ValueError, match="methods"):
        markdown_table({"title": "x", "methods": {}})


def test_write_report_files(tmp_path) -> None:
    report = _report()
    paths = write_report(tmp_path / "out", report)
    assert {p.name for p in paths.values()} == {"metrics.json", "report.md", "report.html", "chart.png"}  # no details
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(report))
    md = paths["markdown"].read_text()
    assert "# tiny eval" in md and markdown_table(report) in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<td>tracin</td>" in page and "<td>bm25</td>" in page
    assert "<td>capital</td>" in page and '0.812 <span class="ci">[0.75, 0.86]</span>' in page
    assert not list((tmp_path / "out").glob(".*tmp"))
