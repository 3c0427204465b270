"""Budget-aware cascades: pick the candidate stage that fits a latency budget, and say what it costs in recall.

Reranking the top ``n`` candidates of a source can never find a proponent the source ranks
``n + 1``-th. A :class:`Calibration` measures, for this index, each candidate source's *recall
ceiling* at several sizes (the share of queries with at least one proponent among the candidates)
and the cost of its stages (candidates and rerank, linear in ``n``; featurizing; a full scan).
:func:`choose` then picks the option with the highest ceiling whose estimated latency fits a
budget, and every answer can report the ceiling of the stage that produced it.

Ceilings are measured on held-out benchmark queries when given (their proponents), else on
pseudo-queries made from the corpus (a document's opening words as the prompt, its next word as
the target, the document itself as the proponent). Pseudo-queries share words with their source
document, so they flatter lexical sources: that origin is recorded and reported.

The calibration is a sidecar file of the index (``calibration.json``), tied to the index
fingerprint; it is measured data, not part of the checksummed build.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tracer.errors import IndexMismatchError, InvalidRequestError
from tracer.types import Query

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
SIZES = (25, 50, 100, 200, 400, 1000)
FULL = "full"
# When no cascade fits the budget: options within this share of the cheapest estimate count as as cheap.
OVERRUN_SLACK = 0.05


@dataclass(frozen=True)
class Option:
    """One cascade: a candidate source and its size (``full``: the whole corpus, ``n`` unused)."""

    source: str
    n: int
    recall: float
    est_ms: float


@dataclass(frozen=True)
class Calibration:
    """Measured recall ceilings and stage costs of one index (see the module docstring).

    Attributes:
        index_fingerprint: The index it was measured on.
        method: The reranking method whose cost was measured.
        origin: ``"benchmark"`` (held-out queries with proponents) or ``"pseudo"`` (corpus-derived).
        n_queries: Queries measured.
        recall: ``source -> {n: ceiling}``.
        cost_ms: ``source -> [intercept, per candidate]`` of candidates + rerank, by least squares.
        featurize_ms: Median featurizing time of one query.
        full_ms: Median time of a full-corpus rerank (``full``'s ceiling is 1 by definition).
    """

    index_fingerprint: str
    method: str
    origin: str
    n_queries: int
    recall: dict[str, dict[int, float]]
    cost_ms: dict[str, list[float]]
    featurize_ms: float
    full_ms: float
    measured: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def options(self) -> list[Option]:
        """Every measured cascade with its ceiling and estimated end-to-end latency."""
        out = [Option(FULL, 0, 1.0, self.featurize_ms + self.full_ms)]
        for s, by_n in self.recall.items():
            a, b = self.cost_ms[s]
            out += [Option(s, n, r, self.featurize_ms + a + b * n) for n, r in sorted(by_n.items())]
        return out

    def ceiling(self, source: str, n: int) -> float | None:
        """The recall ceiling of ``source`` at ``n`` candidates: at the largest calibrated size <= ``n``
        (a lower bound), ``None`` when ``n`` is below every calibrated size or the source was not measured."""
        if source == FULL:
            return 1.0
        by_n = self.recall.get(source, {})
        below = [m for m in by_n if m <= n]
        return by_n[max(below)] if below else None

    def to_json(self) -> str:
        d = asdict(self)
        d["recall"] = {s: {str(n): r for n, r in by_n.items()} for s, by_n in self.recall.items()}
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        d = json.loads(text)
        d["recall"] = {s: {int(n): float(r) for n, r in by_n.items()} for s, by_n in d["recall"].items()}
        return cls(**d)


def choose(cal: Calibration, budget_ms: float) -> tuple[Option, bool]:
    """The option with the highest ceiling whose estimated latency fits ``budget_ms`` (ties: the
    cheaper), and whether it fits at all.

    When nothing fits, the budget is overrun anyway: the highest ceiling among the options within
    :data:`OVERRUN_SLACK` of the cheapest estimate (ties: the cheaper), ``False``. Estimates of small
    cascades differ by well under a millisecond, so the strictly cheapest would trade a ceiling of
    1.0 for a ceiling of 0.4 to save 1% of the time (measured on the demo index: gradient@25 at
    87.9 ms against bm25@25 at 88.7 ms)."""
    if not (budget_ms > 0):
        raise InvalidRequestError(f"budget_ms must be > 0, got {budget_ms}")
    opts = cal.options()
    fits = [o for o in opts if o.est_ms <= budget_ms]
    if not fits:
        cheapest = min(o.est_ms for o in opts)
        near = [o for o in opts if o.est_ms <= cheapest * (1 + OVERRUN_SLACK)]
        return max(near, key=lambda o: (o.recall, -o.est_ms)), False
    return max(fits, key=lambda o: (o.recall, -o.est_ms)), True


def pseudo_queries(docs: Sequence[Any], n: int, seed: int = 0, min_words: int = 6) -> list[Query]:
    """Corpus-derived queries: a document's opening words (at least half) as the prompt, its next
    word as the target, the document itself as the only proponent (seeded sample of ``n``)."""
    rng = np.random.default_rng(seed)
    out: list[Query] = []
    for i in rng.permutation(len(docs)):
        words = docs[int(i)].text.split()
        if len(words) < min_words:
            continue
        cut = int(rng.integers(len(words) // 2, len(words) - 1))
        out.append(Query(f"pseudo-{docs[int(i)].doc_id}", " ".join(words[:cut]), " " + words[cut],
                         proponents=(docs[int(i)].doc_id,)))
        if len(out) == n:
            break
    return out


def _fit_linear(ns: Sequence[int], ms: Sequence[float]) -> list[float]:
    a, b = np.polyfit(np.asarray(ns, dtype=float), np.asarray(ms, dtype=float), 1)[::-1]
    return [max(float(a), 0.0), max(float(b), 0.0)]


def calibrate(tracer: Any, queries: Sequence[Query] | None = None, *, method: str = "tracin",
              sizes: Sequence[int] = SIZES, n_pseudo: int = 64, seed: int = 0) -> Calibration:
    """Measure ceilings and costs on ``queries`` (those with proponents in the index), else on
    ``n_pseudo`` pseudo-queries. Costs are wall-clock on this machine, medians over the queries."""
    from tracer.retrieval import SOURCE_STAGE

    retriever, store = tracer.retriever, tracer.store
    known = set(store.doc_ids)
    qs = [q for q in (queries or []) if set(q.proponents) & known]
    origin = "benchmark"
    if not qs:
        docs = [store.document(int(r)) for r in
                np.random.default_rng(seed).choice(store.n_documents, min(store.n_documents, 8 * n_pseudo),
                                                   replace=False)]
        qs, origin = pseudo_queries(docs, n_pseudo, seed), "pseudo"
    if not qs:
        raise InvalidRequestError("calibration needs queries with proponents in the index, or documents of "
                                  ">= 6 words for pseudo-queries")
    sources = [s for s in SOURCE_STAGE if store.has(SOURCE_STAGE[s])] + ["union"]
    sizes = sorted({min(int(n), store.n_documents) for n in sizes})
    hits = {s: {n: 0 for n in sizes} for s in sources}
    samples: dict[str, tuple[list[int], list[float]]] = {s: ([], []) for s in sources}
    feat_ms, full_ms = [], []
    retriever.warm()
    for q in qs:
        t0 = time.perf_counter()
        f = retriever.features([(q.prompt, q.target)], [method], "union")[0]
        feat_ms.append((time.perf_counter() - t0) * 1e3)
        props = store.rows([p for p in q.proponents if p in known])
        for s in sources:
            for n in sizes:
                t0 = time.perf_counter()
                rows = retriever.candidates(f, s, n)
                retriever.rank(f, method, 10, rows)
                samples[s][0].append(n)
                samples[s][1].append((time.perf_counter() - t0) * 1e3)
                hits[s][n] += int(bool(np.isin(props, rows).any()))
        t0 = time.perf_counter()
        retriever.rank(f, method, 10, None)
        full_ms.append((time.perf_counter() - t0) * 1e3)
    return Calibration(store.fingerprint, method, origin, len(qs),
                       {s: {n: hits[s][n] / len(qs) for n in sizes} for s in sources},
                       {s: _fit_linear(*samples[s]) for s in sources},
                       float(np.median(feat_ms)), float(np.median(full_ms)))


def save(cal: Calibration, index_dir: str | Path) -> Path:
    """Write ``calibration.json`` into the index directory (atomically)."""
    import os
    import tempfile

    path = Path(index_dir) / CALIBRATION_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration.")
    with os.fdopen(fd, "w") as f:
        f.write(cal.to_json())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def load(index_dir: str | Path, fingerprint: str) -> Calibration | None:
    """The index's calibration, ``None`` when there is none; ``IndexMismatchError`` when it was
    measured on another index (rebuilt since: recalibrate)."""
    path = Path(index_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    cal = Calibration.from_json(path.read_text())
    if cal.index_fingerprint != fingerprint:
        raise IndexMismatchError(f"{path} was measured on another index (fingerprint "
                                 f"{cal.index_fingerprint[:12]}, this one {fingerprint[:12]}): run "
                                 "`tracer calibrate` again")
    return cal


def _reciprocal_rank(rows: np.ndarray, props: np.ndarray) -> float:
    hit = np.nonzero(np.isin(rows, props))[0]
    return 1.0 / (hit[0] + 1) if len(hit) else 0.0


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto-optimal points of ``(latency, quality)`` pairs: no other point is at least
    as fast and at least as good and strictly better in one. Sorted by latency (ties: by index)."""
    out = []
    for i, (ms, q) in enumerate(points):
        dominated = any((m2 <= ms and q2 >= q and (m2 < ms or q2 > q)) for j, (m2, q2) in enumerate(points) if j != i)
        if not dominated:
            out.append(i)
    return sorted(out, key=lambda i: (points[i][0], i))


def pareto(tracer: Any, queries: Sequence[Query], *, method: str = "tracin", budgets: Sequence[float] = (),
           max_queries: int = 200, seed: int = 0, k: int = 10, sizes: Sequence[int] = SIZES,
           progress: bool = True) -> dict[str, Any]:
    """MRR@``k`` against latency for every fixed cascade, and for ``auto`` at each budget, on a benchmark.

    The queries with proponents in the index are shuffled with ``seed`` and cut to ``max_queries``; the
    first half calibrates (:func:`calibrate`, not saved), the second is evaluated. Each evaluated query
    is featurized once (timed); every cascade (source x size, and the full scan) then gathers candidates
    and reranks with ``method``, timed, so a cascade's latency is the query's featurize time plus its own
    stages. For each budget, ``auto`` picks from the calibration alone (:func:`choose`) and is compared
    with the best fixed cascade whose *measured* p50 fits the budget.

    Returns:
        ``{"method", "k", "calibration_queries", "evaluated_queries", "evaluated_ids", "calibration": {...},
        "fixed": [{"source", "n", "mrr", "p50_ms", "ceiling"}], "frontier": [indices into fixed],
        "budgets": [{"budget_ms", "auto", "auto_fits_estimate", "auto_mrr", "auto_p50_ms", "auto_ceiling",
        "best_fixed", "best_fixed_mrr", "auto_over_best"}]}`` (latencies in ms, rounded to 0.1).

    Raises:
        InvalidRequestError: Fewer than 2 queries with proponents in the index, or a budget <= 0.
    """
    from tqdm.auto import tqdm

    for b in budgets:
        if not (b > 0):
            raise InvalidRequestError(f"budgets must be > 0 ms, got {b}")
    store, r = tracer.store, tracer.retriever
    known = set(store.doc_ids)
    qs = [q for q in queries if set(q.proponents) & known]
    if len(qs) < 2:
        raise InvalidRequestError(f"the cascade benchmark needs >= 2 queries with proponents in the index, "
                                  f"got {len(qs)}")
    rng = np.random.default_rng(seed)
    qs = [qs[i] for i in rng.permutation(len(qs))[: max(2, max_queries)]]
    calib, held = qs[: len(qs) // 2], qs[len(qs) // 2:]
    cal = calibrate(tracer, calib, method=method, sizes=sizes)
    opts = cal.options()
    rr: dict[tuple[str, int], list[float]] = {(o.source, o.n): [] for o in opts}
    ms: dict[tuple[str, int], list[float]] = {(o.source, o.n): [] for o in opts}
    for q in tqdm(held, desc="cascades", unit="query", disable=not progress):
        t0 = time.perf_counter()
        f = r.features([(q.prompt, q.target)], [method], "union")[0]
        feat = (time.perf_counter() - t0) * 1e3
        props = store.rows([d for d in q.proponents if d in known])
        for o in opts:
            t0 = time.perf_counter()
            rows = None if o.source == FULL else r.candidates(f, o.source, o.n)
            _, top = r.rank(f, method, k, rows)
            ms[(o.source, o.n)].append(feat + (time.perf_counter() - t0) * 1e3)
            rr[(o.source, o.n)].append(_reciprocal_rank(top, props))
    fixed = [{"source": s, "n": n, "mrr": round(float(np.mean(rr[(s, n)])), 4),
              "p50_ms": round(float(np.median(ms[(s, n)])), 1), "ceiling": cal.ceiling(s, n)} for s, n in rr]
    return {"method": method, "k": k, "calibration_queries": len(calib), "evaluated_queries": len(held),
            "evaluated_ids": [q.query_id for q in held], "seed": seed, "calibration": json.loads(cal.to_json()),
            "fixed": fixed, "frontier": frontier([(row["p50_ms"], row["mrr"]) for row in fixed]),
            "budgets": budget_rows(cal, fixed, budgets)}


def budget_rows(cal: Calibration, fixed: Sequence[dict[str, Any]], budgets: Sequence[float]) -> list[dict[str, Any]]:
    """Per budget: ``auto``'s pick from the calibration alone (:func:`choose`), its measured MRR and p50 (from
    ``fixed``, :func:`pareto`'s rows), and the best fixed cascade whose measured p50 fits the budget."""
    out = []
    for b in budgets:
        opt, fits = choose(cal, float(b))
        auto = next(row for row in fixed if (row["source"], row["n"]) == (opt.source, opt.n))
        within = [row for row in fixed if row["p50_ms"] <= b]
        best = max(within, key=lambda row: row["mrr"]) if within else None
        out.append({"budget_ms": float(b), "auto": cascade_name(opt.source, opt.n), "auto_fits_estimate": fits,
                    "auto_mrr": auto["mrr"], "auto_p50_ms": auto["p50_ms"], "auto_ceiling": auto["ceiling"],
                    "best_fixed": cascade_name(best["source"], best["n"]) if best else None,
                    "best_fixed_mrr": best["mrr"] if best else None,
                    "auto_over_best": round(auto["mrr"] / best["mrr"], 3) if best and best["mrr"] else None})
    return out


def cascade_name(source: str, n: int) -> str:
    """``bm25@100``, or ``full`` for the full scan."""
    return FULL if source == FULL else f"{source}@{n}"
