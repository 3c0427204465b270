"""Generate an FTRACE-style benchmark whose provenance is known by construction.

Pipeline (all seeded, deterministic): entities -> facts (one object per subject and
relation) -> for every fact, one held-out *query template* and ``n_proponents``
mentions with the other templates -> mentions bundled per subject into documents of
1-3 facts plus filler -> hard distractor documents -> queries.

Distractors that mislead lexical retrieval arise on purpose:
* documents stating *other* relations of the same subject (subject overlap);
* documents stating the same relation and object for *other* subjects (object overlap),
  often with the very template the query uses (template overlap);
* distractor sentences that mention the subject next to an object of the right kind
  without stating the relation (``Relation.filler``).

``distractors="hard"`` (``tracer synth --distractors hard``) makes lexical overlap a poor guide:
* co-mention distractors: for every fact, a document with the subject and the *true* object in
  one sentence but another relation ("X gave a concert in Y" where Y is X's birthplace);
* proponents state a fact with the templates that share the fewest words with the query's
  template (ties broken by the seeded shuffle), so the query's wording rarely appears in them.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tracer.benchmark.kb import (
    FILLERS,
    INSTRUMENTS,
    OCCUPATIONS,
    RELATIONS,
    Relation,
    make_language_names,
    make_names,
)
from tracer.types import Document, Query

CORPUS_FILE = "corpus.jsonl"  # one Document per line: {id, text, facts}
QUERIES_FILE = "queries.jsonl"  # one Query per line (+ train_prompt)
KB_FILE = "kb.json"  # entities, relations, facts
META_FILE = "meta.json"  # config and counts


DISTRACTORS = ("standard", "hard")
# "hard" co-mentions: subject and the TRUE object in one sentence, the relation not stated
COMENTIONS: dict[str, str] = {
    "born_in": "{s} gave a concert in {o}.",
    "citizen_of": "{s} gave a lecture on the economy of {o}.",
    "works_for": "{s} wrote a newspaper column criticising {o}.",
    "occupation": "{s} interviewed a famous {o}.",
    "speaks": "{s} once translated a poem from {o}.",
    "plays": "{s} listened to a recording for the {o}.",
    "located_in": "A night train runs from {s} to {o}.",
    "headquartered_in": "{s} sponsored a festival in {o}.",
    "founded_by": "{s} published an interview with {o}.",
}


def _words(template: str) -> set[str]:
    return {w.strip(".,").lower() for w in template.replace("{s}", " ").replace("{o}", " ").split()} - {""}


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic benchmark.

    Every field is validated in ``__post_init__``.
    """

    # --- entities ---
    n_persons: int = field(default=120, metadata={"help": "people (subjects of 6 relations)"})
    n_cities: int = field(default=30, metadata={"help": "cities (objects of born_in, subjects of located_in)"})
    n_countries: int = field(default=10, metadata={"help": "countries"})
    n_orgs: int = field(default=30, metadata={"help": "organisations"})
    n_languages: int = field(default=8, metadata={"help": "languages"})
    # --- corpus ---
    n_proponents: int = field(default=3, metadata={"help": "documents stating each fact"})
    max_facts_per_doc: int = field(default=3, metadata={"help": "facts stated per document (1..this)"})
    filler_rate: float = field(default=0.5, metadata={"help": "chance of a filler sentence per document"})
    distractor_rate: float = field(default=0.3, metadata={"help": "distractor documents per fact"})
    distractors: str = field(default="standard", metadata={
        "help": "standard | hard (co-mentions of subject and true object; proponents worded unlike the query)"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        for name in ("n_persons", "n_cities", "n_countries", "n_orgs", "n_languages", "n_proponents"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.max_facts_per_doc <= 5:
            raise ValueError(f"SynthConfig.max_facts_per_doc must be in 1..5, got {self.max_facts_per_doc}")
        if self.distractors not in DISTRACTORS:
            raise ValueError(f"SynthConfig.distractors must be one of {', '.join(DISTRACTORS)}, "
                             f"got {self.distractors!r}")
        for name in ("filler_rate", "distractor_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SynthConfig.{name} must be in [0, 1], got {getattr(self, name)}")


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(n_persons=16, n_cities=6, n_countries=3, n_orgs=5, n_languages=3),
    "small": SynthConfig(),
    "medium": SynthConfig(n_persons=8000, n_cities=400, n_countries=60, n_orgs=1500, n_languages=40),
}


@dataclass(frozen=True)
class Fact:
    fact_id: str
    relation: str
    subject: str
    object: str
    query_template: int


@dataclass
class Benchmark:
    """A generated benchmark held in memory."""

    config: SynthConfig
    entities: dict[str, list[str]]
    facts: list[Fact]
    documents: list[Document]
    queries: list[Query]
    train_prompts: dict[str, str]  # query_id -> prompt phrased with a proponent's template


def _entities(cfg: SynthConfig, rng: random.Random) -> dict[str, list[str]]:
    return {
        "person": make_names(rng, cfg.n_persons, 2),
        "city": make_names(rng, cfg.n_cities, 1),
        "country": make_names(rng, cfg.n_countries, 1, ("Republic", "Kingdom", "Federation")),
        "org": make_names(rng, cfg.n_orgs, 1, ("Industries", "Holdings", "Works", "Labs", "Trading")),
        "language": make_language_names(rng, cfg.n_languages),
        "occupation": list(OCCUPATIONS),
        "instrument": list(INSTRUMENTS),
    }


def _facts(entities: dict[str, list[str]], rng: random.Random) -> list[Fact]:
    facts: list[Fact] = []
    for rel in RELATIONS:
        objects = entities[rel.object_kind]
        for subject in entities[rel.subject_kind]:
            # Zipf-ish object popularity: some objects are shared by many subjects.
            obj = objects[min(int(rng.paretovariate(1.2)) - 1, len(objects) - 1)] if rng.random() < 0.3 \
                else rng.choice(objects)
            if obj == subject:
                continue
            fid = f"F{len(facts):06d}"
            facts.append(Fact(fid, rel.name, subject, obj, rng.randrange(len(rel.templates))))
    return facts


def render(rel: Relation, template: int, subject: str, obj: str) -> str:
    """The sentence stating ``rel(subject, obj)`` with the given template."""
    return rel.templates[template].format(s=subject, o=obj)


def prompt_of(rel: Relation, template: int, subject: str) -> str:
    """The prompt of a fact: the template cut before its object (no trailing space)."""
    return rel.templates[template].split("{o}")[0].format(s=subject).rstrip()


def _mentions(facts: list[Fact], cfg: SynthConfig, rng: random.Random) -> dict[str, list[tuple[Fact, int]]]:
    """Per subject, the (fact, template) mentions; never the fact's query template.

    Deterministic for the rng state, so ``generate`` can replay it to know each fact's templates.
    """
    by_rel = {r.name: r for r in RELATIONS}
    per_subject: dict[str, list[tuple[Fact, int]]] = {}
    for f in facts:
        templates = by_rel[f.relation].templates
        allowed = [t for t in range(len(templates)) if t != f.query_template]
        rng.shuffle(allowed)
        if cfg.distractors == "hard":  # fewest words shared with the query's template first (stable: seeded ties)
            query_words = _words(templates[f.query_template])
            allowed.sort(key=lambda t: len(_words(templates[t]) & query_words))
        for i in range(cfg.n_proponents):
            per_subject.setdefault(f.subject, []).append((f, allowed[i % len(allowed)]))
    return per_subject


def _documents(facts: list[Fact], cfg: SynthConfig, rng: random.Random,
               entities: dict[str, list[str]]) -> tuple[list[Document], dict[str, int]]:
    by_rel = {r.name: r for r in RELATIONS}
    docs: list[Document] = []
    per_subject = _mentions(facts, cfg, rng)
    first_template = {}
    for mentions in per_subject.values():
        for f, t in mentions:
            first_template.setdefault(f.fact_id, t)
    for subject, mentions in per_subject.items():
        rng.shuffle(mentions)
        while mentions:
            n = rng.randint(1, cfg.max_facts_per_doc)
            chunk: list[tuple[Fact, int]] = []
            for m in list(mentions):  # distinct facts within one document
                if len(chunk) < n and all(m[0].fact_id != c[0].fact_id for c in chunk):
                    chunk.append(m)
                    mentions.remove(m)
            sentences = [render(by_rel[f.relation], t, f.subject, f.object) for f, t in chunk]
            if rng.random() < cfg.filler_rate:
                sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(FILLERS))
            fids = tuple(sorted({f.fact_id for f, _ in chunk}))
            docs.append(Document(doc_id="", text=" ".join(sentences), facts=fids))
    for f in facts:  # hard distractors: subject next to a wrong object, relation not stated
        if rng.random() < cfg.distractor_rate:
            rel = by_rel[f.relation]
            other = rng.choice(entities[rel.object_kind])
            docs.append(Document(doc_id="", text=rel.filler.format(s=f.subject, o=other), facts=()))
    if cfg.distractors == "hard":
        for f in facts:  # co-mentions: subject and the true object together, another relation
            docs.append(Document(doc_id="", text=COMENTIONS[f.relation].format(s=f.subject, o=f.object), facts=()))
    rng.shuffle(docs)
    return [Document(doc_id=f"D{i:06d}", text=d.text, facts=d.facts) for i, d in enumerate(docs)], first_template


def generate(cfg: SynthConfig) -> Benchmark:
    """Generate a benchmark deterministically from ``cfg`` (including its seed).

    Args:
        cfg: Sizes and seed.

    Returns:
        The benchmark: entities, facts, documents (with their fact ids) and queries
        whose ``proponents`` are exactly the documents stating the fact.
    """
    rng = random.Random(cfg.seed)
    entities = _entities(cfg, rng)
    facts = _facts(entities, rng)
    docs, train_template = _documents(facts, cfg, rng, entities)
    proponents: dict[str, list[str]] = {}
    for d in docs:
        for fid in d.facts:
            proponents.setdefault(fid, []).append(d.doc_id)
    by_rel = {r.name: r for r in RELATIONS}
    queries: list[Query] = []
    train_prompts: dict[str, str] = {}
    for f in facts:
        rel = by_rel[f.relation]
        qid = f"Q{f.fact_id[1:]}"
        queries.append(Query(qid, prompt_of(rel, f.query_template, f.subject), " " + f.object, f.fact_id,
                             f.relation, f.subject, tuple(proponents[f.fact_id])))
        train_prompts[qid] = prompt_of(rel, train_template[f.fact_id], f.subject)  # a proponent's template
    return Benchmark(cfg, entities, facts, docs, queries, train_prompts)


def write_corpus_and_queries(out: Path, documents: Sequence[Document], queries: Sequence[Query],
                             extra: Callable[[Query], dict[str, Any]]) -> None:
    """``corpus.jsonl`` (id, text, facts) and ``queries.jsonl`` (the query plus ``extra(q)``) in ``out``."""
    with open(out / CORPUS_FILE, "w", encoding="utf-8") as fh:
        for d in documents:
            fh.write(json.dumps({"id": d.doc_id, "text": d.text, "facts": list(d.facts)}) + "\n")
    with open(out / QUERIES_FILE, "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({**q.to_dict(), **extra(q)}) + "\n")


def write_benchmark(bench: Benchmark, out_dir: str | Path) -> Path:
    """Write ``corpus.jsonl``, ``queries.jsonl``, ``kb.json`` and ``meta.json`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_corpus_and_queries(out, bench.documents, bench.queries,
                             lambda q: {"train_prompt": bench.train_prompts[q.query_id]})
    kb: dict[str, Any] = {
        "entities": bench.entities,
        "relations": [asdict(r) for r in RELATIONS],
        "facts": [asdict(f) for f in bench.facts],
    }
    (out / KB_FILE).write_text(json.dumps(kb, indent=1), encoding="utf-8")
    meta = {"config": asdict(bench.config), "n_documents": len(bench.documents),
            "n_facts": len(bench.facts), "n_queries": len(bench.queries), "format": "tracer-synth/1"}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out
