"""Corpus and query files: reading, writing and fingerprinting.

This module owns the on-disk row format of a training corpus and of a query set and
turns rows into :class:`~tracer.types.Document` / :class:`~tracer.types.Query`
records. Only local files are read; nothing here touches the Hugging Face hub.

Corpus row fields: ``id`` (required, any scalar, kept as ``str``), ``text``
(required unless both ``prompt`` and ``target`` are given, then ``text = prompt +
target``), ``facts`` (optional list of str), ``prompt`` / ``target`` (optional str).

Supported corpus files:

* ``.jsonl`` / ``.json`` (optionally ``.gz``): JSON lines, or a ``.json`` file holding
  one JSON array of rows. Read with the standard library (faster than ``datasets``).
* ``.parquet``: read with ``pyarrow.parquet``.
* a directory written by ``datasets.Dataset.save_to_disk``: read with
  ``datasets.load_from_disk``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from tracer._filemode import make_public
from tracer.errors import DataError
from tracer.types import Document, Query

logger = logging.getLogger(__name__)

__all__ = [
    "check_unique_ids",
    "corpus_fingerprint",
    "documents_to_rows",
    "iter_json_lines",
    "iter_rows",
    "load_corpus",
    "load_queries",
    "row_to_document",
    "row_to_query",
    "write_jsonl",
]

# Suffixes (after an optional ".gz") read as JSON lines / JSON.
JSON_SUFFIXES = (".jsonl", ".json")
# Suffix read with pyarrow.parquet.
PARQUET_SUFFIX = ".parquet"
# Domain tag mixed into corpus fingerprints; bump when the encoding changes.
FINGERPRINT_TAG = b"tracer-corpus-v1\x00"


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _read_problem(path: Path, exc: Exception, after: str) -> DataError:
    """One-line ``DataError`` for a file that cannot be decompressed or read (not a traceback)."""
    if isinstance(exc, EOFError):
        return DataError(f"{path}: truncated gzip file (compressed data ends {after}); re-download or re-create it")
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return DataError(f"{path}: damaged gzip file {after} ({exc})")
    return DataError(f"{path}: cannot read file ({exc})")


def _not_utf8(where: str, exc: UnicodeDecodeError) -> DataError:
    bad = exc.object[exc.start:exc.start + 1].hex()
    return DataError(f"{where}: not valid UTF-8 (byte 0x{bad} at byte {exc.start + 1} of the line)")


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yields ``(1-based line number, decoded line)``; bad UTF-8 names its line, a damaged ``.gz`` the last good one."""
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _not_utf8(f"{path}:{lineno}", e) from None
                yield lineno, line
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _read_problem(path, e, f"after line {lineno}" if lineno else "at its start") from None


def _read_text(path: Path, limit: int = -1) -> str:
    """The file's text (its first ``limit`` bytes when ``limit >= 0``), with the same one-line errors."""
    try:
        with _open_binary(path) as f:
            data = f.read(limit)
    except (OSError, EOFError, zlib.error) as e:
        raise _read_problem(path, e, "while reading") from None
    try:
        return data.decode("utf-8", errors="ignore" if limit >= 0 else "strict")  # a head may cut a character
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        e = UnicodeDecodeError(e.encoding, data[line_start:], e.start - line_start, e.end - line_start, e.reason)
        raise _not_utf8(f"{path}:{lineno}", e) from None


def _base_suffix(path: Path) -> str:
    """The suffix that names the format, ignoring a trailing ``.gz``."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).suffix.lower()


def iter_json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ``(location, row)`` for each non-blank line of a JSON-lines file.

    Args:
        path: A ``.jsonl`` file, optionally gzipped (``.gz``).

    Yields:
        ``("<path>:<line>", row)`` with 1-based line numbers.

    Raises:
        DataError: If the file is missing, a line is not UTF-8 or not a JSON object, or a ``.gz``
            file is truncated or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _iter_json_array(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path} item {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} item {i}", row


def _starts_with_bracket(path: Path) -> bool:
    return _read_text(path, 4096).lstrip().startswith("[")


def _iter_table(rows: Sequence[dict[str, Any]], path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(rows):
        yield f"{path} row {i}", row


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # lazy: keep `import tracer` light

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{path}: cannot read parquet file ({e})") from e


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    import datasets  # lazy: keep `import tracer` light

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: not a directory written by Dataset.save_to_disk ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{path}: DatasetDict with splits {sorted(ds)}; pass one split's directory")
        ds = next(iter(ds.values()))
    return ds.to_list()


def iter_rows(
    path: str | os.PathLike[str], kind: str = "corpus"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ``(location, row)`` for every row of a local corpus-like file.

    Args:
        path: A ``.jsonl``/``.json`` file (optionally ``.gz``), a ``.parquet`` file, or a
            directory written by ``datasets.Dataset.save_to_disk``.
        kind: What the file holds, for error messages (``"corpus"``, ``"queries"``).

    Yields:
        ``(location, row)`` where ``location`` names the file and the line, item or row.

    Raises:
        DataError: If the path does not exist, has an unknown format, or a row is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{kind} file not found: {path}")
    if path.is_dir():
        yield from _iter_table(_read_saved_dataset(path), path)
        return
    suffix = _base_suffix(path)
    if suffix == PARQUET_SUFFIX:
        yield from _iter_table(_read_parquet(path), path)
    elif suffix == ".json" and _starts_with_bracket(path):
        yield from _iter_json_array(path)
    elif suffix in JSON_SUFFIXES:
        yield from iter_json_lines(path)
    else:
        raise DataError(
            f"{path}: unknown {kind} format {suffix!r}; expected .jsonl, .json, .parquet "
            "or a save_to_disk directory"
        )


def _optional_str(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")


def _facts(row: dict[str, Any], where: str) -> tuple[str, ...]:
    facts = row.get("facts")
    if facts is None:
        return ()
    if isinstance(facts, (str, bytes)) or not isinstance(facts, Iterable):
        raise DataError(f"{where}: field 'facts' must be a list of strings, got {type(facts).__name__}")
    return tuple(str(f) for f in facts)


def row_to_document(row: dict[str, Any], where: str) -> Document:
    """Converts one corpus row to a :class:`Document`.

    Args:
        row: Mapping with ``id``, ``text`` (or ``prompt`` + ``target``), optional ``facts``.
        where: Location used in error messages, e.g. ``"corpus.jsonl:3"``.

    Returns:
        The document; ``doc_id`` is ``str(row["id"])``.

    Raises:
        DataError: If ``id`` is missing, ``text`` is missing or empty (and cannot be built
            from ``prompt + target``), or a field has the wrong type.
    """
    if row.get("id") is None:
        raise DataError(f"{where}: missing required field 'id'")
    prompt = _optional_str(row, "prompt", where)
    target = _optional_str(row, "target", where)
    text = _optional_str(row, "text", where)
    if text is None:
        if prompt is None or target is None:
            raise DataError(f"{where}: missing required field 'text' (and no 'prompt' + 'target')")
        text = prompt + target
    if not text:
        raise DataError(f"{where}: field 'text' is empty")
    return Document(str(row["id"]), text, _facts(row, where), prompt, target)


def row_to_query(row: dict[str, Any], where: str) -> Query:
    """Converts one query row to a :class:`Query` via :meth:`Query.from_dict`.

    Args:
        row: Mapping with ``id``, ``prompt``, ``target`` and optional ``fact_id``,
            ``relation``, ``subject``, ``proponents``.
        where: Location used in error messages.

    Returns:
        The query.

    Raises:
        DataError: If ``id``, ``prompt`` or ``target`` is missing or empty, or
            ``proponents`` is not a list.
    """
    for key in ("id", "prompt", "target"):
        if row.get(key) is None or row.get(key) == "":
            raise DataError(f"{where}: missing required field {key!r}")
    proponents = row.get("proponents")
    if proponents is not None and (isinstance(proponents, str) or not isinstance(proponents, Iterable)):
        raise DataError(f"{where}: field 'proponents' must be a list of doc ids")
    if proponents is None and "proponents" in row:
        row = {k: v for k, v in row.items() if k != "proponents"}
    return Query.from_dict(row)


def check_unique_ids(items: Iterable[tuple[str, str]], kind: str) -> None:
    """Raises if an id repeats.

    Args:
        items: ``(id, location)`` pairs.
        kind: ``"document"`` or ``"query"``, for the message.

    Raises:
        DataError: Naming the duplicate id and both locations.
    """
    seen: dict[str, str] = {}
    for item_id, where in items:
        if item_id in seen:
            raise DataError(f"{where}: duplicate {kind} id {item_id!r} (first at {seen[item_id]})")
        seen[item_id] = where


def load_corpus(path: str | os.PathLike[str]) -> list[Document]:
    """Loads a training corpus from a local file or ``save_to_disk`` directory.

    Args:
        path: See the module docstring for the accepted formats and fields.

    Returns:
        Documents in file order.

    Raises:
        DataError: If the path is missing (``"corpus file not found: ..."``), a row is
            malformed, an id repeats, or the corpus is empty.
    """
    path = Path(path)
    docs: list[Document] = []
    wheres: list[str] = []
    for where, row in iter_rows(path):
        docs.append(row_to_document(row, where))
        wheres.append(where)
    if not docs:
        raise DataError(f"corpus is empty: {path}")
    check_unique_ids(zip((d.doc_id for d in docs), wheres), "document")
    logger.info("loaded %d documents from %s", len(docs), path)
    return docs


def load_queries(path: str | os.PathLike[str]) -> list[Query]:
    """Loads queries from a JSON-lines file (optionally ``.gz``).

    Args:
        path: One JSON object per line: ``{id, prompt, target, fact_id?, relation?,
            subject?, proponents?}``.

    Returns:
        Queries in file order.

    Raises:
        DataError: If the file is missing or empty, a line is not JSON, a line lacks
            ``id``/``prompt``/``target`` (the message names file and line), or an id repeats.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"queries file not found: {path}")
    queries: list[Query] = []
    wheres: list[str] = []
    for where, row in iter_json_lines(path):
        queries.append(row_to_query(row, where))
        wheres.append(where)
    if not queries:
        raise DataError(f"queries file is empty: {path}")
    check_unique_ids(zip((q.query_id for q in queries), wheres), "query")
    logger.info("loaded %d queries from %s", len(queries), path)
    return queries


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Writes rows as UTF-8 JSON lines, atomically (temp file, then rename).

    Args:
        path: Destination; parent directories are created. A ``.gz`` name is gzipped.
        rows: JSON-serializable mappings.

    Returns:
        The number of rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    n_rows = 0
    try:
        make_public(fd)  # mkstemp's 0600 would hide the file from everyone else
        with os.fdopen(fd, "wb") as raw:
            out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.name.endswith(".gz") else raw
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
                n_rows += 1
            if out is not raw:
                out.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n_rows


def documents_to_rows(docs: Iterable[Document]) -> list[dict[str, Any]]:
    """Converts documents to corpus rows that :func:`load_corpus` reads back unchanged.

    Args:
        docs: Documents.

    Returns:
        One dict per document with ``id``, ``text``, ``facts`` and, when set, ``prompt``
        and ``target``.
    """
    rows = []
    for d in docs:
        row: dict[str, Any] = {"id": d.doc_id, "text": d.text, "facts": list(d.facts)}
        if d.prompt is not None:
            row["prompt"] = d.prompt
        if d.target is not None:
            row["target"] = d.target
        rows.append(row)
    return rows


def corpus_fingerprint(docs: Iterable[Document]) -> str:
    """SHA-256 over document ids and texts, in order.

    Every field is length-prefixed (8-byte big-endian byte count, then UTF-8 bytes), so
    moving a boundary (``("ab", "c")`` vs ``("a", "bc")``) changes the digest. Facts,
    prompts and targets are not part of the fingerprint.

    Args:
        docs: Documents in corpus order.

    Returns:
        64 lowercase hex characters.
    """
    h = hashlib.sha256(FINGERPRINT_TAG)
    for d in docs:
        for field in (d.doc_id, d.text):
            data = field.encode("utf-8")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()
