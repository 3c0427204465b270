"""Evaluation reports: ``metrics.json``, ``per_query.jsonl``, ``report.md``, ``report.html``, ``chart.png``.

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
        "provenance": {...},                         # optional: index, checkpoints, versions
        "details": {...},                            # optional: per query (tracer.metrics.details)
    }

Every cell reads ``"mean [lo, hi]"``. A metric a method lacks shows as an em dash. The HTML
page is laid out by :mod:`tracer.metrics.page` and its charts drawn by :mod:`tracer.metrics.charts`
(matplotlib on an explicit Agg canvas, imported lazily: no side effects, no display needed).
"""

from __future__ import annotations

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
PER_QUERY_JSONL = "per_query.jsonl"
# Report key of the per-query block (tracer.metrics.details); kept out of metrics.json.
DETAILS = "details"
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
    """Write the report as JSON, markdown, self-contained HTML and a PNG chart (and per-query JSON lines).

    Args:
        out_dir: Output directory; created if missing. Existing files are replaced atomically.
        report: Report dict (see the module docstring); must be JSON-serializable.

    Returns:
        ``{"json": metrics.json, "markdown": report.md, "html": report.html, "chart": chart.png}``
        paths, plus ``"per_query": per_query.jsonl`` when the report has ``details``.
        ``metrics.json`` holds everything but ``details``; ``per_query.jsonl`` holds one line per
        query (see :func:`per_query_lines`).

    Raises:
        ValueError: If ``report['methods']`` is missing or empty, or a method lacks ``all``.
        TypeError: If ``report`` is not JSON-serializable.
    """
    from tracer.metrics.charts import bar_chart
    from tracer.metrics.page import paired_tests, render_page

    methods = _methods(report)  # validate before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in report.items() if k != DETAILS}
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    png = bar_chart(methods, CHART_METRICS, str(report.get("title", "")))
    paired = paired_tests(report)  # shown by both report.md and report.html: resampled once
    paths = {
        "json": _atomic_write(out / METRICS_JSON, text.encode("utf-8")),
        "markdown": _atomic_write(out / REPORT_MD, _markdown_doc(report, paired).encode("utf-8")),
        "chart": _atomic_write(out / CHART_PNG, png),
        "html": _atomic_write(out / REPORT_HTML, render_page(report, methods, paired).encode("utf-8")),
    }
    if report.get(DETAILS):
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in per_query_lines(report[DETAILS]))
        paths["per_query"] = _atomic_write(out / PER_QUERY_JSONL, lines.encode("utf-8"))
    logger.info("wrote report to %s", out)
    return paths


def per_query_lines(details: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per query: the fact, its proponents and, per method, its metrics (``mrr``,
    ``recall@10``, ``success@10``, ``ndcg@10``, ``tail_patch`` where run), the proponents' ranks
    and the top hits as ``[doc_id, score]``; for methods with per-hit stability, ``stability``: one
    ``{"topk_fraction", "stable", "interval": [low, high]}`` (or ``null``) per top hit, aligned with ``top``."""
    from tracer.metrics.stability import hit_records

    stab = details.get("stability") or {}
    out = []
    for qid, q in details["queries"].items():
        per_method = {}
        for m, rows in details["per_query"].items():
            if qid in rows:
                per_method[m] = {**rows[qid], "top": details["hits"].get(m, {}).get(qid, [])}
                if qid in stab.get(m, {}):
                    per_method[m]["stability"] = hit_records(stab[m][qid])
        out.append({"query_id": qid, **q, "methods": per_method})
    return out


def _markdown_doc(report: Mapping[str, Any], paired: tuple[str, dict[str, dict[str, Any]]] | None) -> str:
    from tracer.metrics.page import SETTING_LABELS, _fmt

    settings = report.get("settings") or {}
    labels = dict(SETTING_LABELS)
    order = [k for k, _ in SETTING_LABELS if k in settings] + sorted(k for k in settings if k not in labels)
    lines = [f"# {report.get('title', 'tracer report')}", "", markdown_table(report)]
    lines += _markdown_paired(report, paired) + _markdown_stability(report.get("stability"))
    lines += _markdown_cascade(report.get("cascade")) + ["## Settings", ""]
    lines += [f"- {labels.get(k, k.replace('_', ' '))}: {_fmt(settings[k])}" for k in order]
    return "\n".join(lines) + "\n"


def _md_num(v: Any, fmt: str) -> str:
    return MISSING if v is None else format(v, fmt)


def _markdown_paired(report: Mapping[str, Any], paired: tuple[str, dict[str, dict[str, Any]]] | None) -> list[str]:
    """The HTML page's paired tests (:func:`tracer.metrics.page.paired_tests`: every method against the
    best by MRR) as markdown lines; none without them."""
    from tracer.metrics.page import PAIRED_METRICS, PAIRED_RESAMPLES

    if paired is None:
        return []
    ref, tests = paired
    per_query = report[DETAILS]["per_query"]
    cols = [(h, k) for h, k in PAIRED_METRICS if k in tests]
    out = [f"## Paired tests against {ref} (best MRR)", "",
           f"Per query, the method's value minus {ref}'s: mean difference [95% paired bootstrap interval], "
           f"two-sided sign-flip p ({PAIRED_RESAMPLES} permutations), and the queries won / tied / lost. "
           "Tail-patch uses its own query subset. Two methods' separate intervals can overlap while the "
           "paired one excludes 0: the queries' own difficulty cancels in a difference.", "",
           "| method | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in per_query:
        if m == ref:
            continue
        cells = []
        for _, k in cols:
            t = tests[k].get(m)
            cells.append(MISSING if t is None else f"{t['mean_diff']:+.3f} [{t['lo']:+.2f}, {t['hi']:+.2f}] "
                         f"p={t['p_value']:.2g} {t['wins']}/{t['ties']}/{t['losses']}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out + [""]


def _markdown_stability(stab: Mapping[str, Any] | None) -> list[str]:
    """The stability table (:mod:`tracer.metrics.stability`) as markdown lines; none without one."""
    if not stab or not stab.get("methods"):
        return []
    out = ["## Stability", "", f"Proponent rate of hits in every checkpoint's top {stab.get('k', 10)} (stable) vs the "
           "rest, at equal rank, with a 95% bootstrap interval over queries.", "",
           "| method | hits | stable share | proponent rate, stable | unstable | difference [95% CI] |",
           "|---|---:|---:|---:|---:|---:|"]
    for m, s in stab["methods"].items():
        ci = s.get("ci95")
        diff = _md_num(s.get("difference"), "+.3f") + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
        share = MISSING if s.get("stable_share") is None else f"{100 * s['stable_share']:.1f}%"
        out.append(f"| {m} | {s.get('hits', MISSING)} | {share} | {_md_num(s.get('proponent_rate_stable'), '.3f')} | "
                   f"{_md_num(s.get('proponent_rate_unstable'), '.3f')} | {diff} |")
    return out + [""]


def _markdown_cascade(block: Mapping[str, Any] | None) -> list[str]:
    """The cascades' budget table (:func:`tracer.cascade.pareto`) as markdown lines; none without one."""
    if not block:
        return []
    k = block.get("k", 10)
    out = ["## Cascades", "", f"{block.get('evaluated_queries')} queries timed, {block.get('calibration_queries')} "
           f"calibrate; {block.get('method')} rerank.", "",
           f"| budget | auto picks | its ceiling | its MRR@{k} | its p50 | best fixed within budget | its MRR@{k} | "
           "auto / best |", "|---:|---|---:|---:|---:|---|---:|---:|"]
    for b in block.get("budgets", []):
        out.append(f"| {b['budget_ms']:g} ms | {b['auto']}{'' if b.get('auto_fits_estimate', True) else ' (over)'} | "
                   f"{_md_num(b.get('auto_ceiling'), '.3f')} | {_md_num(b.get('auto_mrr'), '.3f')} | "
                   f"{_md_num(b.get('auto_p50_ms'), '.1f')} ms | {b.get('best_fixed') or MISSING} | "
                   f"{_md_num(b.get('best_fixed_mrr'), '.3f')} | {_md_num(b.get('auto_over_best'), '.3f')} |")
    return out + [""]
