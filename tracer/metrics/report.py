"""Evaluation reports: ``metrics.json``, ``report.md``, ``report.html`` and ``chart.png``.

This module owns presentation of aggregated metrics. The input ``report`` dict is::

    {
        "title": str,
        "settings": {name: value, ...},            # free-form, shown as a key/value list
        "methods": {
            method_name: {
                "candidates": str,                   # candidate source, e.g. "bm25"
                "all": aggregate(...)["all"],        # {"n": int, metric: {"mean","lo","hi"}}
                "by_group": aggregate(...)["by_group"],
                "tail_patch": {"mean", "lo", "hi"},  # optional
            },
        },
    }

Every cell reads ``"mean [lo, hi]"``. A metric a method lacks shows as an em dash.
matplotlib is imported lazily and drawn on an explicit Agg canvas (no pyplot, no global
backend switch), so importing this module has no side effects and needs no display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tracer._filemode import make_public

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "format_ci", "markdown_table", "write_report"]

# Output file names, keyed by the keys of write_report's return value.
METRICS_JSON = "metrics.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CHART_PNG = "chart.png"
# Summary table columns: (header, metric key in a method's "all" dict).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("MRR", "mrr"),
    ("recall@10", "recall@10"),
    ("success@10", "success@10"),
    ("nDCG@10", "ndcg@10"),
)
# Metrics drawn in the bar chart and given a per-group HTML table.
CHART_METRICS: tuple[tuple[str, str], ...] = (("MRR", "mrr"), ("recall@10", "recall@10"))
TAIL_PATCH = "tail_patch"
MISSING = "—"


def format_ci(stat: Mapping[str, float] | None) -> str:
    """Format ``{"mean", "lo", "hi"}`` as ``"0.812 [0.75, 0.86]"`` (em dash when None)."""
    if stat is None:
        return MISSING
    return f"{stat['mean']:.3f} [{stat['lo']:.2f}, {stat['hi']:.2f}]"


def _methods(report: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    methods = report.get("methods") if isinstance(report, Mapping) else None
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("report['methods'] must be a non-empty mapping of method name -> results")
    for name, res in methods.items():
        if not isinstance(res, Mapping) or not isinstance(res.get("all"), Mapping):
            raise ValueError(f"report['methods'][{name!r}] lacks an 'all' aggregate")
    return methods


def _table_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cell text of the summary table, one row per method."""
    methods = _methods(report)
    with_tail = any(TAIL_PATCH in res for res in methods.values())
    header = ["method", "candidates", "n"] + [h for h, _ in COLUMNS] + ([TAIL_PATCH] if with_tail else [])
    rows = []
    for name, res in methods.items():
        agg = res["all"]
        row = [str(name), str(res.get("candidates", MISSING)), str(agg.get("n", MISSING))]
        row += [format_ci(agg.get(key)) for _, key in COLUMNS]
        if with_tail:
            row.append(format_ci(res.get(TAIL_PATCH)))
        rows.append(row)
    return header, rows


def markdown_table(report: Mapping[str, Any]) -> str:
    """The summary table as GitHub markdown: one row per method, ``mean [lo, hi]`` cells.

    Args:
        report: Report dict (see the module docstring).

    Returns:
        Markdown text, newline-terminated. A ``tail_patch`` column appears when any
        method has one.

    Raises:
        ValueError: If ``report['methods']`` is missing or empty, or a method lacks ``all``.
    """
    header, rows = _table_rows(report)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _group_tables(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """One HTML table per chart metric: rows are groups, columns are methods."""
    groups = sorted({g for res in methods.values() for g in res.get("by_group", {})})
    if not groups:
        return ""
    parts = ["<h2>Per group</h2>"]
    for title, key in CHART_METRICS:
        rows = []
        for g in groups:
            cells = [methods[m].get("by_group", {}).get(g) for m in methods]
            n = next((str(c["n"]) for c in cells if c is not None and "n" in c), MISSING)
            rows.append([g, n] + [format_ci(c.get(key)) if c is not None else MISSING for c in cells])
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(_html_table(["group", "n"] + [str(m) for m in methods], rows))
    return "\n".join(parts)


def _chart_png(methods: Mapping[str, Mapping[str, Any]], title: str) -> bytes:
    """Grouped bar chart of the chart metrics per method with CI error bars, as PNG bytes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(m) for m in methods]
    x = np.arange(len(names), dtype=np.float64)
    width = 0.8 / len(CHART_METRICS)
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 2.0), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (label, key) in enumerate(CHART_METRICS):
        stats = [res["all"].get(key) or {"mean": 0.0, "lo": 0.0, "hi": 0.0} for res in methods.values()]
        mean = np.array([s["mean"] for s in stats])
        err = np.array([[s["mean"] - s["lo"] for s in stats], [s["hi"] - s["mean"] for s in stats]])
        ax.bar(x + (i - (len(CHART_METRICS) - 1) / 2) * width, mean, width, yerr=np.clip(err, 0, None),
               capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.25)  # headroom so the legend clears full-height error bars
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=len(CHART_METRICS), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _html_page(report: Mapping[str, Any], png: bytes) -> str:
    title = html.escape(str(report.get("title", "tracer report")))
    settings = report.get("settings") or {}
    items = "".join(
        f"<li><code>{html.escape(str(k))}</code>: {html.escape(str(v))}</li>" for k, v in settings.items()
    )
    header, rows = _table_rows(report)
    img = base64.b64encode(png).decode("ascii")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child"
             "{text-align:left}")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
        f"<style>{style}</style></head><body>\n<h1>{title}</h1>\n<h2>Settings</h2><ul>{items}</ul>\n"
        f"<h2>Summary</h2>{_html_table(header, rows)}\n"
        f"<img alt=\"MRR and recall@10 per method\" src=\"data:image/png;base64,{img}\">\n"
        f"{_group_tables(_methods(report))}\n</body></html>\n"
    )


def _atomic_write(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        make_public(fd)  # mkstemp's 0600 would hide the report from everyone else
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(out_dir: str | os.PathLike[str], report: Mapping[str, Any]) -> dict[str, Path]:
    """Write the report as JSON, markdown, self-contained HTML and a PNG chart.

    Args:
        out_dir: Output directory; created if missing. Existing files are replaced atomically.
        report: Report dict (see the module docstring); must be JSON-serializable.

    Returns:
        ``{"json": metrics.json, "markdown": report.md, "html": report.html,
        "chart": chart.png}`` paths.

    Raises:
        ValueError: If ``report['methods']`` is missing or empty, or a method lacks ``all``.
        TypeError: If ``report`` is not JSON-serializable.
    """
    _methods(report)  # validate before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _chart_png(_methods(report), str(report.get("title", "")))
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    paths = {
        "json": _atomic_write(out / METRICS_JSON, text.encode("utf-8")),
        "markdown": _atomic_write(out / REPORT_MD, _markdown_doc(report).encode("utf-8")),
        "chart": _atomic_write(out / CHART_PNG, png),
        "html": _atomic_write(out / REPORT_HTML, _html_page(report, png).encode("utf-8")),
    }
    logger.info("wrote report to %s", out)
    return paths


def _markdown_doc(report: Mapping[str, Any]) -> str:
    lines = [f"# {report.get('title', 'tracer report')}", ""]
    lines += [f"- `{k}`: {v}" for k, v in (report.get("settings") or {}).items()]
    return "\n".join(lines) + "\n\n" + markdown_table(report)
