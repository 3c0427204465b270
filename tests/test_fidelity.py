"""eval/fidelity.py checks itself: with the identity projection its index side must equal the exact side."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _fidelity():
    spec = importlib.util.spec_from_file_location("fidelity", Path(__file__).parents[1] / "eval" / "fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_identity_projection_has_perfect_fidelity_and_kfac_is_measured(tmp_path, tiny_run, tiny_bench):
    from tracer.model.loading import load_checkpoints

    fid = _fidelity()
    ck = load_checkpoints(tiny_run)[-1].path
    docs, queries = tiny_bench.documents[:40], tiny_bench.queries[:4]
    ident = fid.run(ck, docs, queries, tmp_path, blocks=1, dims=[0], fit_docs=40, projection="identity",
                    tokenizer=tiny_run / "tokenizer")
    assert ident["blocks"] == "last 1 of 2"
    row = ident["budgets"][0]
    assert row["spearman_min"] > 0.99 and row["top10_overlap"] >= 0.9  # int8 storage is the only error
    kfac = fid.run(ck, docs, queries, tmp_path, blocks=1, dims=[80], fit_docs=40, tokenizer=tiny_run / "tokenizer")
    assert -1 <= kfac["budgets"][0]["spearman"] <= 1 and kfac["budgets"][0]["dim"] == 80
    assert kfac["budgets"][0]["spearman"] < row["spearman"]  # 80 coordinates lose something identity keeps
