"""Every command of README's "Command line" section runs (on the tiny preset), so the README cannot rot.

Substitutions, all mechanical: ``--preset small`` -> ``--preset tiny``; the example fact ->
a fact of the tiny benchmark; the server's port -> the one it actually bound; and, since
a 3-epoch tiny model learns no fact, ``--slice all`` with a few queries for ``eval``.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from tracer.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console", 1)[1].split("```", 1)[0]
    return [line[2:].strip() for line in block.splitlines() if line.startswith("$ tracer ")]


def _eval_extras() -> list[str]:
    """The flags the README says this test adds to ``eval``: README and test cannot disagree."""
    section = README.read_text().split("## Command line", 1)[1].split("```console", 1)[0]
    found = re.search(r"adds `([^`]+)` to `eval`", " ".join(section.split()))
    assert found, "README's Command line section must say which flags tests/test_readme.py adds to eval"
    return shlex.split(found.group(1))


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cmds = _commands()
    eval_extras = _eval_extras()
    assert len(cmds) >= 8
    server = None
    address = None
    try:
        for cmd in cmds:
            cmd = cmd.replace("--preset small", "--preset tiny")
            if "--prompt" in cmd:
                q = json.loads((tmp_path / "runs/demo/bench/queries.jsonl").read_text().splitlines()[0])
                argv = shlex.split(cmd)
                argv[argv.index("--prompt") + 1] = q["prompt"]
                argv[argv.index("--target") + 1] = q["target"]
                cmd = shlex.join(argv)
            if address:
                cmd = cmd.replace("127.0.0.1:50051", address)
            argv = shlex.split(cmd.rstrip("&").strip())[1:]
            if argv[0] == "eval":
                argv += eval_extras
            if argv[0] == "serve":
                argv = [a if a != "50051" else "0" for a in argv]
                server = subprocess.Popen([sys.executable, "-m", "tracer", *argv], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
                line = server.stdout.readline()
                assert "serving on" in line, line
                address = line.strip().rsplit(" ", 1)[-1]
                continue
            assert main(argv) == 0, cmd
            out = capsys.readouterr().out
            assert out.strip(), cmd
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
    assert (tmp_path / "runs/demo/eval-remote/report.html").is_file()
    assert re.search(r"\| tracin \|", (tmp_path / "runs/demo/eval/report.md").read_text())


def _python_block(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_python_api_runs(tiny_index, tiny_bench, tmp_path):
    from tracer.corpus import write_jsonl

    queries = tmp_path / "queries.jsonl"
    write_jsonl(queries, [q.to_dict() for q in tiny_bench.queries])
    code = _python_block("## Python API")
    code = code.replace("indexes/demo", str(tiny_index)).replace("runs/demo/bench/queries.jsonl", str(queries))
    code = code.replace('"D000001"', f'"{tiny_bench.documents[1].doc_id}"')
    scope: dict = {}
    exec(compile(code, "README.md#python-api", "exec"), scope)  # noqa: S102 - our own README
    assert len(scope["res"].hits) == 5 and "tracin_cos" in scope["report"]["methods"]


def test_readme_build_from_python_runs(tiny_run, tiny_bench, tmp_path, monkeypatch):
    """The Python API section's second block (build_index from a Dataset, trace a Query, pandas), verbatim
    but for the paths: the tiny benchmark and run stand in for the demo's."""
    from tracer.corpus import documents_to_rows, write_jsonl

    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "runs/demo/bench"
    bench.mkdir(parents=True)
    write_jsonl(bench / "corpus.jsonl", documents_to_rows(tiny_bench.documents[:60]))
    write_jsonl(bench / "queries.jsonl", [q.to_dict() for q in tiny_bench.queries])
    (tmp_path / "runs/demo/run").symlink_to(tiny_run)
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python")[2].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md#python-api-build", "exec"), scope)  # noqa: S102 - our own README
    res, q = scope["res"], scope["q"]
    assert len(res.hits) == 5 and len(res.opponents) == 3 and res.query == q
    assert [h.proponent for h in res.hits] == [h.doc_id in q.proponents for h in res.hits]
    assert len(res.to_pandas()) == 8 and (tmp_path / "indexes/from-python/manifest.json").is_file()
