"""Readers for real fact-tracing benchmarks stored as local files.

Two sources are understood, both turned into tracer's ``(documents, queries)`` with
ground-truth proponents:

* **FTRACE** (Akyürek et al., 2022, "Towards Tracing Factual Knowledge in Language
  Models Back to the Training Data"; HF dataset ``ekinakyurek/ftrace``), either in its
  own T5-style field names or in tracer's plain ``{id, text, facts}`` format.
* **LAMA T-REx** (Petroni et al., 2019) probe files, whose evidence sentences become the
  corpus and whose facts become queries through the relation's cloze template.

Nothing here downloads anything; pass paths to files already on disk.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tracer.corpus.io import check_unique_ids, iter_json_lines, iter_rows, row_to_document, row_to_query
from tracer.errors import DataError
from tracer.types import Document, Query

logger = logging.getLogger(__name__)

__all__ = ["load_lama_templates", "read_ftrace", "read_lama_trex"]

# T5 span sentinels used by FTRACE's inputs/targets ("<extra_id_0>", "<extra_id_1>", ...).
SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")
# The sentinel that marks the masked span a query asks for.
FIRST_SENTINEL = "<extra_id_0>"
# LAMA template slots: subject and object.
SUBJECT_SLOT = "[X]"
OBJECT_SLOT = "[Y]"
# LAMA evidence sentences hide the object behind this token.
MASK_TOKEN = "[MASK]"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- FTRACE


def _require_str(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _spans(targets: str) -> dict[str, str]:
    """Maps each sentinel of a T5 target (``"<extra_id_0> Paris"``) to its stripped span."""
    parts = SENTINEL_RE.split(targets)  # [prefix, "0", span0, "1", span1, ...]
    return {f"<extra_id_{parts[i]}>": parts[i + 1].strip() for i in range(1, len(parts), 2)}


def _split_facts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(f.strip() for f in value.split(";") if f.strip())
    if isinstance(value, Iterable):
        return tuple(str(f) for f in value)
    raise DataError(f"{where}: field 'facts' must be a string or a list, got {type(value).__name__}")


def _ftrace_document(row: dict[str, Any], where: str) -> Document:
    doc_id = row.get("id", row.get("abstract_id"))
    if doc_id is None:
        raise DataError(f"{where}: missing required field 'id' (or 'abstract_id')")
    inputs = _require_str(row, "inputs_pretokenized", where)
    spans = _spans(_require_str(row, "targets_pretokenized", where))
    if not SENTINEL_RE.search(inputs):
        raise DataError(f"{where}: 'inputs_pretokenized' has no <extra_id_N> sentinel")

    def fill(m: re.Match[str]) -> str:
        if m.group(0) not in spans:
            raise DataError(f"{where}: {m.group(0)} has no span in 'targets_pretokenized'")
        return spans[m.group(0)]

    text = SENTINEL_RE.sub(fill, inputs)
    return Document(str(doc_id), text, _split_facts(row.get("facts"), where))


def _ftrace_fact_id(row: dict[str, Any], where: str) -> str | None:
    facts = _split_facts(row.get("facts"), where)
    if len(facts) > 1:
        raise DataError(f"{where}: a query states one fact, got {len(facts)} in 'facts'")
    if facts:
        return facts[0]
    keys = ("predicate_id", "obj_uri", "sub_uri")
    if all(row.get(k) for k in keys):
        # FTRACE's fact key is "predicate,object,subject" (see its abstracts' `facts`).
        return ",".join(str(row[k]) for k in keys)
    fact_id = row.get("fact_id")
    return None if fact_id is None else str(fact_id)


def _ftrace_query(row: dict[str, Any], where: str) -> Query | None:
    """Maps a T5-style FTRACE query; ``None`` when nothing precedes the mask."""
    query_id = row.get("uuid", row.get("id"))
    if query_id is None:
        raise DataError(f"{where}: missing required field 'uuid' (or 'id')")
    inputs = _require_str(row, "inputs_pretokenized", where)
    targets = _require_str(row, "targets_pretokenized", where)
    cut = inputs.find(FIRST_SENTINEL)
    if cut < 0:
        raise DataError(f"{where}: 'inputs_pretokenized' has no {FIRST_SENTINEL}")
    answer = _spans(targets).get(FIRST_SENTINEL) or SENTINEL_RE.sub("", targets).strip()
    if not answer:
        raise DataError(f"{where}: 'targets_pretokenized' has no answer text")
    prompt = inputs[:cut].rstrip()
    if not prompt:
        return None
    subject = row.get("sub_surface", row.get("sub_label", row.get("subject")))
    return Query(
        query_id=str(query_id),
        prompt=prompt,
        target=" " + answer,
        fact_id=_ftrace_fact_id(row, where),
        relation=row.get("predicate_id", row.get("relation")),
        subject=subject,
        proponents=tuple(str(p) for p in row.get("proponents") or ()),
    )


def _read_ftrace_corpus(path: PathLike) -> list[Document]:
    docs: list[Document] = []
    wheres: list[str] = []
    for where, row in iter_rows(path, kind="corpus"):
        if "inputs_pretokenized" in row:
            docs.append(_ftrace_document(row, where))
        else:
            if isinstance(row.get("facts"), str):
                row = {**row, "facts": list(_split_facts(row["facts"], where))}
            docs.append(row_to_document(row, where))
        wheres.append(where)
    if not docs:
        raise DataError(f"corpus is empty: {path}")
    check_unique_ids(zip((d.doc_id for d in docs), wheres), "document")
    return docs


def _read_ftrace_queries(path: PathLike) -> tuple[list[Query], set[str]]:
    """Returns the queries and the ids of those that carried an explicit ``proponents``."""
    queries: list[Query] = []
    wheres: list[str] = []
    explicit: set[str] = set()
    n_no_prompt = 0
    for where, row in iter_rows(path, kind="queries"):
        query = _ftrace_query(row, where) if "inputs_pretokenized" in row else row_to_query(row, where)
        if query is None:
            n_no_prompt += 1
            continue
        if row.get("proponents") is not None:
            explicit.add(query.query_id)
        queries.append(query)
        wheres.append(where)
    if n_no_prompt:
        logger.warning("%s: skipped %d queries with an empty prompt", path, n_no_prompt)
    if not queries:
        raise DataError(f"queries file is empty: {path}")
    check_unique_ids(zip((q.query_id for q in queries), wheres), "query")
    return queries, explicit


def _with_derived_proponents(queries: list[Query], explicit: set[str], docs: list[Document]) -> list[Query]:
    fact_to_docs: dict[str, list[str]] = {}
    for d in docs:
        for fact in d.facts:
            fact_to_docs.setdefault(fact, []).append(d.doc_id)
    out = []
    for q in queries:
        if q.query_id not in explicit:
            derived = tuple(fact_to_docs.get(q.fact_id, ())) if q.fact_id is not None else ()
            q = Query(q.query_id, q.prompt, q.target, q.fact_id, q.relation, q.subject, derived)
        out.append(q)
    return out


def read_ftrace(corpus_path: PathLike, queries_path: PathLike) -> tuple[list[Document], list[Query]]:
    """Reads an FTRACE-style benchmark (Akyürek et al., 2022) from local files.

    Each file may be ``.jsonl``/``.json`` (optionally ``.gz``), ``.parquet`` or a
    ``save_to_disk`` directory. Rows come in one of two namings, detected per row:

    * tracer's own: corpus ``{id, text, facts: [fact_id, ...]}``, queries ``{id, prompt,
      target, fact_id?, relation?, subject?, proponents?}``.
    * the real FTRACE-TREx (``ekinakyurek/ftrace``), recognised by ``inputs_pretokenized``:

      - abstract: ``doc_id = id`` (or ``abstract_id``); ``text`` = ``inputs_pretokenized``
        with each ``<extra_id_N>`` replaced by its span of ``targets_pretokenized``
        (``"<extra_id_0> South Asia"`` gives ``"South Asia"``); ``facts`` split on ``;``
        when a string (FTRACE writes ``"P361,Q48,Q771405;P30,Q48,Q771405"``).
      - query: ``query_id = uuid`` (or ``id``); ``prompt`` = ``inputs_pretokenized`` cut
        before ``<extra_id_0>``, trailing whitespace stripped; ``target`` = ``" "`` + the
        ``<extra_id_0>`` span without sentinels; ``fact_id`` = ``facts`` if present, else
        ``"{predicate_id},{obj_uri},{sub_uri}"`` (FTRACE's key order); ``relation`` =
        ``predicate_id``; ``subject`` = ``sub_surface``. Queries whose mask opens the
        sentence (empty prompt) are skipped with a warning.

    A query without a ``proponents`` field gets, as proponents, the ids of the documents
    whose ``facts`` contain its ``fact_id``, in corpus order.

    Args:
        corpus_path: Corpus file or directory.
        queries_path: Queries file or directory.

    Returns:
        ``(documents, queries)`` in file order.

    Raises:
        DataError: If a file is missing or empty, a row is malformed (message names the
            file and line/row), or ids repeat.
    """
    docs = _read_ftrace_corpus(corpus_path)
    queries, explicit = _read_ftrace_queries(queries_path)
    queries = _with_derived_proponents(queries, explicit, docs)
    known = {d.doc_id for d in docs}
    n_unknown = sum(1 for q in queries for p in q.proponents if p not in known)
    if n_unknown:
        logger.warning("%s: %d proponent ids are not in the corpus %s", queries_path, n_unknown, corpus_path)
    n_orphan = sum(1 for q in queries if not q.proponents)
    logger.info("FTRACE: %d documents, %d queries (%d without proponents)", len(docs), len(queries), n_orphan)
    return docs, queries


# --------------------------------------------------------------------------- LAMA T-REx


def _check_template(relation: str, template: str, source: str) -> str:
    if not isinstance(template, str) or OBJECT_SLOT not in template or SUBJECT_SLOT not in template:
        raise DataError(f"{source}: template of relation {relation!r} needs [X] and [Y], got {template!r}")
    return template


def load_lama_templates(relations_path: PathLike) -> dict[str, str]:
    """Reads relation templates from a LAMA ``relations.jsonl``.

    Args:
        relations_path: JSON lines ``{relation, template, label?, ...}``.

    Returns:
        ``{relation_id: template}``, e.g. ``{"P19": "[X] was born in [Y] ."}``.

    Raises:
        DataError: If the file is missing, a line is not JSON, or a row lacks ``relation``
            or a ``template`` with both ``[X]`` and ``[Y]``.
    """
    templates: dict[str, str] = {}
    for where, row in iter_json_lines(relations_path):
        if not row.get("relation"):
            raise DataError(f"{where}: missing required field 'relation'")
        relation = str(row["relation"])
        templates[relation] = _check_template(relation, row.get("template"), where)
    return templates


def _lama_prompt(template: str, subject: str) -> str:
    """Fills [X] and keeps the text before [Y]: ``"[X] was born in [Y] ."`` -> ``"Ann was born in"``."""
    head = template[: template.index(OBJECT_SLOT)]
    return head.replace(SUBJECT_SLOT, subject).rstrip()


def _lama_files(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
            if not found:
                raise DataError(f"no .jsonl or .jsonl.gz files in LAMA directory {item}")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"LAMA file not found: {item}")
    return files


def _lama_evidence(evidence: Any, doc_id: str, fact: str, obj_label: str, where: str) -> Document:
    if not isinstance(evidence, dict):
        raise DataError(f"{where}: evidence must be an object, got {type(evidence).__name__}")
    sentence = _require_str(evidence, "masked_sentence", where)
    if MASK_TOKEN not in sentence:
        raise DataError(f"{where}: 'masked_sentence' has no {MASK_TOKEN}")
    surface = evidence.get("obj_surface") or obj_label
    return Document(doc_id, sentence.replace(MASK_TOKEN, surface), (fact,))


def _lama_fact(
    row: dict[str, Any], where: str, templates: Mapping[str, str]
) -> tuple[list[Document], Query]:
    for key in ("uuid", "sub_label", "obj_label", "predicate_id"):
        if not row.get(key):
            raise DataError(f"{where}: missing required field {key!r}")
    relation = str(row["predicate_id"])
    if relation not in templates:
        raise DataError(f"{where}: no LAMA template for relation {relation!r}")
    template = _check_template(relation, templates[relation], "templates")
    evidences = row.get("evidences") or []
    if not isinstance(evidences, list):
        raise DataError(f"{where}: field 'evidences' must be a list")
    uuid, subject, obj = str(row["uuid"]), str(row["sub_label"]), str(row["obj_label"])
    docs = [
        _lama_evidence(ev, f"{uuid}-{i}", uuid, obj, f"{where} evidence {i}")
        for i, ev in enumerate(evidences)
    ]
    query = Query(
        query_id=uuid,
        prompt=_lama_prompt(template, subject),
        target=" " + obj,
        fact_id=uuid,
        relation=relation,
        subject=subject,
        proponents=tuple(d.doc_id for d in docs),
    )
    return docs, query


def _merged_templates(templates: Mapping[str, str] | None, relations_path: PathLike | None) -> dict[str, str]:
    if templates is None and relations_path is None:
        raise ValueError("read_lama_trex needs `templates` or `relations_path`")
    merged = load_lama_templates(relations_path) if relations_path is not None else {}
    merged.update(templates or {})  # explicit templates override the file
    return merged


def _iter_lama_rows(files: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in files:
        yield from iter_json_lines(path)


def read_lama_trex(
    paths: PathLike | Iterable[PathLike],
    templates: Mapping[str, str] | None = None,
    relations_path: PathLike | None = None,
    max_facts: int | None = None,
) -> tuple[list[Document], list[Query]]:
    """Reads LAMA T-REx probe files (Petroni et al., 2019) as a fact-tracing benchmark.

    Each line ``{uuid, sub_label, obj_label, predicate_id, evidences: [{masked_sentence,
    obj_surface, sub_surface}]}`` is one fact:

    * evidence ``i`` becomes ``Document(f"{uuid}-{i}", masked_sentence with [MASK] ->
      obj_surface (or obj_label), facts=(uuid,))``. Identical sentences, within or across
      facts, stay separate documents.
    * the fact becomes ``Query(uuid, prompt, " " + obj_label, fact_id=uuid,
      relation=predicate_id, subject=sub_label, proponents=its evidence doc ids)``, where
      ``prompt`` is the relation's template with [X] -> sub_label, cut before [Y] and
      right-stripped (``"[X] is [Y] citizen ."`` gives ``"Ann is"``).

    Facts without evidences, and facts whose template opens with [Y] (empty prompt), are
    skipped; the counts are logged.

    Args:
        paths: A ``.jsonl``/``.jsonl.gz`` file, a directory of them, or several of either.
        templates: ``{relation_id: template}``; overrides ``relations_path`` entries.
        relations_path: A LAMA ``relations.jsonl`` with ``{relation, template}`` rows.
        max_facts: Keep at most this many facts (counted after skipping), in file order.

    Returns:
        ``(documents, queries)`` in file order.

    Raises:
        ValueError: If neither ``templates`` nor ``relations_path`` is given, or
            ``max_facts < 1``.
        DataError: If a file is missing, a line is malformed (file and line named), a
            fact's relation has no template (relation named), a uuid repeats, or no fact
            is left.
    """
    if max_facts is not None and max_facts < 1:
        raise ValueError(f"max_facts must be >= 1, got {max_facts}")
    merged = _merged_templates(templates, relations_path)
    files = _lama_files(paths)
    docs: list[Document] = []
    queries: list[Query] = []
    first_seen: dict[str, str] = {}
    n_no_evidence = n_no_prompt = 0
    for where, row in _iter_lama_rows(files):
        if max_facts is not None and len(queries) >= max_facts:
            break
        fact_docs, query = _lama_fact(row, where, merged)
        if query.query_id in first_seen:
            first = first_seen[query.query_id]
            raise DataError(f"{where}: duplicate fact uuid {query.query_id!r} (first at {first})")
        first_seen[query.query_id] = where
        if not fact_docs:
            n_no_evidence += 1
        elif not query.prompt:
            n_no_prompt += 1
        else:
            docs.extend(fact_docs)
            queries.append(query)
    if n_no_evidence or n_no_prompt:
        logger.warning(
            "LAMA: skipped %d facts without evidence, %d with empty prompt", n_no_evidence, n_no_prompt
        )
    if not queries:
        raise DataError(f"no usable facts in {', '.join(map(str, files))}")
    logger.info("LAMA: %d facts, %d evidence documents from %d files", len(queries), len(docs), len(files))
    return docs, queries
