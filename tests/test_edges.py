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
