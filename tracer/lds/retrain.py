"""Subset models for LDS: train one model per α-subset with a fixed recipe, cache it, measure losses.

The cache (``cache_dir``) is keyed so that a model is reused only when it is the same experiment:

```
cache_dir/<key>/              key = sha256(corpus fingerprint, recipe, tokenizer, alpha, subset seed)[:16]
    key.json                  what the key hashes (readable)
    subset-007/               subset j = 7 of sample_subsets(n_docs, M, alpha, seed)
        subset.json           its rows, train seconds, recipe
        checkpoint-N/         the trained model (the recipe's schedule, final checkpoint only)
        losses-<qhash>.npy    (n_queries,) float64 target losses for one query set
```

Each model is trained into ``subset-007.partial`` and renamed when done, so a crash costs at
most the model in progress and a rerun resumes. Every subset model uses the *full* corpus's
tokenizer (so losses are comparable across models) and the recipe's seed: only the data differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from tracer.types import Document

if TYPE_CHECKING:  # tracer.model imports torch; the LDS math must not
    from tracer.model.train import FinetuneConfig, TrainConfig

log = logging.getLogger(__name__)

KEY_FILE = "key.json"  # the fields the cache key hashes
SUBSET_FILE = "subset.json"  # {"subset", "rows", "train_seconds", "recipe"} of one subset model
LOSSES_PREFIX = "losses-"  # + query-set hash + ".npy": (n_queries,) float64 target losses
SUBSET_DIR = "subset-{:03d}"


@dataclass(frozen=True)
class SubsetModel:
    """One trained subset model."""

    index: int  # j
    path: Path  # the subset directory
    model_dir: Path  # its final checkpoint
    train_seconds: float  # recorded when it was trained
    trained_now: bool  # False when it came from the cache


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 over the files of a tokenizer directory (sorted by name)."""
    h = hashlib.sha256()
    for p in sorted(Path(tokenizer_dir).iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(corpus_fp: str, recipe: TrainConfig | FinetuneConfig, tokenizer_fp: str, alpha: float,
              seed: int, base_fingerprint: str | None = None) -> dict[str, Any]:
    """The fields that identify a family of subset models, and their hash under ``"key"``.

    ``base_fingerprint``: the weights of the pretrained model a fine-tuning recipe starts from (``None``
    for a model trained from scratch, whose keys stay what they were before fine-tuning existed)."""
    fields = {"corpus_fingerprint": corpus_fp, "recipe": dataclasses.asdict(final_only(recipe)),
              "tokenizer_fingerprint": tokenizer_fp, "alpha": float(alpha), "subset_seed": int(seed)}
    if base_fingerprint is not None:
        fields["finetuned_from"] = base_fingerprint
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return {"key": digest, **fields}


def final_only(recipe: TrainConfig | FinetuneConfig) -> Any:
    """The recipe with only its final checkpoint saved (LDS needs no intermediate ones)."""
    return dataclasses.replace(recipe, checkpoints=(1.0,))


def query_set_hash(pairs: Sequence[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps([list(p) for p in pairs]).encode()).hexdigest()[:16]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: object) -> None:
        pass

    def close(self) -> None:
        pass


def _read_subset(path: Path, j: int, rows: np.ndarray) -> SubsetModel | None:
    meta_file = path / SUBSET_FILE
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if meta["rows"] != rows.tolist():  # same key, different draw: never reuse silently
        raise ValueError(f"{path} was trained on other rows than subset {j} of this sample; clear the cache")
    return SubsetModel(j, path, path / meta["checkpoint"], float(meta["train_seconds"]), False)


def train_subset_model(docs: Sequence[Document], rows: np.ndarray, recipe: TrainConfig | FinetuneConfig,
                       tokenizer: Any, path: Path, j: int, init_from: Path | None = None) -> SubsetModel:
    """Train (or load from ``path``) the model of subset ``j`` = ``docs[rows]``.

    Args:
        docs: The full corpus, in row order.
        rows: ``(n_subset,)`` int rows of the subset, sorted.
        recipe: The training recipe (only its final checkpoint is saved): a ``TrainConfig`` (from scratch)
            or a ``FinetuneConfig`` (from ``init_from``).
        tokenizer: The full corpus's tokenizer (a fine-tune uses its base model's, as the full run did).
        path: The subset's cache directory.
        j: The subset's index.
        init_from: The pretrained model a fine-tuning recipe starts from.
    """
    from tracer.model.train import finetune, train

    cached = _read_subset(path, j, rows)
    if cached is not None:
        return cached
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    subset = [docs[int(r)] for r in rows]
    if init_from is not None:
        finetune(subset, init_from, final_only(recipe), tmp, progress=lambda it: _NoBar())
    else:
        train(subset, final_only(recipe), tmp, progress=lambda it: _NoBar(), tokenizer=tokenizer)
    seconds = time.perf_counter() - t0
    name = json.loads((tmp / "checkpoints.json").read_text())[-1]
    (tmp / SUBSET_FILE).write_text(json.dumps({"subset": j, "rows": rows.tolist(), "checkpoint": name,
                                               "train_seconds": round(seconds, 3),
                                               "recipe": dataclasses.asdict(final_only(recipe))}))
    os.replace(tmp, path)
    log.info("subset model %d: %d documents, trained in %.1fs", j, len(rows), seconds)
    return SubsetModel(j, path, path / name, seconds, True)


def ensure_subset_models(docs: Sequence[Document], masks: np.ndarray, recipe: TrainConfig | FinetuneConfig,
                         tokenizer_dir: Path, family_dir: Path,
                         on_progress: Callable[[int, int], None] | None = None,
                         init_from: Path | None = None) -> list[SubsetModel]:
    """Every subset model of ``masks`` under ``family_dir``, training only the missing ones.

    Args:
        docs: The full corpus, in row order.
        masks: ``(M, n_docs)`` bool subsets.
        recipe: Training recipe.
        tokenizer_dir: The full run's tokenizer directory.
        family_dir: ``cache_dir/<key>`` (see :func:`cache_key`).
        on_progress: Called with ``(done, M)`` after each model.
        init_from: The base model of a fine-tuning recipe.
    """
    from tracer.model.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    family_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for j, mask in enumerate(masks):
        out.append(train_subset_model(docs, np.flatnonzero(mask), recipe, tok,
                                      family_dir / SUBSET_DIR.format(j), j, init_from))
        if on_progress:
            on_progress(j + 1, len(masks))
    return out


def subset_losses(models: Sequence[SubsetModel], tokenizer_dir: Path, pairs: Sequence[tuple[str, str]],
                  max_length: int = 128) -> np.ndarray:
    """Target losses ``−log p(target | prompt)`` (summed over target tokens) under each subset model.

    Cached per model and query set (``losses-<qhash>.npy``).

    Returns:
        ``(n_queries, M)`` float64.
    """
    from tracer.model.loading import load_model, load_tokenizer
    from tracer.model.scoring import target_stats

    qhash = query_set_hash(pairs)
    tok = None
    cols = []
    for m in models:
        f = m.path / f"{LOSSES_PREFIX}{qhash}.npy"
        if f.is_file():
            cols.append(np.load(f))
            continue
        tok = tok or load_tokenizer(tokenizer_dir)
        _, logprob = target_stats(load_model(m.model_dir), tok, pairs, max_length=max_length)
        np.save(f, -logprob)
        cols.append(-logprob)
    return np.stack(cols, axis=1) if cols else np.zeros((len(pairs), 0))
