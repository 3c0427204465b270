"""``QueryEncoder``: a query's gradients (every checkpoint and view) and embedding, made exactly like the corpus's.

Checkpoints are loaded once and kept; their weight fingerprints are checked against the
index manifest, so a query is never scored with a model the index was not built from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tracer.errors import IndexMismatchError
from tracer.featurize.checkpoint import CheckpointFeaturizer, embed_texts
from tracer.featurize.config import FeaturizeConfig
from tracer.index.store import IndexStore
from tracer.methods.base import QueryFeatures
from tracer.model.loading import Checkpoint, load_tokenizer, weights_fingerprint
from tracer.model.tokenization import encode_example, special_prefix, with_prefix

log = logging.getLogger(__name__)


class QueryEncoder:
    """Featurizes queries for one index.

    Args:
        store: The opened index.
        checkpoint_dirs: Override the checkpoint paths recorded in the manifest (same order);
            fingerprints must still match.
        tokenizer: Tokenizer directory (default: the one recorded at build time, else the last
            checkpoint's directory).
        check_fingerprints: Verify checkpoint weights against the manifest.
    """

    def __init__(self, store: IndexStore, checkpoint_dirs: Sequence[str | Path] | None = None,
                 check_fingerprints: bool = True, tokenizer: str | Path | None = None) -> None:
        self.store = store
        recorded = store.checkpoints
        dirs = [Path(p) for p in checkpoint_dirs] if checkpoint_dirs else [Path(c["path"]) for c in recorded]
        if len(dirs) != len(recorded):
            raise IndexMismatchError(f"index {store.name!r} was built from {len(recorded)} checkpoints, "
                                     f"got {len(dirs)}")
        if check_fingerprints:
            for d, c in zip(dirs, recorded):
                if weights_fingerprint(d) != c["fingerprint"]:
                    raise IndexMismatchError(f"model weights at {d} differ from the checkpoint index "
                                             f"{store.name!r} was built from (fingerprint mismatch)")
        recorded_tok = store.manifest.get("tokenizer")
        # models moved since the build (checkpoint_dirs given): the tokenizer travels with them
        if tokenizer is not None:
            self.tokenizer = load_tokenizer(tokenizer)
        else:
            self.tokenizer = load_tokenizer(recorded_tok if recorded_tok and Path(recorded_tok).is_dir() else dirs[-1])
        self._pin_prefix(store)
        self.dirs = dirs
        self.cfg = FeaturizeConfig.from_dict(store.manifest["featurize"]) if store.manifest.get("featurize") \
            else None
        views = store.manifest.get("views", [])
        kfac = store.has("fit")
        widths = store.stages["fit"].get("widths") if kfac else None
        self.featurizers = [CheckpointFeaturizer(Checkpoint(d, c["lr"], c["step"]), self.tokenizer, self.cfg, views,
                                                 factors=store.kfac_factors(ci) if kfac else None, widths=widths)
                            for ci, (d, c) in enumerate(zip(dirs, recorded))] if self.cfg else []
        self._final_model = self.featurizers[-1].model if self.featurizers else None

    def _pin_prefix(self, store: IndexStore) -> None:
        """Queries get the token prefix the corpus got at build (recorded in the manifest; indexes from
        before it was recorded prepended the tokenizer's BOS); a tokenizer that now disagrees is an error."""
        recorded = store.manifest.get("token_prefix")
        if recorded is None:
            bos = self.tokenizer.bos_token_id
            recorded = [] if bos is None else [bos]
        now = list(special_prefix(self.tokenizer))
        if now != list(recorded) and store.manifest.get("token_prefix") is not None:
            raise IndexMismatchError(f"index {store.name!r} was built with token prefix {list(recorded)} before "
                                     f"each text, but this tokenizer adds {now}: pass the build's tokenizer "
                                     "(--tokenizer DIR)")
        with_prefix(self.tokenizer, recorded)

    def encode(self, prompt: str, target: str, need_grads: bool = True, need_embedding: bool = True) -> QueryFeatures:
        """Features of one query (the parts requested)."""
        return self.encode_many([(prompt, target)], need_grads, need_embedding)[0]

    def encode_many(self, pairs: Sequence[tuple[str, str]], need_grads: bool = True,
                    need_embedding: bool = True,
                    on_checkpoint: Callable[[int, list[QueryFeatures]], None] | None = None) -> list[QueryFeatures]:
        """Features of several queries, batched per checkpoint.

        Args:
            on_checkpoint: Called with ``(ci, features)`` as soon as checkpoint ``ci``'s gradients are
                in (the features so far), so scoring can start while later checkpoints are featurized.
        """
        out = [QueryFeatures(text=p + t) for p, t in pairs]
        if need_grads and self.featurizers:
            enc = [encode_example(self.tokenizer, p, t, self.cfg.max_length) for p, t in pairs]  # type: ignore
            for ci, fz in enumerate(self.featurizers):
                feats, losses = fz.featurize(enc)
                for i, q in enumerate(out):
                    for v, f in feats.items():
                        q.grads.setdefault(v, []).append(f[i])
                    q.losses.append(float(losses[i]))
                if on_checkpoint is not None:
                    on_checkpoint(ci, out)
        if need_embedding and self.store.has("embeddings"):
            model = self._final_model or self._load_final()
            emb = embed_texts(model, self.tokenizer, [p + t for p, t in pairs],
                              max_length=self.cfg.max_length if self.cfg else 128)
            for i, q in enumerate(out):
                q.embedding = emb[i]
        return out

    def _load_final(self):  # type: ignore[no-untyped-def]
        from tracer.model.loading import load_model

        self._final_model = load_model(self.dirs[-1])
        return self._final_model


