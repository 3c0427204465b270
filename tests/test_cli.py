"""The command line end to end on the tiny benchmark, and its error messages."""

from __future__ import annotations

import json

import pytest

from tracer.cli.main import main


def test_synth_train_build_info_query_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--out", "bench", "--preset", "tiny"]) == 0
    assert main(["train", "--data", "bench", "--out", "run", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "acc(train templates)" in out and "learned slice" in out
    assert main(["build", "--corpus", "bench/corpus.jsonl", "--model", "run", "--out", "idx", "--k-in", "8",
                 "--k-out", "8", "--trak-dim", "64"]) == 0
    assert "bytes/example" in capsys.readouterr().out
    assert main(["info", "idx", "--verify"]) == 0
    info = capsys.readouterr().out
    assert "verified" in info and "tracin_cos" in info and "checkpoint" in info
    q = json.loads((tmp_path / "bench" / "queries.jsonl").read_text().splitlines()[0])
    assert main(["query", "--index-dir", "idx", "--prompt", q["prompt"], "--target", q["target"],
                 "--method", "tracin", "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["hits"]) == 3 and res["method"] == "tracin"
    assert main(["eval", "--index", "idx", "--queries", "bench/queries.jsonl", "--slice", "all",
                 "--methods", "bm25,tracin,random", "--fuse", "bm25+tracin", "--max-queries", "8", "--tail-patch",
                 "--tail-patch-queries", "2", "--out", "report"]) == 0
    table = capsys.readouterr().out
    assert "| bm25 |" in table and "| tracin |" in table and "tail_patch" in table and "rrf(bm25+tracin)" in table
    for f in ("metrics.json", "report.md", "report.html", "chart.png", "qrels.txt", "runs/tracin.trec"):
        assert (tmp_path / "report" / f).is_file(), f


@pytest.mark.parametrize("argv, message", [
    (["synth", "--out", "x", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--data", "nowhere", "--out", "x"], "benchmark directory not found: nowhere"),
    (["build", "--corpus", "missing.jsonl", "--checkpoint", "nowhere", "--out", "x"], "checkpoint directory not found"),
    (["info", "no-such-index"], "no index directory at no-such-index"),
    (["query", "--index-dir", "no-such-index", "--prompt", "p", "--target", " t"], "no index directory"),
])
def test_clear_errors_without_tracebacks(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unreadable_corpus_is_named(tmp_path, capsys, monkeypatch, tiny_run):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "ok"}\nnot json\n')
    assert main(["build", "--corpus", "bad.jsonl", "--model", str(tiny_run), "--out", "x"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_bad_build_flags_are_named_before_any_work(tmp_path, capsys, monkeypatch, tiny_run, tiny_bench):
    from tracer.corpus import write_jsonl

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "c.jsonl", [{"id": d.doc_id, "text": d.text} for d in tiny_bench.documents[:20]])
    base = ["build", "--corpus", "c.jsonl", "--model", str(tiny_run), "--out", "x"]
    for extra, message in ((["--faiss-factory", "Bogus9"], "bad FAISS factory string 'Bogus9'"),
                           (["--dtype", "bf16"], "FeaturizeConfig.dtype"),
                           (["--batch-size", "48"], "multiple of featurize.batch_size"),
                           (["--layers", "nothing*"], "no linear layer of the model matches")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_an_index(tmp_path, capsys, monkeypatch, tiny_run, tiny_bench):
    from tracer.corpus import write_jsonl

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "c.jsonl", [{"id": f"dok-é{i}", "text": d.text} for i, d in enumerate(tiny_bench.documents[:20])])
    args = ["build", "--corpus", "c.jsonl", "--model", str(tiny_run), "--out", "x", "--no-trak", "--no-influence"]
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["info", "x", "--verify"]) == 0
    assert not (tmp_path / "x.old").exists() and not (tmp_path / "x.partial").exists()
    from tracer import Tracer

    assert Tracer.open(tmp_path / "x").get_documents(["dok-é3"])[0].doc_id == "dok-é3"


def test_tokenizer_and_moved_checkpoints_flags(tmp_path, capsys, monkeypatch, tiny_run, tiny_index, tiny_bench):
    """A model folder without tokenizer files fails loudly; --tokenizer and --checkpoint-dir repoint query/eval."""
    import shutil

    from tracer.model.loading import load_checkpoints

    monkeypatch.chdir(tmp_path)
    q = tiny_bench.queries[0]
    moved = []
    for i, ck in enumerate(load_checkpoints(tiny_run)):
        dst = tmp_path / f"moved{i}"
        shutil.copytree(ck.path, dst)
        for f in dst.glob("tokenizer*"):
            f.unlink()
        for f in ("special_tokens_map.json", "vocab.json", "merges.txt"):
            (dst / f).unlink(missing_ok=True)
        moved.append(dst)
    base = ["query", "--index-dir", str(tiny_index), "--prompt", q.prompt, "--target", q.target, "-k", "3", "--json"]
    tok = json.loads((tiny_index / "manifest.json").read_text()).get("tokenizer")
    empty = tmp_path / "empty_tok"
    empty.mkdir()
    assert main(base + ["--tokenizer", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer" in err and "Traceback" not in err
    assert main(base + ["--tokenizer", str(moved[0])]) == 2  # transformers builds an empty tokenizer there
    err = capsys.readouterr().err
    assert "is empty" in err and len(err.strip().splitlines()) == 1
    argv = base + [a for d in moved for a in ("--checkpoint-dir", str(d))] + ["--tokenizer", tok]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3
    assert main(base + ["--checkpoint-dir", str(moved[0])]) == 2  # one of three checkpoints
    assert "built from 3 checkpoints" in capsys.readouterr().err


def test_third_party_log_noise_is_hidden_by_default(tiny_index, tiny_bench, capsys):
    import logging

    from tracer.cli.main import NOISY_LOGGERS

    q = tiny_bench.queries[0]
    argv = ["query", "--index-dir", str(tiny_index), "--prompt", q.prompt, "--target", q.target, "-k", "2"]
    try:
        assert main(argv) == 0
        assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in NOISY_LOGGERS)
        for n in NOISY_LOGGERS:
            logging.getLogger(n).setLevel(logging.NOTSET)
        assert main(["-v", *argv]) == 0  # -v leaves third-party loggers alone
        assert all(logging.getLogger(n).level == logging.NOTSET for n in NOISY_LOGGERS)
    finally:
        for n in NOISY_LOGGERS:
            logging.getLogger(n).setLevel(logging.NOTSET)
