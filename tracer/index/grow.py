"""``tracer add``: grow a built index by documents or by a checkpoint, atomically, without a rebuild.

Both operations are a *resumed build of the grown index*: the previous version's finished work is
seeded into ``<index>.partial`` (the build's own partial directory, with its resume guard and
done-markers), then the build's stages run there and the result is swapped in with the build's
atomic ``publish``. A crash at any point leaves the old index in place, valid and openable; rerunning
the same ``add`` resumes from the seeded partial.

* **Documents** (``add_documents``): the old feature files (and TRAK rows, and ``documents.jsonl``)
  are copied by the kernel (``copy_file_range``; copy-on-write where the file system can) and grown
  to the union's height in place (a rewritten ``.npy`` header, zero-filled tail), their shards marked
  done; only the new documents are read, tokenized and featurized (the last, partly old shard is
  featurized again so batches line up exactly with a from-scratch build). Embeddings of old rows are
  recovered exactly (float32) from the previous Flat index; new ones are embedded in aligned
  batches. The old corpus is read once, lazily, for the fingerprints. Ids already in the index are
  refused.
* **Checkpoint** (``add_checkpoint``): appended as the newest checkpoint. Old checkpoints' feature
  files are hard-linked (never written); the new checkpoint gets its K-FAC fit on the index's
  fit sample and every document is featurized under it. The last checkpoint is "the model", so
  embeddings are recomputed.

Statistics policy (recorded in the manifest under ``statistics``):

* **Kept from the original build** -- the feature *basis*: K-FAC eigenvectors and prescale, the
  per-layer widths of the dimension budget, and the fit sample (drawn from the first ``fit_pool``
  documents, i.e. the original corpus). Changing them would change every stored row. Adding
  documents also keeps the gradient FAISS *space*: its coordinates per checkpoint (the top
  ``lr * E[g^2]`` ones of the original corpus) and its trained quantizer (SQ8 ranges), so the old
  rows' codes stay valid and only the new rows are encoded (``BasisPin.faiss``; the manifest
  records ``statistics.faiss_fit_rows``). A new checkpoint widens the space, so it is refitted.
* **Over the grown index** -- every statistic of the stored features. Sums over rows are *updated*
  from the new rows (``add_documents`` seeds the old ones in ``build_state/prefix/``): the moments
  ``E[g_i^2]`` (EK-FAC diagonal, TrackStar normaliser) and the TRAK Grams. The rest is recomputed
  over every row: the influence Fisher, and BM25 over all texts.

So ``add`` equals a from-scratch ``build_index`` of the union with ``basis=BasisPin(fit_pool=...,
widths=..., faiss=...)``: byte for byte in every file except the moments and TRAK Grams after adding
documents, which agree to float64 summation order (``tests/test_add.py`` checks 1e-9 relative, and
that everything computed from them is byte-identical).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tracer.corpus.io import DocumentFile, Fingerprinter, document_row, id_hash
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
    write_documents,
)
from tracer.index.manifest import read_manifest
from tracer.index.stages import EMBED_BATCH, EMBEDDING_PREFIX, FAISS_PREFIX, seed_row_prefix
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

    def documents(self) -> tuple[DocumentFile, Fingerprinter]:
        """The stored documents (read lazily), with their loss split, checked against the manifest in one
        streaming pass; and the fingerprint state after them (feed it new documents for the union's)."""
        want = self.manifest["corpus"].get("loss_split")
        if want is None:
            raise IndexMismatchError(f"{self.root} was built before `tracer add` existed (its documents do not "
                                     "record their prompt/target split); rebuild it once with `tracer build`")
        try:
            docs = DocumentFile.from_index(self.root)
            fp = Fingerprinter().update(docs)
        except (OSError, ValueError, KeyError, DataError) as e:
            raise IndexMismatchError(f"{self.root}: cannot read {F.DOCUMENTS} ({e}); rebuild the index") from None
        corpus, split = fp.digests()
        if len(docs) != self.n or split != want or corpus != self.manifest["corpus"].get("fingerprint", corpus):
            raise IndexMismatchError(f"{self.root}: {F.DOCUMENTS} does not match the manifest; rebuild the index")
        docs._memo["fingerprints"] = (corpus, split)
        return docs, fp

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


class _Union(Sequence[Document]):
    """The old index's documents followed by the new ones (iterated lazily), with the union's fingerprints."""

    def __init__(self, old: Sequence[Document], new: Sequence[Document], fingerprints: tuple[str, str]) -> None:
        self.old, self.new = old, new
        self._memo = {"fingerprints": fingerprints}

    def __len__(self) -> int:
        return len(self.old) + len(self.new)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = i + len(self) if i < 0 else i
        if not 0 <= j < len(self):
            raise IndexError(f"document {i} out of range ({len(self)} documents)")
        return self.old[j] if j < len(self.old) else self.new[j - len(self.old)]

    def __iter__(self) -> Iterator[Document]:
        yield from self.old
        yield from self.new


def _already_in(old: DocumentFile, root: Path, docs: Sequence[Document]) -> list[str]:
    """Ids of ``docs`` the index already holds, in ``docs`` order (8-byte id hashes, not a set of ids;
    a hash match is confirmed against the stored id)."""
    with open(root / F.DOC_IDS, encoding="utf-8", newline="\n") as fh:  # no newline translation: ids as written
        have = np.fromiter((id_hash(line[:-1]) for line in fh), dtype=np.int64, count=len(old))
    order = np.argsort(have, kind="stable")
    sorted_have = have[order]
    dup = []
    for d in docs:
        h = id_hash(d.doc_id)
        j = int(np.searchsorted(sorted_have, h))
        while j < len(sorted_have) and sorted_have[j] == h:
            if old[int(order[j])].doc_id == d.doc_id:
                dup.append(d.doc_id)
                break
            j += 1
    return dup


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
        old_docs, fp = old.documents()
        dup = _already_in(old_docs, root, docs)
        if dup:
            raise DataError(f"{len(dup)} of the {len(docs)} documents to add are already in {root} "
                            f"(first: {dup[0]!r}); tracer add appends new ids only")
        union = _Union(old_docs, docs, fp.update(docs).digests())
        # the gradient FAISS space (coordinates, quantizer) stays the one fitted before: old codes stay valid
        faiss = str(root.resolve()) if "gradient_faiss" in old.manifest.get("stages", {}) else None
        basis = BasisPin(fit_pool=old.fit_pool, faiss=faiss)
        part = _partial(root, union, old.checkpoints, old.cfg, basis)
        if part is not None:
            _seed_documents_add(old, part, union, basis)
        entry = history_entry("add_documents", added_documents=len(docs), n_documents=len(union),
                              checkpoints=len(old.checkpoints), corpus=corpus_path)
        try:
            return _finish(old, union, old.checkpoints, basis, entry, corpus_path, progress, fail_after_shards)
        finally:
            old_docs.close()


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
        docs, _ = old.documents()
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
    if isinstance(docs, _Union):
        _append_documents(old.root, part, docs.new)
    else:
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
        # the FAISS vectors of the rows whose features are kept stay; the stage encodes the rest
        (part / F.BUILD_STATE / FAISS_PREFIX).write_text(json.dumps({"rows": full_shards * old.cfg.shard_size}))
        # sums over rows (moments, TRAK Grams) of the rows kept, completed from the new rows by the stages
        m = seed_row_prefix(old.root, part, full_shards * old.cfg.shard_size, old.cfg, len(old.checkpoints),
                            grads["views"], grads["layout"])
        if m and "trak" in stages:
            for ci in range(len(old.checkpoints)):
                _extend_rows(old.root / F.trak_file(ci), part / F.trak_file(ci), len(union))
    if "embeddings" in stages:
        _seed_embedding_prefix(old, part)
    _seal(part, union, old.checkpoints, old.cfg, basis)


def _append_documents(old_root: Path, part: Path, new: Sequence[Document]) -> None:
    """The union's ``documents.jsonl``, offsets and ``doc_ids.txt``: the old files copied by the kernel, the
    new documents appended (the bytes ``write_documents`` would write for the whole union)."""
    offsets = np.load(old_root / F.DOC_OFFSETS)
    grown = np.empty(len(offsets) + len(new), dtype=np.int64)
    grown[:len(offsets)] = offsets
    shutil.copyfile(old_root / F.DOCUMENTS, part / F.DOCUMENTS)
    shutil.copyfile(old_root / F.DOC_IDS, part / F.DOC_IDS)
    i = len(offsets) - 1
    with open(part / F.DOCUMENTS, "ab") as fh, open(part / F.DOC_IDS, "a", encoding="utf-8") as ids:
        for d in new:
            line = json.dumps(document_row(d)).encode() + b"\n"
            fh.write(line)
            grown[i + 1] = grown[i] + len(line)
            ids.write(d.doc_id + "\n")
            i += 1
    if i != len(grown) - 1:
        raise ValueError(f"the documents to add yielded {i - len(offsets) + 1}, but have length {len(new)}")
    np.save(part / F.DOC_OFFSETS, grown)


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


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header ``np.lib.format.open_memmap`` writes for a C-order array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _extend_rows(src: Path, dst: Path, n: int) -> None:
    """``dst``: a new ``.npy`` of ``n`` rows whose first rows are ``src``'s, the rest zero.

    The file is copied by the kernel (``shutil.copyfile``: ``copy_file_range``/``sendfile``, copy-on-write
    where the file system can), its header rewritten for the new shape and its tail zero-filled by
    ``truncate`` (sparse); only when the new header would not fit the old one's length are rows copied
    through memory, in blocks.
    """
    old = np.load(src, mmap_mode="r")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shape = (n,) + old.shape[1:]
    header = _npy_header(old.dtype, shape)
    if len(header) == old.offset and old.flags.c_contiguous:
        row_bytes = int(np.prod(old.shape[1:], dtype=np.int64)) * old.dtype.itemsize
        offset = old.offset
        del old
        shutil.copyfile(src, dst)
        with open(dst, "r+b") as fh:
            fh.write(header)
            fh.truncate(offset + n * row_bytes)
        return
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
    path = part / F.BUILD_STATE / EMBEDDING_PREFIX
    if not m:
        np.save(path, np.zeros((0, 0), np.float32))
        return
    index = read_faiss(old.root / F.EMBEDDING_FAISS)  # memory-mapped where FAISS can
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(m, index.d))  # type: ignore
    for lo in range(0, m, COPY_ROWS):
        hi = min(m, lo + COPY_ROWS)
        out[lo:hi] = index.reconstruct_n(lo, hi - lo)  # type: ignore[attr-defined]
    out.flush()
    del out
