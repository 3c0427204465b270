"""tracer: which training documents taught my language model this fact?

Offline, ``tracer build`` featurizes a training corpus (projected per-example loss
gradients for several checkpoints, embeddings, BM25) into an index directory.
Online, :class:`Tracer` (in-process) or the gRPC service answers queries
``(prompt, target)`` with ranked proponents scored by TracIn, influence functions,
TRAK, embeddings or BM25, and reports retrieval metrics when ground truth is known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Document", "Hit", "Query", "TraceResult", "Tracer", "build_index", "__version__"]

from tracer.types import Document, Hit, Query, TraceResult

if TYPE_CHECKING:
    from tracer.indexing import build_index
    from tracer.tracer import Tracer


def __getattr__(name: str) -> Any:
    # Lazy: importing tracer must not import torch/faiss (no heavy import-time work).
    if name == "Tracer":
        from tracer.tracer import Tracer

        return Tracer
    if name == "build_index":
        from tracer.indexing import build_index

        return build_index
    raise AttributeError(name)
