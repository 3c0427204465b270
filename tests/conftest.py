"""Shared fixtures: offline guards, tiny seeded models, tiny corpora."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

RTOL64 = 1e-9  # float64 math
RTOL32, ATOL32 = 1e-5, 1e-6  # float32 pipelines

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> object:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1", "::1", "localhost", "0.0.0.0"):
        raise RuntimeError(f"tests must stay offline; attempted connect to {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture(scope="session")
def tiny_bench():
    from tracer.benchmark import PRESETS, generate

    return generate(PRESETS["tiny"])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_bench):
    from tracer.model.tiny import train_tokenizer

    return train_tokenizer((d.text for d in tiny_bench.documents), 300)


def make_tiny_model(arch: str, vocab: int, seed: int = 0):
    import torch

    from tracer.model.tiny import ArchConfig, build_model

    m = build_model(ArchConfig(arch=arch, n_layer=2, d_model=32, n_head=2, vocab_size=vocab), vocab, seed=seed)
    m.config._attn_implementation = "eager"
    # Random (not default zero/one) biases and norm scales so every gradient group is exercised.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n or ".ln_" in n:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model(request, tiny_tokenizer):
    return make_tiny_model(request.param, len(tiny_tokenizer))


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bench):
    """A tiny GPT-2 trained for a few steps on the tiny benchmark (3 checkpoints)."""
    from tracer.model.train import TRAIN_PRESETS, train

    _quiet_transformers()
    out = tmp_path_factory.mktemp("run")
    train(tiny_bench.documents, TRAIN_PRESETS["tiny"], out, tiny_bench.queries[:20], tiny_bench.train_prompts,
          progress=lambda it: _NoBar())
    return out


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: object) -> None:
        pass

    def close(self) -> None:
        pass


TINY_INDEX_CFG = dict(k_in=8, k_out=8, batch_size=16)


def build_tiny_index(out, bench, run, **overrides):
    from tracer.featurize.config import FeaturizeConfig
    from tracer.index.build import IndexConfig, build_index
    from tracer.model.loading import load_checkpoints

    fkw = dict(TINY_INDEX_CFG)
    fkw.update(overrides.pop("featurize", {}))
    fail = overrides.pop("fail_after_shards", None)
    engine = overrides.pop("engine", None)
    cfg = IndexConfig(featurize=FeaturizeConfig(**fkw), shard_size=overrides.pop("shard_size", 64),
                      trak_dim=overrides.pop("trak_dim", 64), **overrides)
    build_index(bench.documents, load_checkpoints(run), out, cfg, progress=False, fail_after_shards=fail,
                engine=engine)
    return out


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_bench, tiny_run):
    """Path of a complete index over the tiny benchmark (projected 8x8, fp16)."""
    return build_tiny_index(tmp_path_factory.mktemp("idx") / "tiny", tiny_bench, tiny_run)


@pytest.fixture(scope="session")
def hf_trainer_run(tmp_path_factory, tiny_bench, tiny_tokenizer):
    """A tiny Llama trained by the Hugging Face ``Trainer`` (not ``tracer train``): ``checkpoint-3/`` and
    ``checkpoint-6/`` with ``trainer_state.json`` and ``optimizer.pt``, the tokenizer saved beside the weights.

    Returns ``(run_dir, trainer)``; the trainer keeps its optimizer so tests can compare its state."""
    pytest.importorskip("accelerate")
    import torch
    from transformers import Trainer, TrainingArguments

    _quiet_transformers()
    out = tmp_path_factory.mktemp("hf_run")
    model = make_tiny_model("llama", len(tiny_tokenizer), seed=3).train()
    enc = [tiny_tokenizer(d.text, truncation=True, max_length=32)["input_ids"] for d in tiny_bench.documents[:48]]
    rows = [{"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)} for ids in enc]

    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        pad = tiny_tokenizer.pad_token_id
        ids = torch.stack([torch.nn.functional.pad(b["input_ids"], (0, n - len(b["input_ids"])), value=pad)
                           for b in batch])
        labels = torch.stack([torch.nn.functional.pad(b["labels"], (0, n - len(b["labels"])), value=-100)
                              for b in batch])
        return {"input_ids": ids, "labels": labels, "attention_mask": (labels != -100).long()}

    args = TrainingArguments(output_dir=str(out), max_steps=6, save_steps=3, per_device_train_batch_size=8,
                             learning_rate=3e-3, weight_decay=0.1, logging_steps=1, report_to=[], use_cpu=True,
                             save_only_model=False, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    trainer.train()
    for ck in ("checkpoint-3", "checkpoint-6"):
        tiny_tokenizer.save_pretrained(out / ck)
    return out, trainer
