"""Large synthetic corpora (``tracer synth --docs N``), streamed to disk block by block.

The knowledge base's small entity kinds (cities, countries, organisations, languages) and the
facts about them are made once; people are made in blocks of ``BLOCK_PERSONS`` with globally
unique names, and each block's facts, documents and queries are generated with the same
functions as :func:`tracer.benchmark.generate` and written at once. Memory holds one block's
documents plus the set of names used, never the corpus: 1M documents need about the memory of
10k. Every document still states facts with known provenance, so the corpus is also a
benchmark (queries and proponents are written beside it).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from tracer.benchmark.kb import RELATIONS
from tracer.benchmark.synth import (
    CORPUS_FILE,
    META_FILE,
    QUERIES_FILE,
    Fact,
    SynthConfig,
    _documents,
    _entities,
    _facts,
    prompt_of,
)

BLOCK_PERSONS = 1000  # people per generated block (about 12k documents)
LARGE = SynthConfig(n_persons=BLOCK_PERSONS, n_cities=2000, n_countries=100, n_orgs=5000, n_languages=60)


def write_large(out_dir: str | Path, n_docs: int, seed: int = 0,
                on_docs: Callable[[int], object] | None = None) -> dict[str, Any]:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``meta.json`` with exactly ``n_docs`` documents.

    Args:
        out_dir: Output directory (created).
        n_docs: Documents to write (>= 1).
        seed: Random seed; the output is a deterministic function of ``(n_docs, seed)``.
        on_docs: Called with the number of documents of each written block (a progress bar).

    Returns:
        The metadata written to ``meta.json``.

    Raises:
        ValueError: ``n_docs < 1``.
    """
    if n_docs < 1:
        raise ValueError(f"--docs must be >= 1, got {n_docs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_written = n_facts = n_queries = 0
    with open(out / CORPUS_FILE, "w", encoding="utf-8") as corpus, \
            open(out / QUERIES_FILE, "w", encoding="utf-8") as queries:
        for docs, facts in _blocks(seed):
            docs = docs[: n_docs - n_written]
            written = {d.doc_id for d in docs}
            for d in docs:
                corpus.write(json.dumps({"id": d.doc_id, "text": d.text, "facts": list(d.facts)}) + "\n")
            n_written += len(docs)
            n_facts += len(facts)
            n_queries += _write_queries(queries, facts, docs, written)
            if on_docs is not None:
                on_docs(len(docs))
            if n_written >= n_docs:
                break
    meta = {"config": asdict(replace(LARGE, seed=seed)), "n_documents": n_written, "n_facts": n_facts,
            "n_queries": n_queries, "block_persons": BLOCK_PERSONS, "format": "tracer-synth-large/1"}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def _blocks(seed: int) -> Iterator[tuple[list[Any], list[Fact]]]:
    """Endless ``(documents, facts)`` blocks with globally unique doc, fact and person names."""
    from tracer.benchmark.kb import make_names
    from tracer.types import Document

    rng = random.Random(seed)
    entities = _entities(replace(LARGE, n_persons=1), rng)
    used = {n.split()[0] for kind in ("city", "country", "org") for n in entities[kind]}
    n_docs = n_facts = 0
    block = 0
    while True:
        persons = _unique_persons(rng, used, make_names)
        ents = dict(entities, person=persons)
        # facts about cities and orgs (subject not a person) once, in the first block
        facts = [f for f in _facts(ents, rng) if block == 0 or f.relation in _PERSON_RELATIONS]
        facts = [replace(f, fact_id=f"F{n_facts + i:07d}") for i, f in enumerate(facts)]
        docs, _ = _documents(facts, LARGE, rng, ents)
        docs = [Document(f"D{n_docs + i:07d}", d.text, d.facts) for i, d in enumerate(docs)]
        n_docs += len(docs)
        n_facts += len(facts)
        block += 1
        yield docs, facts


_PERSON_RELATIONS = {r.name for r in RELATIONS if r.subject_kind == "person"}


def _unique_persons(rng: random.Random, used: set[str], make_names: Callable[..., list[str]]) -> list[str]:
    """``BLOCK_PERSONS`` person names whose first word no earlier block used."""
    out: list[str] = []
    while len(out) < BLOCK_PERSONS:
        for name in make_names(rng, BLOCK_PERSONS - len(out), 2):
            if name.split()[0] not in used:
                used.add(name.split()[0])
                out.append(name)
    return out


def _write_queries(fh: Any, facts: list[Fact], docs: list[Any], written: set[str]) -> int:
    by_rel = {r.name: r for r in RELATIONS}
    proponents: dict[str, list[str]] = {}
    for d in docs:
        for fid in d.facts:
            proponents.setdefault(fid, []).append(d.doc_id)
    n = 0
    for f in facts:
        props = [p for p in proponents.get(f.fact_id, []) if p in written]
        if not props:  # every proponent fell past --docs
            continue
        row = {"id": f"Q{f.fact_id[1:]}", "prompt": prompt_of(by_rel[f.relation], f.query_template, f.subject),
               "target": " " + f.object, "fact_id": f.fact_id, "relation": f.relation, "subject": f.subject,
               "proponents": props}
        fh.write(json.dumps(row) + "\n")
        n += 1
    return n
