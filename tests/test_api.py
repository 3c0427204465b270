"""The Python-first API: build_index from objects in hand, trace(Query), opponents, pandas."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.errors import DataError, InvalidRequestError

SMALL = dict(k_in=8, k_out=8, batch_size=16)


def _cfg():
    from tracer.featurize.config import FeaturizeConfig
    from tracer.index.build import IndexConfig

    return IndexConfig(featurize=FeaturizeConfig(**SMALL), shard_size=64, trak_dim=64)


def test_build_index_from_a_dataset_and_a_model_object(tmp_path, tiny_bench, tiny_tokenizer):
    """A datasets.Dataset with its own column names and an in-memory model: the index equals one
    built by the file path from the same documents and the saved model."""
    from datasets import Dataset
    from conftest import make_tiny_model

    import tracer
    from tracer.index.build import build_index as build_from_files
    from tracer.model.loading import read_checkpoint

    docs = tiny_bench.documents[:40]
    ds = Dataset.from_dict({"doc_id": [d.doc_id for d in docs], "content": [d.text for d in docs]})
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    out = tracer.build_index(ds, model, tokenizer=tiny_tokenizer, out=tmp_path / "idx",
                             columns={"id": "doc_id", "text": "content"}, config=_cfg(), progress=False)
    saved = tmp_path / "idx.model"
    assert (saved / "checkpoint-0" / "config.json").is_file() and (saved / "tokenizer").is_dir()
    ref = tmp_path / "ref"
    plain = [tracer.Document(d.doc_id, d.text) for d in docs]
    build_from_files(plain, [read_checkpoint(saved / "checkpoint-0")], ref, _cfg(),
                     tokenizer_path=saved / "tokenizer", progress=False)
    q = tiny_bench.queries[0]
    with tracer.Tracer.open(out) as a, tracer.Tracer.open(ref) as b:
        assert a.store.doc_ids == [d.doc_id for d in docs]
        for m in ("tracin", "influence", "bm25"):
            ra = a.trace(q.prompt, q.target, method=m, candidates="full", k=40)
            rb = b.trace(q.prompt, q.target, method=m, candidates="full", k=40)
            assert [h.doc_id for h in ra.hits] == [h.doc_id for h in rb.hits]
            np.testing.assert_array_equal([h.score for h in ra.hits], [h.score for h in rb.hits])


def test_build_index_from_trainer_checkpoints_and_rows(tmp_path, hf_trainer_run, tiny_bench):
    """Hugging Face Trainer checkpoints (earlier ones via ``checkpoints=``) and a list of dicts without ids."""
    import tracer
    from tracer.index.store import IndexStore

    run, _ = hf_trainer_run
    rows = [{"text": d.text} for d in tiny_bench.documents[:30]]
    out = tracer.build_index(rows, run / "checkpoint-6", checkpoints=[run / "checkpoint-3"], out=tmp_path / "i",
                             config=_cfg(), progress=False)
    m = IndexStore.open(out).manifest
    assert [c["step"] for c in m["checkpoints"]] == [3, 6]
    assert all(0 < c["lr"] < 3e-3 for c in m["checkpoints"])  # from trainer_state.json, not the 1.0 default
    with tracer.Tracer.open(out) as t:
        assert t.store.doc_ids[:3] == ["0", "1", "2"]
        r = t.trace("Paris is in", " France", method="tracin_cos", candidates="full", k=5)
        assert len(r.hits) == 5 and all(np.isfinite(h.score) for h in r.hits)


def test_build_index_bad_inputs(tmp_path, tiny_run):
    import tracer

    with pytest.raises(DataError, match=r"unknown field\(s\) \['body'\]"):
        tracer.build_index([{"id": "a", "text": "x"}], tiny_run, out=tmp_path / "x", columns={"body": "text"})
    with pytest.raises(DataError, match="corpus is empty"):
        tracer.build_index([], tiny_run, out=tmp_path / "x")
    with pytest.raises(DataError, match="no column 'doc' \\(mapped to 'id'\\)"):
        tracer.build_index([{"text": "x"}], tiny_run, out=tmp_path / "x", columns={"id": "doc"})
    with pytest.raises(DataError, match="corpus must be a path, a datasets.Dataset or an iterable"):
        tracer.build_index(42, tiny_run, out=tmp_path / "x")
    with pytest.raises(DataError, match="duplicate document id 'a'"):
        tracer.build_index([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], tiny_run, out=tmp_path / "x")


def _query_with_proponents(bench):
    return next(q for q in bench.queries if q.proponents)


def test_trace_a_query_marks_its_proponents(tiny_index, tiny_bench):
    from tracer import Query, Tracer

    q = _query_with_proponents(tiny_bench)
    with Tracer.open(tiny_index) as t:
        r = t.trace(q, method="bm25", k=10)
        assert r.query == q
        assert [h.proponent for h in r.hits] == [h.doc_id in q.proponents for h in r.hits]
        assert any(h.proponent for h in r.hits)  # BM25 finds this fact's proponents on the tiny benchmark
        assert all(h.proponent is None for h in t.trace(q.prompt, q.target, method="bm25").hits)
        batch = t.trace_batch([q, Query("plain", q.prompt, q.target)], method="bm25", k=10)
        assert [h.proponent for h in batch[0].hits] == [h.proponent for h in r.hits]
        assert all(h.proponent is None for h in batch[1].hits)
        with pytest.raises(InvalidRequestError, match="target comes from the Query"):
            t.trace(q, q.target)
        with pytest.raises(InvalidRequestError, match="needs a target"):
            t.trace(q.prompt)


@pytest.mark.parametrize("candidates", ["full", "bm25"])
def test_opponents_are_the_lowest_scores(tiny_index, tiny_bench, candidates):
    """Opponents equal the bottom of a brute-force ranking of the same rows, most negative first."""
    from tracer import Tracer

    q = tiny_bench.queries[1]
    with Tracer.open(tiny_index) as t:
        n = t.n_documents if candidates == "full" else 100
        everything = t.trace(q.prompt, q.target, method="tracin", candidates=candidates, k=n, num_candidates=100)
        r = t.trace(q.prompt, q.target, method="tracin", candidates=candidates, k=3, opponents=7,
                    num_candidates=100)
        assert [h.doc_id for h in r.hits] == [h.doc_id for h in everything.hits[:3]]
        tail = everything.hits[::-1][:7]  # brute force: lowest score first
        assert [h.doc_id for h in r.opponents] == [h.doc_id for h in tail]
        np.testing.assert_allclose([h.score for h in r.opponents], [h.score for h in tail], rtol=1e-6)
        assert r.opponents[0].score < 0 and [h.rank for h in r.opponents] == list(range(1, 8))
        assert t.trace(q.prompt, q.target, method="tracin", candidates=candidates).opponents == ()
        with pytest.raises(InvalidRequestError, match="opponents must be an integer >= 0"):
            t.trace(q.prompt, q.target, opponents=-1)


def test_result_to_pandas(tiny_index, tiny_bench):
    import pandas as pd

    from tracer import Tracer

    q = _query_with_proponents(tiny_bench)
    with Tracer.open(tiny_index) as t:
        r = t.trace(q, method="tracin", k=4, opponents=2, include_text=True)
    df = r.to_pandas()
    assert list(df["kind"]) == ["hit"] * 4 + ["opponent"] * 2
    assert list(df["doc_id"]) == [h.doc_id for h in r.hits + r.opponents]
    assert list(df["proponent"]) == [h.proponent for h in r.hits + r.opponents]
    assert (df["query_id"] == q.query_id).all() and df["text"].notna().all()
    assert isinstance(pd.concat([df, df]), pd.DataFrame)
