"""Language models: load from a local directory, build tiny ones from a config, train them."""

from __future__ import annotations

from tracer.model.loading import Checkpoint, load_checkpoints, load_model, load_tokenizer
from tracer.model.tokenization import encode_example, pad_batch

__all__ = ["Checkpoint", "encode_example", "load_checkpoints", "load_model", "load_tokenizer", "pad_batch"]
