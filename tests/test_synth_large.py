"""``tracer synth --docs N``: exact size, unique ids, known provenance, deterministic, streamed by block."""

from __future__ import annotations

import json

import pytest

from tracer.benchmark import large


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """50 people per block and few cities and organisations, so a few thousand documents span several blocks."""
    from dataclasses import replace

    monkeypatch.setattr(large, "BLOCK_PERSONS", 50)
    monkeypatch.setattr(large, "LARGE", replace(large.LARGE, n_cities=40, n_orgs=40))


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_exact_size_unique_ids_and_known_provenance(tmp_path):
    seen = []
    meta = large.write_large(tmp_path, 2500, seed=3, on_docs=seen.append)
    docs = _rows(tmp_path / "corpus.jsonl")
    queries = _rows(tmp_path / "queries.jsonl")
    assert meta["n_documents"] == len(docs) == sum(seen) == 2500 and len(seen) > 2  # several blocks
    assert len({d["id"] for d in docs}) == 2500
    by_id = {d["id"]: d for d in docs}
    assert len({q["id"] for q in queries}) == len(queries) == meta["n_queries"] > 0
    for q in queries:
        assert q["proponents"]
        for p in q["proponents"]:
            assert q["fact_id"] in by_id[p]["facts"]
            assert q["target"].strip() in by_id[p]["text"] and q["subject"] in by_id[p]["text"]
    subjects = {q["subject"] for q in queries if q["relation"] == "born_in"}
    firsts = [s.split()[0] for s in subjects]
    assert len(firsts) == len(set(firsts))  # person names unique across blocks


def test_deterministic_and_a_smaller_n_is_a_prefix(tmp_path):
    large.write_large(tmp_path / "a", 1500, seed=1)
    large.write_large(tmp_path / "b", 1500, seed=1)
    large.write_large(tmp_path / "c", 700, seed=1)
    a = (tmp_path / "a" / "corpus.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "corpus.jsonl").read_bytes()
    assert a.startswith((tmp_path / "c" / "corpus.jsonl").read_bytes())
    large.write_large(tmp_path / "d", 700, seed=2)
    assert (tmp_path / "d" / "corpus.jsonl").read_bytes() != (tmp_path / "c" / "corpus.jsonl").read_bytes()


def test_cli_docs_flag(tmp_path, capsys):
    from tracer.cli.main import main

    assert main(["synth", "--out", str(tmp_path / "s"), "--docs", "900"]) == 0
    assert "900 documents" in capsys.readouterr().out
    assert sum(1 for _ in open(tmp_path / "s" / "corpus.jsonl")) == 900
    assert main(["synth", "--out", str(tmp_path / "z"), "--docs", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--docs must be >= 1, got 0")
