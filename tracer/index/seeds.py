"""Stability over projection seeds: gradient-only sibling indexes built with other seeds, inside an index.

A hit's ``interval`` and ``topk_fraction`` measure how much checkpoints disagree. A random projection
adds a second source of noise: the same gradients projected with another seed score differently.
This module measures that axis without touching the main build. After an index is built,
:func:`build_seeds` builds, for each extra seed, a *sibling*: a complete index directory holding only
the gradient stage (and the K-FAC fit it needs), built by the public
:func:`tracer.index.build.build_index` with ``FeaturizeConfig.seed`` and ``IndexConfig.seed`` set to
that seed, from the index's own documents and checkpoints. Layout::

    indexes/NAME/
      seeds/seed-<s>/            one sibling per extra seed (its own manifest, written atomically
                                 by build_index: NAME/seeds/seed-<s>.partial, then renamed)
      seeds.json                 {"index_fingerprint", "seeds": [s, ...], "dirs": {s: dir},
                                  "fingerprints": {s: sibling fingerprint}}, written atomically

Like ``calibration.json``, ``seeds.json`` is measured data beside the checksummed build, tied to the
index's fingerprint: a record made for another build of the index is ignored (with a warning).

At query time, :func:`extend_stability` scores the query's candidates under every checkpoint of
every sibling (its own query encoder: the query gradient is projected with that seed's matrices,
one more forward+backward pass per seed) and widens the :class:`~tracer.retrieval.Stability` of the
main index's hits: ``topk_fraction`` becomes the share of the ``C x S`` (checkpoint, seed) views whose
top-k of the same candidates holds the hit, ``stable`` means every view, and the interval is a 95%
t-interval over the ``C x S`` per-view scores. ``checkpoint_scores`` stay the main seed's. Only over
candidates (a full scan per seed is not done), and only for methods a gradient-only index serves
(``tracin``, ``tracin_cos``; not ``influence`` or ``trak``, which need their own stages).

With ``projection="kfac"`` the seed only picks the K-FAC fit sample: when the fit sample is the whole
corpus (``fit_docs >= n_docs``) every sibling equals the main index and the axis measures nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracer.errors import InvalidRequestError

logger = logging.getLogger(__name__)

__all__ = ["SEEDS_DIR", "SEEDS_FILE", "build_seeds", "extend_stability", "load_record", "n_views", "widen"]

SEEDS_DIR = "seeds"  # sibling indexes, one directory per extra seed
SEEDS_FILE = "seeds.json"  # the record of the siblings, beside manifest.json

_SIBLINGS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # retriever -> its _Siblings
_LOCK = threading.Lock()


def build_seeds(index_dir: str | Path, seeds: Sequence[int], *, checkpoint_dirs: Sequence[str | Path] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Build a gradient-only sibling of the index for each seed in ``seeds`` and record them in ``seeds.json``.

    Args:
        index_dir: A built index.
        seeds: Extra projection seeds; the index's own seed and repeats are dropped.
        checkpoint_dirs: Where the index's checkpoints are now, if they moved (in order).
        progress: Show the builds' progress bars.

    Returns:
        The record written (see the module docstring). Siblings already built for this index are kept.

    Raises:
        InvalidRequestError: No seed other than the index's own, or ``checkpoint_dirs`` of the wrong length.
        IndexMismatchError, DataError: The index or its documents/checkpoints cannot be read.
    """
    from tracer.corpus.io import DocumentFile
    from tracer.index.build import IndexConfig, build_index
    from tracer.index.manifest import read_manifest
    from tracer.model.loading import Checkpoint

    root = Path(index_dir)
    manifest = read_manifest(root)
    cfg = IndexConfig.from_dict(manifest["config"])
    own = cfg.featurize.seed
    extra = sorted({int(s) for s in seeds} - {own})
    if not extra:
        raise InvalidRequestError(f"seeds: give at least one seed other than the index's own ({own})")
    recs = manifest["checkpoints"]
    if checkpoint_dirs is not None and len(checkpoint_dirs) != len(recs):
        raise InvalidRequestError(f"checkpoint_dirs: {len(checkpoint_dirs)} given, the index has {len(recs)}")
    cks = [Checkpoint(Path(checkpoint_dirs[i] if checkpoint_dirs else c["path"]), float(c["lr"]), int(c.get("step", 0)))
           for i, c in enumerate(recs)]
    docs = DocumentFile.from_index(root)
    old = load_record(root, str(manifest["fingerprint"])) or {"dirs": {}, "fingerprints": {}}
    record: dict[str, Any] = {"index_fingerprint": str(manifest["fingerprint"]), "main_seed": own,
                              "seeds": [], "dirs": {}, "fingerprints": {}}
    for s in sorted(set(extra) | {int(x) for x in old.get("dirs", {})}):
        rel = f"{SEEDS_DIR}/seed-{s}"
        if str(s) in old.get("dirs", {}) and (root / rel / "manifest.json").is_file():
            fp = old["fingerprints"][str(s)]
        else:
            sib = dataclasses.replace(cfg, featurize=dataclasses.replace(cfg.featurize, seed=s), seed=s,
                                      influence=False, trak=False, embeddings=False, bm25=False)
            (root / SEEDS_DIR).mkdir(exist_ok=True)
            logger.info("building the seed-%d sibling of %s", s, root)
            built = build_index(docs, cks, root / rel, sib, tokenizer_path=manifest.get("tokenizer") or None,
                                overwrite=True, corpus_path=str(manifest["corpus"].get("path", "")), progress=progress)
            fp = str(built["fingerprint"])
        record["seeds"].append(s)
        record["dirs"][str(s)] = rel
        record["fingerprints"][str(s)] = fp
    _write_json(root / SEEDS_FILE, record)
    return record


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_record(index_dir: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The index's ``seeds.json``; ``None`` when there is none or it was made for another build (warned)."""
    path = Path(index_dir) / SEEDS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None
    if record.get("index_fingerprint") != fingerprint:
        logger.warning("ignoring %s: made for another build of the index (run build_seeds again)", path)
        return None
    return record


def widen(main_scores: np.ndarray, main_fraction: np.ndarray, seed_views: Sequence[np.ndarray],
          hit_cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k fraction and 95% t-interval of hits over (checkpoint, seed) views.

    Args:
        main_scores: ``(n_hits, C)`` the hits' per-checkpoint scores under the main seed.
        main_fraction: ``(n_hits,)`` their top-k fraction over the main seed's ``C`` checkpoints.
        seed_views: Per extra seed, ``(C_s, n_candidates)`` per-checkpoint scores of every candidate.
        hit_cols: ``(n_hits,)`` each hit's column among the candidates.
        k: The cutoff of a view's top-k (ties broken by the lower column, as :func:`tracer.retrieval.top_k`).

    Returns:
        ``(topk_fraction, low, high)``, each ``(n_hits,)``, over all ``C + sum(C_s)`` views.
    """
    from scipy.stats import t as student

    c_main = main_scores.shape[1]
    count = np.rint(np.asarray(main_fraction, dtype=np.float64) * c_main)
    values = [np.asarray(main_scores, dtype=np.float64)]
    n_views = c_main
    for per in seed_views:
        per = np.asarray(per, dtype=np.float64)
        for row in per:
            order = np.lexsort((np.arange(row.size), -row))[:k]  # (-score, column), like top_k
            count += np.isin(hit_cols, order)
        values.append(per[:, hit_cols].T)
        n_views += per.shape[0]
    allv = np.concatenate(values, axis=1)  # (n_hits, n_views)
    mean = allv.mean(axis=1)
    half = student.ppf(0.975, n_views - 1) * allv.std(axis=1, ddof=1) / np.sqrt(n_views)
    return count / n_views, mean - half, mean + half


class _Siblings:
    """The sibling retrievers of one main retriever, opened lazily."""

    def __init__(self, main: Any, record: dict[str, Any]) -> None:
        self._main = weakref.ref(main)  # not a strong reference: the cache's weak key must be able to go
        self.record = record
        self._retrievers: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def main(self) -> Any:
        main = self._main()
        if main is None:
            raise RuntimeError("the index's retriever is gone")
        return main

    def retriever(self, seed: int) -> Any:
        from tracer.index.store import IndexStore
        from tracer.retrieval import Retriever

        with self._lock:  # concurrent queries open each sibling once
            if seed not in self._retrievers:
                store = IndexStore.open(self.main.store.root / self.record["dirs"][str(seed)])
                if store.doc_ids != self.main.store.doc_ids:
                    raise InvalidRequestError(f"{store.root}: the seed-{seed} sibling holds other documents than "
                                              "its index; run build_seeds again")
                self._retrievers[seed] = Retriever(store, checkpoint_dirs=self.main.checkpoint_dirs,
                                                   batching=self.main.batching, tokenizer=self.main.tokenizer_path)
            return self._retrievers[seed]


def siblings(retriever: Any) -> _Siblings | None:
    """The seed siblings of ``retriever``'s index (``None`` without a valid ``seeds.json``); cached per retriever."""
    with _LOCK:
        if retriever in _SIBLINGS:
            return _SIBLINGS[retriever]
        record = load_record(retriever.store.root, retriever.store.fingerprint)
        got = _Siblings(retriever, record) if record and record.get("seeds") else None
        _SIBLINGS[retriever] = got
        return got


def _serves(sib: _Siblings, method: str) -> bool:
    from tracer.methods.base import GradientMethod

    for s in sib.record["seeds"]:
        r = sib.retriever(int(s))
        if method not in r.available_methods() or not isinstance(r.method(method), GradientMethod):
            return False
    return True


def n_views(retriever: Any, method: str) -> int:
    """How many (checkpoint, seed) views a hit's stability spans for ``method`` over candidates: the
    method's checkpoints, times the seeds (the index's own and its siblings') when the siblings serve it."""
    n_ck = len(retriever.method(method).checkpoint_indices())
    sib = siblings(retriever)
    try:
        if sib is None or not _serves(sib, method):
            return n_ck
        return n_ck + sum(len(sib.retriever(int(s)).method(method).checkpoint_indices())
                          for s in sib.record["seeds"])
    except Exception as e:  # as in extend_stability
        _disable(retriever, e)
        return n_ck


def _disable(retriever: Any, error: BaseException) -> None:
    """Stop using ``retriever``'s seed siblings (once, with a warning): stability falls back to its checkpoints."""
    with _LOCK:
        _SIBLINGS[retriever] = None
    logger.warning("seed siblings of %s disabled (stability spans its checkpoints only): %s",
                   retriever.store.root, error)


def extend_stability(retriever: Any, st: Any, prompt: str, target: str, method: str, k: int,
                     candidate_rows: np.ndarray | None, hits: np.ndarray) -> Any:
    """``st`` (a :class:`~tracer.retrieval.Stability` of ``hits``) widened over the index's seed siblings.

    Returns ``st`` unchanged when there is nothing to widen: no siblings, no stability, a full-corpus
    scan (``candidate_rows is None``) or a method the siblings cannot serve.
    """
    from tracer.methods.kernel import checkpoint_scores
    from tracer.retrieval import Stability

    if st is None or candidate_rows is None or not len(hits):
        return st
    sib = siblings(retriever)
    if sib is None:
        return st
    try:
        if not _serves(sib, method):
            return st
        views = []
        for s in sib.record["seeds"]:
            r = sib.retriever(int(s))
            q = r.features([(prompt, target)], [method], "full")[0]
            views.append(checkpoint_scores(r.store, q, candidate_rows, r.method(method)))
    except Exception as e:  # an optional add-on: a broken sibling must not fail the index's queries
        _disable(retriever, e)
        return st
    pos = {int(x): i for i, x in enumerate(candidate_rows)}
    cols = np.array([pos[int(h)] for h in hits], dtype=np.int64)
    frac, low, high = widen(st.checkpoint_scores, st.topk_fraction, views, cols, k)
    return Stability(st.checkpoint_scores, frac, low, high)
