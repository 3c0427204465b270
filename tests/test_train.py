"""Training saves ordinary HF checkpoints that load back through the user-facing local loader."""

from __future__ import annotations

import json

import pytest
import torch

from tracer.errors import DataError
from tracer.model.loading import load_checkpoints, load_model, load_tokenizer, weights_fingerprint
from tracer.model.train import TRAIN_PRESETS, lr_at


def test_run_loads_back(tiny_run):
    cks = load_checkpoints(tiny_run)
    assert len(cks) == 3 and all(c.has_optimizer_state for c in cks)
    assert [c.step for c in cks] == sorted(c.step for c in cks)
    model = load_model(cks[-1].path)
    tok = load_tokenizer(cks[-1].path)
    ids = torch.tensor([tok.encode("Hello there")])
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    report = json.loads((tiny_run / "train_report.json").read_text())
    assert len(report["checkpoints"]) == 3 and "learned_query_ids" in report
    assert {"acc_train_template", "acc_heldout_template", "lr"} <= set(report["checkpoints"][0])


def test_training_is_deterministic(tiny_bench, tmp_path):
    """Two runs in the same process state give the same weights. (Against the session's ``tiny_run``
    it would depend on test order: FAISS's ``omp_set_num_threads(1)`` changes torch's thread count,
    and float sums with it.)"""
    from conftest import _NoBar

    from tracer.model.train import train

    for name in ("a", "b"):
        train(tiny_bench.documents, TRAIN_PRESETS["tiny"], tmp_path / name, progress=lambda it: _NoBar())
    a = load_checkpoints(tmp_path / "a")[-1].path
    b = load_checkpoints(tmp_path / "b")[-1].path
    assert weights_fingerprint(a) == weights_fingerprint(b)


def test_llama_config_trains_and_loads(tiny_bench, tmp_path):
    import dataclasses

    from conftest import _NoBar

    from tracer.model.train import train

    cfg = TRAIN_PRESETS["tiny"]
    cfg = dataclasses.replace(cfg, epochs=1, arch=dataclasses.replace(cfg.arch, arch="llama"))
    train(tiny_bench.documents[:40], cfg, tmp_path, progress=lambda it: _NoBar())
    m = load_model(load_checkpoints(tmp_path)[-1].path)
    assert type(m).__name__ == "LlamaForCausalLM"


def test_lr_schedule_warms_up_then_decays():
    cfg = TRAIN_PRESETS["small"]
    lrs = [lr_at(cfg, s, 1000) for s in range(1, 1001)]
    assert max(lrs) == pytest.approx(cfg.lr) and lrs[0] < lrs[49] and lrs[-1] == pytest.approx(cfg.lr * 0.1)


def test_local_paths_only(tmp_path):
    with pytest.raises(DataError, match="local paths only"):
        load_model("gpt2")
    with pytest.raises(DataError, match="not a tracer training run"):
        load_checkpoints(tmp_path)


def test_weights_fingerprint_is_memoised_and_notices_a_rewrite(tmp_path, tiny_run):
    import shutil
    import time as _time

    from tracer.model import loading

    src = load_checkpoints(tiny_run)[-1].path
    d = tmp_path / "m"
    shutil.copytree(src, d)
    first = weights_fingerprint(d)
    calls = []
    real = loading.hashlib.sha256
    loading.hashlib.sha256 = lambda *a: calls.append(1) or real(*a)  # type: ignore[assignment]
    try:
        assert weights_fingerprint(d) == first and not calls  # memoised: no hashing
        w = next(d.glob("*.safetensors"))
        data = bytearray(w.read_bytes())
        data[-1] ^= 0xFF
        _time.sleep(0.01)
        w.write_bytes(bytes(data))  # same size, new mtime
        assert weights_fingerprint(d) != first and calls
    finally:
        loading.hashlib.sha256 = real


def test_hf_trainer_checkpoint_lr_and_provenance(tmp_path, tiny_run):
    """An HF Trainer checkpoint-N/ folder: the lr logged at its step is read from trainer_state.json."""
    import json
    import shutil

    from tracer.model.loading import CHECKPOINT_META, checkpoint_provenance, read_checkpoint

    src = load_checkpoints(tiny_run)[-1].path
    ck = tmp_path / "checkpoint-500"
    shutil.copytree(src, ck)
    (ck / CHECKPOINT_META).unlink()
    assert read_checkpoint(ck).lr == 1.0 and "the default" in checkpoint_provenance(ck)
    history = [{"step": 100, "learning_rate": 5e-4, "loss": 3.0}, {"step": 500, "learning_rate": 2e-4},
               {"step": 500, "eval_loss": 2.0}, {"step": 900, "learning_rate": 1e-5}]
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 500, "log_history": history}))
    got = read_checkpoint(ck)
    assert (got.lr, got.step) == (2e-4, 500)
    line = checkpoint_provenance(ck)
    assert "lr 0.0002 from trainer_state.json (logged at step 500)" in line and "Adam" in line
    assert "lr 0.003 from --lr" in checkpoint_provenance(ck, lr_flag=3e-3)
