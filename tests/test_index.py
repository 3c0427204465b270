"""Index store: FAISS vs brute force, crash-then-resume, corruption and mismatch errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_index
from tracer.errors import IndexCorruptError, IndexMismatchError, NotFoundError
from tracer.index import IndexStore
from tracer.index.dense import CannotKeepError, build_faiss, fill_faiss, keeps_prefix, read_faiss, search, write_faiss
from tracer.index.stages import tracin_rows


def test_gradient_faiss_equals_numpy_brute_force_within_sq8_bound(tiny_index):
    store = IndexStore.open(tiny_index)
    mats = [store.features("raw", c) for c in range(len(store.checkpoints))]
    lrs = [c["lr"] for c in store.checkpoints]
    coords = store.gradient_coords()
    assert coords.shape == (3, 256)  # default faiss_dim: the index holds 256 coordinates per checkpoint
    x = tracin_rows(mats, lrs, 0, store.n_documents, coords)
    q = x[:5] * 0.5 + x[5:10]
    scores, rows = search(store.faiss("gradient"), q, 10)
    brute = q @ x.T
    # default factory SQ8: each coordinate is rounded to 1/255 of its trained range, so a score
    # is off by at most sum_j |q_j| * range_j / 510
    span = x.max(0) - x.min(0)
    for i in range(5):
        expect = np.lexsort((np.arange(len(x)), -brute[i]))[:10]
        tol = 2 * float(np.abs(q[i]) @ span) / 510 + 1e-6
        np.testing.assert_allclose(scores[i], brute[i][expect], rtol=0, atol=tol)
        assert np.allclose(np.sort(brute[i][rows[i]]), np.sort(brute[i][expect]), rtol=0, atol=tol)


def test_gradient_coords_are_the_top_energy_coordinates(tiny_index):
    store = IndexStore.open(tiny_index)
    coords = store.gradient_coords()
    for c, ck in enumerate(store.checkpoints):
        energy = ck["lr"] * store.moments("raw", c)
        assert np.min(energy[coords[c]]) >= np.max(np.delete(energy, coords[c]))


def test_approximate_faiss_recall_against_flat():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32)).astype(np.float32)
    x = (centers[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    q = (centers[rng.integers(0, 20, 50)] + 0.3 * rng.normal(size=(50, 32))).astype(np.float32)
    flat = build_faiss(32, len(x), lambda: iter([x]), "Flat")
    ivf = build_faiss(32, len(x), lambda: iter([x]), "IVF32,Flat", train_sample=lambda: x)
    _, exact = search(flat, q, 10)
    _, approx = search(ivf, q, 10, nprobe=8)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall  # stated floor: recall@10 >= 0.9 at nprobe=8 of 32 lists


@pytest.mark.parametrize("factory", ["Flat", "SQ8", "PQ4", "IVF8,SQ8", "FlatIPPanorama4"])
def test_build_faiss_writes_what_faiss_add_writes(tmp_path, factory):
    """``build_faiss`` sizes a flat-codes index's buffer once and encodes blocks in place: the file is the one
    FAISS's own ``train`` + ``add`` writes."""
    import faiss

    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    ours = build_faiss(16, 500, lambda: iter([x[:123], x[123:400], x[400:]]), factory, train_sample=lambda: x)
    ref = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    if not ref.is_trained:
        ref.train(x)
    ref.add(x)
    write_faiss(ours, tmp_path / "ours.faiss")
    write_faiss(ref, tmp_path / "ref.faiss")
    assert (tmp_path / "ours.faiss").read_bytes() == (tmp_path / "ref.faiss").read_bytes()
    with pytest.raises(ValueError, match="holds 400 vectors, expected 500"):
        build_faiss(16, 500, lambda: iter([x[:400]]), factory, train_sample=lambda: x)
    with pytest.raises(ValueError, match="vectors"):
        build_faiss(16, 300, lambda: iter([x[:400]]), factory, train_sample=lambda: x)
    assert np.array_equal(search(ours, x[:3], 5)[1], search(ref, x[:3], 5)[1])  # and it searches (Panorama did not)


def test_a_failed_fill_leaves_a_consistent_index():
    """A block source that fails midway: the in-place code buffer is cut back to the rows written."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16)).astype(np.float32)

    def failing():
        yield x[:100]
        raise RuntimeError("the source broke")

    index = build_faiss(16, 100, lambda: iter([x[:100]]), "SQ8", train_sample=lambda: x)
    with pytest.raises(RuntimeError, match="the source broke"):
        fill_faiss(index, 300, failing)
    assert index.ntotal == 100 and index.codes.size() == 100 * index.code_size
    assert np.array_equal(search(index, x[:3], 5)[1], search(build_faiss(16, 100, lambda: iter([x[:100]]), "SQ8",
                                                                          train_sample=lambda: x), x[:3], 5)[1])


@pytest.mark.parametrize("factory", ["SQ8", "IVF8,SQ8"])
def test_refilling_a_trained_faiss_index_equals_a_fresh_one_of_the_same_training(tmp_path, factory):
    """``fill_faiss`` (``tracer add``'s pinned FAISS space): keep a prefix of a trained index's vectors, add the
    rest; the file equals filling an index of the same training with every row, and searches the same."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    first = build_faiss(16, 400, lambda: iter([x[:400]]), factory, train_sample=lambda: x[:400])
    write_faiss(first, tmp_path / "old.faiss")
    grown = fill_faiss(read_faiss(tmp_path / "old.faiss", mmap=False), 600, lambda: iter([x[256:]]), keep=256)
    fresh = fill_faiss(read_faiss(tmp_path / "old.faiss", mmap=False), 600, lambda: iter([x[:300], x[300:]]))
    write_faiss(grown, tmp_path / "grown.faiss")
    write_faiss(fresh, tmp_path / "fresh.faiss")
    assert (tmp_path / "grown.faiss").read_bytes() == (tmp_path / "fresh.faiss").read_bytes()
    assert np.array_equal(search(grown, x[:5], 10)[1], search(fresh, x[:5], 10)[1])
    with pytest.raises(ValueError, match="holds 599 vectors, expected 600"):
        fill_faiss(read_faiss(tmp_path / "old.faiss", mmap=False), 600, lambda: iter([x[257:]]), keep=256)
    hnsw = build_faiss(16, 400, lambda: iter([x[:400]]), "HNSW8")
    assert not keeps_prefix(hnsw) and keeps_prefix(first)
    with pytest.raises(CannotKeepError, match="cannot keep a prefix"):
        fill_faiss(hnsw, 600, lambda: iter([x[256:]]), keep=256)
    with pytest.raises(ValueError, match="cannot keep 401 of the 400"):
        fill_faiss(read_faiss(tmp_path / "old.faiss", mmap=False), 600, lambda: iter([x[401:]]), keep=401)


def _arrays(root: Path) -> dict[str, bytes]:
    files = sorted([*root.rglob("*.npy"), *root.rglob("*.safetensors")])
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_crash_then_resume_is_byte_identical(tmp_path, tiny_bench, tiny_run, tiny_index):
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tiny_index(tmp_path / "a", tiny_bench, tiny_run, fail_after_shards=2)
    assert not (tmp_path / "a").exists() and (tmp_path / "a.partial").exists()
    with pytest.raises(NotFoundError):
        IndexStore.open(tmp_path / "a")
    build_tiny_index(tmp_path / "a", tiny_bench, tiny_run)
    assert not (tmp_path / "a.partial").exists()
    assert _arrays(tmp_path / "a") == _arrays(tiny_index)


def test_second_writer_to_the_same_out_is_refused_with_one_line(tmp_path, tiny_bench, tiny_run, capsys):
    """D1: a build holding <out>.lock makes a second build (library or CLI) fail at once, touching nothing."""
    from tracer.cli.main import main
    from tracer.corpus import write_jsonl
    from tracer.errors import BuildLockedError
    from tracer.index.build import build_lock

    out = tmp_path / "locked"
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"id": d.doc_id, "text": d.text} for d in tiny_bench.documents])
    with build_lock(out):
        with pytest.raises(BuildLockedError, match="another tracer build .* is writing"):
            build_tiny_index(out, tiny_bench, tiny_run)
        assert not out.with_name("locked.partial").exists() and not out.exists()
        code = main(["build", "--corpus", str(corpus), "--model", str(tiny_run), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code != 0 and "another tracer build" in err and len(err.splitlines()) == 1, err
    # released: the same build now runs
    build_tiny_index(out, tiny_bench, tiny_run, trak=False, embeddings=False, influence=False)
    assert IndexStore.open(out).n_documents == len(tiny_bench.documents)


@pytest.mark.parametrize("window", ["state_removed", "guard_removed"])
def test_kill_while_finishing_never_breaks_later_reruns(tmp_path, tiny_bench, tiny_run, window):
    """D5: a partial whose build state or resume guard is gone is discarded and rebuilt, not resumed into a crash."""
    import shutil

    kw = dict(trak=False, embeddings=False, influence=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tiny_index(tmp_path / "f", tiny_bench, tiny_run, fail_after_shards=1, **kw)
    part = tmp_path / "f.partial"
    if window == "state_removed":
        shutil.rmtree(part / "build_state")
    else:
        (part / "build_config.json").unlink()
    build_tiny_index(tmp_path / "f", tiny_bench, tiny_run, **kw)
    assert IndexStore.open(tmp_path / "f", verify=True).n_documents == len(tiny_bench.documents)


@pytest.mark.parametrize("marker", [
    "grad-ckpt1-*.done",  # mid-featurizing
    pytest.param("fit-ckpt0.done", marks=pytest.mark.slow),  # between two checkpoints' K-FAC fits
    pytest.param("stage-moments.json", marks=pytest.mark.slow),  # between stages
    pytest.param("stage-trak.json", marks=pytest.mark.slow),  # late: embeddings / BM25 running
])
def test_sigkill_then_resume_is_byte_identical(tmp_path, tiny_bench, tiny_run, tiny_index, marker):
    from tracer.corpus import write_jsonl

    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"id": d.doc_id, "text": d.text, "facts": list(d.facts)} for d in tiny_bench.documents])
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "tracer", "build", "--corpus", str(corpus), "--model", str(tiny_run),
           "--out", str(out), "--k-in", "8", "--k-out", "8", "--batch-size", "16", "--shard-size", "64",
           "--trak-dim", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out.with_name("k.partial") / "build_state"
    deadline = time.time() + 120
    while time.time() < deadline and not list(state.glob(marker)) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the build finished before {marker} could be caught"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _arrays(out) == _arrays(tiny_index)


def test_refuses_to_overwrite(tmp_path, tiny_bench, tiny_run, tiny_index):
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_tiny_index(tiny_index, tiny_bench, tiny_run)


@pytest.fixture()
def index_copy(tmp_path, tiny_index):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(tiny_index, dst)
    return dst


def test_corrupt_byte_is_detected_by_verify(index_copy):
    f = index_copy / "features" / "raw" / "ckpt0.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    IndexStore.open(index_copy)  # same size: the fast check passes
    with pytest.raises(IndexCorruptError, match="checksum mismatch in features/raw/ckpt0.npy"):
        IndexStore.open(index_copy, verify=True)


def test_missing_file_is_named(index_copy):
    (index_copy / "trak" / "ckpt1.npy").unlink()
    with pytest.raises(IndexCorruptError, match="trak/ckpt1.npy is missing"):
        IndexStore.open(index_copy)


def test_truncated_file_is_named(index_copy):
    f = index_copy / "embeddings.npy"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(IndexCorruptError, match="embeddings.npy has"):
        IndexStore.open(index_copy)


def test_edited_manifest_is_detected(index_copy):
    m = json.loads((index_copy / "manifest.json").read_text())
    m["checkpoints"][0]["lr"] = 1.0
    (index_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match="manifest was modified"):
        IndexStore.open(index_copy)


@pytest.mark.parametrize("edit", ["lr", "n_blocks", "view", "file"])
def test_rewritten_manifest_with_a_recomputed_checksum_is_refused(index_copy, edit):
    """D7: the self-checksum is unkeyed, so an editor can recompute it; the fingerprint (recomputed on
    open from everything that decides scores) and the name checks still catch the edit."""
    from tracer.index.manifest import _self_checksum

    m = json.loads((index_copy / "manifest.json").read_text())
    if edit == "lr":
        m["checkpoints"][0]["lr"] *= 1000
    elif edit == "n_blocks":
        m["stages"]["trak"]["checkpoints"] += 5
    elif edit == "view":
        m["views"] = ["../../etc"]
    else:
        m["files"]["../outside.npy"] = {"size": 0, "sha256": ""}
    if edit in ("view", "file"):
        from tracer.index.manifest import fingerprint

        m["fingerprint"] = fingerprint(m)  # even a consistent fingerprint does not admit a bad name
    m["manifest_sha256"] = _self_checksum(m)
    (index_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match="manifest was modified|unknown view, stage or file name"):
        IndexStore.open(index_copy, verify=True)


@pytest.mark.parametrize("target", ["features/raw/ckpt0.npy", "gradient.faiss", "kfac/ckpt0.safetensors"])
def test_same_size_damaged_header_is_one_corrupt_error(index_copy, tiny_bench, target):
    """D6: a flipped header byte (size unchanged) fails with IndexCorruptError naming the file, never a traceback."""
    from tracer import Tracer

    f = index_copy / target
    data = bytearray(f.read_bytes())
    for i in range(2, 12):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    t = Tracer.open(index_copy)  # sizes still match
    q = tiny_bench.queries[0]
    with pytest.raises(IndexCorruptError, match=target.split("/")[-1]):
        t.trace(q.prompt, q.target, method="tracin", candidates="gradient", k=3)


def test_symlinked_array_is_refused(index_copy, tmp_path):
    f = index_copy / "features/losses_ckpt0.npy"
    outside = tmp_path / "outside.npy"
    outside.write_bytes(f.read_bytes())
    f.unlink()
    f.symlink_to(outside)
    with pytest.raises(IndexCorruptError, match="symlink"):
        IndexStore.open(index_copy)


def test_newer_format_is_refused(index_copy):
    m = json.loads((index_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (index_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexMismatchError, match="newer than this tracer supports"):
        IndexStore.open(index_copy)


def test_garbled_manifest(index_copy):
    (index_copy / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        IndexStore.open(index_copy)


def test_model_mismatch_is_refused(tiny_index, tiny_run):
    from tracer.encoder import QueryEncoder
    from tracer.model.loading import load_checkpoints

    store = IndexStore.open(tiny_index)
    cks = [c.path for c in load_checkpoints(tiny_run)]
    with pytest.raises(IndexMismatchError, match="fingerprint mismatch"):
        QueryEncoder(store, checkpoint_dirs=[cks[0], cks[0], cks[0]])
    with pytest.raises(IndexMismatchError, match="built from 3 checkpoints"):
        QueryEncoder(store, checkpoint_dirs=cks[:1])


def test_manifest_records_what_rebuilds_the_index(tiny_index):
    m = json.loads((tiny_index / "manifest.json").read_text())
    assert m["featurize"]["k_in"] == 8 and m["featurize"]["seed"] == 0
    assert m["loss"]["reduction"] == "sum" and len(m["checkpoints"]) == 3
    assert all(c["fingerprint"] and c["lr"] > 0 for c in m["checkpoints"])
    assert m["corpus"]["n_documents"] > 0 and len(m["corpus"]["fingerprint"]) == 64
    assert set(m["stages"]) == {"fit", "gradients", "moments", "gradient_faiss", "influence", "trak", "embeddings",
                                "bm25"}
    assert all("sha256" in f for f in m["files"].values())


def test_shard_size_does_not_change_the_index(tmp_path, tiny_bench, tiny_run, tiny_index):
    build_tiny_index(tmp_path / "s", tiny_bench, tiny_run, shard_size=32)
    assert _arrays(tmp_path / "s") == _arrays(tiny_index)


def test_a_lazy_corpus_builds_the_index_a_list_builds(tmp_path, tiny_bench, tiny_run, tiny_index):
    """``open_corpus`` (a ``DocumentFile`` read on demand) gives every file a list of ``Document`` gives."""
    from types import SimpleNamespace

    from tracer.corpus import documents_to_rows, open_corpus, write_jsonl
    from tracer.index.manifest import read_manifest

    path = write_jsonl(tmp_path / "c.jsonl", documents_to_rows(tiny_bench.documents)) and tmp_path / "c.jsonl"
    with open_corpus(path) as docs:
        assert list(docs) == list(tiny_bench.documents)
        build_tiny_index(tmp_path / "lazy", SimpleNamespace(documents=docs), tiny_run)
    got, want = read_manifest(tmp_path / "lazy", verify=True), read_manifest(tiny_index)
    assert {k: v["sha256"] for k, v in got["files"].items()} == {k: v["sha256"] for k, v in want["files"].items()}
    assert got["corpus"] == want["corpus"] and got["stages"] == want["stages"]
