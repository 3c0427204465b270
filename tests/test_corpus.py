"""Tests for tracer.corpus: corpus/query I/O, fingerprints, FTRACE and LAMA readers.

All fixtures are invented (tests/data/ or written to tmp_path); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tracer.corpus import (  # noqa: E402
    corpus_fingerprint,
    documents_to_rows,
    load_corpus,
    load_lama_templates,
    load_queries,
    read_ftrace,
    read_lama_trex,
    write_jsonl,
)
from tracer.errors import DataError  # noqa: E402
from tracer.types import Document, Query  # noqa: E402

DATA = Path(__file__).parent / "data"
LAMA_P19 = DATA / "lama_trex_P19.jsonl"
LAMA_RELATIONS = DATA / "lama_relations.jsonl"

DOCS = [
    Document("a", "Ann was born in Oslo.", ("f1",)),
    Document("b", "Bo lives in Rome.", ()),
    Document("c", "Cy was born in", ("f2", "f3"), prompt="Cy was born in", target=" Lima"),
]


# --------------------------------------------------------------------------- load_corpus


def test_write_jsonl_load_corpus_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "corpus.jsonl"
    assert write_jsonl(path, documents_to_rows(DOCS)) == len(DOCS)
    assert load_corpus(path) == DOCS
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_round_trip_gzip(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl.gz"
    write_jsonl(path, documents_to_rows(DOCS))
    assert load_corpus(path) == DOCS


def test_text_from_prompt_and_target(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [{"id": 7, "prompt": "Ann was born in", "target": " Oslo"}])
    (doc,) = load_corpus(path)
    assert doc == Document("7", "Ann was born in Oslo", (), "Ann was born in", " Oslo")


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(documents_to_rows(DOCS)), encoding="utf-8")
    assert load_corpus(path) == DOCS


def test_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "corpus.parquet"
    rows = [{"id": d.doc_id, "text": d.text, "facts": list(d.facts)} for d in DOCS]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert load_corpus(path) == [Document(d.doc_id, d.text, d.facts) for d in DOCS]


def test_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "saved"
    rows = [{"id": i, "text": d.text, "facts": list(d.facts)} for i, d in enumerate(DOCS)]
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    docs = load_corpus(path)
    assert [d.doc_id for d in docs] == ["0", "1", "2"]
    assert [d.text for d in docs] == [d.text for d in DOCS]
    assert docs[2].facts == ("f2", "f3")


def test_duplicate_id(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    write_jsonl(path, [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}])
    expected = r"dup\.jsonl:3: duplicate document id 'x' \(first at .*dup\.jsonl:1\)"
    with pytest.raises(DataError, match=expected):
        load_corpus(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="corpus file not found: .*nope.jsonl"):
        load_corpus(tmp_path / "nope.jsonl")


def test_bad_json_line_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n\n{"id": "b", "text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_corpus(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "no id"}, "missing required field 'id'"),
        ({"id": "a"}, "missing required field 'text'"),
        ({"id": "a", "text": ""}, "field 'text' is empty"),
        ({"id": "a", "text": "t", "facts": "f1"}, "field 'facts' must be a list"),
    ],
)
def test_bad_rows(tmp_path: Path, row: dict[str, object], message: str) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": "z", "text": "fine"}, row])
    with pytest.raises(DataError, match=rf"rows\.jsonl:2: {message}"):
        load_corpus(path)


def test_empty_corpus(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="corpus is empty"):
        load_corpus(path)


# --------------------------------------------------------------------------- open_corpus (lazy)


def _formats(tmp_path: Path) -> dict[str, Path]:
    """The same corpus (DOCS, plus a blank line in the JSON-lines file) in every readable format."""
    out = {"jsonl": tmp_path / "c.jsonl", "gz": tmp_path / "c.jsonl.gz", "array": tmp_path / "c.json"}
    rows = documents_to_rows(DOCS)
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" + ("\n" if i == 0 else "") for i, r in enumerate(rows)),
                            encoding="utf-8")
    write_jsonl(out["gz"], rows)
    out["array"].write_text(json.dumps(rows), encoding="utf-8")
    return out


def test_open_corpus_equals_load_corpus_in_every_format(tmp_path: Path) -> None:
    from tracer.corpus import DocumentFile, open_corpus
    from tracer.corpus.io import fingerprints

    spill = tmp_path / "spill"
    spill.mkdir()
    for name, path in _formats(tmp_path).items():
        with open_corpus(path, spill_dir=spill) as docs:
            assert isinstance(docs, DocumentFile), name
            assert list(docs) == load_corpus(path) == DOCS, name
            assert len(docs) == 3 and docs[1] == DOCS[1] and docs[-1] == DOCS[2]
            assert list(docs[1:]) == DOCS[1:] and list(docs[::2]) == DOCS[::2]
            assert isinstance(docs[1:], DocumentFile)
            assert corpus_fingerprint(docs) == corpus_fingerprint(DOCS)
            assert fingerprints(docs) == fingerprints(DOCS)
            with pytest.raises(IndexError):
                docs[3]
            assert (docs.path == path) == (name == "jsonl")  # only a plain .jsonl is read in place
        assert not list(spill.iterdir())  # closing removed the spill file


def test_open_corpus_parquet_and_save_to_disk_are_spilled_row_by_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from tracer.corpus import open_corpus
    from tracer.corpus import io as cio

    rows = [{"id": f"d{i}", "text": f"text {i}", "facts": [f"f{i}"]} for i in range(10)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    old_batch, cio.PARQUET_BATCH = cio.PARQUET_BATCH, 3  # several record batches
    try:
        for path in (tmp_path / "c.parquet", tmp_path / "saved"):
            docs = open_corpus(path, spill_dir=tmp_path / "spill")
            assert list(docs) == load_corpus(path) and len(docs) == 10
            spilled = docs.path
            assert spilled.parent == tmp_path / "spill" and spilled.is_file()
            del docs  # garbage collection removes the spill file too
            assert not spilled.exists()
    finally:
        cio.PARQUET_BATCH = old_batch


def test_open_corpus_errors_are_load_corpus_errors(tmp_path: Path) -> None:
    from tracer.corpus import open_corpus

    dup = tmp_path / "dup.jsonl"
    write_jsonl(dup, [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n\n{"id": "b", "text": \n', encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    norow = tmp_path / "rows.jsonl"
    write_jsonl(norow, [{"id": "z", "text": "fine"}, {"id": "a"}])
    dup_gz = tmp_path / "dup.jsonl.gz"
    write_jsonl(dup_gz, [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}])
    (tmp_path / "spill").mkdir()
    for path in (dup, bad, empty, norow, dup_gz, tmp_path / "nope.jsonl"):
        with pytest.raises(DataError) as want:
            load_corpus(path)
        with pytest.raises(DataError) as got:
            open_corpus(path, spill_dir=tmp_path / "spill")
        assert str(got.value) == str(want.value)
    assert not list((tmp_path / "spill").iterdir())  # a failed spill leaves nothing


def test_open_corpus_max_docs_and_a_changed_file(tmp_path: Path) -> None:
    import pickle

    from tracer.corpus import open_corpus

    path = _formats(tmp_path)["jsonl"]
    assert list(open_corpus(path, max_docs=2)) == DOCS[:2]
    docs = open_corpus(path)
    copy = pickle.loads(pickle.dumps(docs))  # what a worker process would get
    assert list(copy) == DOCS
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "d", "text": "late"}) + "\n")
    with pytest.raises(DataError, match="changed while the corpus was in use"):
        docs[0]


def test_spill_documents_checks_ids(tmp_path: Path) -> None:
    from tracer.corpus.io import spill_documents

    with spill_documents(iter(DOCS), spill_dir=tmp_path) as docs:
        assert list(docs) == DOCS
    with pytest.raises(DataError, match=r"row 2: duplicate document id 'a' \(first at row 0\)"):
        spill_documents(iter([DOCS[0], DOCS[1], DOCS[0]]), spill_dir=tmp_path)
    with pytest.raises(DataError, match="corpus is empty"):
        spill_documents(iter([]), spill_dir=tmp_path)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- load_queries


def test_load_queries_round_trip(tmp_path: Path) -> None:
    queries = [
        Query("q1", "Ann was born in", " Oslo", "f1", "P19", "Ann", ("a",)),
        Query("q2", "Bo lives in", " Rome"),
    ]
    path = tmp_path / "q.jsonl"
    write_jsonl(path, (q.to_dict() for q in queries))
    assert load_queries(path) == queries


def test_load_queries_bad_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "q1", "prompt": "p", "target": " t"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:2: not valid JSON"):
        load_queries(path)


@pytest.mark.parametrize("missing", ["prompt", "target"])
def test_load_queries_missing_field_names_line(tmp_path: Path, missing: str) -> None:
    row = {"id": "q1", "prompt": "p", "target": " t"}
    del row[missing]
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [{"id": "q0", "prompt": "p", "target": " t"}, row])
    with pytest.raises(DataError, match=rf"q\.jsonl:2: missing required field '{missing}'"):
        load_queries(path)


def test_load_queries_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="queries file not found"):
        load_queries(tmp_path / "none.jsonl")


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive() -> None:
    fp = corpus_fingerprint(DOCS)
    assert len(fp) == 64 and fp == corpus_fingerprint(list(DOCS))
    changed = [DOCS[0], Document("b", "Bo lives in Paris.", ()), DOCS[2]]
    assert corpus_fingerprint(changed) != fp
    assert corpus_fingerprint(reversed(DOCS)) != fp


def test_fingerprint_boundary_shift() -> None:
    left = [Document("1", "ab"), Document("2", "c")]
    right = [Document("1", "a"), Document("2", "bc")]
    assert corpus_fingerprint(left) != corpus_fingerprint(right)
    assert corpus_fingerprint([Document("ab", "c")]) != corpus_fingerprint([Document("a", "bc")])


def test_fingerprint_ignores_facts() -> None:
    assert corpus_fingerprint([Document("a", "t", ("f",))]) == corpus_fingerprint([Document("a", "t")])


# --------------------------------------------------------------------------- FTRACE


def test_ftrace_derives_proponents() -> None:
    docs, queries = read_ftrace(DATA / "ftrace_corpus.jsonl", DATA / "ftrace_queries.jsonl")
    assert [d.doc_id for d in docs] == ["d1", "d2", "d3", "d4"]
    by_id = {q.query_id: q for q in queries}
    assert by_id["q1"].proponents == ("d1", "d3")  # derived from facts, corpus order
    assert by_id["q2"].proponents == ("d2", "d4")  # explicit field wins
    assert by_id["q3"].proponents == ()  # fact stated nowhere
    assert by_id["q1"].relation == "born_in" and by_id["q1"].subject == "Orla Venkatesh"


def test_ftrace_real_field_names() -> None:
    docs, queries = read_ftrace(DATA / "ftrace_real_abstracts.jsonl", DATA / "ftrace_real_queries.jsonl")
    born = "P19,Q9000101,Q9000001"
    assert docs[0] == Document("0", "Orla Venkatesh was born in Brimford in 1931.", (born,))
    assert docs[1].text.startswith("Orla Venkatesh was born in Brimford")
    assert docs[1].facts == ("P19,Q9000101,Q9000001", "P27,Q9000201,Q9000001")
    assert docs[2].text == 'Brimford lies on the coast of "Lower Tessary".'
    # fq-0003 masks the first word: no prompt, so it is skipped.
    assert [q.query_id for q in queries] == ["fq-0001", "fq-0002"]
    q1, q2 = queries
    assert (q1.prompt, q1.target) == ("Orla Venkatesh was born in", " Brimford")
    assert q1.fact_id == "P19,Q9000101,Q9000001"
    assert (q1.relation, q1.subject) == ("P19", "Orla Venkatesh")
    assert q1.proponents == ("0", "1")
    assert q2.target == " Lower Tessary" and q2.proponents == ("2",)


def test_ftrace_real_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (DATA / "ftrace_real_abstracts.jsonl").read_text().splitlines()]
    path = tmp_path / "abstracts.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    docs, queries = read_ftrace(path, DATA / "ftrace_real_queries.jsonl")
    assert len(docs) == 3 and queries[0].proponents == ("0", "1")


def test_ftrace_missing_sentinel(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    row = {"inputs_pretokenized": "no mask here", "targets_pretokenized": "<extra_id_0> x", "uuid": "u"}
    write_jsonl(path, [row])
    with pytest.raises(DataError, match=r"q\.jsonl:1: 'inputs_pretokenized' has no <extra_id_0>"):
        read_ftrace(DATA / "ftrace_corpus.jsonl", path)


# --------------------------------------------------------------------------- LAMA T-REx


def test_lama_reconstructs_sentences_and_prompts() -> None:
    docs, queries = read_lama_trex(LAMA_P19, relations_path=LAMA_RELATIONS)
    assert [q.query_id for q in queries] == ["tx-0001", "tx-0002", "tx-0003"]  # tx-0004: no evidence
    assert [d.doc_id for d in docs] == ["tx-0001-0", "tx-0001-1", "tx-0002-0", "tx-0003-0"]
    assert docs[0].text == (
        "Orla Venkatesh (born 3 May 1931 in Brimford) was a cartographer of the northern coast."
    )
    assert docs[1].text == "Venkatesh spent her childhood in Brimford-on-Sea, a fishing town."
    assert docs[0].facts == ("tx-0001",)
    q = queries[0]
    assert (q.prompt, q.target) == ("Orla Venkatesh was born in", " Brimford")
    assert (q.fact_id, q.relation, q.subject) == ("tx-0001", "P19", "Orla Venkatesh")


def test_lama_proponents_are_own_evidence() -> None:
    docs, queries = read_lama_trex([LAMA_P19], templates={"P19": "[X] was born in [Y] ."})
    assert {q.query_id: q.proponents for q in queries} == {
        "tx-0001": ("tx-0001-0", "tx-0001-1"),
        "tx-0002": ("tx-0002-0",),
        "tx-0003": ("tx-0003-0",),
    }
    # Identical sentences of two facts stay two documents.
    assert docs[2].text == docs[3].text and docs[2].doc_id != docs[3].doc_id


def test_lama_gz_template_with_y_inside(tmp_path: Path) -> None:
    path = tmp_path / "P27.jsonl.gz"
    fact = {
        "uuid": "c-1",
        "sub_label": "Ida Marrow",
        "obj_label": "Tessarian",
        "predicate_id": "P27",
        "evidences": [{"masked_sentence": "Ida Marrow is a [MASK] poet.", "obj_surface": "Tessarian"}],
    }
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(fact) + "\n")
    docs, queries = read_lama_trex(path, relations_path=LAMA_RELATIONS)
    assert docs == [Document("c-1-0", "Ida Marrow is a Tessarian poet.", ("c-1",))]
    assert (queries[0].prompt, queries[0].target) == ("Ida Marrow is", " Tessarian")


def test_lama_missing_template() -> None:
    with pytest.raises(DataError, match=r"lama_trex_P19\.jsonl:1: no LAMA template for relation 'P19'"):
        read_lama_trex(LAMA_P19, templates={"P20": "[X] died in [Y] ."})


def test_lama_max_facts_and_templates_file() -> None:
    assert load_lama_templates(LAMA_RELATIONS)["P27"] == "[X] is [Y] citizen ."
    docs, queries = read_lama_trex(LAMA_P19, relations_path=LAMA_RELATIONS, max_facts=2)
    assert [q.query_id for q in queries] == ["tx-0001", "tx-0002"]
    assert len(docs) == 3


def test_lama_needs_templates() -> None:
    with pytest.raises(ValueError, match="templates"):
        read_lama_trex(LAMA_P19)
