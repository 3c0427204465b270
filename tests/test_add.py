"""``tracer add``: growing an index equals a from-scratch build of the union (same statistics policy),
and a crash at any point leaves the old index valid.

Equality is byte for byte: every file the manifest lists has the same sha256 in the grown index and
in ``build_index(union, basis=BasisPin(...))`` (the basis pinned as ``add`` pins it), and ``trace``
returns the same (doc_id, score) lists. This holds because ``add`` featurizes the last, partly old
shard again and embeds in batches aligned with the full build's. The one exception: adding documents
*updates* the sums over rows (the moments ``E[g^2]`` and the TRAK Grams) from the new rows instead
of summing every row again, so those files agree to float64 summation order (checked to 1e-9
relative here; everything computed from them is still byte-identical). Adding documents pins the
gradient FAISS space (coordinates and trained quantizer) to the original build's; the reference
build pins the same one (``BasisPin.faiss``), and its codes of every row equal the grown index's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tracer.errors import DataError
from tracer.featurize.config import FeaturizeConfig
from tracer.index.build import BasisPin, IndexConfig, build_index
from tracer.index.grow import add_checkpoint, add_documents
from tracer.index.manifest import read_manifest
from tracer.model.loading import load_checkpoints

N_OLD = 150  # of the tiny benchmark's 214 documents: not a multiple of the shard (64) or batch (16) size
METHODS = ("tracin", "tracin_cos", "influence", "trak", "embedding", "bm25")


def _cfg() -> IndexConfig:
    return IndexConfig(featurize=FeaturizeConfig(dim=512, batch_size=16), shard_size=64, trak_dim=64)


@pytest.fixture(autouse=True)
def _small_embed_batches(monkeypatch):
    """Embedding batches of 32 rows, so the 150 old rows hold whole batches and the seeded prefix is used;
    streamed blocks of 64 rows, so adding keeps two whole blocks of old TRAK rows and sketches the third
    (rows 128-149 old, then new) again, subtracting its old rows' part from the seeded Gram."""
    monkeypatch.setattr("tracer.index.stages.EMBED_BATCH", 32)
    monkeypatch.setattr("tracer.index.grow.EMBED_BATCH", 32)
    monkeypatch.setattr("tracer.index.stages.CHUNK", 64)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bench, tiny_run):
    """``old``: the first N_OLD documents at the first two checkpoints (copied per test: add mutates)."""
    root = tmp_path_factory.mktemp("add")
    cks = load_checkpoints(tiny_run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tracer.index.stages.EMBED_BATCH", 32)
        mp.setattr("tracer.index.stages.CHUNK", 64)
        build_index(tiny_bench.documents[:N_OLD], cks[:2], root / "old", _cfg(), progress=False)
    return root


def _copy(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built / "old", tmp_path / "idx")
    return tmp_path / "idx"


def _summed(rel: str) -> bool:
    """Files ``add_documents`` updates from the new rows (sums over rows): moments and TRAK Grams."""
    return rel.startswith("moments/") or (rel.startswith("trak/") and "xtx" in rel)


def _assert_same_but_summation_order(got_root: Path, want_root: Path) -> None:
    """Every file byte-identical, except the summed statistics, which agree to 1e-9 relative (and do differ
    only where float64 summation order can: same shape, dtype and, nearly, values)."""
    got, want = _files(got_root), _files(want_root)
    assert sorted(got) == sorted(want)
    differ = [r for r in got if got[r] != want[r]]
    assert [r for r in differ if not _summed(r)] == []
    for rel in sorted(r for r in got if _summed(r)):
        a, b = np.load(got_root / rel), np.load(want_root / rel)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float64, rel
        scale = np.abs(b).max()
        assert scale > 0 and np.abs(a - b).max() <= 1e-9 * scale, (rel, np.abs(a - b).max(), scale)


def _files(root: Path) -> dict[str, str]:
    return {rel: meta["sha256"] for rel, meta in read_manifest(root, verify=True)["files"].items()}


def _rankings(root: Path, queries) -> list:
    from tracer import Tracer

    with Tracer.open(root) as t:
        return [[(h.doc_id, h.score) for h in t.trace(q.prompt, q.target, method=m, candidates="union", k=10).hits]
                for q in queries for m in METHODS]


def test_add_documents_equals_a_scratch_build_of_the_union(built, tmp_path, tiny_bench, tiny_run):
    idx = _copy(built, tmp_path)
    new = tiny_bench.documents[N_OLD:]
    m = add_documents(idx, new, corpus_path="new.jsonl", progress=False)
    cks = load_checkpoints(tiny_run)[:2]
    ref = build_index(tiny_bench.documents, cks, tmp_path / "ref", _cfg(), progress=False,
                      basis=BasisPin(fit_pool=N_OLD, faiss=str(built / "old")))
    assert m["corpus"]["n_documents"] == len(tiny_bench.documents)
    assert m["corpus"]["fingerprint"] == ref["corpus"]["fingerprint"]
    _assert_same_but_summation_order(idx, tmp_path / "ref")
    got_r, want_r = _rankings(idx, tiny_bench.queries[:3]), _rankings(tmp_path / "ref", tiny_bench.queries[:3])
    assert [[d for d, _ in r] for r in got_r] == [[d for d, _ in r] for r in want_r]  # the same hits, in order
    assert np.allclose([s for r in got_r for _, s in r], [s for r in want_r for _, s in r], rtol=1e-9, atol=0)
    assert [h["action"] for h in m["history"]] == ["build", "add_documents"]
    assert m["history"][1]["added_documents"] == len(new) and m["history"][1]["corpus"] == "new.jsonl"
    assert m["statistics"]["basis_fit_pool"] == N_OLD and m["stages"]["fit"]["fit_pool"] == N_OLD
    assert m["statistics"]["faiss_fit_rows"] == N_OLD and m["stages"]["gradient_faiss"]["pinned"]
    assert m["stages"]["gradient_faiss"]["kept_rows"] == 128  # the two whole 64-row shards of the old 150
    assert not idx.with_name("idx.partial").exists()


def _code_array(index) -> np.ndarray:
    import faiss

    return faiss.rev_swig_ptr(index.codes.data(), index.ntotal * index.code_size).copy()


def test_two_adds_equal_one_scratch_build_and_keep_the_old_codes(built, tmp_path, tiny_bench, tiny_run):
    """Grow twice (the second add pins the grown index's space, still the original's): the same files as one
    scratch build of the union pinned to the original; the codes of the kept rows are the old bytes."""
    from tracer.index.dense import read_faiss

    idx = _copy(built, tmp_path)
    old_codes = _code_array(read_faiss(idx / "gradient.faiss", mmap=False))
    add_documents(idx, tiny_bench.documents[N_OLD:180], progress=False)
    m = add_documents(idx, tiny_bench.documents[180:], progress=False)
    assert m["statistics"]["faiss_fit_rows"] == N_OLD and m["stages"]["gradient_faiss"]["kept_rows"] == 128
    new_codes = _code_array(read_faiss(idx / "gradient.faiss", mmap=False))
    cs = len(old_codes) // N_OLD
    assert len(new_codes) == cs * len(tiny_bench.documents)
    assert new_codes[:128 * cs].tobytes() == old_codes[:128 * cs].tobytes()  # never re-encoded
    ref = build_index(tiny_bench.documents, load_checkpoints(tiny_run)[:2], tmp_path / "ref", _cfg(), progress=False,
                      basis=BasisPin(fit_pool=N_OLD, faiss=str(built / "old")))
    assert ref["statistics"]["faiss_fit_rows"] == N_OLD
    _assert_same_but_summation_order(idx, tmp_path / "ref")


def test_an_index_that_cannot_keep_a_prefix_is_refilled_in_the_pinned_space(tmp_path, tiny_bench, tiny_run):
    """HNSW cannot drop the re-featurized rows, so the add re-encodes every row into the original space:
    still equal to the pinned scratch build."""
    import dataclasses

    cfg = dataclasses.replace(_cfg(), faiss_factory="HNSW8")
    cks = load_checkpoints(tiny_run)[:2]
    build_index(tiny_bench.documents[:N_OLD], cks, tmp_path / "old", cfg, progress=False)
    shutil.copytree(tmp_path / "old", tmp_path / "idx")
    m = add_documents(tmp_path / "idx", tiny_bench.documents[N_OLD:], progress=False)
    assert m["stages"]["gradient_faiss"]["pinned"] and m["stages"]["gradient_faiss"]["kept_rows"] == 0
    build_index(tiny_bench.documents, cks, tmp_path / "ref", cfg, progress=False,
                basis=BasisPin(fit_pool=N_OLD, faiss=str(tmp_path / "old")))
    _assert_same_but_summation_order(tmp_path / "idx", tmp_path / "ref")


def test_adding_changes_what_it_should(built, tmp_path, tiny_bench):
    """The check above can fail: a plain build of the union (fit sample from all 214) differs in its basis."""
    idx = _copy(built, tmp_path)
    before = _files(idx)
    add_documents(idx, tiny_bench.documents[N_OLD:], progress=False)
    after = _files(idx)
    assert after["kfac/ckpt0.safetensors"] == before["kfac/ckpt0.safetensors"]  # the basis is kept
    assert after["gradient_coords.npy"] == before["gradient_coords.npy"]  # so is the FAISS space
    assert after["gradient.faiss"] != before["gradient.faiss"]  # which holds the new rows
    assert after["moments/raw_ckpt0.npy"] != before["moments/raw_ckpt0.npy"]  # statistics are recomputed


def test_add_checkpoint_equals_a_scratch_build(built, tmp_path, tiny_bench, tiny_run):
    idx = _copy(built, tmp_path)
    old = read_manifest(idx)["stages"]["fit"]
    cks = load_checkpoints(tiny_run)
    m = add_checkpoint(idx, cks[2], progress=False)
    ref = build_index(tiny_bench.documents[:N_OLD], cks, tmp_path / "ref", _cfg(), progress=False,
                      basis=BasisPin(fit_pool=N_OLD, widths=old["widths"], energy_kept=old["energy_kept"]))
    got, want = _files(idx), _files(tmp_path / "ref")
    assert sorted(got) == sorted(want)
    assert [r for r in got if got[r] != want[r]] == []
    assert len(m["checkpoints"]) == 3 and m["checkpoints"] == ref["checkpoints"]
    assert _rankings(idx, tiny_bench.queries[:3]) == _rankings(tmp_path / "ref", tiny_bench.queries[:3])
    assert m["history"][-1]["action"] == "add_checkpoint" and m["history"][-1]["checkpoints"] == 3


def test_crash_mid_featurizing_leaves_the_old_index_then_resumes(built, tmp_path, tiny_bench):
    idx = _copy(built, tmp_path)
    before = read_manifest(idx, verify=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        add_documents(idx, tiny_bench.documents[N_OLD:], progress=False, fail_after_shards=1)
    assert read_manifest(idx, verify=True) == before  # untouched and openable
    assert idx.with_name("idx.partial").is_dir()
    m = add_documents(idx, tiny_bench.documents[N_OLD:], progress=False)  # resumes the seeded partial
    clean = _copy(built, tmp_path / "clean")
    add_documents(clean, tiny_bench.documents[N_OLD:], progress=False)
    assert _files(idx) == _files(clean)
    assert m["corpus"]["n_documents"] == len(tiny_bench.documents)


@pytest.mark.parametrize("stage", ["_bm25_stage", "_fit_stage"])
def test_crash_in_a_later_stage_leaves_the_old_index(built, tmp_path, tiny_bench, tiny_run, monkeypatch, stage):
    idx = _copy(built, tmp_path)
    before = read_manifest(idx, verify=True)

    def boom(ctx):
        raise RuntimeError("simulated crash in " + stage)

    monkeypatch.setattr(f"tracer.index.build.{stage}", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        if stage == "_fit_stage":
            add_checkpoint(idx, load_checkpoints(tiny_run)[2], progress=False)
        else:
            add_documents(idx, tiny_bench.documents[N_OLD:], progress=False)
    assert read_manifest(idx, verify=True) == before


def test_refusals_are_one_line(built, tmp_path, tiny_bench, tiny_run, capsys):
    from tracer.cli.main import main

    idx = _copy(built, tmp_path)
    corpus = tmp_path / "again.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text}) + "\n"
                              for d in tiny_bench.documents[N_OLD - 2:N_OLD + 1]))
    assert main(["add", "--index", str(idx), "--corpus", str(corpus)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "2 of the 3 documents to add are already in" in err and repr(tiny_bench.documents[N_OLD - 2].doc_id) in err
    assert main(["add", "--index", str(idx), "--checkpoint", str(load_checkpoints(tiny_run)[0].path)]) == 2
    assert "already in" in capsys.readouterr().err
    with pytest.raises(DataError, match="no documents"):
        add_documents(idx, [], progress=False)
    assert read_manifest(idx, verify=True)["corpus"]["n_documents"] == N_OLD


def test_a_pinned_faiss_space_from_other_checkpoints_is_refused(built, tmp_path, tiny_bench, tiny_run):
    cks = load_checkpoints(tiny_run)
    with pytest.raises(ValueError, match="fitted on other checkpoints"):
        build_index(tiny_bench.documents, [cks[0], cks[2]], tmp_path / "ref", _cfg(), progress=False,
                    basis=BasisPin(fit_pool=N_OLD, faiss=str(built / "old")))
