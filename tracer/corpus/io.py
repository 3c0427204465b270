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

``load_corpus`` returns a list (the whole corpus in memory). ``open_corpus`` returns a
:class:`DocumentFile` instead: a lazy, random-access ``Sequence[Document]`` over a JSON-lines
file and an int64 array of line offsets (8 bytes per document), which reads a row when it is
asked for. A plain ``.jsonl`` corpus is read in place; any other format is streamed once into a
spill file (row by row: ``pyarrow`` record batches, ``datasets`` rows) and read from there.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, overload

import numpy as np

from tracer._filemode import make_public
from tracer.errors import DataError
from tracer.types import Document, Query

logger = logging.getLogger(__name__)

__all__ = [
    "DocumentFile",
    "Fingerprinter",
    "check_unique_ids",
    "corpus_fingerprint",
    "document_row",
    "documents_to_rows",
    "fingerprints",
    "id_hash",
    "iter_json_lines",
    "iter_rows",
    "load_corpus",
    "load_queries",
    "open_corpus",
    "row_to_document",
    "spill_documents",
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
        yield where, _json_object(line, where)


def _json_object(line: str | bytes, where: str) -> dict[str, Any]:
    """One JSON-lines row, or a one-line ``DataError`` naming ``where``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


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


def _iter_table(rows: Iterable[dict[str, Any]], path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(rows):
        yield f"{path} row {i}", row


PARQUET_BATCH = 4096  # rows per pyarrow record batch when a parquet file is streamed


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    """The file's rows, one record batch at a time (never the whole table)."""
    import pyarrow.parquet as pq  # lazy: keep `import tracer` light

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=PARQUET_BATCH)
        for batch in batches:
            yield from batch.to_pylist()
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{path}: cannot read parquet file ({e})") from e


def _read_saved_dataset(path: Path) -> Iterator[dict[str, Any]]:
    """The dataset's rows, in order (``load_from_disk`` memory-maps the Arrow files; rows are read one by one)."""
    import datasets  # lazy: keep `import tracer` light

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: not a directory written by Dataset.save_to_disk ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{path}: DatasetDict with splits {sorted(ds)}; pass one split's directory")
        ds = next(iter(ds.values()))
    yield from ds


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
    return fingerprints(docs)[0]


def fingerprints(docs: Iterable[Document]) -> tuple[str, str]:
    """``(corpus_fingerprint(docs), loss-split fingerprint)`` in one streaming pass.

    The second hashes each document's ``[prompt, target]`` as JSON, in order (the loss mask; ids
    and texts are in the first). A :class:`DocumentFile` (or any object with a ``_memo`` dict)
    remembers both, so a build reads its corpus for them once.

    Args:
        docs: Documents in corpus order.

    Returns:
        Two strings of 64 lowercase hex characters.
    """
    memo = getattr(docs, "_memo", None)
    if isinstance(memo, dict) and "fingerprints" in memo:
        return memo["fingerprints"]
    out = Fingerprinter().update(docs).digests()
    if isinstance(memo, dict):
        memo["fingerprints"] = out
    return out


class Fingerprinter:
    """The running state of :func:`fingerprints`: feed documents in order, read both digests at any point.

    ``tracer add`` reads the old corpus once: the digests after it check the index, and the same
    state, fed the new documents, gives the grown corpus's.
    """

    def __init__(self) -> None:
        self._corpus = hashlib.sha256(FINGERPRINT_TAG)
        self._split = hashlib.sha256()
        self.n = 0

    def update(self, docs: Iterable[Document]) -> Fingerprinter:
        """Hash ``docs`` after those already fed; returns ``self``."""
        h, split = self._corpus, self._split
        for d in docs:
            for field in (d.doc_id, d.text):
                data = field.encode("utf-8")
                h.update(len(data).to_bytes(8, "big"))
                h.update(data)
            split.update(json.dumps([d.prompt, d.target]).encode())
            self.n += 1
        return self

    def digests(self) -> tuple[str, str]:
        """``(corpus fingerprint, loss-split fingerprint)`` of the documents fed so far."""
        return self._corpus.hexdigest(), self._split.hexdigest()


def document_row(d: Document) -> dict[str, Any]:
    """The JSON row a :class:`DocumentFile` spill (and an index's ``documents.jsonl``) stores for ``d``."""
    row: dict[str, Any] = {"id": d.doc_id, "text": d.text, "facts": list(d.facts)}
    if d.prompt is not None or d.target is not None:
        row.update(prompt=d.prompt, target=d.target)
    return row


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)


class DocumentFile(Sequence[Document]):
    """A lazy, random-access corpus: documents read on demand from a JSON-lines file.

    Holds the file's path and one int64 byte offset per document (8 bytes per document), never the
    documents themselves: ``docs[i]`` seeks to row ``i`` and parses it, iteration streams the file,
    and a slice is another ``DocumentFile`` over the same file (a view of the offsets). Rows were
    checked when the file was indexed (:func:`open_corpus`); if the file changes afterwards (size or
    modification time), reading it raises ``DataError``.

    Args:
        path: A JSON-lines file of corpus rows (:func:`row_to_document`'s fields).
        starts: Byte offset of each document's line, in corpus order.
        owned: Delete the file when this object is closed or garbage-collected (a spill file).
    """

    def __init__(self, path: str | os.PathLike[str], starts: np.ndarray, *, owned: bool = False,
                 _stamp_value: tuple[int, int] | None = None, _owner: DocumentFile | None = None) -> None:
        self.path = Path(path)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._stamp = _stamp_value if _stamp_value is not None else _stamp(self.path)
        self._owner = _owner  # a slice keeps the object that owns a spill file alive
        self._fh: IO[bytes] | None = None
        self._memo: dict[str, Any] = {}  # fingerprints(), once computed (the file cannot change: see _open)
        self._finalizer = weakref.finalize(self, _unlink, str(self.path)) if owned else None

    @classmethod
    def from_index(cls, root: str | os.PathLike[str]) -> DocumentFile:
        """The documents of an index (or a build's partial directory): ``documents.jsonl`` and ``doc_offsets.npy``."""
        root = Path(root)
        offsets = np.load(root / "doc_offsets.npy")
        return cls(root / "documents.jsonl", offsets[:-1])

    @property
    def starts(self) -> np.ndarray:
        """Byte offset of each document's line (read-only view)."""
        view = self._starts.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> Document: ...

    @overload
    def __getitem__(self, i: slice) -> DocumentFile: ...

    def __getitem__(self, i: int | slice) -> Document | DocumentFile:
        if isinstance(i, slice):
            return DocumentFile(self.path, self._starts[i], _stamp_value=self._stamp,
                                _owner=self._owner if self._owner is not None else self)
        n = len(self._starts)
        j = int(i)
        if j < -n or j >= n:
            raise IndexError(f"document {i} out of range ({n} documents)")
        return self._read(int(self._starts[j]))

    def __iter__(self) -> Iterator[Document]:
        """Streams the rows; consecutive lines are read without seeking (the file position is checked, not
        assumed, so a ``docs[i]`` read between two rows of the iteration cannot shift it)."""
        if not len(self._starts):
            return
        fh = self._open()
        for start in self._starts.tolist():
            if fh.tell() != start:
                fh.seek(start)
            yield self._parse(fh.readline(), start)

    def __repr__(self) -> str:
        return f"DocumentFile({str(self.path)!r}, {len(self)} documents)"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_fh=None, _finalizer=None, _owner=None, _memo={})  # a copy never deletes the owner's spill file
        return state

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            try:
                now = _stamp(self.path)
            except OSError as e:
                raise DataError(f"{self.path}: cannot read corpus file ({e})") from None
            if now != self._stamp:
                raise DataError(f"{self.path} changed while the corpus was in use (size or modification time); "
                                "run the command again")
            self._fh = open(self.path, "rb")
        return self._fh

    def _read(self, start: int) -> Document:
        fh = self._open()
        fh.seek(start)
        return self._parse(fh.readline(), start)

    def _parse(self, line: bytes, start: int) -> Document:
        """The document of one line. Rows were checked when the file was indexed, so a row is converted
        directly (as :func:`row_to_document` converts a valid row); anything unexpected goes through
        :func:`row_to_document` for its one-line error."""
        try:
            row = json.loads(line)
            text, prompt, target, facts = row.get("text"), row.get("prompt"), row.get("target"), row.get("facts")
            if text is None:
                text = prompt + target
            if (type(text) is str and text and (prompt is None or type(prompt) is str)
                    and (target is None or type(target) is str) and row["id"] is not None
                    and (facts is None or type(facts) is list)):
                return Document(str(row["id"]), text, tuple(str(f) for f in facts) if facts else (), prompt, target)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
        where = f"{self.path} (byte {start})"
        return row_to_document(_json_object(line, where), where)

    def close(self) -> None:
        """Close the file; delete it if this object owns it (a spill file)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> DocumentFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def id_hash(doc_id: str) -> int:
    """A signed 64-bit hash of a document id (duplicate checks without a set of every id)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _in_place(path: Path) -> bool:
    """Whether ``path`` is a JSON-lines file that can be read by seeking (not gzipped, not a JSON array)."""
    if not path.is_file() or path.name.endswith(".gz"):
        return False
    suffix = _base_suffix(path)
    return suffix == ".jsonl" or (suffix == ".json" and not _starts_with_bracket(path))


def _scan_jsonl(path: Path, max_docs: int | None) -> Iterator[tuple[int, Document]]:
    """``(byte offset, document)`` of each non-blank line, with ``iter_json_lines``'s one-line errors."""
    pos, lineno = 0, 0
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                start, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _not_utf8(where, e) from None
                yield start, row_to_document(_json_object(line, where), where)
    except OSError as e:
        raise _read_problem(path, e, f"after line {lineno}" if lineno else "at its start") from None


def _spill(docs: Iterable[Document], spill_dir: str | os.PathLike[str] | None, limit: int | None,
           starts: Any, hashes: Any) -> tuple[Path, bool]:
    """Write ``docs`` as JSON lines into a new spill file; append each line's offset and id hash."""
    directory = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="tracer-corpus-", suffix=".jsonl", dir=directory)
    target = Path(tmp)
    try:
        make_public(fd)
        with os.fdopen(fd, "wb") as out:
            pos = 0
            for doc in docs:
                if limit is not None and len(starts) >= limit:
                    break
                line = json.dumps(document_row(doc)).encode() + b"\n"
                out.write(line)
                starts.append(pos)
                hashes.append(id_hash(doc.doc_id))
                pos += len(line)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target, True


def spill_documents(docs: Iterable[Document], *, spill_dir: str | os.PathLike[str] | None = None,
                    what: str = "corpus") -> DocumentFile:
    """Stream documents (from any iterable: a generator over a ``datasets.Dataset``, say) into a spill file
    and open it lazily; the file is deleted when the result is closed or garbage-collected.

    Args:
        docs: Documents in corpus order.
        spill_dir: Where the file goes (default: the system's temporary directory).
        what: Names the corpus in error messages.

    Raises:
        DataError: No documents, or an id repeats (``"row i: duplicate document id ..."``).
    """
    from array import array

    starts, hashes = array("q"), array("q")
    target, _ = _spill(docs, spill_dir, None, starts, hashes)
    try:
        if not starts:
            raise DataError(f"{what} is empty")
        h = np.sort(np.frombuffer(hashes, dtype=np.int64))
        result = DocumentFile(target, np.frombuffer(starts, dtype=np.int64).copy(), owned=True)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if len(h) > 1 and bool((h[1:] == h[:-1]).any()):
        try:
            check_unique_ids(((d.doc_id, f"row {i}") for i, d in enumerate(result)), "document")
        except DataError:
            result.close()
            raise
    return result


def open_corpus(path: str | os.PathLike[str], *, spill_dir: str | os.PathLike[str] | None = None,
                max_docs: int | None = None) -> DocumentFile:
    """Opens a training corpus lazily: one streaming pass checks every row and records its offset.

    A plain ``.jsonl`` (or JSON-lines ``.json``) file is read in place. Any other format (``.gz``,
    a JSON array, ``.parquet``, a ``save_to_disk`` directory) is streamed row by row into a spill
    file in ``spill_dir`` (default: the system's temporary directory), deleted when the returned
    object is closed or garbage-collected. Memory: 8 bytes per document for the offsets and 8 for
    an id hash (the duplicate check) during the pass, 8 after it. A JSON array is parsed whole by
    ``json`` (its format cannot be streamed by the standard library).

    Args:
        path: See the module docstring for the accepted formats and fields.
        spill_dir: Where a non-JSON-lines corpus is spilled.
        max_docs: Keep only the first ``max_docs`` documents (the rest are not read).

    Returns:
        The documents in file order, equal to :func:`load_corpus`'s (``max_docs`` aside).

    Raises:
        DataError: As :func:`load_corpus`: missing path, malformed row, repeated id, empty corpus.
    """
    from array import array

    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus file not found: {path}")
    starts, hashes = array("q"), array("q")
    limit = max_docs if max_docs is not None and max_docs > 0 else None
    if _in_place(path):
        target, owned = path, False
        for start, doc in _scan_jsonl(path, limit):
            starts.append(start)
            hashes.append(id_hash(doc.doc_id))
            if limit is not None and len(starts) >= limit:
                break
    else:
        target, owned = _spill((row_to_document(row, where) for where, row in iter_rows(path)), spill_dir, limit,
                               starts, hashes)
    try:
        if not starts:
            raise DataError(f"corpus is empty: {path}")
        h = np.sort(np.frombuffer(hashes, dtype=np.int64))
        if len(h) > 1 and bool((h[1:] == h[:-1]).any()):  # a repeated id (or, at odds 2^-64, a hash collision)
            ids = ((doc.doc_id, where) for (where, doc), _ in
                   zip(((w, row_to_document(r, w)) for w, r in iter_rows(path)), range(len(starts))))
            check_unique_ids(ids, "document")  # the exact message; O(N) memory only on this path
        del hashes, h
        docs = DocumentFile(target, np.frombuffer(starts, dtype=np.int64).copy(), owned=owned)
    except BaseException:
        if owned:
            target.unlink(missing_ok=True)
        raise
    logger.info("opened %d documents from %s%s", len(docs), path, "" if not owned else f" (spilled to {target})")
    return docs
