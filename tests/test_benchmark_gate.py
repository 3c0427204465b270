"""Quality gates on the small benchmark, end to end (minutes: marked ``slow`` and ``eval``).

Run before resolving work that touches training, featurizing or methods:
``.venv/bin/python -m pytest -m eval tests/test_benchmark_gate.py``. The floors sit below
the figures measured for the README with the default compact index (train-template accuracy
0.938, 357 learned queries; MRR on union@100: bm25 0.964, influence 0.733, tracin_cos 0.700,
tracin 0.576, random 0.05), so they catch regressions, not noise. (The first release's 18x
larger random-projection index had tracin_cos 0.76-0.81 and tracin 0.66-0.70, influence 0.30:
the README's benchmark section reports that trade.)
"""

from __future__ import annotations

import json

import pytest

from tracer.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.eval]


def test_small_benchmark_gates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--out", "bench", "--preset", "small"]) == 0
    assert main(["train", "--data", "bench", "--out", "run"]) == 0
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert report["train_seconds"] < 180
    assert report["checkpoints"][-1]["acc_train_template"] >= 0.90
    assert report["checkpoints"][-1]["acc_heldout_template"] >= 0.50
    assert report["n_learned"] >= 200
    assert main(["build", "--corpus", "bench/corpus.jsonl", "--model", "run", "--out", "idx"]) == 0
    assert main(["eval", "--index", "idx", "--queries", "bench/queries.jsonl", "--candidates", "union",
                 "--num-candidates", "50", "--methods", "bm25,tracin,tracin_cos,influence,random", "--out", "rep"]) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())["methods"]
    mrr = {m: v["all"]["mrr"]["mean"] for m, v in metrics.items()}
    assert mrr["bm25"] >= 0.90 and mrr["influence"] >= 0.65
    assert mrr["tracin_cos"] >= 0.63 and mrr["tracin"] >= 0.50
    assert mrr["random"] <= 0.2 and mrr["influence"] > mrr["tracin"] and mrr["tracin_cos"] > mrr["tracin"]
