"""Load causal LMs, tokenizers and training checkpoints from **local paths only**.

A checkpoint directory is an ordinary ``save_pretrained`` model directory; tracer
adds ``tracer_checkpoint.json`` (step, learning rate) and optionally
``optimizer_v.safetensors`` (Adam's second moment per parameter name) beside it.
A *run* directory written by ``tracer train`` lists its checkpoints in
``checkpoints.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tracer.errors import DataError

CHECKPOINT_META = "tracer_checkpoint.json"  # {"step", "lr", "epoch"} of one checkpoint
OPTIMIZER_V = "optimizer_v.safetensors"  # Adam exp_avg_sq keyed by parameter name
RUN_CHECKPOINTS = "checkpoints.json"  # ordered list of checkpoint dirs of a training run


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One training checkpoint.

    Attributes:
        path: The model directory.
        lr: Learning rate in effect at this checkpoint (TracIn's weight).
        step: Optimizer step.
    """

    path: Path
    lr: float
    step: int = 0

    @property
    def has_optimizer_state(self) -> bool:
        """Adam state is on disk: ``optimizer_v.safetensors``, or the HF Trainer's ``optimizer.pt``."""
        return (self.path / OPTIMIZER_V).is_file() or (self.path / "optimizer.pt").is_file()


def _require_local_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{what} directory not found: {p} (tracer loads local paths only, never a hub id)")
    return p


_BAR_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_load_bar() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bar (noise in a library call) for one load: through its
    tqdm hook where it has one (nothing global is switched off), else by toggling its bar setting back."""
    from transformers.utils import logging as hf_logging

    with _BAR_LOCK:
        if hasattr(hf_logging, "set_tqdm_hook"):
            previous = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs,
                                                                                             "disable": True}))
            try:
                yield
            finally:
                hf_logging.set_tqdm_hook(previous)
        else:
            on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                yield
            finally:
                if on:
                    hf_logging.enable_progress_bar()


def load_model(path: str | Path, dtype: Any = None, attn_implementation: str | None = None) -> Any:
    """Load a transformers causal LM from a local directory, in eval mode.

    Raises:
        DataError: If the directory does not exist or holds no loadable model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    p = _require_local_dir(path, "model")
    try:
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with _no_load_bar():
            model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=dtype or torch.float32, **kw)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load a causal LM from {p}: {exc}") from exc
    model.eval()
    return model


def load_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer from a local directory (pad token defaults to eos)."""
    from transformers import AutoTokenizer

    p = _require_local_dir(path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load a tokenizer from {p}: {exc}") from exc
    if len(tok) == 0 or not tok.encode("the capital of France", add_special_tokens=False):
        raise DataError(f"the tokenizer at {p} is empty (no vocabulary files there?): pass the model's "
                        "tokenizer directory with --tokenizer DIR")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_tokenizer_fits(tokenizer: Any, model: Any, where: str = "") -> None:
    """``DataError`` when the tokenizer can produce ids the model's input embedding does not have."""
    rows = int(model.get_input_embeddings().weight.shape[0])
    top = max(len(tokenizer), max(tokenizer.all_special_ids or [0]) + 1)
    if top > rows:
        raise DataError(f"the tokenizer's vocabulary ({top} ids) does not fit the model{where}'s input embedding "
                        f"({rows} rows): pass the tokenizer the model was trained with (--tokenizer DIR)")


TRAINER_STATE = "trainer_state.json"  # written by the Hugging Face Trainer into each checkpoint-N/


def read_checkpoint(path: str | Path, default_lr: float = 1.0) -> Checkpoint:
    """A checkpoint from its directory, with its learning rate from the first source that has one.

    Sources, in order: ``tracer_checkpoint.json`` (``tracer train``); the Hugging Face Trainer's
    ``trainer_state.json`` (the ``learning_rate`` logged at the latest step not after
    ``global_step``); else ``default_lr``. :func:`checkpoint_provenance` says which was used.
    """
    p = _require_local_dir(path, "checkpoint")
    return _read_checkpoint(p, default_lr)[0]


def checkpoint_provenance(path: str | Path, default_lr: float = 1.0, lr_flag: float | None = None) -> str:
    """One line: where a checkpoint's lr and optimizer state come from (or that they fell back).

    ``lr_flag``: an lr given explicitly (``--lr``), which wins over every recorded one.
    """
    p = _require_local_dir(path, "checkpoint")
    ck, lr_from = _read_checkpoint(p, default_lr)
    if lr_flag is not None:
        ck, lr_from = Checkpoint(p, lr_flag, ck.step), "--lr"
    adam = (f"Adam second moment from {OPTIMIZER_V}" if (p / OPTIMIZER_V).is_file() else
            "Adam second moment from optimizer.pt (weights_only load, mapped by parameter order)"
            if ck.has_optimizer_state else "no Adam state (random-projection views use unit-normalised gradients)")
    return f"{p}: lr {ck.lr:g} from {lr_from}, step {ck.step}; {adam}"


def _read_checkpoint(p: Path, default_lr: float) -> tuple[Checkpoint, str]:
    meta_file = p / CHECKPOINT_META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return Checkpoint(p, float(meta["lr"]), int(meta.get("step", 0))), CHECKPOINT_META
    state_file = p / TRAINER_STATE
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{state_file}: not readable JSON ({exc})") from exc
        step = int(state.get("global_step", 0))
        logged = [(int(e.get("step", 0)), float(e["learning_rate"])) for e in state.get("log_history", [])
                  if isinstance(e, dict) and "learning_rate" in e and int(e.get("step", 0)) <= step]
        if logged:
            at, lr = max(logged)
            return Checkpoint(p, lr, step), f"{TRAINER_STATE} (logged at step {at})"
        return Checkpoint(p, default_lr, step), f"the default ({TRAINER_STATE} logs no learning_rate; pass --lr)"
    return Checkpoint(p, default_lr, 0), "the default (no recorded lr; pass --lr)"


def load_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """The ordered checkpoints of a training run directory (``checkpoints.json``)."""
    run = _require_local_dir(run_dir, "training run")
    listing = run / RUN_CHECKPOINTS
    if not listing.is_file():
        raise DataError(f"{listing} not found: not a tracer training run (pass --checkpoint DIR instead)")
    names = json.loads(listing.read_text())
    return [read_checkpoint(run / n) for n in names]


def weights_fingerprint(path: str | Path) -> str:
    """sha256 over the weight files of a model directory (sorted by name).

    Hashing a large checkpoint takes seconds, so results are memoised per process by each weight
    file's ``(name, size, mtime_ns)``: a file rewritten in place gets a new mtime and is hashed
    again. (A file edited while keeping both its size and its mtime would not be: this is a
    consistency check between an index and its models, not a defence against tampering.)
    """
    p = _require_local_dir(path, "model")
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")))
    files = [f for f in files if f.name != OPTIMIZER_V]
    if not files:
        raise DataError(f"no weight files (*.safetensors, *.bin) in {p}")
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    cached = _FINGERPRINTS.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


_FINGERPRINTS: dict[tuple[tuple[str, int, int], ...], str] = {}  # weight files' (path, size, mtime_ns) -> sha256
