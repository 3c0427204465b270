"""BM25 (Robertson et al.) over the corpus with ``bm25s``; its save format is pickle-free."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

STOPWORDS = "en"  # recorded in the manifest with the tokenizer pattern
TOKEN_PATTERN = r"(?u)\b\w\w+\b"


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, lower=True, stopwords=STOPWORDS, token_pattern=TOKEN_PATTERN,
                          return_ids=False, show_progress=False)


def build_bm25(texts: Iterable[str], out_dir: str | Path, k1: float = 1.5, b: float = 0.75,
               n: int | None = None) -> None:
    """Index ``texts`` (row order; any iterable, e.g. a generator over a lazy corpus) and save to ``out_dir``.

    The texts are consumed as they come; what grows with the corpus is ``bm25s``'s own state: one
    list of token ids per document while it tokenizes, then its sparse score matrix.

    Raises:
        ValueError: ``n`` is given and the iterable yielded another number of texts.
    """
    import bm25s

    retriever = bm25s.BM25(k1=k1, b=b)
    # Token ids in order of first appearance (not a set order): the saved files are byte-identical
    # across processes, whatever PYTHONHASHSEED is.
    tokenized = bm25s.tokenize(texts, lower=True, stopwords=STOPWORDS, token_pattern=TOKEN_PATTERN,
                               return_ids=True, show_progress=False)
    if n is not None and len(tokenized.ids) != n:
        raise ValueError(f"BM25: the corpus yielded {len(tokenized.ids)} texts, expected {n}")
    retriever.index(tokenized, show_progress=False)
    retriever.save(str(out_dir), show_progress=False)


class BM25Index:
    """A loaded bm25s index that scores every row for a query text."""

    def __init__(self, path: str | Path) -> None:
        import bm25s

        self._r = bm25s.BM25.load(str(path), mmap=True, show_progress=False)

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every row for ``text``: ``(n_docs,)`` float32 (0 where no term matches)."""
        tokens = _tokenize([text])[0]
        vocab = self._r.vocab_dict
        tokens = [t for t in tokens if t in vocab]
        if not tokens:
            return np.zeros(self._r.scores["num_docs"], dtype=np.float32)
        return np.asarray(self._r.get_scores(tokens), dtype=np.float32)
