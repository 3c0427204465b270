"""Plain records that flow between tracer's layers.

Frozen, slotted dataclasses with no behaviour beyond conversion helpers. ``doc_id``
is always the external corpus id (a string); ``row`` is a position in an index.
Scores are always *higher = more supportive*.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Document:
    """One training example.

    Attributes:
        doc_id: Stable external id.
        text: The full text the model was trained on.
        facts: Ids of the facts this document states (benchmark ground truth; may be empty).
        prompt: Optional prompt part when the example is a (prompt, target) pair.
        target: Optional completion part; loss is taken on it only.
    """

    doc_id: str
    text: str
    facts: tuple[str, ...] = ()
    prompt: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A fact as the model states it: ``prompt`` followed by the ``target`` completion.

    Attributes:
        query_id: Stable id of the query.
        prompt: Text before the completion, e.g. ``"Marie Curie was born in"``.
        target: The completion whose loss is attributed, e.g. ``" Warsaw"``.
        fact_id: Benchmark fact id, if known.
        relation: Relation id (e.g. ``"born_in"`` or ``"P19"``), if known.
        subject: Subject surface form, if known.
        proponents: Ground-truth doc ids that state the fact (empty when unknown).
    """

    query_id: str
    prompt: str
    target: str
    fact_id: str | None = None
    relation: str | None = None
    subject: str | None = None
    proponents: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id"] = d.pop("query_id")
        d["proponents"] = list(self.proponents)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Query:
        return cls(
            query_id=str(d.get("id", d.get("query_id", ""))),
            prompt=str(d["prompt"]),
            target=str(d["target"]),
            fact_id=d.get("fact_id"),
            relation=d.get("relation"),
            subject=d.get("subject"),
            proponents=tuple(str(p) for p in d.get("proponents", ())),
        )


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked training example in an answer.

    Attributes:
        doc_id: External id of the training example.
        rank: 1-based rank.
        score: Method score, higher = more supportive.
        text: The example's text (possibly truncated), when requested.
        proponent: Whether the doc is one of the query's known proponents (``None``: none are known).
        checkpoint_scores: The score under each checkpoint alone, on the score's scale (the score
            is their mean); empty for methods not built from several checkpoints.
        topk_fraction: Fraction of checkpoints whose own top-k (same rows, same k) holds this hit.
        stable: In the top-k under every checkpoint (``None``: not measured).
        interval: 95% t-interval of the score over checkpoints (``None``: not measured).
    """

    doc_id: str
    rank: int
    score: float
    text: str | None = None
    proponent: bool | None = None
    checkpoint_scores: tuple[float, ...] = ()
    topk_fraction: float | None = None
    stable: bool | None = None
    interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class TraceResult:
    """The answer to one query.

    Attributes:
        query: The query that was traced.
        method: Method name that produced the scores.
        candidates: Candidate source name (``bm25``, ``gradient``, ``full``, ...).
        hits: Ranked hits, best first.
        timings_ms: Wall time per stage in milliseconds.
        index_fingerprint: Fingerprint of the index that answered.
        n_candidates: How many candidates were reranked.
        opponents: The lowest-scored of the ranked rows, most negative first (only when requested):
            examples whose training step would most *lower* the target's probability.
        recall_ceiling: Estimated share of facts whose proponents the candidate stage can reach at
            all (from the index's calibration; ``None`` when it has none).
        cascade: With ``candidates="auto"``: the budget, the chosen source and size, their
            estimated latency, and whether they fit the budget.
    """

    query: Query
    method: str
    candidates: str
    hits: tuple[Hit, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)
    index_fingerprint: str = ""
    n_candidates: int = 0
    opponents: tuple[Hit, ...] = ()
    recall_ceiling: float | None = None
    cascade: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "query": self.query.to_dict(),
            "method": self.method,
            "candidates": self.candidates,
            "n_candidates": self.n_candidates,
            "hits": [asdict(h) for h in self.hits],
            "timings_ms": dict(self.timings_ms),
            "index_fingerprint": self.index_fingerprint,
        }
        if self.opponents:
            d["opponents"] = [asdict(h) for h in self.opponents]
        if self.recall_ceiling is not None:
            d["recall_ceiling"] = self.recall_ceiling
        if self.cascade is not None:
            d["cascade"] = dict(self.cascade)
        return d

    def to_pandas(self) -> Any:
        """One row per hit (then per opponent): ``kind``, ``rank``, ``doc_id``, ``score``, ``text``,
        ``proponent``, plus the query and method, ready to concatenate across results."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas comes with datasets
            raise ImportError("TraceResult.to_pandas needs pandas (pip install pandas)") from None
        cols = ["query_id", "prompt", "target", "method", "candidates", "kind", "rank", "doc_id", "score", "text",
                "proponent", "stable", "topk_fraction", "checkpoint_scores"]
        q = self.query
        rows = [(q.query_id, q.prompt, q.target, self.method, self.candidates, kind, h.rank, h.doc_id, h.score,
                 h.text, h.proponent, h.stable, h.topk_fraction, list(h.checkpoint_scores))
                for kind, hs in (("hit", self.hits), ("opponent", self.opponents)) for h in hs]
        return pd.DataFrame(rows, columns=cols)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _repr_html_(self) -> str:
        from html import escape

        mark = {True: " ✓", False: "", None: ""}
        rows = "".join(
            f"<tr><td>{h.rank}</td><td>{escape(h.doc_id)}{mark[h.proponent]}</td><td>{h.score:.4g}</td>"
            f"<td>{escape(h.text or '')}</td></tr>"
            for h in self.hits
        )
        head = escape(f"{self.query.prompt} ⟶ {self.query.target}")
        return (
            f"<div><b>{head}</b> <i>({escape(self.method)} over {escape(self.candidates)} candidates)</i>"
            f"<table><tr><th>rank</th><th>doc_id</th><th>score</th><th>text</th></tr>{rows}</table></div>"
        )


@dataclass(frozen=True, slots=True)
class SideBySide:
    """Evidence and influence for one fact, side by side (:meth:`tracer.Tracer.side_by_side`).

    Attributes:
        evidence: Hits of a method that reads text (``bm25`` or ``embedding``): documents that *say* it.
        influence: Hits of a gradient method: documents whose training step *moves the model* toward it.
        overlap: Doc ids in both lists, in the influence list's order.
    """

    evidence: TraceResult
    influence: TraceResult
    overlap: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"evidence": self.evidence.to_dict(), "influence": self.influence.to_dict(),
                "overlap": list(self.overlap)}
