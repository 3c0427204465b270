"""``report.html``: one self-contained page (inline CSS, JS and base64 PNGs; nothing fetched).

This module owns the page's layout. Results come first — the summary table with the best value
per column marked, how to read it, the charts, paired tests, agreement between methods, the
stability table (are hits stable across checkpoints more often proponents?), the cascades' Pareto
plot when measured (``tracer eval --cascade-budgets``), per-relation tables and a per-query
drill-down (a search box, then the fact, its proponents and each method's top hits with ✓ marks,
scores and a stability marker) — then provenance and the settings. Sections whose data the
report lacks (a report without ``details``, say) are left out. Every string from the data is
escaped: HTML text through :func:`html.escape`, the drill-down's JSON through ``textContent``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from tracer.metrics import charts
from tracer.metrics.compare import against_best, topk_jaccard

__all__ = ["paired_tests", "render_cascade_page", "render_page"]

# Summary columns: (header, metric key in a method's "all" dict). Higher is better for each.
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MRR", "mrr"), ("recall@1", "recall@1"), ("recall@10", "recall@10"), ("success@1", "success@1"),
    ("success@10", "success@10"), ("nDCG@10", "ndcg@10"), ("tail-patch Δ log p", "tail_patch"))
# Metrics of the paired tests (per-query keys of details.per_query).
PAIRED_METRICS: tuple[tuple[str, str], ...] = (
    ("MRR", "mrr"), ("recall@10", "recall@10"), ("success@10", "success@10"), ("tail-patch", "tail_patch"))
PAIRED_RESAMPLES = 10000
SIGNIFICANCE = 0.05
AGREEMENT_K = 10
MISSING = "—"

# Plain-language names of the settings keys, in display order; other keys follow, as they are.
SETTING_LABELS: tuple[tuple[str, str], ...] = (
    ("index", "index"), ("index_fingerprint", "index fingerprint"), ("n_documents", "documents in the index"),
    ("slice", "query slice"), ("n_queries", "queries evaluated"),
    ("n_queries_without_proponents", "queries left out (no proponents)"),
    ("n_unknown_proponents", "proponent ids not in the index"), ("methods", "methods"), ("fusions", "fusions"),
    ("policy", "candidate policy"), ("candidates", "candidate source"),
    ("num_candidates", "candidates per source"), ("ks", "cutoffs k"), ("n_boot", "bootstrap resamples"),
    ("seed", "seed"), ("batch_size", "queries featurized together"), ("tail_patch", "tail-patch check"),
    ("tail_patch_k", "tail-patch: top examples stepped on"), ("tail_patch_lr", "tail-patch: SGD step size"),
    ("tail_patch_checkpoint", "tail-patch: checkpoint stepped from"),
    ("tail_patch_max_queries", "tail-patch: queries"), ("stability", "per-hit stability over checkpoints"),
    ("seconds", "evaluation time (s)"))

EXPLANATIONS = """
<dl class="explain">
<dt>MRR</dt><dd>mean over queries of 1 / rank of the first proponent (0 when none is ranked).</dd>
<dt>recall@k</dt><dd>share of a query's proponents found in the top k (FTRACE, Akyürek et al. 2022).</dd>
<dt>success@k</dt><dd>1 when at least one proponent is in the top k (TrackStar, Chang et al. 2024).</dd>
<dt>nDCG@10</dt><dd>binary-gain nDCG with a log2(rank + 1) discount. Every figure is a mean over queries
with its 95% percentile-bootstrap interval; the best mean per column is marked ★.</dd>
<dt>learned slice</dt><dd>the queries the final checkpoint answers right and the first answers wrong: facts
the model learned during training, so their proponents should carry the gradient signal (FTRACE).</dd>
<dt>candidate policy</dt><dd><code>candidates</code>: each method reranks the same candidates (e.g. the union
of BM25, embedding and gradient top-N); <code>ftrace</code>: the proponents are always candidates, so MRR is an
upper bound; <code>full</code>: the whole corpus.</dd>
<dt>tail-patch</dt><dd>causal check: one SGD step on each of a method's top examples, taken from an early
checkpoint, and the change in log p(target | prompt); higher means the examples teach the fact
(Chang et al. 2024).</dd>
</dl>
"""

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;
color:#1d2430}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #dde;padding-bottom:.2em}
.sub{color:#556;margin-top:0}table{border-collapse:collapse;margin:.8em 0}
th,td{border:1px solid #d5d9e0;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f2f4f7}th:first-child,td:first-child{text-align:left}
#summary,#paired{font-size:.9em}#summary td,#paired td{white-space:nowrap}.ci{font-size:.8em;color:#556}td.best{font-weight:700;background:#e6f4ea}td.sig{font-weight:700}
.explain dt{font-weight:600;float:left;clear:left;width:9em}.explain dd{margin-left:10em;margin-bottom:.3em}
img{max-width:100%;display:block;margin:.6em 0}.note{color:#556;font-size:.9em}
code{background:#f2f4f7;padding:0 .2em}
#dd-controls{display:flex;gap:.6em;align-items:center;flex-wrap:wrap}#dd-search{width:28em;padding:4px}
#dd-list{max-height:22em;overflow:auto;border:1px solid #d5d9e0}#dd-list table{margin:0;width:100%}#dd-list td,#dd-list th{text-align:left}#dd-list td.rk{text-align:center}
#settings td,dl.prov td{text-align:left}
#dd-list tr{cursor:pointer}#dd-list tr:hover{background:#eef3fb}#dd-list tr.sel{background:#dbe8fb}
.rk{text-align:center}.rk1{background:#c9ecd3}.rk2{background:#eef7d9}.rk3{background:#fbeed2}.rk4{background:#f7d7d4}
#dd-detail .fact{font-size:1.15em;margin:.6em 0}.tgt{background:#fff3c4;padding:0 .2em}
.hits{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.8em}
.hits .col{border:1px solid #d5d9e0;border-radius:4px;padding:.4em}.hits h4{margin:.1em 0 .3em}
.hit{border-top:1px solid #eee;padding:2px 0;font-size:.85em}.hit.pro{background:#e6f4ea}
.hit .id{font-family:monospace}.hit .sc{float:right;font-family:monospace;color:#445}.txt{color:#333}
.ok{color:#1a7f37;font-weight:700}
.stab{font-family:monospace;font-size:.85em;padding:0 .3em;margin-right:.3em;border-radius:3px;background:#eef0f3;color:#556}
.stab.st{background:#d8efe0;color:#1a7f37}.svg svg{max-width:100%;height:auto}#cascade-budgets td,#cascade-fixed td{white-space:nowrap}#cascade-budgets td:nth-child(2){text-align:left}#stability td{white-space:nowrap}dl.prov dt{font-weight:600}dl.prov dd{margin:0 0 .4em 1.5em}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _fmt(v: Any) -> str:
    """A settings or provenance value as a person would write it."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return MISSING
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "none"
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) if v else "none"
    return str(v)


def _ci(stat: Mapping[str, float] | None) -> str:
    if not stat:
        return MISSING
    return f"{stat['mean']:.3f} [{stat['lo']:.2f}, {stat['hi']:.2f}]"


def _ci_html(stat: Mapping[str, float] | None) -> str:
    if not stat:
        return MISSING
    return f"{stat['mean']:.3f} <span class=\"ci\">[{stat['lo']:.2f}, {stat['hi']:.2f}]</span>"


def summary_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """The summary table, the best mean of each metric column marked ★ (ties all marked)."""
    cols = [(h, k) for h, k in SUMMARY_COLUMNS
            if any((res.get(k) if k == "tail_patch" else res["all"].get(k)) for res in methods.values())]

    def stat(res: Mapping[str, Any], key: str) -> Mapping[str, float] | None:
        return res.get(key) if key == "tail_patch" else res["all"].get(key)

    best = {}
    for _, k in cols:
        means = [s["mean"] for res in methods.values() if (s := stat(res, k))]
        best[k] = max(means) if means else None
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", "candidates", "n"] + [h for h, _ in cols])
    rows = []
    for name, res in methods.items():
        cells = [f"<td>{html.escape(str(name))}</td>", f"<td>{html.escape(str(res.get('candidates', MISSING)))}</td>",
                 f"<td>{html.escape(str(res['all'].get('n', MISSING)))}</td>"]
        for _, k in cols:
            s = stat(res, k)
            is_best = s is not None and best[k] is not None and abs(s["mean"] - best[k]) < 1e-12
            cells.append(f'<td class="best">★ {_ci_html(s)}</td>' if is_best else f"<td>{_ci_html(s)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def paired_tests(report: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """The reports' paired tests, ``(reference, {metric: {method: test}})``
    (:func:`~tracer.metrics.compare.against_best` on :data:`PAIRED_METRICS`, the report's seed); ``None``
    without per-query details or with one method. Computed once per report, shown by both page and markdown."""
    per_query = (report.get("details") or {}).get("per_query") or {}
    if len(per_query) < 2:
        return None
    seed = int((report.get("settings") or {}).get("seed", 0) or 0)
    return against_best(report["methods"], per_query, [k for _, k in PAIRED_METRICS], PAIRED_RESAMPLES, seed)


def _paired_section(per_query: Mapping[str, Any], paired: tuple[str, dict[str, dict[str, Any]]]) -> str:
    ref, tests = paired
    metrics = [(h, k) for h, k in PAIRED_METRICS if k in tests]
    head = "".join(f"<th>{html.escape(h)}<br>Δ [95% CI] · p · W/T/L</th>" for h, _ in metrics)
    rows = []
    for m in per_query:
        if m == ref:
            continue
        cells = [f"<td>{html.escape(m)}</td>"]
        for _, k in metrics:
            t = tests[k].get(m)
            if t is None:
                cells.append(f"<td>{MISSING}</td>")
                continue
            sig = ' class="sig"' if t["p_value"] < SIGNIFICANCE else ""
            cells.append(f"<td{sig}>{t['mean_diff']:+.3f} <span class=\"ci\">[{t['lo']:+.2f}, {t['hi']:+.2f}]</span>"
                         f"<br>p={t['p_value']:.3g} · {t['wins']}/{t['ties']}/{t['losses']}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>Paired tests against {html.escape(ref)} (best MRR)</h2>"
            f'<p class="note">Per query, the method\'s value minus {html.escape(ref)}\'s. Δ: mean difference with '
            f"a paired bootstrap interval; p: two-sided paired randomization (sign-flip) test, "
            f"{PAIRED_RESAMPLES} permutations, bold below {SIGNIFICANCE}; W/T/L: queries where the method is "
            f"better / equal / worse. Tail-patch uses its own query subset.</p>"
            f'<table id="paired"><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _agreement_section(hits: Mapping[str, Mapping[str, Sequence[Sequence[Any]]]]) -> str:
    names = list(hits)
    ids = {m: {q: [d for d, _ in r] for q, r in hits[m].items()} for m in names}
    head = "".join(f"<th>{html.escape(m)}</th>" for m in names)
    rows = []
    for a in names:
        cells = []
        for b in names:
            j = topk_jaccard(ids[a], ids[b], AGREEMENT_K)
            shade = int(255 - 120 * (0 if j != j else j))
            cells.append(f'<td style="background:rgb({shade},{shade},255)">{j:.2f}</td>')
        rows.append(f"<tr><th>{html.escape(a)}</th>{''.join(cells)}</tr>")
    return (f"<h2>Agreement between methods</h2><p class=\"note\">Mean over queries of the Jaccard overlap "
            f"of two methods' top-{AGREEMENT_K} sets (1 = same documents).</p>"
            f'<table id="agreement"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _stability_section(stab: Mapping[str, Any]) -> str:
    """Proponent rate of stable vs unstable hits at equal rank, per method (:mod:`tracer.metrics.stability`)."""
    k = int(stab.get("k", 10))
    rows = []
    for m, s in (stab.get("methods") or {}).items():
        def rate(v: Any) -> str:
            return MISSING if v is None else f"{v:.3f}"

        ci = s.get("ci95")
        diff = MISSING if s.get("difference") is None else f"{s['difference']:+.3f}" + (
            f' <span class="ci">[{ci[0]:+.3f}, {ci[1]:+.3f}]</span>' if ci else "")
        share = MISSING if s.get("stable_share") is None else f"{100 * s['stable_share']:.1f}%"
        views = (stab.get("views") or {}).get(m)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            html.escape(str(m)), MISSING if views is None else str(views), str(s.get("queries", MISSING)),
            str(s.get("hits", MISSING)), share,
            rate(s.get("proponent_rate_stable")), rate(s.get("proponent_rate_unstable")), diff)) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("method", "views", "queries", "hits", "stable share",
                                             "proponent rate, stable", "proponent rate, unstable",
                                             "difference [95% CI]"))
    return (f"<h2>Stability: are stable hits more often proponents?</h2><p class=\"note\">A hit is <i>stable</i> "
            f"when it is in the top {k} under every checkpoint alone (<i>views</i>: the checkpoints, times the "
            f"projection seeds where the index has seed siblings). Rank by rank (top {k}), the share of "
            "proponents among stable hits minus the share among unstable ones, pooled over the ranks that hold "
            "both kinds (weighted by their hits), so a method is not credited for putting stable hits first; "
            "95% percentile-bootstrap interval over queries. An interval across 0 means the flag says nothing "
            "about the document on this benchmark.</p>"
            f'<table id="stability"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _num(v: Any, fmt: str) -> str:
    return MISSING if v is None else format(v, fmt)


def cascade_section(block: Mapping[str, Any]) -> str:
    """The cascades' Pareto plot (inline SVG) and tables, from :func:`tracer.cascade.pareto`'s output."""
    k = int(block.get("k", 10))
    fixed = list(block.get("fixed", []))
    on_front = set(block.get("frontier", []))
    brows = []
    for b in block.get("budgets", []):
        pick = html.escape(str(b["auto"])) + ("" if b.get("auto_fits_estimate", True) else
                                              ' <span class="ci">(nothing fits the estimate: the best ceiling among the cheapest)</span>')
        brows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            f"{b['budget_ms']:g} ms", pick, _num(b.get("auto_ceiling"), ".3f"), _num(b["auto_mrr"], ".3f"),
            _num(b["auto_p50_ms"], ".1f") + " ms", html.escape(str(b.get("best_fixed") or MISSING)),
            _num(b.get("best_fixed_mrr"), ".3f"), _num(b.get("auto_over_best"), ".3f"))) + "</tr>")
    bhead = "".join(f"<th>{h}</th>" for h in ("budget", "<code>auto</code> picks", "its recall ceiling",
                                              f"its MRR@{k}", "its measured p50", "best fixed cascade within budget",
                                              f"its MRR@{k}", "auto / best"))
    frows = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            html.escape("full scan" if r["source"] == "full" else f"{r['source']}@{r['n']}"),
            _num(r.get("ceiling"), ".3f"), _num(r["mrr"], ".3f"), _num(r["p50_ms"], ".1f") + " ms",
            "★" if i in on_front else "")) + "</tr>" for i, r in enumerate(fixed))
    cal = block.get("calibration") or {}
    origin = cal.get("origin", "benchmark")
    return (f"<h2>Cascades: MRR against latency</h2><p class=\"note\">{int(block.get('calibration_queries', 0))} "
            f"queries calibrate the index (recall ceilings and stage costs, {html.escape(str(origin))} queries), "
            f"{int(block.get('evaluated_queries', 0))} others are evaluated: each is featurized once, then every "
            f"cascade (candidate source × size, and the full scan) gathers its candidates and reranks them with "
            f"{html.escape(str(block.get('method', '')))}; its latency is the featurize time plus its own stages "
            f"(median over the queries, this machine). <code>auto</code> picks from the calibration alone; it is "
            f"compared with the best fixed cascade whose <i>measured</i> p50 fits the budget. ★: on the Pareto "
            f"frontier (nothing else is both faster and better).</p>"
            f'<div class="svg" id="cascade-chart">{charts.pareto_svg(block)}</div>'
            f'<table id="cascade-budgets"><thead><tr>{bhead}</tr></thead><tbody>{"".join(brows)}</tbody></table>'
            "<details><summary>Every fixed cascade</summary><table id=\"cascade-fixed\"><thead><tr><th>cascade</th>"
            f"<th>recall ceiling (calibrated)</th><th>MRR@{k}</th><th>measured p50</th><th>frontier</th></tr></thead>"
            f"<tbody>{frows}</tbody></table></details>")


def render_cascade_page(block: Mapping[str, Any], title: str = "tracer cascades") -> str:
    """:func:`cascade_section` as a self-contained page of its own (``eval/cascade.py --html``)."""
    t = html.escape(title)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n{cascade_section(block)}\n</body></html>\n")


def _group_tables(methods: Mapping[str, Mapping[str, Any]]) -> str:
    groups = sorted({g for res in methods.values() for g in res.get("by_group", {})})
    if not groups:
        return ""
    parts = ["<details><summary>Per-relation tables (mean [95% CI])</summary>"]
    for title, key in (("MRR", "mrr"), ("recall@10", "recall@10")):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["group", "n"] + [str(m) for m in methods])
        rows = []
        for g in groups:
            cells = [methods[m].get("by_group", {}).get(g) for m in methods]
            n = next((str(c["n"]) for c in cells if c is not None and "n" in c), MISSING)
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in [g, n] + [
                _ci(c.get(key)) if c is not None else MISSING for c in cells]) + "</tr>")
        parts.append(f"<h3>{title}</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts) + "</details>"


def _charts_section(report: Mapping[str, Any], methods: Mapping[str, Any], details: Mapping[str, Any] | None) -> str:
    out = ["<h2>Charts</h2>", _img(charts.bar_chart(methods, (("MRR", "mrr"), ("recall@10", "recall@10")),
                                                   str(report.get("title", ""))), "MRR and recall@10 per method")]
    if details:
        n_rel = {q: len(v["proponents"]) for q, v in details["queries"].items()}
        out.append(_img(charts.curves_chart(details["per_query"], n_rel, int(details.get("depth", 100))),
                        "recall@k and success@k curves"))
    if any(res.get("by_group") for res in methods.values()):
        out.append(_img(charts.relation_chart(methods, "mrr", "MRR"), "MRR per relation"))
        out.append(_img(charts.relation_chart(methods, "recall@10", "recall@10"), "recall@10 per relation"))
    if details:
        out.append(_img(charts.first_rank_chart(details["per_query"]), "rank of the first proponent"))
        out.append('<p class="note">Scores of the docs each method ranked (its top '
                   f'{int(details.get("depth", 100))}), standardized within each query\'s list; proponents '
                   "ranked below that depth are not in the picture.</p>")
        out.append(_img(charts.score_chart(details["score_hist"]), "score distributions, proponents vs the rest"))
    return "\n".join(out)


def _drilldown(details: Mapping[str, Any], n_checkpoints: int = 0) -> str:
    data = {"queries": [{"id": q, **v} for q, v in details["queries"].items()],
            "methods": list(details["per_query"]), "per_query": details["per_query"],
            "hits": details["hits"], "documents": details.get("documents", {}),
            "stability": details.get("stability") or {}, "n_checkpoints": int(n_checkpoints),
            "views": details.get("stability_views") or {}}
    blob = json.dumps(data, separators=(",", ":"), sort_keys=True).replace("</", "<\\/")
    return ("<h2>Per query</h2><div id=\"dd-controls\"><input id=\"dd-search\" type=\"search\" "
            "placeholder=\"filter: words of the prompt or target, a relation, a query or doc id\">"
            "<select id=\"dd-relation\"><option value=\"\">all relations</option></select>"
            "<label><input id=\"dd-miss\" type=\"checkbox\"> only queries some method misses in its top 10</label>"
            "<span id=\"dd-count\" class=\"note\"></span></div>"
            "<p class=\"note\">Cells: rank of the first proponent per method (· = not in the ranked list). "
            "Click a row for the hits. Beside a gradient method's hit, <span class=\"stab st\">3/3</span> counts "
            "the checkpoints (times the projection seeds, where the index has seed siblings) in whose own top 10 "
            "it is (green: all of them, the hit is <i>stable</i>); hover it for the 95% interval of the score "
            "over them.</p><div id=\"dd-list\"></div><div id=\"dd-detail\"></div>"
            f'<script type="application/json" id="dd-data">{blob}</script><script>{DRILLDOWN_JS}</script>')


def _provenance(prov: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> str:
    if not prov:
        prov = {"index": settings.get("index"), "fingerprint": settings.get("index_fingerprint")}
    items = [("index", prov.get("index")), ("fingerprint", prov.get("fingerprint")),
             ("documents", prov.get("n_documents")), ("built", prov.get("created")),
             ("built with tracer", prov.get("index_tracer_version"))]
    parts = [f"<dt>{html.escape(k)}</dt><dd>{html.escape(_fmt(v))}</dd>" for k, v in items if v is not None]
    ck = prov.get("checkpoints") or []
    if ck:
        rows = "".join(f"<tr><td>{i}</td><td>{html.escape(str(c.get('path')))}</td><td>{html.escape(_fmt(c.get('step')))}"
                       f"</td><td>{html.escape(_fmt(c.get('lr')))}</td></tr>" for i, c in enumerate(ck))
        parts.append("<dt>checkpoints</dt><dd><table><thead><tr><th>#</th><th>path</th><th>step</th><th>lr</th>"
                     f"</tr></thead><tbody>{rows}</tbody></table></dd>")
    feat = prov.get("featurize") or {}
    if feat:
        keys = ("projection", "dim", "dtype", "fit_docs", "k_in", "k_out", "max_length", "loss_reduction",
                "optimizer_correction", "seed")
        text = "; ".join(f"{k}: {_fmt(feat[k])}" for k in keys if k in feat)
        parts.append(f"<dt>features</dt><dd>{html.escape(text)}</dd>")
    if prov.get("versions"):
        parts.append(f"<dt>versions (where the evaluation ran)</dt><dd>{html.escape(_fmt(prov['versions']))}</dd>")
    return f'<h2>Provenance</h2><dl class="prov" id="provenance">{"".join(parts)}</dl>'


def _settings(settings: Mapping[str, Any]) -> str:
    known = dict(SETTING_LABELS)
    order = [k for k, _ in SETTING_LABELS if k in settings] + sorted(k for k in settings if k not in known)
    rows = "".join(f"<tr><td>{html.escape(known.get(k, k.replace('_', ' ')))}</td>"
                   f"<td>{html.escape(_fmt(settings[k]))}</td></tr>" for k in order)
    return f'<h2>Settings</h2><table id="settings"><tbody>{rows}</tbody></table>'


def render_page(report: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]],
                paired: tuple[str, dict[str, dict[str, Any]]] | None = None) -> str:
    """The whole page as one HTML string.

    Args:
        report: Report dict (see :mod:`tracer.metrics.report`); ``details`` and ``provenance`` optional.
        methods: ``report["methods"]``, validated.
        paired: :func:`paired_tests` of ``report`` when the caller has them already; computed if needed.
    """
    title = html.escape(str(report.get("title", "tracer report")))
    settings = report.get("settings") or {}
    details = report.get("details") or None
    sub = (f"{_fmt(settings.get('n_queries', MISSING))} queries ({html.escape(_fmt(settings.get('slice', 'all')))} "
           f"slice) · index {html.escape(_fmt(settings.get('index')))} "
           f"<code>{html.escape(_fmt(settings.get('index_fingerprint')))}</code> · policy "
           f"{html.escape(_fmt(settings.get('policy')))}")
    body = [f"<h1>{title}</h1><p class=\"sub\">{sub}</p>", "<h2>Summary</h2>", summary_table(methods), EXPLANATIONS,
            _charts_section(report, methods, details)]
    if details:
        if len(details["per_query"]) > 1:
            body.append(_paired_section(details["per_query"], paired or paired_tests(report)))
            body.append(_agreement_section(details["hits"]))
    if (report.get("stability") or {}).get("methods"):
        body.append(_stability_section(report["stability"]))
    if report.get("cascade"):
        body.append(cascade_section(report["cascade"]))
    body.append("<h2>Per relation</h2>" + _group_tables(methods) if any(r.get("by_group") for r in methods.values())
                else "")
    if details:
        body.append(_drilldown(details, len((report.get("provenance") or {}).get("checkpoints") or [])))
    body += [_provenance(report.get("provenance"), settings), _settings(settings)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


DRILLDOWN_JS = r"""
(function(){
const D=JSON.parse(document.getElementById('dd-data').textContent);
const $=id=>document.getElementById(id);
const el=(tag,cls,text)=>{const e=document.createElement(tag);if(cls)e.className=cls;if(text!==undefined)e.textContent=text;return e;};
const first=(m,q)=>{const r=(D.per_query[m][q]||{}).ranks||[];return r.length?r[0]:null;};
const rels=[...new Set(D.queries.map(q=>q.relation||'?'))].sort();
for(const r of rels){const o=el('option',null,r);o.value=r;$('dd-relation').appendChild(o);}
const MAX=300;let sel=null;
function cls(r){return r===null?'rk4':r===1?'rk1':r<=10?'rk2':r<=25?'rk3':'rk4';}
function matches(q,words){
  if(!words.length)return true;
  const hay=[q.id,q.prompt,q.target,q.relation||'',...q.proponents].join(' ').toLowerCase();
  return words.every(w=>hay.includes(w));
}
function renderList(){
  const words=$('dd-search').value.toLowerCase().split(/\s+/).filter(Boolean);
  const rel=$('dd-relation').value,miss=$('dd-miss').checked;
  const shown=D.queries.filter(q=>matches(q,words)&&(!rel||(q.relation||'?')===rel)&&
    (!miss||D.methods.some(m=>{const r=first(m,q.id);return r===null||r>10;})));
  $('dd-count').textContent=shown.length+' of '+D.queries.length+' queries'+(shown.length>MAX?' (first '+MAX+' listed)':'');
  const t=el('table'),h=el('tr');
  for(const c of ['query','relation','fact',...D.methods])h.appendChild(el('th',null,c));
  t.appendChild(el('thead')).appendChild(h);const b=t.appendChild(el('tbody'));
  for(const q of shown.slice(0,MAX)){
    const tr=el('tr');tr.dataset.qid=q.id;if(q.id===sel)tr.className='sel';
    tr.appendChild(el('td',null,q.id));tr.appendChild(el('td',null,q.relation||''));
    tr.appendChild(el('td',null,q.prompt+' →'+q.target));
    for(const m of D.methods){const r=first(m,q.id);tr.appendChild(el('td','rk '+cls(r),r===null?'·':String(r)));}
    tr.onclick=()=>{sel=q.id;renderList();renderDetail(q);};b.appendChild(tr);
  }
  const list=$('dd-list');list.replaceChildren(t);
}
function fmt(x){return x===undefined||x===null?'—':(Math.abs(x)>=1e4||Math.abs(x)<1e-3&&x!==0?x.toExponential(3):x.toFixed(4));}
function renderDetail(q){
  const d=$('dd-detail');d.replaceChildren();
  const f=el('div','fact');f.appendChild(el('b',null,q.id+' · '));f.appendChild(document.createTextNode(q.prompt));
  f.appendChild(el('span','tgt',q.target));f.appendChild(document.createTextNode('  ('+(q.relation||'?')+')'));d.appendChild(f);
  const pro=new Set(q.proponents);
  d.appendChild(el('h3',null,'Proponents ('+q.proponents.length+')'));
  const ul=el('ul');
  for(const p of q.proponents){const li=el('li');li.appendChild(el('span','id ok','✓ '+p+' '));
    li.appendChild(el('span','txt',D.documents[p]||'(not in the index)'));ul.appendChild(li);}
  d.appendChild(ul);
  const grid=el('div','hits');
  for(const m of D.methods){
    const pq=D.per_query[m][q.id]||{},col=el('div','col');
    col.appendChild(el('h4',null,m));
    let line='RR '+fmt(pq.mrr)+' · recall@10 '+fmt(pq['recall@10']);
    if(pq.tail_patch!==undefined)line+=' · tail-patch '+fmt(pq.tail_patch);
    col.appendChild(el('div','note',line));
    const st=(D.stability[m]||{})[q.id]||[];
    (D.hits[m][q.id]||[]).forEach(([doc,score],i)=>{
      const h=el('div','hit'+(pro.has(doc)?' pro':''));
      h.appendChild(el('span','sc',fmt(score)));
      if(st[i]){const [f,ok,lo,hi]=st[i],n=D.views[m]||D.n_checkpoints;
        const b=el('span','stab'+(ok?' st':''),n?Math.round(f*n)+'/'+n:Math.round(100*f)+'%');
        b.title=(ok?'stable: ':'')+'in the top 10 of '+Math.round(100*f)+'% of the checkpoint (x seed) views; score over them, 95% interval ['+fmt(lo)+', '+fmt(hi)+']';
        h.appendChild(b);}
      h.appendChild(el('span','id',(i+1)+'. '+(pro.has(doc)?'✓ ':'')+doc+' '));
      h.appendChild(el('div','txt',D.documents[doc]||''));col.appendChild(h);});
    grid.appendChild(col);
  }
  d.appendChild(grid);
}
for(const id of ['dd-search','dd-relation','dd-miss'])$(id).addEventListener('input',renderList);
renderList();if(D.queries.length){sel=D.queries[0].id;renderList();renderDetail(D.queries[0]);}
})();
"""
