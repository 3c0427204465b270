"""A real-text fact-tracing benchmark from LAMA T-REx facts and their Wikipedia evidence sentences.

``tracer synth --from-lama DIR`` writes the same files as ``tracer synth`` (``corpus.jsonl``,
``queries.jsonl``, ``kb.json``, ``meta.json``), built from local LAMA T-REx probe files:

* **Corpus**: the evidence sentences (``masked_sentence`` with ``[MASK]`` -> ``obj_surface``) of the
  sampled facts, at most ``max_evidences_per_fact`` per fact (a seeded sample, file order kept).
  A document's ``facts`` are the facts it is evidence for; identical sentences are merged into one
  document listing every fact they support. Every other fact's sentences are distractors for a
  query: same relation and often the same object, other subjects.
* **Queries**: one per fact, ``prompt`` = a query template with ``[X]`` -> ``sub_label``, cut
  before ``[Y]``; ``target`` = ``" " + obj_label``; ``proponents`` = its evidence documents. The
  template is a ParaRel paraphrase (``graphs_json/P*.jsonl``) where DIR has them, else the LAMA
  template of ``relations.jsonl``.

  *Completion templates only*: the object is scored as a causal-LM continuation of the prompt,
  so a template is usable only when ``[X]`` comes before ``[Y]`` and nothing but punctuation
  follows ``[Y]`` ("[X] was born in [Y]." yes; "[Y] is [X]'s native language." and "[X] plays
  [Y] music ." no). A relation with no usable ParaRel pattern falls back to its LAMA template;
  with none at all it is skipped (logged, counted in ``meta.json``).

  *Choice per fact* (seeded): among the usable templates, those whose wording (the text before
  ``[Y]`` without the subject, as whole lower-cased words) does not occur in any of the fact's
  chosen evidence sentences are preferred, so the query is worded unlike its proponents where possible; one of
  them is drawn with a per-relation ``random.Random``. ``train_prompt`` is the first chosen
  evidence sentence cut before its object, when that object's surface is ``obj_label``
  (memorisation of the training text), else the query prompt.

Facts are sampled per relation: the facts with at least one evidence sentence, shuffled with a
per-relation seeded generator, the first ``max_facts_per_relation`` kept. The data (LAMA:
CC BY-NC 4.0) is read from the caller's directory and never copied anywhere but ``--out``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracer.benchmark.synth import KB_FILE, META_FILE, write_corpus_and_queries
from tracer.corpus.io import iter_json_lines
from tracer.corpus.readers import MASK_TOKEN, OBJECT_SLOT, SUBJECT_SLOT, load_lama_templates, read_lama_trex
from tracer.errors import DataError
from tracer.types import Document, Query

log = logging.getLogger(__name__)

# The relations the project develops and tunes on (issue #14); the other T-REx relations are held out.
DEV_RELATIONS: tuple[str, ...] = (
    "P101", "P103", "P136", "P176", "P178", "P264", "P407", "P449", "P495", "P937")

# Where the pieces may sit under DIR (the eval-data layout first, then flat layouts).
_TREX_DIRS = ("lama-data-via-bert-knn/TREx", "TREx", "data/TREx")
_RELATIONS_FILES = ("lama-data-via-bert-knn/relations.jsonl", "relations.jsonl", "data/relations.jsonl")
_PARAREL_DIRS = ("pararel/data/pattern_data/graphs_json", "pararel/graphs_json", "graphs_json")
_RELATION_RE = re.compile(r"^P\d+$")
_TRAILING_OK = re.compile(r"^[\s.,;:!?]*$")
_NON_WORD = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class LamaConfig:
    """Which LAMA facts and sentences make the benchmark. Every field is validated in ``__post_init__``."""

    relations: tuple[str, ...] = field(default=DEV_RELATIONS, metadata={
        "help": "relation ids to include (default: the 10 development relations of issue #14)"})
    max_facts_per_relation: int | None = field(default=50, metadata={
        "help": "facts sampled per relation (seeded); None = all with evidence"})
    max_evidences_per_fact: int | None = field(default=2, metadata={
        "help": "evidence sentences kept per fact (seeded sample, file order); None = all"})
    seed: int = field(default=0, metadata={
        "help": "random seed (fact sample, evidence sample, query templates)"})

    def __post_init__(self) -> None:
        if not self.relations:
            raise ValueError("LamaConfig.relations must name at least one relation")
        for r in self.relations:
            if not _RELATION_RE.match(r):
                raise ValueError(f"LamaConfig.relations: {r!r} is not a Wikidata property id like P101")
        if len(set(self.relations)) != len(self.relations):
            raise ValueError(f"LamaConfig.relations repeats a relation: {','.join(self.relations)}")
        for name in ("max_facts_per_relation", "max_evidences_per_fact"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LamaConfig.{name} must be >= 1 (or None for all), got {value}")


@dataclass(frozen=True)
class LamaSource:
    """The files of a LAMA (+ ParaRel) directory."""

    trex_dir: Path
    relations_path: Path
    pararel_dir: Path | None

    def trex_file(self, relation: str) -> Path | None:
        for name in (f"{relation}.jsonl", f"{relation}.jsonl.gz"):
            if (self.trex_dir / name).is_file():
                return self.trex_dir / name
        return None

    def pararel_file(self, relation: str) -> Path | None:
        if self.pararel_dir is None or not (self.pararel_dir / f"{relation}.jsonl").is_file():
            return None
        return self.pararel_dir / f"{relation}.jsonl"


def locate(root: str | Path) -> LamaSource:
    """Find the T-REx files, ``relations.jsonl`` and (optionally) ParaRel's ``graphs_json`` under ``root``.

    Raises:
        DataError: If ``root``, its T-REx directory or its ``relations.jsonl`` is missing.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"LAMA directory not found: {base}")
    trex = next((base / d for d in _TREX_DIRS if (base / d).is_dir()), None)
    if trex is None:
        raise DataError(f"no T-REx directory under {base} (looked for {', '.join(_TREX_DIRS)})")
    rels = next((base / f for f in _RELATIONS_FILES if (base / f).is_file()), None)
    if rels is None:
        raise DataError(f"no LAMA relations.jsonl under {base} (looked for {', '.join(_RELATIONS_FILES)})")
    pararel = next((base / d for d in _PARAREL_DIRS if (base / d).is_dir()), None)
    return LamaSource(trex, rels, pararel)


def completion_template(template: str) -> bool:
    """Whether ``template`` asks for its object as a continuation: ``[X]`` before ``[Y]``, only
    punctuation after ``[Y]``, and some text before ``[Y]`` besides the subject."""
    if template.count(SUBJECT_SLOT) != 1 or template.count(OBJECT_SLOT) != 1:
        return False
    x, y = template.index(SUBJECT_SLOT), template.index(OBJECT_SLOT)
    return x < y and bool(_TRAILING_OK.match(template[y + len(OBJECT_SLOT):])) \
        and bool(template[x + len(SUBJECT_SLOT):y].strip())


def fill_prompt(template: str, subject: str) -> str:
    """``"[X] was born in [Y]."`` and ``"Ann"`` -> ``"Ann was born in"`` (no trailing space)."""
    return template[: template.index(OBJECT_SLOT)].replace(SUBJECT_SLOT, subject).rstrip()


def _words(text: str) -> str:
    """Lower-cased words joined by single spaces, punctuation dropped (``"X's:"`` -> ``"x s"``)."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def template_phrases(template: str) -> list[str]:
    """The template's wording before ``[Y]`` without the subject, as word strings:
    ``"The native language of [X] is [Y]."`` -> ``["the native language of", "is"]``."""
    head = template[: template.index(OBJECT_SLOT)]
    return [w for part in head.split(SUBJECT_SLOT) if (w := _words(part))]


def echoes(template: str, sentences: list[str]) -> bool:
    """Whether some sentence contains every phrase of ``template`` (whole words), i.e. states the
    fact in the query's own wording."""
    phrases = template_phrases(template)
    return any(all(f" {p} " in f" {_words(s)} " for p in phrases) for s in sentences)


def query_templates(source: LamaSource, relation: str, lama_template: str | None) -> tuple[list[str], str]:
    """The usable query templates of a relation and their source (``pararel`` | ``lama`` | ``none``)."""
    path = source.pararel_file(relation)
    if path is not None:
        patterns = []
        for where, row in iter_json_lines(path):
            if not isinstance(row.get("pattern"), str):
                raise DataError(f"{where}: missing required field 'pattern'")
            patterns.append(row["pattern"])
        heads: dict[str, str] = {}  # one template per prompt wording ("[X] is made by [Y]" and "... [Y].")
        for p in patterns:
            if completion_template(p):
                heads.setdefault(p[: p.index(OBJECT_SLOT)].rstrip(), p)
        usable = list(heads.values())
        if usable:
            return usable, "pararel"
    if lama_template is not None and completion_template(lama_template):
        return [lama_template], "lama"
    return [], "none"


@dataclass
class LamaBenchmark:
    """A LAMA benchmark held in memory (``write_lama_benchmark`` writes it)."""

    config: LamaConfig
    documents: list[Document]
    queries: list[Query]
    train_prompts: dict[str, str]  # query_id -> evidence sentence cut before its object
    templates: dict[str, str]  # query_id -> the query's template
    relations: list[dict[str, Any]]  # per relation: id, LAMA template, query templates, source, counts
    facts: list[dict[str, Any]]  # per fact: id, relation, subject, object, uris
    source: dict[str, str] = field(default_factory=dict)


def _raw_evidences(path: Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``uuid -> (row, evidences)`` as in the file (the reader keeps only the filled sentences)."""
    out = {}
    for _where, row in iter_json_lines(path):
        out[str(row.get("uuid"))] = (row, list(row.get("evidences") or []))
    return out


def _evidence_prompt(evidence: dict[str, Any], obj_label: str) -> str | None:
    sentence = evidence.get("masked_sentence") or ""
    if (evidence.get("obj_surface") or obj_label) != obj_label or MASK_TOKEN not in sentence:
        return None
    head = sentence[: sentence.index(MASK_TOKEN)].rstrip()
    return head or None


def build_lama(root: str | Path, cfg: LamaConfig) -> LamaBenchmark:
    """Build the benchmark from the LAMA directory ``root`` (see the module docstring).

    Raises:
        DataError: If a file is missing or malformed, a requested relation has no T-REx file or no
            template in ``relations.jsonl``, or no fact is left.
    """
    source = locate(root)
    lama_templates = load_lama_templates(source.relations_path)
    docs_by_text: dict[str, Document] = {}
    queries: list[Query] = []
    train_prompts: dict[str, str] = {}
    templates: dict[str, str] = {}
    relations: list[dict[str, Any]] = []
    facts: list[dict[str, Any]] = []
    for rel in cfg.relations:
        path = source.trex_file(rel)
        if path is None:
            raise DataError(f"no T-REx file for relation {rel} in {source.trex_dir}")
        if rel not in lama_templates:
            raise DataError(f"relation {rel} has no template in {source.relations_path}")
        usable, origin = query_templates(source, rel, lama_templates[rel])
        info: dict[str, Any] = {"relation": rel, "lama_template": lama_templates[rel],
                                "template_source": origin, "query_templates": usable,
                                "n_facts": 0, "n_documents": 0}
        relations.append(info)
        if not usable:
            log.warning("LAMA: relation %s skipped: no template with [X] before a final [Y]", rel)
            continue
        # the existing reader validates rows and fills the evidence sentences; its prompts are not
        # used (a neutral template keeps facts whose LAMA template opens with [Y])
        fact_docs, fact_queries = read_lama_trex(path, templates={rel: f"{SUBJECT_SLOT} {OBJECT_SLOT} ."})
        raw = _raw_evidences(path)
        docs_of: dict[str, list[Document]] = {}
        for d in fact_docs:
            docs_of.setdefault(d.facts[0], []).append(d)
        rng = random.Random(f"{cfg.seed}:{rel}")
        order = [q for q in fact_queries if q.relation == rel]
        rng.shuffle(order)
        if cfg.max_facts_per_relation is not None:
            order = order[: cfg.max_facts_per_relation]
        for q in order:
            row, evidences = raw[q.query_id]
            ev_idx = list(range(len(docs_of[q.query_id])))
            if cfg.max_evidences_per_fact is not None and len(ev_idx) > cfg.max_evidences_per_fact:
                ev_idx = sorted(rng.sample(ev_idx, cfg.max_evidences_per_fact))
            chosen = [docs_of[q.query_id][i] for i in ev_idx]
            fresh = [t for t in usable if not echoes(t, [d.text for d in chosen])]
            template = rng.choice(fresh or usable)
            obj = q.target[1:]
            ev_prompts = [p for i in ev_idx if (p := _evidence_prompt(evidences[i], obj))]
            qid = q.query_id
            proponents = []
            for d in chosen:
                have = docs_by_text.get(d.text)
                if have is None:
                    docs_by_text[d.text] = Document(d.doc_id, d.text, (qid,))
                    proponents.append(d.doc_id)
                elif qid not in have.facts:
                    docs_by_text[d.text] = Document(have.doc_id, have.text, have.facts + (qid,))
                    proponents.append(have.doc_id)
            queries.append(Query(qid, fill_prompt(template, q.subject), q.target, qid, rel, q.subject,
                                 tuple(dict.fromkeys(proponents))))
            train_prompts[qid] = ev_prompts[0] if ev_prompts else queries[-1].prompt
            templates[qid] = template
            facts.append({"fact_id": qid, "relation": rel, "subject": q.subject, "object": obj,
                          "sub_uri": row.get("sub_uri"), "obj_uri": row.get("obj_uri"),
                          "query_template": template, "n_evidences_available": len(docs_of[qid])})
            info["n_facts"] += 1
            info["n_documents"] += len(chosen)
    if not queries:
        raise DataError(f"no usable LAMA facts for relations {','.join(cfg.relations)} under {root}")
    # a merged document's proponent lists must name it for every fact it supports (done above);
    # the documents keep the reader's ids ("<uuid>-<i>", the first occurrence's)
    documents = list(docs_by_text.values())
    src = {"trex_dir": str(source.trex_dir), "relations": str(source.relations_path),
           "pararel_dir": str(source.pararel_dir) if source.pararel_dir else ""}
    return LamaBenchmark(cfg, documents, queries, train_prompts, templates, relations, facts, src)


def write_lama_benchmark(bench: LamaBenchmark, out_dir: str | Path) -> Path:
    """Write ``corpus.jsonl``, ``queries.jsonl`` (+ ``train_prompt``, ``template``), ``kb.json`` and
    ``meta.json`` to ``out_dir``, as ``tracer synth`` does."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_corpus_and_queries(out, bench.documents, bench.queries,
                             lambda q: {"train_prompt": bench.train_prompts[q.query_id],
                                        "template": bench.templates[q.query_id]})
    kb = {"relations": bench.relations, "facts": bench.facts}
    (out / KB_FILE).write_text(json.dumps(kb, indent=1), encoding="utf-8")
    n_merged = sum(1 for d in bench.documents if len(d.facts) > 1)
    meta = {"config": asdict(bench.config), "source": bench.source, "n_documents": len(bench.documents),
            "n_facts": len(bench.facts), "n_queries": len(bench.queries), "n_documents_shared": n_merged,
            "relations_skipped": [r["relation"] for r in bench.relations if r["template_source"] == "none"],
            "format": "tracer-lama/1"}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out
