"""``IndexStore``: a built index directory opened for reading (memory-mapped, lazy)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tracer.errors import IndexCorruptError, IndexNotReadyError, NotFoundError
from tracer.index import files as F
from tracer.index.manifest import read_manifest
from tracer.types import Document


class IndexStore:
    """Read access to an index directory.

    Use :meth:`open`; arrays are memory-mapped on first use, so opening is fast.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.doc_ids: list[str] = (root / F.DOC_IDS).read_text(encoding="utf-8").split("\n")[:-1]
        self.row_of: dict[str, int] = {d: i for i, d in enumerate(self.doc_ids)}
        n = manifest["corpus"]["n_documents"]
        if len(self.doc_ids) != n:
            raise IndexCorruptError(f"{root}: {F.DOC_IDS} lists {len(self.doc_ids)} ids, manifest says {n}")
        self._offsets = F.load_array(root / F.DOC_OFFSETS)
        self._cached_methods: list[Any] = []
        # Per-instance caches (memmaps, FAISS, BM25 loaded once per store, freed by clear_caches).
        for name, size in (("features", 64), ("losses", 16), ("fishers", 1), ("trak_features", 16),
                           ("embeddings", 1), ("faiss", 2), ("bm25", 1), ("moments", 64), ("kfac_factors", 16),
                           ("gradient_coords", 1)):
            cached = functools.lru_cache(maxsize=size)(getattr(self, f"_{name}"))
            setattr(self, name, cached)
            self._cached_methods.append(cached)

    def clear_caches(self) -> None:
        """Drop every loaded array, FAISS index and BM25 index (they reload on next use)."""
        for cached in self._cached_methods:
            cached.cache_clear()

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> IndexStore:
        """Open and check an index.

        Args:
            path: Index directory.
            verify: Check every file's sha256 (otherwise sizes only).

        Raises:
            NotFoundError, IndexCorruptError, IndexMismatchError: see ``read_manifest``.
        """
        root = Path(path)
        return cls(root, read_manifest(root, verify=verify))

    # --- identity ---
    @property
    def name(self) -> str:
        return self.root.name

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def n_documents(self) -> int:
        return len(self.doc_ids)

    @property
    def stages(self) -> dict[str, Any]:
        return dict(self.manifest.get("stages", {}))

    def has(self, stage: str) -> bool:
        return stage in self.stages

    def require(self, stage: str, why: str) -> None:
        if not self.has(stage):
            raise IndexNotReadyError(f"index {self.name!r} was built without {stage!r}, which {why} needs "
                                     f"(rebuild with it enabled)")

    # --- documents ---
    def rows(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``doc_ids``; raises ``NotFoundError`` naming the first unknown id."""
        try:
            return np.asarray([self.row_of[d] for d in doc_ids], dtype=np.int64)
        except KeyError as exc:
            raise NotFoundError(f"unknown doc_id {exc.args[0]!r} in index {self.name!r}") from None

    def document(self, row: int) -> Document:
        with open(self.root / F.DOCUMENTS, "rb") as fh:
            fh.seek(int(self._offsets[row]))
            d = json.loads(fh.readline())
        return Document(doc_id=d["id"], text=d["text"], facts=tuple(d.get("facts", ())))

    def documents(self, doc_ids: Sequence[str]) -> list[Document]:
        return [self.document(int(r)) for r in self.rows(doc_ids)]

    # --- arrays (memory-mapped on first use) ---
    def _features(self, view: str, ckpt: int) -> Any:
        """``(n_docs, dim)`` gradient features of one view and checkpoint.

        A float16/float32 memmap, or an :class:`tracer.index.quant.Int8Rows` (int8 storage) whose
        row reads return dequantised float32.
        """
        from tracer.index.quant import open_features

        self.require("gradients", "gradient features")
        if view not in self.manifest.get("views", []):
            raise IndexNotReadyError(f"index {self.name!r} has no {view!r} gradient view "
                                     f"(built: {self.manifest.get('views')})")
        return open_features(self.root, view, ckpt, self.layout)

    def _moments(self, view: str, ckpt: int) -> np.ndarray:
        """``(dim,)`` float64 ``E[g_i^2]`` per stored coordinate (EK-FAC's corrected diagonal in a kfac index)."""
        self.require("moments", "per-coordinate moments")
        m = F.load_array(self.root / F.moment_file(view, ckpt))
        width = sum(b["size"] for b in self.layout)
        if m.shape != (width,):
            raise IndexCorruptError(f"{self.root / F.moment_file(view, ckpt)} has shape {m.shape}; the layout is "
                                    f"{width} wide")
        return m

    def _kfac_factors(self, ckpt: int) -> Any:
        """The fitted K-FAC eigenbases of one checkpoint (query featurizing in a kfac index)."""
        from tracer.featurize.kfac import load_factors

        self.require("fit", "the K-FAC basis")
        try:
            return load_factors(self.root / F.kfac_file(ckpt))
        except Exception as exc:  # safetensors raises its own errors for a damaged header
            raise IndexCorruptError(f"{self.root / F.kfac_file(ckpt)} is damaged ({str(exc)[:200]}); "
                                    "rebuild the index") from None

    def _gradient_coords(self) -> np.ndarray:
        """``(n_ckpt, m)`` coordinates of each checkpoint that the gradient FAISS index holds."""
        self.require("gradient_faiss", "gradient search")
        return F.load_array(self.root / F.GRADIENT_COORDS)

    def _losses(self, ckpt: int) -> np.ndarray:
        return F.load_array(self.root / F.loss_file(ckpt), mmap=True)

    def _fishers(self) -> list[np.ndarray]:
        self.require("influence", "influence")
        n = self.stages["influence"]["n_blocks"]
        return [F.load_array(self.root / F.fisher_file(j)) for j in range(n)]

    def _trak_features(self, ckpt: int) -> tuple[np.ndarray, np.ndarray]:
        self.require("trak", "trak")
        return (F.load_array(self.root / F.trak_file(ckpt), mmap=True),
                F.load_array(self.root / F.trak_xtx_file(ckpt)))

    def _embeddings(self) -> np.ndarray:
        self.require("embeddings", "embedding")
        return F.load_array(self.root / F.EMBEDDINGS, mmap=True)

    def _faiss(self, which: str) -> Any:
        from tracer.index.dense import read_faiss

        stage, fname = {"gradient": ("gradient_faiss", F.GRADIENT_FAISS),
                        "embedding": ("embeddings", F.EMBEDDING_FAISS)}[which]
        self.require(stage, f"{which} search")
        try:
            return read_faiss(self.root / fname)
        except Exception as exc:  # FAISS raises RuntimeError for a damaged header
            raise IndexCorruptError(f"{self.root / fname} is damaged ({str(exc).strip().splitlines()[-1][:200]}); "
                                    "rebuild the index") from None

    def _bm25(self) -> Any:
        from tracer.index.lexical import BM25Index

        self.require("bm25", "bm25")
        return BM25Index(self.root / F.BM25_DIR)

    def bytes_per_example(self) -> dict[str, dict[str, float]]:
        """Every stored byte by component: ``{component: {"per_example": b, "fixed": b}}``.

        Per-example components grow with the corpus (features, FAISS codes, TRAK rows, texts);
        fixed ones do not (K-FAC bases, TRAK Grams, moments), reported in total bytes.
        """
        fixed_parts = (F.KFAC_DIR, F.MOMENTS_DIR, F.GRADIENT_COORDS, F.INFLUENCE_DIR)
        out: dict[str, dict[str, float]] = {}
        n = max(1, self.n_documents)
        for rel, meta in self.manifest.get("files", {}).items():
            parts = rel.split("/")
            comp = "/".join(parts[:2]) if parts[0] == F.FEATURES_DIR and len(parts) > 2 else parts[0]
            if parts[0] == F.FEATURES_DIR and parts[-1].startswith("losses"):
                comp = "features/losses"
            fixed = parts[0] in fixed_parts or (parts[0] == F.TRAK_DIR and parts[-1].startswith("xtx"))
            if parts[0] == F.BM25_DIR:
                comp = "bm25"
            entry = out.setdefault(comp + (" (fixed)" if fixed else ""), {"per_example": 0.0, "fixed": 0.0})
            if fixed:
                entry["fixed"] += meta["size"]
            else:
                entry["per_example"] += meta["size"] / n
        return {k: {"per_example": round(v["per_example"], 1), "fixed": int(v["fixed"])} for k, v in
                sorted(out.items())}

    def tracked_modules(self) -> list[dict[str, Any]]:
        """Each tracked parameter group: its stored shape, full shape and share of fitted energy kept."""
        kept = self.stages.get("fit", {}).get("energy_kept", {})
        rows = []
        for b in self.layout:
            full = [b["d_out"], b["d_in"]] if b["kind"] == "linear" else [b["d_out"]]
            rows.append({"module": b["module"], "kind": b["kind"], "shape": list(b["shape"]), "full": full,
                         "energy_kept": kept.get(f"{b['module']}:{b['kind']}")})
        stored = {f"{r['module']}:{r['kind']}" for r in rows}
        for key, share in kept.items():  # groups the budget left out entirely
            if key not in stored:
                module, kind = key.rsplit(":", 1)
                rows.append({"module": module, "kind": kind, "shape": [0], "full": [], "energy_kept": share})
        return rows

    @property
    def layout(self) -> list[dict[str, Any]]:
        return list(self.stages.get("gradients", {}).get("layout", []))

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.manifest["checkpoints"])
