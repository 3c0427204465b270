"""Training-corpus and query files: loading, writing, fingerprinting, benchmark readers."""

from __future__ import annotations

from tracer.corpus.io import (
    DocumentFile,
    corpus_fingerprint,
    documents_to_rows,
    load_corpus,
    load_queries,
    open_corpus,
    write_jsonl,
)
from tracer.corpus.readers import load_lama_templates, read_ftrace, read_lama_trex

__all__ = [
    "DocumentFile",
    "corpus_fingerprint",
    "documents_to_rows",
    "load_corpus",
    "load_lama_templates",
    "load_queries",
    "open_corpus",
    "read_ftrace",
    "read_lama_trex",
    "write_jsonl",
]
