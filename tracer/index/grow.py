"""``tracer add``: grow a built index by documents or by a checkpoint, atomically, without a rebuild.

Both operations are a *resumed build of the grown index*: the previous version's finished work is
seeded into ``<index>.partial`` (the build's own partial directory, with its resume guard and
done-markers), then the build's stages run there and the result is swapped in with the build's
atomic ``publish``. A crash at any point leaves the old index in place, valid and openable; rerunning
the same ``add`` resumes from the seeded partial.

* **Documents** (``add_documents``): the old feature rows are copied into matrices of the union's
  height and their shards marked done; only the new rows are featurized (the last, partly old
  shard is featurized again so batches line up exactly with a from-scratch build). Embeddings of
  old rows are recovered exactly (float32) from the previous Flat index; new ones are embedded in
  aligned batches. Ids already in the index are refused.
* **Checkpoint** (``add_checkpoint``): appended as the newest checkpoint. Old checkpoints' feature
  files are hard-linked (never written); the new checkpoint gets its K-FAC fit on the index's
  fit sample and every document is featurized under it. The last checkpoint is "the model", so
  embeddings are recomputed.

Statistics policy (recorded in the manifest under ``statistics``):

* **Kept from the original build** -- the feature *basis*: K-FAC eigenvectors and prescale, the
  per-layer widths of the dimension budget, and the fit sample (drawn from the first ``fit_pool``
  documents, i.e. the original corpus). Changing them would change every stored row.
* **Recomputed over the grown index** -- every statistic of the stored features: the moments
  ``E[g_i^2]`` (EK-FAC diagonal, TrackStar normaliser), the gradient FAISS coordinates, quantizer
  and codes, the influence Fisher, the TRAK sketches and Grams, and BM25 over all texts.

So ``add`` equals a from-scratch ``build_index`` of the union with ``basis=BasisPin(fit_pool=...,
widths=...)`` (see ``tests/test_add.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tracer.errors import DataError, IndexMismatchError
from tracer.index import files as F
from tracer.index.build import (
    BasisPin,
    IndexConfig,
    _build_locked,
    build_lock,
    build_want,
    history_entry,
    resumable_partial,
    split_fingerprint,
    write_documents,
)
from tracer.index.manifest import read_manifest
from tracer.index.stages import EMBED_BATCH, EMBEDDING_PREFIX
from tracer.model.loading import Checkpoint, weights_fingerprint
from tracer.types import Document

log = logging.getLogger(__name__)

COPY_ROWS = 8192  # rows copied per block when old feature matrices are extended



class _Old:
    """The index being grown: its manifest, config, checkpoints and stored documents."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = read_manifest(root)
        self.cfg = IndexConfig.from_dict(self.manifest["config"])
        self.checkpoints = [_recorded_checkpoint(c) for c in self.manifest["checkpoints"]]
        self.n = int(self.manifest["corpus"]["n_documents"])
        fit = self.manifest.get("stages", {}).get("fit", {})
        self.fit = fit
        self.fit_pool = int(fit.get("fit_pool", self.n))
        self.tokenizer = self.manifest.get("tokenizer") or None

    def documents(self) -> list[Document]:
        """The stored documents, with their loss split, checked against the manifest."""
        docs = list(_stored_documents(self.root))
        want = self.manifest["corpus"].get("loss_split")
        if want is None:
            raise IndexMismatchError(f"{self.root} was built before `tracer add` existed (its documents do not "
                                     "record their prompt/target split); rebuild it once with `tracer build`")
        if len(docs) != self.n or split_fingerprint(docs) != want:
            raise IndexMismatchError(f"{self.root}: {F.DOCUMENTS} does not match the manifest; rebuild the index")
        return docs

    def history(self) -> list[dict[str, Any]]:
        past = self.manifest.get("history")
        if past is None:  # built before histories were kept
            past = [{"action": "build", "time": self.manifest.get("created", ""), "n_documents": self.n,
                     "checkpoints": len(self.checkpoints), "corpus": self.manifest["corpus"].get("path", "")}]
        return list(past)


def _recorded_checkpoint(rec: dict[str, Any]) -> Checkpoint:
    path = Path(rec["path"])
    try:
        same = weights_fingerprint(path) == rec["fingerprint"]
    except DataError:
        same = False
    if not same:
        raise DataError(f"checkpoint {path}, recorded in the index, is missing or its weights changed; "
                        "tracer add featurizes with the index's own checkpoints")
    return Checkpoint(path, float(rec["lr"]), int(rec.get("step", 0)))


def _stored_documents(root: Path) -> Iterator[Document]:
    with open(root / F.DOCUMENTS, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            yield Document(d["id"], d["text"], tuple(d.get("facts", ())), d.get("prompt"), d.get("target"))


def add_documents(index: str | Path, docs: Sequence[Document], *, corpus_path: str = "", progress: bool = True,
                  fail_after_shards: int | None = None) -> dict[str, Any]:
    """Append documents to an index (new rows at the end, in ``docs`` order).

    Args:
        index: A built index directory.
        docs: New documents; none of their ids may be in the index already.
        corpus_path: Recorded in the manifest's history.
        progress: Show progress bars.
        fail_after_shards: Test hook: raise after this many newly featurized shards.

    Returns:
        The new manifest.

    Raises:
        DataError: No documents, ids already in the index, or the index's checkpoints changed.
        BuildLockedError: A build or another add holds the index.
    """
    root = Path(index)
    if not docs:
        raise DataError("no documents to add")
    with build_lock(root):
        old = _Old(root)
        old_docs = old.documents()
        have = {d.doc_id for d in old_docs}
        dup = [d.doc_id for d in docs if d.doc_id in have]
        if dup:
            raise DataError(f"{len(dup)} of the {len(docs)} documents to add are already in {root} "
                            f"(first: {dup[0]!r}); tracer add appends new ids only")
        union = old_docs + list(docs)
        basis = BasisPin(fit_pool=old.fit_pool)
        part = _partial(root, union, old.checkpoints, old.cfg, basis)
        if part is not None:
            _seed_documents_add(old, part, union, basis)
        entry = history_entry("add_documents", added_documents=len(docs), n_documents=len(union),
                              checkpoints=len(old.checkpoints), corpus=corpus_path)
        return _finish(old, union, old.checkpoints, basis, entry, corpus_path, progress, fail_after_shards)


def add_checkpoint(index: str | Path, checkpoint: Checkpoint, *, progress: bool = True,
                   fail_after_shards: int | None = None) -> dict[str, Any]:
    """Append a checkpoint (the newest; it becomes "the model") and featurize every document under it.

    Args:
        index: A built index directory.
        checkpoint: The new checkpoint, with its learning rate.
        progress: Show progress bars.
        fail_after_shards: Test hook: raise after this many newly featurized shards.

    Returns:
        The new manifest.

    Raises:
        DataError: The checkpoint is already in the index, lacks the Adam state the index's ``adam``
            view needs, or the index's checkpoints changed.
    """
    from tracer.featurize.checkpoint import view_names

    root = Path(index)
    with build_lock(root):
        old = _Old(root)
        fp = weights_fingerprint(checkpoint.path)
        if any(c["fingerprint"] == fp for c in old.manifest["checkpoints"]):
            raise DataError(f"checkpoint {checkpoint.path} is already in {root} (same weights)")
        cks = old.checkpoints + [checkpoint]
        if old.cfg.gradients and view_names(old.cfg.featurize, cks) != old.manifest.get("views"):
            raise DataError(f"checkpoint {checkpoint.path} has no Adam state (optimizer_v.safetensors or "
                            "optimizer.pt), which the index's 'adam' view needs")
        basis = BasisPin(fit_pool=old.fit_pool, widths=old.fit.get("widths"), energy_kept=old.fit.get("energy_kept"))
        docs = old.documents()
        part = _partial(root, docs, cks, old.cfg, basis)
        if part is not None:
            _seed_checkpoint_add(old, part, docs, cks, basis)
        entry = history_entry("add_checkpoint", checkpoint=str(checkpoint.path.resolve()), lr=checkpoint.lr,
                              step=checkpoint.step, n_documents=len(docs), checkpoints=len(cks))
        return _finish(old, docs, cks, basis, entry, old.manifest["corpus"].get("path", ""), progress,
                       fail_after_shards)


def _partial(root: Path, docs: Sequence[Document], cks: Sequence[Checkpoint], cfg: IndexConfig,
             basis: BasisPin) -> Path | None:
    """A fresh ``<index>.partial`` to seed, or ``None`` when an interrupted identical add can resume there."""
    part, resumed = resumable_partial(root, build_want(docs, cks, cfg, basis), "add")
    if resumed:
        return None
    (part / F.BUILD_STATE).mkdir(parents=True)
    return part


def _finish(old: _Old, docs: Sequence[Document], cks: Sequence[Checkpoint], basis: BasisPin,
            entry: dict[str, Any], corpus_path: str, progress: bool, fail_after_shards: int | None) -> dict[str, Any]:
    """Run the build's unfinished stages in the seeded partial and publish it (the build's own code path)."""
    manifest = _build_locked(docs, cks, old.root, old.cfg, old.tokenizer, corpus_path, progress,
                             fail_after_shards, basis, history=old.history() + [entry])
    log.info("%s: %s done (%d documents, %d checkpoints)", old.root, entry["action"], len(docs), len(cks))
    return manifest


def _seed_common(old: _Old, part: Path, docs: Sequence[Document]) -> None:
    write_documents(part, docs)
    if (old.root / F.KFAC_DIR).is_dir():  # copied, not linked: the fit stage rewrites these files
        shutil.copytree(old.root / F.KFAC_DIR, part / F.KFAC_DIR)


def _mark(part: Path, name: str, info: dict[str, Any] | None = None) -> None:
    state = part / F.BUILD_STATE
    if info is None:
        (state / name).touch()
    else:
        (state / name).write_text(json.dumps({"info": info, "seconds": 0.0}))


def _seal(part: Path, docs: Sequence[Document], cks: Sequence[Checkpoint], cfg: IndexConfig,
          basis: BasisPin) -> None:
    """Write the resume guard last: a partial killed while being seeded has none and is seeded again."""
    (part / F.BUILD_CONFIG).write_text(json.dumps(build_want(docs, cks, cfg, basis), sort_keys=True))


def _seed_documents_add(old: _Old, part: Path, union: Sequence[Document], basis: BasisPin) -> None:
    _seed_common(old, part, union)
    stages = old.manifest.get("stages", {})
    if "fit" in stages:
        _mark(part, "stage-fit.json", dict(stages["fit"], fit_pool=old.fit_pool))
    if "gradients" in stages:
        grads = stages["gradients"]
        full_shards = old.n // old.cfg.shard_size  # the last, partly old shard is featurized again
        for ci in range(len(old.checkpoints)):
            for rel in _feature_files(grads["views"], ci, grads["dtype"] == "int8"):
                _extend_rows(old.root / rel, part / rel, len(union))
            for s in range(full_shards):
                _mark(part, f"grad-ckpt{ci}-shard{s}.done")
    if "embeddings" in stages:
        _seed_embedding_prefix(old, part)
    _seal(part, union, old.checkpoints, old.cfg, basis)


def _seed_checkpoint_add(old: _Old, part: Path, docs: Sequence[Document], cks: Sequence[Checkpoint],
                         basis: BasisPin) -> None:
    _seed_common(old, part, docs)
    stages = old.manifest.get("stages", {})
    if "gradients" in stages:
        grads = stages["gradients"]
        n_shards = -(-old.n // old.cfg.shard_size)
        for ci in range(len(old.checkpoints)):
            if "fit" in stages:
                _mark(part, f"fit-ckpt{ci}.done")
            for rel in _feature_files(grads["views"], ci, grads["dtype"] == "int8"):
                (part / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(old.root / rel, part / rel)  # every shard is marked done: the build never writes them
            for s in range(n_shards):
                _mark(part, f"grad-ckpt{ci}-shard{s}.done")
    _seal(part, docs, cks, old.cfg, basis)


def _feature_files(views: Sequence[str], ci: int, int8: bool) -> list[str]:
    rels = [F.loss_file(ci)]
    for v in views:
        rels.append(F.feature_file(v, ci))
        if int8:
            rels.append(F.scale_file(v, ci))
    return rels


def _extend_rows(src: Path, dst: Path, n: int) -> None:
    """``dst``: a new ``.npy`` of ``n`` rows whose first rows are ``src``'s (copied in blocks)."""
    old = np.load(src, mmap_mode="r")
    dst.parent.mkdir(parents=True, exist_ok=True)
    new = np.lib.format.open_memmap(dst, mode="w+", dtype=old.dtype, shape=(n,) + old.shape[1:])
    for lo in range(0, len(old), COPY_ROWS):
        hi = min(len(old), lo + COPY_ROWS)
        new[lo:hi] = old[lo:hi]
    new.flush()
    del new


def _seed_embedding_prefix(old: _Old, part: Path) -> None:
    """The old embeddings of whole ``EMBED_BATCH`` batches, exact float32 from the Flat index."""
    from tracer.index.dense import read_faiss

    m = (old.n // EMBED_BATCH) * EMBED_BATCH
    index = read_faiss(old.root / F.EMBEDDING_FAISS, mmap=False)
    prefix = index.reconstruct_n(0, m) if m else np.zeros((0, 0), np.float32)  # type: ignore[attr-defined]
    np.save(part / F.BUILD_STATE / EMBEDDING_PREFIX, np.asarray(prefix, dtype=np.float32))
