"""The report's charts, each a PNG (bytes) drawn with matplotlib on an explicit Agg canvas.

This module owns the figures of ``report.html``: the summary bars, recall@k / success@k curves,
per-relation bars, the histogram of the first proponent's rank, the standardized score
distributions, and the cascades' MRR-against-latency Pareto plot (inline SVG, with one ``id`` per
point so the page can be checked against the data it was drawn from). Inputs are the report dict's plain data (see :mod:`tracer.metrics.report` and
:mod:`tracer.metrics.details`). matplotlib is imported lazily inside each function and no pyplot
state is touched, so importing this module has no side effects and needs no display.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["RANK_BINS", "bar_chart", "curves_chart", "first_rank_chart", "pareto_svg", "point_id", "relation_chart",
           "score_chart"]

# Buckets of the first-proponent-rank histogram: (label, lowest rank, highest rank); None = not ranked.
RANK_BINS: tuple[tuple[str, int | None, int | None], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4–5", 4, 5), ("6–10", 6, 10), ("11–25", 11, 25),
    ("26–50", 26, 50), ("51–100", 51, 100), ("not found", None, None))
DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _svg(fig: Any) -> str:
    """The figure as an ``<svg>`` element for inline use: text kept as text, no date, stable ids."""
    from matplotlib import rc_context

    fig.tight_layout()
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "tracer-report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def bar_chart(methods: Mapping[str, Mapping[str, Any]], metrics: Sequence[tuple[str, str]], title: str) -> bytes:
    """Grouped bars of ``metrics`` (``(label, key)``) per method, with their CI as error bars."""
    names = [str(m) for m in methods]
    x = np.arange(len(names), dtype=np.float64)
    width = 0.8 / len(metrics)
    fig = _figure(max(4.0, 1.0 * len(names) + 2.0), 3.4)
    ax = fig.add_subplot()
    for i, (label, key) in enumerate(metrics):
        stats = [res["all"].get(key) or {"mean": 0.0, "lo": 0.0, "hi": 0.0} for res in methods.values()]
        mean = np.array([s["mean"] for s in stats])
        err = np.array([[s["mean"] - s["lo"] for s in stats], [s["hi"] - s["mean"] for s in stats]])
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, mean, width, yerr=np.clip(err, 0, None), capsize=3,
               label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.25)  # headroom so the legend clears full-height error bars
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=len(metrics), frameon=False)
    return _png(fig)


def curves(ranks: Mapping[str, Mapping[str, Any]], n_relevant: Mapping[str, int],
           depth: int) -> tuple[np.ndarray, np.ndarray]:
    """recall@k and success@k for k = 1..depth of one method, from each query's proponent ranks.

    Args:
        ranks: Query id -> row with ``"ranks"`` (1-based ranks of the proponents found).
        n_relevant: Query id -> number of proponents.
        depth: Largest k.

    Returns:
        ``(recall, success)``, each ``(depth,)`` float64: the mean over queries at k = 1..depth.
    """
    qids = [q for q in ranks if n_relevant.get(q)]
    recall = np.zeros(depth)
    success = np.zeros(depth)
    for q in qids:
        r = np.asarray(ranks[q].get("ranks", []), dtype=np.int64)
        r = r[r <= depth]
        hits = np.zeros(depth)
        np.add.at(hits, r - 1, 1.0)
        cum = np.cumsum(hits)
        recall += cum / n_relevant[q]
        success += cum > 0
    n = max(1, len(qids))
    return recall / n, success / n


def curves_chart(per_query: Mapping[str, Mapping[str, Any]], n_relevant: Mapping[str, int], depth: int) -> bytes:
    """recall@k and success@k against k (log axis), one line per method."""
    fig = _figure(9.5, 3.6)
    colors = _colors(list(per_query))
    k = np.arange(1, depth + 1)
    axes = fig.subplots(1, 2)
    for m, rows in per_query.items():
        recall, success = curves(rows, n_relevant, depth)
        axes[0].plot(k, recall, label=m, color=colors[m], lw=1.6)
        axes[1].plot(k, success, label=m, color=colors[m], lw=1.6)
    for ax, name in zip(axes, ("recall@k", "success@k")):
        ax.set_xscale("log")
        ax.set_xlim(1, depth)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("k")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        for kk in (1, 10, 100):
            if kk <= depth:
                ax.axvline(kk, color="#999", lw=0.5)
    axes[1].legend(loc="lower right", fontsize=8)
    return _png(fig)


def relation_chart(methods: Mapping[str, Mapping[str, Any]], key: str, label: str) -> bytes:
    """Grouped bars of one metric per relation (x) and method (bars), with CI error bars."""
    groups = sorted({g for res in methods.values() for g in res.get("by_group", {})})
    names = list(methods)
    colors = _colors(names)
    x = np.arange(len(groups), dtype=np.float64)
    width = 0.85 / max(1, len(names))
    fig = _figure(min(13.0, max(6.0, 0.35 * len(groups) * max(1, len(names)) / 2 + 3)), 3.4)
    ax = fig.add_subplot()
    for i, m in enumerate(names):
        stats = [methods[m].get("by_group", {}).get(g, {}).get(key) or {"mean": 0.0, "lo": 0.0, "hi": 0.0}
                 for g in groups]
        mean = np.array([s["mean"] for s in stats])
        err = np.array([[s["mean"] - s["lo"] for s in stats], [s["hi"] - s["mean"] for s in stats]])
        ax.bar(x + (i - (len(names) - 1) / 2) * width, mean, width, yerr=np.clip(err, 0, None), capsize=1.5,
               label=m, color=colors[m], error_kw={"lw": 0.7})
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=15, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per relation")
    ax.legend(loc="upper center", ncol=min(len(names), 8), fontsize=7, frameon=False)
    return _png(fig)


def first_rank_counts(rows: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """Queries per :data:`RANK_BINS` bucket of the first proponent's rank."""
    counts = [0] * len(RANK_BINS)
    for row in rows.values():
        r = row.get("ranks") or []
        first = min(r) if r else None
        for j, (_, lo, hi) in enumerate(RANK_BINS):
            if (first is None and lo is None) or (first is not None and lo is not None and lo <= first <= hi):
                counts[j] += 1
                break
        else:  # ranked beyond the last bucket: count as not found within the shown depth
            counts[-1] += 1
    return counts


def first_rank_chart(per_query: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Grouped bars: share of queries whose first proponent lands in each rank bucket, per method."""
    names = list(per_query)
    colors = _colors(names)
    x = np.arange(len(RANK_BINS), dtype=np.float64)
    width = 0.85 / max(1, len(names))
    fig = _figure(9.5, 3.4)
    ax = fig.add_subplot()
    for i, m in enumerate(names):
        counts = np.array(first_rank_counts(per_query[m]), dtype=np.float64)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, counts / max(1.0, counts.sum()), width, label=m,
               color=colors[m])
    ax.set_xticks(x)
    ax.set_xticklabels([b[0] for b in RANK_BINS])
    ax.set_xlabel("rank of the first proponent")
    ax.set_ylabel("share of queries")
    ax.set_title("Where the first proponent lands")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    return _png(fig)


def score_chart(score_hist: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """Small multiples, one per method: density of proponents' vs other docs' standardized scores."""
    names = list(score_hist)
    cols = min(4, max(1, len(names)))
    nrows = (len(names) + cols - 1) // cols
    fig = _figure(2.6 * cols + 0.6, 2.2 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, m in zip(axes, names):
        h = score_hist[m]
        edges = np.asarray(h["edges"], dtype=np.float64)
        for key, color, label in (("others", "#9aa4b1", "rest"), ("proponents", "#2a9d4b", "proponents")):
            c = np.asarray(h[key], dtype=np.float64)
            if c.sum() > 0:
                ax.stairs(c / c.sum(), edges, fill=True, alpha=0.55, color=color, label=label)
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, frameon=False)
    fig.supxlabel("score, standardized within each query's ranked list (z)", fontsize=8)
    return _png(fig)


def _name(row: Mapping[str, Any]) -> str:
    return "full scan" if row["source"] == "full" else f"{row['source']}@{row['n']}"


def point_id(source: str, n: int) -> str:
    """The SVG ``id`` of one cascade's point: ``cascade-bm25-100``, ``cascade-full``."""
    return "cascade-full" if source == "full" else f"cascade-{source}-{int(n)}"


def pareto_svg(block: Mapping[str, Any]) -> str:
    """MRR against measured p50 latency: one point per fixed cascade (coloured by candidate source; the full
    scan a square), the Pareto frontier as a step line, and ``auto``'s pick at each budget ringed and labelled.

    Args:
        block: :func:`tracer.cascade.pareto`'s output (``fixed``, ``frontier``, ``budgets``, ``k``).

    Returns:
        An ``<svg>`` element. Each fixed cascade is a group with ``id`` :func:`point_id`; each distinct
        ``auto`` pick a ring ``auto-<source>-<n>`` (``auto-full``), labelled with the budgets that chose it.
    """
    fixed = list(block["fixed"])
    sources = sorted({row["source"] for row in fixed if row["source"] != "full"})
    colors = _colors(sources)
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    for s in sources:  # one legend entry per source, then each point its own artist (its own id)
        ax.plot([], [], "o", color=colors[s], label=s)
    for row in fixed:
        full = row["source"] == "full"
        ax.plot([row["p50_ms"]], [row["mrr"]], "s" if full else "o", ms=7 if full else 5.5,
                color="#555" if full else colors[row["source"]], gid=point_id(row["source"], row["n"]),
                label="full scan" if full else None, zorder=3)
    front = [fixed[i] for i in block.get("frontier", [])]
    if front:
        ax.step([r["p50_ms"] for r in front], [r["mrr"] for r in front], where="post", color="#999", lw=1,
                ls="--", label="Pareto frontier", zorder=2)
        for r in front:
            ax.annotate(_name(r), (r["p50_ms"], r["mrr"]), xytext=(5, -10), textcoords="offset points", fontsize=7,
                        color="#556")
    picks: dict[tuple[float, float, str], list[float]] = {}  # auto's pick -> the budgets that chose it
    for b in block.get("budgets", []):
        picks.setdefault((b["auto_p50_ms"], b["auto_mrr"], b["auto"]), []).append(b["budget_ms"])
    for i, ((x, y, name), budgets) in enumerate(picks.items()):
        ax.plot([x], [y], "o", ms=13, mfc="none", mec="#111", mew=1.3, gid=f"auto-{name.replace('@', '-')}",
                label="auto's pick" if i == 0 else None, zorder=4)
        ax.annotate("auto ≤ " + ", ".join(f"{v:g}" for v in budgets) + " ms", (x, y), xytext=(9, 4 + 10 * i),
                    textcoords="offset points", fontsize=7, color="#111")
    ax.margins(x=0.06, y=0.1)
    ax.set_xlabel("measured p50 latency per query (ms)")
    ax.set_ylabel(f"MRR@{int(block.get('k', 10))}")
    ax.set_title(f"Cascades: MRR against latency ({block.get('method', '')} rerank)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _svg(fig)
