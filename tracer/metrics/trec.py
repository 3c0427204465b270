"""TREC run and qrels files: the exchange format between tracer and ``trec_eval``.

This module owns reading and writing the two whitespace-separated text formats:

* run lines ``qid Q0 doc_id rank score tag`` (rank 1-based, best first);
* qrels lines ``qid 0 doc_id relevance`` (tracer writes relevance ``1`` only).

Ids must be non-empty and free of whitespace, since whitespace separates the fields.
Writes are atomic (temp file, then rename). Malformed input raises ``ValueError``
naming the file and the 1-based line number.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from tracer._filemode import make_public

logger = logging.getLogger(__name__)

__all__ = ["read_qrels", "read_run", "run_doc_ids", "write_qrels", "write_run"]

# Number of fields on a run line: qid Q0 doc_id rank score tag.
RUN_FIELDS = 6
# Number of fields on a qrels line: qid iteration doc_id relevance.
QRELS_FIELDS = 4

ScoredRun = dict[str, list[tuple[str, float]]]


def _check_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a non-empty string without whitespace, got {value!r}")
    return value


def _atomic_write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write ``lines`` (each without newline) to ``path`` via a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        make_public(fd)  # mkstemp's 0600 would hide the run from everyone else
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _run_lines(run: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> list[str]:
    lines: list[str] = []
    for qid in sorted(run):
        _check_token(qid, "query id")
        seen: set[str] = set()
        # Stable sort: equal scores keep the caller's order, which read_run restores.
        hits = sorted(run[qid], key=lambda hit: -float(hit[1]))
        for rank, (doc_id, score) in enumerate(hits, start=1):
            _check_token(doc_id, f"doc id of query {qid!r}")
            if doc_id in seen:
                raise ValueError(f"query {qid!r} lists doc {doc_id!r} twice")
            seen.add(doc_id)
            if not math.isfinite(float(score)):
                raise ValueError(f"query {qid!r} doc {doc_id!r} has non-finite score {score!r}")
            lines.append(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}")
    return lines


def write_run(path: str | os.PathLike[str], run: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> Path:
    """Write a TREC run file.

    Queries are written in sorted order; each query's hits sorted by score descending
    (stable, so equal scores keep the given order) and numbered from rank 1. Scores are
    written with ``repr`` so they round-trip exactly.

    Args:
        path: Output file; parent directories are created.
        run: Query id -> ``(doc_id, score)`` pairs, higher score = better.
        tag: Run tag (method name) written in the last column.

    Returns:
        The written path.

    Raises:
        ValueError: If an id or the tag is empty or has whitespace, a doc repeats within
            a query, or a score is not finite.
    """
    _check_token(tag, "tag")
    return _atomic_write_lines(path, _run_lines(run, tag))


def _fields(path: Path, lineno: int, line: str, n: int, what: str) -> list[str] | None:
    parts = line.split()
    if not parts:
        return None
    if len(parts) != n:
        raise ValueError(f"{path}:{lineno}: expected {n} fields ({what}), got {len(parts)}: {line.strip()!r}")
    return parts


def _number(path: Path, lineno: int, text: str, kind: type, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} {text!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{path}:{lineno}: {what} {text!r} is not finite")
    return value


def read_run(path: str | os.PathLike[str]) -> ScoredRun:
    """Read a TREC run file.

    Blank lines are skipped. The rank column is checked to be an int but otherwise
    ignored: order comes from the scores.

    Args:
        path: A file of ``qid Q0 doc_id rank score tag`` lines.

    Returns:
        Query id -> ``(doc_id, score)`` pairs sorted by score descending, ties in file
        order. Query ids appear in first-seen order.

    Raises:
        ValueError: Naming the file and line, on a line without 6 fields, a non-int
            rank, a non-finite or non-numeric score, or a doc repeated within a query.
    """
    path = Path(path)
    run: ScoredRun = {}
    seen: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = _fields(path, lineno, line, RUN_FIELDS, "qid Q0 doc_id rank score tag")
            if parts is None:
                continue
            qid, _, doc_id, rank, score, _ = parts
            _number(path, lineno, rank, int, "rank")
            value = _number(path, lineno, score, float, "score")
            if doc_id in seen.setdefault(qid, set()):
                raise ValueError(f"{path}:{lineno}: doc {doc_id!r} repeated for query {qid!r}")
            seen[qid].add(doc_id)
            run.setdefault(qid, []).append((doc_id, value))
    return {qid: sorted(hits, key=lambda hit: -hit[1]) for qid, hits in run.items()}


def run_doc_ids(run: Mapping[str, Sequence[tuple[str, float]]]) -> dict[str, list[str]]:
    """Drop the scores of a scored run, keeping the order (input of ``evaluate_run``).

    Args:
        run: Query id -> ``(doc_id, score)`` pairs, best first (as :func:`read_run` returns).

    Returns:
        Query id -> doc ids, in the same order.
    """
    return {qid: [doc_id for doc_id, _ in hits] for qid, hits in run.items()}


def write_qrels(path: str | os.PathLike[str], qrels: Mapping[str, Collection[str]]) -> Path:
    """Write a TREC qrels file with one ``qid 0 doc_id 1`` line per relevant doc.

    Lines are sorted by query id, then doc id. A query with no relevant docs writes no
    line, so it does not survive a round trip.

    Args:
        path: Output file; parent directories are created.
        qrels: Query id -> relevant doc ids.

    Returns:
        The written path.

    Raises:
        ValueError: If an id is empty or contains whitespace.
    """
    lines = []
    for qid in sorted(qrels):
        _check_token(qid, "query id")
        for doc_id in sorted(qrels[qid]):
            lines.append(f"{qid} 0 {_check_token(doc_id, f'doc id of query {qid!r}')} 1")
    return _atomic_write_lines(path, lines)


def read_qrels(path: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Read a TREC qrels file.

    Docs with relevance ``> 0`` are relevant. A query whose judgments are all ``<= 0``
    maps to an empty set (``evaluate_run`` then skips it). Blank lines are skipped.

    Args:
        path: A file of ``qid iteration doc_id relevance`` lines.

    Returns:
        Query id -> set of relevant doc ids, queries in first-seen order.

    Raises:
        ValueError: Naming the file and line, on a line without 4 fields or a non-int
            relevance.
    """
    path = Path(path)
    qrels: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = _fields(path, lineno, line, QRELS_FIELDS, "qid iteration doc_id relevance")
            if parts is None:
                continue
            qid, _, doc_id, rel = parts
            relevant = qrels.setdefault(qid, set())
            if _number(path, lineno, rel, int, "relevance") > 0:
                relevant.add(doc_id)
    return qrels
