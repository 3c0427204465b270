"""Sharded and distributed builds: shard planning and shard files (fast), and the Ray engine (needs ``ray``).

The Ray build must equal the single-process build byte for byte: every array file, and every
manifest field except timings and timestamps. A worker killed mid-build (SIGKILL) is restarted by
Ray and its shard redone; shards a crashed build finished are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_index
from tracer.index.shards import load_shard, plan_shards, save_shard

# the only manifest fields allowed to differ: timings, timestamps, and the manifest's checksum over them
TIMING_FIELDS = ("build_seconds", "created", "history", "manifest_sha256")


def test_plan_shards_covers_every_row_once_in_batch_aligned_shards():
    plan = plan_shards(214, 64)
    assert plan == [(0, 0, 64), (1, 64, 128), (2, 128, 192), (3, 192, 214)]
    rows = np.concatenate([np.arange(lo, hi) for _, lo, hi in plan])
    assert np.array_equal(rows, np.arange(214))
    assert plan_shards(256, 64)[-1] == (3, 192, 256)  # an exact multiple: no empty last shard
    assert plan_shards(0, 64) == []


def test_plan_shards_skips_done_shards_and_keeps_their_positions():
    assert plan_shards(214, 64, done=lambda s: s in (0, 2)) == [(1, 64, 128), (3, 192, 214)]
    assert plan_shards(214, 64, done=lambda s: True) == []
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(10, 0)


def test_shard_file_round_trip_is_atomic(tmp_path):
    arrays = {"feat-raw": np.arange(12, dtype=np.int8).reshape(3, 4), "loss": np.ones(3, np.float32),
              "bad-raw": np.zeros(0, np.int64)}
    path = tmp_path / "shards" / "ckpt0-shard1.npz"
    save_shard(path, arrays)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    back = load_shard(path)
    assert back.keys() == arrays.keys()
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


# --- the Ray engine ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _arrays(root: Path) -> dict[str, bytes]:
    files = sorted([*root.rglob("*.npy"), *root.rglob("*.safetensors"), *root.rglob("*.faiss")])
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def _manifest(root: Path) -> dict:
    m = json.loads((root / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in TIMING_FIELDS}


def _assert_same_index(a: Path, b: Path) -> None:
    assert _arrays(a) == _arrays(b)
    assert _manifest(a) == _manifest(b)


def _ray_engine(**kw):
    from tracer.index.distributed import RayEngine, RayOptions

    return RayEngine(RayOptions(**kw))


@pytest.mark.slow
def test_ray_build_equals_the_local_build_byte_for_byte(ray_local, tmp_path, tiny_bench, tiny_run,
                                                        tiny_index):
    with _ray_engine(workers=2) as engine:
        build_tiny_index(tmp_path / "r", tiny_bench, tiny_run, engine=engine)
    assert engine.featurized == 4 * 3  # 214 documents in shards of 64, 3 checkpoints
    assert len(engine.worker_pids) == 2
    _assert_same_index(tmp_path / "r", tiny_index)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_its_shard_redone(ray_local, tmp_path, tiny_bench, tiny_run,
                                                         tiny_index):
    with _ray_engine(workers=2, kill_worker_at=(1, 2)) as engine:  # SIGKILL while on shard 2 of checkpoint 1
        build_tiny_index(tmp_path / "k", tiny_bench, tiny_run, engine=engine)
    assert len(engine.worker_pids) == 3  # two actors, one of them restarted by Ray
    assert engine.featurized == 12
    _assert_same_index(tmp_path / "k", tiny_index)


@pytest.mark.slow
def test_ray_resume_keeps_finished_shards_and_shard_files(ray_local, tmp_path, tiny_bench, tiny_run,
                                                          tiny_index):
    from tracer.index import files as F
    from tracer.index.distributed import shard_file
    from tracer.index.shards import ShardFeaturizer, ShardJob

    out = tmp_path / "p"
    with pytest.raises(RuntimeError, match="simulated crash"):  # a local build dies after 2 shards of ckpt 0
        build_tiny_index(out, tiny_bench, tiny_run, fail_after_shards=2)
    part = out.with_name("p.partial")
    # shard 2 of checkpoint 0 finished on a worker, but the driver died before merging it: its file is there
    from tracer.featurize.checkpoint import encode_documents
    from tracer.model.loading import load_checkpoints, load_tokenizer

    cks = load_checkpoints(tiny_run)
    cfg = json.loads((part / F.BUILD_CONFIG).read_text())["config"]["featurize"]
    from tracer.featurize.config import FeaturizeConfig

    fcfg = FeaturizeConfig.from_dict(cfg)
    widths = json.loads((part / F.BUILD_STATE / "stage-fit.json").read_text())["info"]["widths"]
    tok = load_tokenizer(cks[-1].path)
    job = ShardJob(part, 0, cks[0], fcfg, ("raw",), widths)
    enc = encode_documents(tok, tiny_bench.documents[128:192], fcfg.max_length)
    save_shard(part / shard_file(0, 2), ShardFeaturizer(job, tok).run(enc))
    with _ray_engine(workers=2) as engine:
        build_tiny_index(out, tiny_bench, tiny_run, engine=engine)
    assert engine.featurized == 12 - 3  # shards 0 and 1 kept (done-markers), shard 2 merged from its file
    _assert_same_index(out, tiny_index)


def test_cli_engine_ray_without_ray_says_how_to_install(monkeypatch):
    import argparse
    import sys

    from tracer.cli.cmd_build import _engine
    from tracer.errors import DataError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(DataError, match=r"pip install 'tracer\[ray\]'"):
        _engine(argparse.Namespace(engine="ray", ray_address=None, workers=2))
    with pytest.raises(DataError, match="--workers"):
        _engine(argparse.Namespace(engine="ray", ray_address=None, workers=0))
