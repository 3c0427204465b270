"""``tracer synth --from-lama``: the real-text benchmark built from LAMA T-REx files.

Every fact, name and sentence below is invented for these tests (same JSON formats as LAMA T-REx,
its ``relations.jsonl`` and ParaRel's ``graphs_json``); no LAMA data is used.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tracer.benchmark.lama import (
    DEV_RELATIONS,
    LamaConfig,
    build_lama,
    completion_template,
    echoes,
    fill_prompt,
    locate,
    template_phrases,
    write_lama_benchmark,
)
from tracer.errors import DataError

RELATIONS = [
    {"relation": "P9001", "template": "[X] was born in [Y] .", "label": "place of birth"},
    {"relation": "P9002", "template": "The capital of [X] is [Y] .", "label": "capital"},
    {"relation": "P9003", "template": "[Y] is the home of [X] .", "label": "home"},
    {"relation": "P9004", "template": "[X] speaks [Y] .", "label": "language"},
]
PARAREL = {
    "P9001": ["[X] was born in [Y].", "[X] is a native of [Y].", "[Y] is the birthplace of [X].",
              "[X] was born in [Y] in spring.", "[X] is a native of [Y]"],  # the last: same prompt as the 2nd
    "P9004": ["[Y] is spoken by [X].", "[Y], the language of [X]."],  # none usable -> LAMA template
}


def _ev(sentence: str, obj: str, sub: str = "") -> dict:
    return {"sub_surface": sub, "obj_surface": obj, "masked_sentence": sentence}


def _fact(uuid: str, rel: str, sub: str, obj: str, evidences: list[dict]) -> dict:
    return {"uuid": uuid, "obj_uri": f"Q{uuid}o", "obj_label": obj, "sub_uri": f"Q{uuid}s", "sub_label": sub,
            "predicate_id": rel, "evidences": evidences}


FACTS = {
    "P9001": [
        _fact("b1", "P9001", "Orla Venn", "Brimford", [
            _ev("Orla Venn was born in [MASK] in 1931.", "Brimford"),
            _ev("Venn later left [MASK] for the coast.", "Brimford"),
            _ev("In [MASK], Venn opened a map shop.", "Brimford")]),
        _fact("b2", "P9001", "Tomas Quill", "Kelsport", [
            _ev("Both Tomas Quill and Ida Marr grew up in [MASK].", "Kelsport")]),
        _fact("b3", "P9001", "Ida Marr", "Kelsport", [
            _ev("Both Tomas Quill and Ida Marr grew up in [MASK].", "Kelsport")]),
        _fact("b4", "P9001", "Pell Ark", "Dunhollow", []),  # no evidence: never sampled
        _fact("b5", "P9001", "Nia Ost", "Farrow", [
            _ev("Nia Ost was born in [MASK] and is a native of its hills.", "Farrow-on-Sea")]),
    ],
    "P9002": [
        _fact("c1", "P9002", "Velmark", "Oskby",
              [_ev("[MASK] has been the seat of Velmark since 1802.", "Oskby")]),
        _fact("c2", "P9002", "Durnland", "Arle",
              [_ev("The parliament of Durnland meets in [MASK].", "Arle")]),
    ],
    "P9003": [_fact("d1", "P9003", "Rook", "Hessel", [_ev("Rook lives in [MASK].", "Hessel")])],
    "P9004": [_fact("e1", "P9004", "Amba Lor", "Tesh",
                    [_ev("Amba Lor writes her poems in [MASK].", "Tesh")])],
}


@pytest.fixture()
def lama_dir(tmp_path: Path) -> Path:
    """An invented LAMA directory in the eval-data layout (T-REx, ParaRel patterns for 2 relations)."""
    root = tmp_path / "lama"
    trex = root / "lama-data-via-bert-knn" / "TREx"
    trex.mkdir(parents=True)
    (root / "lama-data-via-bert-knn" / "relations.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in RELATIONS))
    for rel, facts in FACTS.items():
        lines = "".join(json.dumps(f) + "\n" for f in facts)
        if rel == "P9002":
            (trex / f"{rel}.jsonl").write_text(lines)  # plain and gzipped files both read
        else:
            with gzip.open(trex / f"{rel}.jsonl.gz", "wt") as fh:
                fh.write(lines)
    graphs = root / "pararel" / "data" / "pattern_data" / "graphs_json"
    graphs.mkdir(parents=True)
    for rel, patterns in PARAREL.items():
        (graphs / f"{rel}.jsonl").write_text("".join(json.dumps({"pattern": p, "lemma": "x"}) + "\n"
                                                     for p in patterns))
    return root


def test_completion_templates_and_prompts() -> None:
    assert completion_template("[X] was born in [Y].")
    assert completion_template("[X], a product of [Y],")
    assert completion_template("The native language of [X] is [Y] .")
    assert not completion_template("[Y] is [X]'s native language.")  # object before subject
    assert not completion_template("[X] plays [Y] music .")  # words after the object
    assert not completion_template("[X] [Y].")  # nothing states the relation
    assert fill_prompt("The native language of [X] is [Y] .", "Ann Lee") == \
        "The native language of Ann Lee is"
    assert template_phrases("The native language of [X] is [Y].") == ["the native language of", "is"]
    assert echoes("[X] was born in [Y].", ["Orla Venn was Born in Brimford, 1931."])
    assert not echoes("[X] is a native of [Y].", ["Orla Venn was born in Brimford."])
    assert not echoes("[X]'s label is [Y].", ["This label is new."])  # whole words: "s" is not in "this"
    assert echoes("[X]'s label is [Y].", ["Rook's label is Hessel."])
    assert not echoes("The capital of [X] is [Y].", ["The capitals of Velmark is Oskby."])


def test_benchmark_from_invented_lama(lama_dir: Path) -> None:
    cfg = LamaConfig(relations=("P9001", "P9002", "P9003", "P9004"), max_facts_per_relation=None,
                     max_evidences_per_fact=None)
    bench = build_lama(lama_dir, cfg)
    texts = {d.text: d for d in bench.documents}
    # exactly the evidence sentences, [MASK] -> obj_surface; the shared sentence is one document of 2 facts
    assert set(texts) == {
        "Orla Venn was born in Brimford in 1931.", "Venn later left Brimford for the coast.",
        "In Brimford, Venn opened a map shop.", "Both Tomas Quill and Ida Marr grew up in Kelsport.",
        "Nia Ost was born in Farrow-on-Sea and is a native of its hills.",
        "Oskby has been the seat of Velmark since 1802.", "The parliament of Durnland meets in Arle.",
        "Amba Lor writes her poems in Tesh."}
    assert texts["Both Tomas Quill and Ida Marr grew up in Kelsport."].facts == ("b2", "b3")
    q = {x.query_id: x for x in bench.queries}
    assert set(q) == {"b1", "b2", "b3", "b5", "c1", "c2", "e1"}  # b4: no evidence; d1: no completion template
    for x in bench.queries:  # proponents = the documents listing the fact
        assert set(x.proponents) == {d.doc_id for d in bench.documents if x.query_id in d.facts}
        assert x.fact_id == x.query_id and x.target.startswith(" ") and x.prompt == x.prompt.rstrip()
    assert q["b2"].proponents == q["b3"].proponents
    # queries: ParaRel paraphrase where there is one; b1's evidence says "was born in" -> the other wording
    assert q["b1"].prompt == "Orla Venn is a native of" and q["b1"].target == " Brimford"
    # b5's evidence echoes both usable wordings -> either (fallback to all)
    assert q["b5"].prompt in {"Nia Ost was born in", "Nia Ost is a native of"}
    # no ParaRel file -> the LAMA template; ParaRel without a usable pattern -> the LAMA template
    assert q["c2"].prompt == "The capital of Durnland is" and q["c2"].target == " Arle"
    assert q["e1"].prompt == "Amba Lor speaks"
    src = {r["relation"]: r["template_source"] for r in bench.relations}
    assert src == {"P9001": "pararel", "P9002": "lama", "P9003": "none", "P9004": "lama"}
    assert {r["relation"]: r["query_templates"] for r in bench.relations}["P9001"] == [
        "[X] was born in [Y].", "[X] is a native of [Y]."]  # dedup by prompt wording
    # train prompts: the evidence cut before its object when its surface is the label, else the query prompt
    assert bench.train_prompts["c2"] == "The parliament of Durnland meets in"
    assert bench.train_prompts["b5"] == q["b5"].prompt  # surface "Farrow-on-Sea" != label "Farrow"
    assert bench.train_prompts["c1"] == q["c1"].prompt  # [MASK] opens the sentence


def test_sampling_is_seeded_and_bounded(lama_dir: Path) -> None:
    def run(seed: int, facts: int | None, evs: int | None):
        return build_lama(lama_dir, LamaConfig(relations=("P9001",), max_facts_per_relation=facts,
                                               max_evidences_per_fact=evs, seed=seed))

    a, b = run(0, 2, 1), run(0, 2, 1)
    assert [x.query_id for x in a.queries] == [x.query_id for x in b.queries]
    assert a.documents == b.documents and a.queries == b.queries
    assert len(a.queries) == 2 and all(len(x.proponents) == 1 for x in a.queries)
    samples = {tuple(sorted(x.query_id for x in run(s, 2, 1).queries)) for s in range(8)}
    assert len(samples) > 1  # the seed changes the sample
    evidence_sets = {next(d.text for d in run(s, None, 2).documents if "b1" in d.facts) for s in range(8)}
    assert len(evidence_sets) > 1  # and which evidences of b1 are kept
    full = run(0, None, 2)
    b1_docs = [d for d in full.documents if "b1" in d.facts]
    assert len(b1_docs) == 2 and all(d.doc_id.startswith("b1-") for d in b1_docs)
    assert [d.doc_id for d in b1_docs] == sorted(d.doc_id for d in b1_docs)  # file order kept


def test_written_files_load(lama_dir: Path, tmp_path: Path) -> None:
    from tracer.corpus import load_corpus, load_queries

    bench = build_lama(lama_dir, LamaConfig(relations=("P9001", "P9002"), max_facts_per_relation=None))
    out = write_lama_benchmark(bench, tmp_path / "bench")
    docs, queries = load_corpus(out / "corpus.jsonl"), load_queries(out / "queries.jsonl")
    assert [d.doc_id for d in docs] == [d.doc_id for d in bench.documents]
    assert queries == bench.queries
    rows = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert all({"train_prompt", "template"} <= set(r) for r in rows)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_queries"] == len(queries) and meta["format"] == "tracer-lama/1"
    kb = json.loads((out / "kb.json").read_text())
    assert {f["fact_id"] for f in kb["facts"]} == {q.query_id for q in queries}


def test_cli_from_lama(lama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tracer.cli.main import main

    out = tmp_path / "b"
    assert main(["synth", "--from-lama", str(lama_dir), "--relations", "P9001,P9003", "--out", str(out),
                 "--max-facts-per-relation", "0", "--max-evidences-per-fact", "1", "--seed", "3"]) == 0
    said = capsys.readouterr().out
    assert "skipped P9003" in said
    rows = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["proponents"]) == 1 for r in rows)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["relations_skipped"] == ["P9003"]
    for argv, needle in (
        (["--relations", "birth"], "not a Wikidata property id"),
        (["--relations", "P9999"], "no T-REx file for relation P9999"),
        (["--max-facts-per-relation", "-1"], "must be >= 0"),
    ):
        assert main(["synth", "--from-lama", str(lama_dir), "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert main(["synth", "--from-lama", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "LAMA directory not found" in capsys.readouterr().err


def test_locate_flat_layout(tmp_path: Path) -> None:
    (tmp_path / "TREx").mkdir()
    (tmp_path / "relations.jsonl").write_text(json.dumps(RELATIONS[0]) + "\n")
    src = locate(tmp_path)
    assert src.trex_dir == tmp_path / "TREx" and src.pararel_dir is None
    (tmp_path / "other" / "TREx").mkdir(parents=True)
    with pytest.raises(DataError, match="no LAMA relations.jsonl"):
        locate(tmp_path / "other")
    with pytest.raises(DataError, match="no T-REx directory"):
        locate(tmp_path / "TREx")


def test_config_validation() -> None:
    assert len(DEV_RELATIONS) == 10
    for kw in ({"relations": ()}, {"relations": ("P1", "P1")}, {"max_facts_per_relation": 0},
               {"max_evidences_per_fact": -2}):
        with pytest.raises(ValueError):
            LamaConfig(**kw)
