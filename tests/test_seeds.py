"""Stability over projection seeds: gradient-only sibling indexes, and hits widened over checkpoints x seeds."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from scipy.stats import t as student

from tracer.errors import InvalidRequestError
from tracer.featurize.views import RAW
from tracer.index import seeds as S

K, N_CAND = 5, 20


@pytest.fixture(scope="module")
def seeded_index(tmp_path_factory, tiny_bench, tiny_run):
    """A tiny index with a random (Gaussian) projection, so the seed matters, and siblings for seeds 1 and 2."""
    from conftest import build_tiny_index

    root = build_tiny_index(tmp_path_factory.mktemp("seeded") / "g", tiny_bench, tiny_run,
                            featurize={"projection": "gaussian"}, influence=False, trak=False, embeddings=False)
    record = S.build_seeds(root, [0, 2, 1, 2], progress=False)  # 0 is the index's own seed: dropped
    return root, record


def _views(store, retriever, q, rows):
    """``(C, n)`` brute-force per-checkpoint TracIn scores of ``rows`` (C * lr_c * <g_q, g_z>) in one index."""
    feats = retriever.features([(q.prompt, q.target)], ["tracin"], "full")[0]
    cks = store.checkpoints
    return np.stack([len(cks) * c["lr"] * (np.asarray(store.features(RAW, ci)[rows], dtype=np.float64)
                                           @ feats.grads[RAW][ci].astype(np.float64)) for ci, c in enumerate(cks)])


def test_build_seeds_records_gradient_only_siblings(seeded_index):
    from tracer.index.manifest import read_manifest

    root, record = seeded_index
    main = read_manifest(root)
    assert record["seeds"] == [1, 2] and record["main_seed"] == 0
    assert record["index_fingerprint"] == main["fingerprint"]
    assert json.loads((root / S.SEEDS_FILE).read_text()) == record
    for s in (1, 2):
        m = read_manifest(root / record["dirs"][str(s)])
        assert m["fingerprint"] == record["fingerprints"][str(s)]
        assert m["featurize"]["seed"] == s and m["config"]["seed"] == s
        assert not any(m["config"][x] for x in ("influence", "trak", "embeddings", "bm25"))
        assert m["corpus"]["fingerprint"] == main["corpus"]["fingerprint"]
        a = np.load(root / "features" / "raw" / "ckpt0.npy", mmap_mode="r")
        b = np.load(root / record["dirs"][str(s)] / "features" / "raw" / "ckpt0.npy", mmap_mode="r")
        assert a.shape == b.shape and not np.array_equal(a, b)  # another projection
    before = (root / record["dirs"]["1"] / "manifest.json").stat().st_mtime_ns
    assert S.build_seeds(root, [1], progress=False) == record  # kept, not rebuilt
    assert (root / record["dirs"]["1"] / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(InvalidRequestError, match="other than the index's own"):
        S.build_seeds(root, [0])


def test_hits_are_widened_over_checkpoints_and_seeds(seeded_index, tiny_bench, tmp_path, caplog):
    from tracer import Tracer
    from tracer.index.store import IndexStore
    from tracer.retrieval import Retriever

    root, record = seeded_index
    qs = [q for q in tiny_bench.queries if q.proponents][:3]
    with Tracer.open(root) as t:
        sibs = [Retriever(IndexStore.open(root / record["dirs"][str(s)])) for s in record["seeds"]]
        results = t.trace_batch(qs, method="tracin", k=K, num_candidates=N_CAND)
        one = t.trace(qs[0].prompt, qs[0].target, method="tracin", k=K, num_candidates=N_CAND)
        assert [h.topk_fraction for h in one.hits] == [h.topk_fraction for h in results[0].hits]
        for q, res in zip(qs, results):
            feats = t.retriever.features([(q.prompt, q.target)], ["tracin"], "bm25")[0]
            cand = t.retriever.candidates(feats, "bm25", N_CAND)
            views = [_views(t.store, t.retriever, q, cand)] + [_views(r.store, r, q, cand) for r in sibs]
            allv = np.concatenate(views)  # (3 C, n_candidates)
            tops = [set(cand[np.lexsort((cand, -v))[:K]].tolist()) for v in allv]
            for h in res.hits:
                row = t.store.row_of[h.doc_id]
                vals = allv[:, int(np.nonzero(cand == row)[0][0])]
                assert h.topk_fraction == pytest.approx(sum(row in s for s in tops) / len(tops))
                assert h.stable == all(row in s for s in tops)
                half = student.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
                tol = 1e-4 * np.abs(allv).max()  # the kernel's float32 products against float64 here
                assert h.interval == pytest.approx((vals.mean() - half, vals.mean() + half), abs=tol)
                assert h.checkpoint_scores == pytest.approx(tuple(views[0][:, int(np.nonzero(cand == row)[0][0])]),
                                                            abs=tol)  # the main seed's, as before
    # A record made for another build of the index is ignored, with a warning: checkpoints only.
    other = tmp_path / "other"
    shutil.copytree(root, other)
    rec = json.loads((other / S.SEEDS_FILE).read_text())
    (other / S.SEEDS_FILE).write_text(json.dumps({**rec, "index_fingerprint": "another"}))
    with caplog.at_level(logging.WARNING, logger="tracer.index.seeds"), Tracer.open(other) as t2:
        r2 = t2.trace(qs[0].prompt, qs[0].target, method="tracin", k=K, num_candidates=N_CAND)
    n_ck = len(r2.hits[0].checkpoint_scores)
    assert all(round(h.topk_fraction * n_ck, 9) == round(h.topk_fraction * n_ck) for h in r2.hits)
    assert "made for another build" in caplog.text
    # A sibling that cannot be opened disables the siblings (one warning) instead of failing the queries.
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / record["dirs"][str(record["seeds"][0])])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracer.index.seeds"), Tracer.open(broken) as t3:
        r3 = [t3.trace(q.prompt, q.target, method="tracin", k=K, num_candidates=N_CAND) for q in qs[:2]]
    assert [h.doc_id for h in r3[0].hits] == [h.doc_id for h in one.hits]
    n_ck = len(r3[0].hits[0].checkpoint_scores)
    assert all(round(h.topk_fraction * n_ck, 9) == round(h.topk_fraction * n_ck) for r in r3 for h in r.hits)
    assert caplog.text.count("seed siblings of") == 1


def test_eval_records_the_widened_stability(seeded_index, tiny_bench):
    from tracer import Tracer
    from tracer.evaluation import EvalConfig, run_evaluation

    root, _ = seeded_index
    qs = [q for q in tiny_bench.queries if q.proponents][:3]
    with Tracer.open(root) as t:
        res = run_evaluation(t.retriever, qs, EvalConfig(methods=("bm25", "tracin"), num_candidates=N_CAND, n_boot=50))
        traced = t.trace_batch(qs, method="tracin", k=10, num_candidates=N_CAND)
    assert res.report["stability"]["views"] == {"tracin": 9}  # 3 checkpoints x 3 seeds
    assert res.report["details"]["stability_views"] == {"tracin": 9}
    for q, r in zip(qs, traced):
        got = res.report["details"]["stability"]["tracin"][q.query_id]
        assert [g[0] for g in got] == pytest.approx([h.topk_fraction for h in r.hits], rel=1e-5)
        assert [g[1] for g in got] == [h.stable for h in r.hits]


def test_widen_by_hand():
    main = np.array([[1.0, 3.0], [2.0, 2.0]])  # 2 hits x 2 checkpoints
    frac = np.array([1.0, 0.5])  # hit 0 in both main top-k, hit 1 in one
    seed = np.array([[5.0, 0.0, 4.0], [0.0, 1.0, 9.0]])  # one seed, 2 checkpoints, 3 candidates
    got_frac, lo, hi = S.widen(main, frac, [seed], np.array([0, 1]), k=1)
    # top-1 of the seed's checkpoints: column 0, then column 2: hit 0 (col 0) gains 1, hit 1 (col 1) none
    assert got_frac.tolist() == [3 / 4, 1 / 4]
    vals = np.array([1.0, 3.0, 5.0, 0.0])
    half = student.ppf(0.975, 3) * vals.std(ddof=1) / 2
    assert (lo[0], hi[0]) == pytest.approx((vals.mean() - half, vals.mean() + half))


def test_build_flag_builds_the_siblings(tiny_bench, tiny_run, tmp_path, capsys):
    from tracer.cli.main import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text}) + "\n" for d in tiny_bench.documents))
    base = ["build", "--corpus", str(corpus), "--model", str(tiny_run), "--projection", "gaussian", "--k-in", "8",
            "--k-out", "8", "--no-trak", "--no-influence", "--no-embeddings"]
    assert main(base + ["--out", str(tmp_path / "bad"), "--stability-seeds", "0"]) == 2
    assert "--stability-seeds needs a seed other than --seed (0)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before building anything
    assert main(base + ["--out", str(tmp_path / "idx"), "--stability-seeds", "3"]) == 0
    assert "stability seeds: 3" in capsys.readouterr().out
    rec = json.loads((tmp_path / "idx" / S.SEEDS_FILE).read_text())
    assert rec["seeds"] == [3] and (tmp_path / "idx" / rec["dirs"]["3"] / "manifest.json").is_file()
    assert main(["info", str(tmp_path / "idx"), "--verify"]) == 0  # the siblings do not upset the main index
