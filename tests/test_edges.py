"""Rough edges of the commands (issue #15): one-line errors, warnings with counts, seeded sampling,
one progress bar per stage, report file modes, ``-k`` and method names alike in-process and over gRPC."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tracer.cli.main import main
from tracer.errors import DataError

ROWS = [{"id": f"d{i}", "text": f"document number {i} é"} for i in range(40)]
QUERY_ROWS = [{"id": f"q{i}", "prompt": f"prompt {i}", "target": " t"} for i in range(40)]


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in rows)


def _bad_files(tmp_path: Path, rows: list[dict]) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected one-line message) for each kind of unreadable file."""
    data = _jsonl(rows)
    bad_utf8 = tmp_path / "latin1.jsonl"
    lines = data.split(b"\n")
    lines[2] = lines[2].replace(b"\xc3\xa9", b"\xe9") if b"\xc3\xa9" in lines[2] else lines[2] + b"\xff"
    bad_utf8.write_bytes(b"\n".join(lines))
    bad_array = tmp_path / "array.json"
    bad_array.write_bytes(b'[\n{"id": "a", "text": "x"},\n{"id": "b", "text": "\xff"}\n]\n')
    truncated = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(data, mtime=0)
    truncated.write_bytes(whole[: len(whole) // 2])
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(data)
    return {
        "utf8": (bad_utf8, f"{bad_utf8}:3: not valid UTF-8 (byte 0x"),
        "utf8-array": (bad_array, f"{bad_array}:3: not valid UTF-8 (byte 0xff at byte 22 of the line)"),
        "truncated-gz": (truncated, f"{truncated}: truncated gzip file (compressed data ends after line "),
        "not-gzip": (not_gzip, f"{not_gzip}: damaged gzip file at its start (Not a gzipped file"),
    }


@pytest.mark.parametrize("kind", ["utf8", "utf8-array", "truncated-gz", "not-gzip"])
def test_unreadable_corpus_and_queries_raise_one_data_error(tmp_path, kind):
    from tracer.corpus import load_corpus, load_queries

    path, message = _bad_files(tmp_path, ROWS)[kind]
    with pytest.raises(DataError) as info:
        load_corpus(path)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    if kind != "utf8-array":  # queries are JSON lines only
        (tmp_path / "q").mkdir()
        qpath, qmessage = _bad_files(tmp_path / "q", QUERY_ROWS)[kind]
        with pytest.raises(DataError) as info:
            load_queries(qpath)
        assert str(info.value).startswith(qmessage)


@pytest.mark.parametrize("kind", ["utf8", "truncated-gz"])
def test_cli_reports_unreadable_files_in_one_line(tmp_path, capsys, monkeypatch, tiny_run, tiny_index, kind):
    monkeypatch.chdir(tmp_path)
    path, message = _bad_files(tmp_path, ROWS)[kind]
    assert main(["build", "--corpus", str(path), "--model", str(tiny_run), "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tracer build: error: {err.split('error: ', 1)[1]}" and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    (tmp_path / "q").mkdir()
    qpath, qmessage = _bad_files(tmp_path / "q", QUERY_ROWS)[kind]
    assert main(["eval", "--index", str(tiny_index), "--queries", str(qpath), "--slice", "all",
                 "--methods", "bm25", "--out", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert qmessage in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- eval: counts, sampling, bars
class _Bar:
    made: list[_Bar] = []

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        _Bar.made.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def test_stage_bars_make_one_bar_per_stage():
    from tracer.cli.cmd_eval import StageBars

    _Bar.made = []
    bars = StageBars(_Bar)
    for done in (32, 64, 70):
        bars(done, 70, "rank")
    for done in range(1, 21):
        bars(done, 20, "tail_patch")
    bars.close()
    assert [(b.desc, b.total, b.n, b.closed) for b in _Bar.made] == [
        ("eval rank", 70, 70, True), ("eval tail_patch", 20, 20, True)]


def _queries(n_per_relation: dict[str, int]) -> list:
    from tracer.types import Query

    return [Query(f"{rel}-{i}", "p", " t", relation=rel or None)
            for rel, n in n_per_relation.items() for i in range(n)]


def test_max_queries_is_a_seeded_sample_stratified_by_relation():
    from collections import Counter

    from tracer.cli.cmd_eval import select_queries, stratified_sample

    queries = _queries({"born_in": 50, "capital_of": 30, "works_for": 15, "": 5})  # 100, file order by relation
    sample = stratified_sample(queries, 20, seed=0)
    assert Counter(q.relation for q in sample) == {"born_in": 10, "capital_of": 6, "works_for": 3, None: 1}
    assert sample == sorted(sample, key=queries.index)  # file order kept
    assert sample == stratified_sample(queries, 20, seed=0)  # deterministic
    assert sample != stratified_sample(queries, 20, seed=1)
    assert [q.query_id for q in sample[:10]] != [f"born_in-{i}" for i in range(10)]  # not the first lines
    odd = stratified_sample(queries, 7, seed=3)  # 3.5, 2.1, 1.05, 0.35 -> largest remainders fill the 7th
    assert Counter(q.relation for q in odd) == {"born_in": 4, "capital_of": 2, "works_for": 1}
    assert stratified_sample(queries, 500, seed=0) == queries
    assert select_queries(queries, "all", None, 20) == sample  # --seed defaults to 0
    with pytest.raises(DataError, match="--max-queries must be >= 1, got 0"):
        select_queries(queries, "all", None, 0)


def _eval_queries(tmp_path: Path, bench) -> tuple[Path, list]:
    """Five labelled queries: one loses its proponents, two name ids the index lacks (3 ids in all)."""
    qs = [q for q in bench.queries if q.proponents][:5]
    rows = [q.to_dict() for q in qs]
    rows[0]["proponents"] = []
    rows[1]["proponents"] = [*rows[1]["proponents"], "ghost-1", "ghost-2"]
    rows[2]["proponents"] = ["ghost-1", "ghost-3"]
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, qs


def _check_eval_output(out: str, records: list, queries_path: Path) -> None:
    import logging

    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    dropped = [w for w in warnings if "no proponents" in w]
    unknown = [w for w in warnings if "are not in index" in w]
    assert len(dropped) == 1 and dropped[0].startswith("1 "), warnings
    assert len(unknown) == 1 and unknown[0].startswith("3 proponent ids in "), warnings
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| bm25 |")]
    assert [cells[3].strip() for cells in rows] == ["4"]  # the table's n
    assert "eval: 4 queries (all slice, 1 without proponents left out)" in out  # and the footer agree


def test_eval_warns_about_unknown_proponents_and_dropped_queries(tmp_path, capsys, caplog, tiny_index,
                                                                 tiny_bench, monkeypatch):
    import tqdm.auto

    path, _ = _eval_queries(tmp_path, tiny_bench)
    _Bar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    assert main(["eval", "--index", str(tiny_index), "--queries", str(path), "--slice", "all", "--methods", "bm25",
                 "--tail-patch", "--tail-patch-queries", "3", "--out", str(tmp_path / "r")]) == 0
    _check_eval_output(capsys.readouterr().out, caplog.records, path)
    assert [(b.desc, b.n) for b in _Bar.made] == [("eval rank", 4), ("eval tail_patch", 3)]
    settings = json.loads((tmp_path / "r" / "metrics.json").read_text())["settings"]
    assert (settings["n_queries"], settings["n_queries_without_proponents"], settings["n_unknown_proponents"]) == (
        4, 1, 3)


def test_eval_over_grpc_warns_the_same(tmp_path, capsys, caplog, tiny_index, tiny_bench):
    from tracer.service.server import ServiceConfig, create_server
    from tracer.tracer import Tracer

    path, _ = _eval_queries(tmp_path, tiny_bench)
    with Tracer.open(tiny_index) as tracer:
        srv, port = create_server(ServiceConfig(port=0), {"tiny": tracer})
        srv.start()
        try:
            assert main(["eval", "--server", f"127.0.0.1:{port}", "--index", "tiny", "--queries", str(path),
                         "--slice", "all", "--methods", "bm25", "--out", str(tmp_path / "r")]) == 0
        finally:
            srv.stop(0).wait(5)
    client_side = [r for r in caplog.records if r.name == "tracer.cli.cmd_eval"]
    _check_eval_output(capsys.readouterr().out, client_side, path)


# ----------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_report_and_run_files_get_the_mode_of_ordinary_files(tmp_path, umask, mode):
    import os
    import stat

    from tracer.corpus import write_jsonl
    from tracer.metrics.report import write_report
    from tracer.metrics.trec import write_qrels, write_run

    report = {"title": "t", "settings": {}, "methods": {"bm25": {"candidates": "bm25", "all": {
        "n": 1, "mrr": {"mean": 1.0, "lo": 1.0, "hi": 1.0}}}}}
    old = os.umask(umask)
    try:
        paths = list(write_report(tmp_path / "r", report).values())
        paths.append(write_run(tmp_path / "r" / "runs" / "bm25.trec", {"q1": [("d1", 1.0)]}, tag="t"))
        paths.append(write_qrels(tmp_path / "r" / "qrels.txt", {"q1": {"d1"}}))
        write_jsonl(tmp_path / "c.jsonl.gz", [{"id": "a", "text": "x"}])
        paths.append(tmp_path / "c.jsonl.gz")
    finally:
        os.umask(old)
    assert {Path(p).name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths} == {
        Path(p).name: oct(mode) for p in paths}
    assert len(paths) == 7


def test_default_file_mode_without_proc(monkeypatch, tmp_path):
    import os

    from tracer import _filemode

    old = os.umask(0o077)
    try:
        assert _filemode.default_file_mode() == 0o600
        monkeypatch.setattr(_filemode, "PROC_STATUS", str(tmp_path / "missing"))
        assert _filemode.default_file_mode() == 0o600
        assert os.umask(0o077) == 0o077  # the fallback put the umask back
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- build progress
class _StageBar:
    made: list[_StageBar] = []

    def __init__(self, iterable: object = None, total: int | None = None, desc: str = "", disable: bool = False,
                 **_: object) -> None:
        self.iterable, self.total, self.desc, self.n, self.closed = iterable, total, desc, 0, False
        if not disable:  # libraries' own bars (bm25s) are created disabled
            _StageBar.made.append(self)

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from self.iterable  # type: ignore[misc]

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *a: object, **kw: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> _StageBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_every_build_stage_shows_progress(tmp_path, monkeypatch, caplog, tiny_bench, tiny_run):
    import logging

    import tqdm.auto

    from tracer.featurize.config import FeaturizeConfig
    from tracer.index.build import IndexConfig, build_index
    from tracer.model.loading import load_checkpoints

    _StageBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _StageBar)
    cfg = IndexConfig(featurize=FeaturizeConfig(k_in=8, k_out=8, batch_size=16), trak_dim=64)
    with caplog.at_level(logging.INFO, logger="tracer.index"):
        build_index(tiny_bench.documents, load_checkpoints(tiny_run), tmp_path / "idx", cfg, progress=True)
    n_docs, n_ck = len(tiny_bench.documents), len(load_checkpoints(tiny_run))
    bars = {b.desc: b for b in _StageBar.made}
    assert len(bars) == len(_StageBar.made)  # one bar per stage (and per checkpoint where a stage loops)
    assert {"moments", "gradient FAISS", "TRAK", "embeddings"} <= set(bars)
    assert any(d.startswith("gradients ckpt") for d in bars)
    assert (bars["gradient FAISS"].total, bars["TRAK"].total, bars["embeddings"].total) == (
        n_docs, n_docs * n_ck, n_docs)
    assert all(b.n == b.total and b.closed for b in _StageBar.made), [
        (b.desc, b.n, b.total, b.closed) for b in _StageBar.made]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"training FAISS {cfg.faiss_factory} on ") for m in messages)
    assert any(m.startswith(f"trained FAISS {cfg.faiss_factory} in ") for m in messages)
    assert "stage bm25 started" in messages and any(m.startswith("stage bm25 done in ") for m in messages)


# ----------------------------------------------------------------------------- -k beyond the candidates
def test_k_beyond_the_candidates_gives_fewer_hits_and_says_so_locally_and_over_grpc(tiny_index, tiny_bench,
                                                                                   capsys):
    from tracer.service.server import ServiceConfig, create_server
    from tracer.tracer import Tracer

    q = tiny_bench.queries[0]
    args = ["--prompt", q.prompt, "--target", q.target, "--method", "tracin", "-k", "50",
            "--num-candidates", "6", "--json"]
    note = ("tracer query: note: 6 hits, fewer than -k 50: only 6 bm25 candidates were reranked "
            "(raise --num-candidates or use --candidates full)\n")
    assert main(["query", "--index-dir", str(tiny_index), *args]) == 0
    local = capsys.readouterr()
    assert len(json.loads(local.out)["hits"]) == 6 and local.err.endswith(note)
    with Tracer.open(tiny_index) as tracer:
        srv, port = create_server(ServiceConfig(port=0), {"tiny": tracer})
        srv.start()
        try:
            assert main(["query", "--server", f"127.0.0.1:{port}", *args]) == 0
        finally:
            srv.stop(0).wait(5)
    remote = capsys.readouterr()
    assert [h["doc_id"] for h in json.loads(remote.out)["hits"]] == [h["doc_id"] for h in json.loads(local.out)["hits"]]
    assert remote.err.endswith(note)
    assert main(["query", "--index-dir", str(tiny_index), *args[:6], "-k", "3", "--json"]) == 0
    assert "note:" not in capsys.readouterr().err  # enough candidates: no note


# ----------------------------------------------------------------------------- third-party noise (already quiet)
def test_transformers_loading_bars_are_off_in_every_command(tiny_index, tiny_bench, capsys):
    from transformers.utils import logging as hf_logging

    q = tiny_bench.queries[0]
    hf_logging.enable_progress_bar()
    try:
        assert main(["query", "--index-dir", str(tiny_index), "--prompt", q.prompt, "--target", q.target,
                     "--method", "tracin", "-k", "2"]) == 0
        assert not hf_logging.is_progress_bar_enabled()
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        hf_logging.disable_progress_bar()


def test_eval_tail_patch_lr_is_used_recorded_and_checked(tmp_path, capsys, tiny_index, tiny_bench):
    """``--tail-patch-lr``: the step the deltas are taken with (a smaller step moves log p less), recorded in the
    report's settings; 0 and ``--server`` are refused with one line."""
    path, _ = _eval_queries(tmp_path, tiny_bench)
    deltas = {}
    for lr in ("1e-2", "1e-4"):
        out = tmp_path / f"r{lr}"
        assert main(["eval", "--index", str(tiny_index), "--queries", str(path), "--slice", "all", "--methods",
                     "bm25", "--tail-patch", "--tail-patch-queries", "3", "--tail-patch-lr", lr,
                     "--out", str(out)]) == 0
        report = json.loads((out / "metrics.json").read_text())
        assert report["settings"]["tail_patch_lr"] == float(lr)
        deltas[lr] = abs(report["methods"]["bm25"]["tail_patch"]["mean"])
    assert 0 < deltas["1e-4"] < deltas["1e-2"]
    capsys.readouterr()
    assert main(["eval", "--index", str(tiny_index), "--queries", str(path), "--slice", "all", "--tail-patch",
                 "--tail-patch-lr", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "tail_patch_lr must be > 0" in capsys.readouterr().err
    assert main(["eval", "--server", "127.0.0.1:1", "--index", "tiny", "--queries", str(path), "--slice", "all",
                 "--tail-patch-lr", "1e-4", "--out", str(tmp_path / "bad")]) == 2
    assert "--tail-patch-lr is in-process only" in capsys.readouterr().err
