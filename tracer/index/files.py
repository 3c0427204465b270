"""Names of the files in an index directory — one place, commented, ``UPPER_SNAKE``.

Layout of ``indexes/<name>/``::

    manifest.json                 format/tracer version, fingerprints, configs, file checksums
    doc_ids.txt                   one external doc id per line; line number = row
    documents.jsonl, doc_offsets.npy   texts (and facts) with byte offsets for lazy lookup
    features/<view>/ckpt<i>.npy   (n_docs, dim) float16 projected gradients, memory-mapped
    features/losses_ckpt<i>.npy   (n_docs,) float32 per-example losses
    gradient.faiss                FAISS IP index over the TracIn concatenation [sqrt(lr_c) g_c]
    influence/fisher_<j>.npy      (d_j, d_j) float32 per-block projected empirical Fisher (final ckpt)
    trak/ckpt<i>.npy, trak/xtx_ckpt<i>.npy   TRAK sketch features (float16) and their Gram matrices
    embeddings.npy, embedding.faiss           mean-pooled hidden states (final ckpt), cosine
    bm25/                         bm25s index (its own pickle-free format)
"""

from __future__ import annotations

import os
from typing import Any

FORMAT_VERSION = 2  # bump when the layout changes incompatibly
FORMAT_HISTORY = {1: "random projections, fp16 features, full FAISS copy",
                  2: "K-FAC eigenbasis and dimension budget, int8 features, compact FAISS over top coordinates"}
MANIFEST = "manifest.json"  # the index's identity card
DOC_IDS = "doc_ids.txt"  # row -> doc_id
DOCUMENTS = "documents.jsonl"  # {id, text, facts} per row
DOC_OFFSETS = "doc_offsets.npy"  # (n_docs + 1,) int64 byte offsets into DOCUMENTS
FEATURES_DIR = "features"  # per view and checkpoint feature matrices
GRADIENT_FAISS = "gradient.faiss"  # FAISS over the top coordinates of the TracIn concatenation
GRADIENT_COORDS = "gradient_coords.npy"  # (n_ckpt, m) coordinates FAISS holds per checkpoint
KFAC_DIR = "kfac"  # fitted eigenbases per checkpoint
MOMENTS_DIR = "moments"  # per-coordinate second moments per view and checkpoint
INFLUENCE_DIR = "influence"  # per-block Fisher matrices
TRAK_DIR = "trak"  # TRAK sketches and Grams
EMBEDDINGS = "embeddings.npy"  # (n_docs, d_model) float16, unit norm
EMBEDDING_FAISS = "embedding.faiss"  # FAISS IP (cosine) over embeddings
BM25_DIR = "bm25"  # bm25s save_dir
BUILD_STATE = "build_state"  # inside the partial dir only: shard and stage done-markers
BUILD_CONFIG = "build_config.json"  # inside the partial dir only: what is being built (resume guard)


def feature_file(view: str, ckpt: int) -> str:
    return f"{FEATURES_DIR}/{view}/ckpt{ckpt}.npy"


def scale_file(view: str, ckpt: int) -> str:
    return f"{FEATURES_DIR}/{view}/ckpt{ckpt}.scale.npy"


def kfac_file(ckpt: int) -> str:
    return f"{KFAC_DIR}/ckpt{ckpt}.safetensors"


def prescale_file(ckpt: int) -> str:
    return f"{KFAC_DIR}/prescale_ckpt{ckpt}.npy"


def moment_file(view: str, ckpt: int) -> str:
    return f"{MOMENTS_DIR}/{view}_ckpt{ckpt}.npy"


def loss_file(ckpt: int) -> str:
    return f"{FEATURES_DIR}/losses_ckpt{ckpt}.npy"


def fisher_file(block: int) -> str:
    return f"{INFLUENCE_DIR}/fisher_{block}.npy"


def trak_file(ckpt: int) -> str:
    return f"{TRAK_DIR}/ckpt{ckpt}.npy"


def trak_xtx_file(ckpt: int) -> str:
    return f"{TRAK_DIR}/xtx_ckpt{ckpt}.npy"


def load_array(path: Any, mmap: bool = False) -> Any:
    """``np.load`` of an index array (never a pickle); any failure becomes one ``IndexCorruptError`` naming the file.

    Symlinks are refused: an index is a self-contained directory.
    """
    import numpy as np

    from tracer.errors import IndexCorruptError

    if os.path.islink(path):
        raise IndexCorruptError(f"{path} is a symlink; an index must not point outside itself")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise IndexCorruptError(f"{path} is missing (the index is incomplete; rebuild it)") from None
    except Exception as exc:  # numpy raises ValueError, OSError, tokenize errors... for a damaged header
        raise IndexCorruptError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:200]}); rebuild the index") \
            from None
