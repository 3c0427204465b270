"""Build an index from the objects a user already has: a ``datasets.Dataset`` or rows, and a model.

``tracer build`` reads files; this is the same build for Python callers (notebooks, LM debugging
tools), in the spirit of kronfluence's and TRAK's APIs that take the model and data in hand::

    from datasets import Dataset
    import tracer

    ds = Dataset.from_dict({"doc_id": ["a", "b"], "content": ["Paris is in France.", "Rome is in Italy."]})
    idx = tracer.build_index(ds, model, tokenizer=tok, out="indexes/mine",
                             columns={"id": "doc_id", "text": "content"})
    with tracer.Tracer.open(idx) as t:
        t.trace("Paris is in", " France")

An index records its checkpoints by path and weight fingerprint, because queries reload them: a
model passed as an object is saved once (``save_pretrained``) beside the index, in ``<out>.model/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tracer.errors import DataError
from tracer.types import Document

logger = logging.getLogger(__name__)

FIELDS = ("id", "text", "prompt", "target", "facts")  # a corpus row's fields, the keys of ``columns``


def as_documents(corpus: Any, columns: Mapping[str, str] | None = None) -> list[Document]:
    """Documents from a path, a ``datasets.Dataset`` (or ``IterableDataset``), or an iterable of dicts
    or :class:`Document`.

    Args:
        corpus: The training corpus.
        columns: tracer field -> the corpus's column name, e.g. ``{"id": "doc_id", "text": "content"}``.
            Unmapped fields are read under their own names. With no id column, a row's id is its
            position (``"0"``, ``"1"``, ...).

    Raises:
        DataError: Unknown field names in ``columns``, a malformed row, repeated ids, or an empty corpus.
    """
    from tracer.corpus.io import check_unique_ids

    docs = [d for _, d in _iter_documents(corpus, columns)]
    if not docs:
        raise DataError("corpus is empty")
    check_unique_ids(((d.doc_id, f"row {i}") for i, d in enumerate(docs)), "document")
    return docs


def lazy_documents(corpus: Any, columns: Mapping[str, str] | None = None,
                   spill_dir: str | Path | None = None) -> Any:
    """:func:`as_documents`, but lazy: a :class:`tracer.corpus.DocumentFile` (8 bytes per document in memory).

    A JSON-lines file without a ``columns`` mapping is read in place; anything else (another file
    format, a ``datasets.Dataset``, an iterable of rows) is streamed once into a spill file in
    ``spill_dir``, deleted when the result is closed or garbage-collected.

    Raises:
        DataError: As :func:`as_documents`.
    """
    from tracer.corpus.io import open_corpus, spill_documents

    if isinstance(corpus, (str, Path)) and not columns:
        return open_corpus(corpus, spill_dir=spill_dir)
    return spill_documents((d for _, d in _iter_documents(corpus, columns)), spill_dir=spill_dir)


def _iter_documents(corpus: Any, columns: Mapping[str, str] | None) -> Iterable[tuple[str, Document]]:
    """``(location, document)`` for every row of ``corpus`` (see :func:`as_documents`), as they are read."""
    from tracer.corpus.io import iter_rows

    cols = dict(columns or {})
    bad = sorted(set(cols) - set(FIELDS))
    if bad:
        raise DataError(f"columns: unknown field(s) {bad}; map any of {list(FIELDS)} to your column names")
    if isinstance(corpus, (str, Path)):
        rows: Iterable[tuple[str, Any]] = iter_rows(corpus)
    else:
        try:
            rows = ((f"row {i}", r) for i, r in enumerate(iter(corpus)))
        except TypeError:
            raise DataError(f"corpus must be a path, a datasets.Dataset or an iterable of dicts, "
                            f"got {type(corpus).__name__}") from None
    return _documents(rows, cols)


def _documents(rows: Iterable[tuple[str, Any]], cols: dict[str, str]) -> Iterable[tuple[str, Document]]:
    from tracer.corpus.io import row_to_document

    for i, (where, row) in enumerate(rows):
        if isinstance(row, Document):
            yield where, row
            continue
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected a dict (or Document), got {type(row).__name__}")
        mapped = {f: row[cols.get(f, f)] for f in FIELDS if cols.get(f, f) in row}
        if "id" in cols and cols["id"] not in row:
            raise DataError(f"{where}: no column {cols['id']!r} (mapped to 'id')")
        mapped.setdefault("id", str(i))
        yield where, row_to_document(mapped, where)


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "save_pretrained") and hasattr(obj, "named_parameters")


def _saved(obj: Any, where: Path) -> Path:
    """``save_pretrained`` into ``where`` (replacing what a previous build saved there)."""
    where.mkdir(parents=True, exist_ok=True)
    obj.save_pretrained(str(where))
    return where


def as_checkpoints(model: Any, checkpoints: Sequence[Any] | None = None, lrs: Sequence[float] | None = None,
                   save_dir: str | Path | None = None) -> list[Any]:
    """Checkpoints, oldest first, ending with ``model``.

    Args:
        model: A ``tracer train`` run directory, a model directory (``save_pretrained`` or an HF
            ``Trainer`` ``checkpoint-N/``), or a loaded ``PreTrainedModel``.
        checkpoints: Earlier checkpoints (directories or models), oldest first.
        lrs: Learning rate per checkpoint (the final model included); default: each one's recorded
            lr (``tracer_checkpoint.json`` or ``trainer_state.json``), else 1.0.
        save_dir: Where models passed as objects are saved (required if there are any).
    """
    from tracer.model.loading import RUN_CHECKPOINTS, Checkpoint, load_checkpoints, read_checkpoint

    items = list(checkpoints or []) + [model]
    paths: list[Path] = []
    cks: list[Checkpoint] = []
    for i, item in enumerate(items):
        if _is_model(item):
            if save_dir is None:
                raise DataError("a model passed as an object needs save_dir (where queries will reload it)")
            item = _saved(item, Path(save_dir) / f"checkpoint-{i}")
        if not isinstance(item, (str, Path)):
            raise DataError(f"checkpoint {i}: expected a directory or a PreTrainedModel, got {type(item).__name__}")
        p = Path(item)
        if (p / RUN_CHECKPOINTS).is_file():
            got = load_checkpoints(p)
        else:
            got = [read_checkpoint(p)]
        for c in got:
            if not paths or c.path.resolve() != paths[-1]:
                paths.append(c.path.resolve())
                cks.append(c)
    if lrs is not None:
        if len(lrs) != len(cks):
            raise DataError(f"lrs has {len(lrs)} values for {len(cks)} checkpoints")
        cks = [Checkpoint(c.path, float(lr), c.step) for c, lr in zip(cks, lrs)]
    return cks


def build_index(corpus: Any, model: Any, *, out: str | Path, tokenizer: Any = None,
                checkpoints: Sequence[Any] | None = None, columns: Mapping[str, str] | None = None,
                config: Any = None, lrs: Sequence[float] | None = None, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Build an index over ``corpus`` for ``model`` (and its earlier ``checkpoints``); returns its path.

    Args:
        corpus: A path (jsonl/json/parquet/``save_to_disk`` dir), a ``datasets.Dataset``, or an
            iterable of dicts or :class:`Document` (see :func:`as_documents`).
        model: A run directory, a model directory, or a ``PreTrainedModel`` (saved to ``<out>.model/``).
        out: The index directory.
        tokenizer: A tokenizer directory or object (default: the one beside the last checkpoint).
        checkpoints: Earlier training checkpoints, oldest first (directories or models).
        columns: tracer field -> column name, e.g. ``{"id": "doc_id", "text": "content"}``.
        config: An :class:`tracer.index.build.IndexConfig` (default: the CLI's defaults).
        lrs: Learning rate per checkpoint, overriding the recorded ones.
        overwrite: Replace an existing index at ``out``.
        progress: Show progress bars.

    Raises:
        DataError: Bad corpus, model, tokenizer or columns; ``out`` exists without ``overwrite``.
    """
    out = Path(out)
    save_dir = out.with_name(out.name + ".model")
    docs = lazy_documents(corpus, columns, spill_dir=out.resolve().parent)  # never the whole corpus in memory
    try:
        return _build(docs, corpus, model, out, save_dir, tokenizer, checkpoints, config, lrs, overwrite, progress)
    finally:
        docs.close()


def _build(docs: Any, corpus: Any, model: Any, out: Path, save_dir: Path, tokenizer: Any,
           checkpoints: Sequence[Any] | None, config: Any, lrs: Sequence[float] | None, overwrite: bool,
           progress: bool) -> Path:
    from tracer.index.build import IndexConfig
    from tracer.index.build import build_index as build
    from tracer.model.loading import checkpoint_provenance

    cks = as_checkpoints(model, checkpoints, lrs, save_dir)
    for c in cks:
        logger.info("%s", checkpoint_provenance(c.path, lr_flag=c.lr if lrs is not None else None))
    tok_dir: Path | None = None
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        tok_dir = _saved(tokenizer, save_dir / "tokenizer")
    elif tokenizer is not None:
        tok_dir = Path(tokenizer)
    elif not (cks[-1].path / "tokenizer_config.json").is_file() and (cks[-1].path.parent / "tokenizer").is_dir():
        tok_dir = cks[-1].path.parent / "tokenizer"  # a tracer train run keeps it beside the checkpoints
    try:
        build(docs, cks, out, config or IndexConfig(), tokenizer_path=tok_dir, overwrite=overwrite,
              corpus_path=str(Path(corpus).resolve()) if isinstance(corpus, (str, Path)) else
              f"<{type(corpus).__name__} of {len(docs)} rows>", progress=progress)
    except (FileExistsError, ValueError) as exc:
        raise DataError(str(exc)) from None
    return out
