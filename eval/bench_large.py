"""Build indexes of growing size and report how each cost grows (issue #13's one-machine target).

For every corpus given, runs ``tracer build`` in a subprocess under ``/usr/bin/time -v`` and
records wall and CPU seconds, peak RSS, the resident anonymous memory after every stage (the
build logs it), seconds per stage, bytes on disk per example; then the in-process query p50
on the result (``eval/bench_service.py``, gRPC skipped unless asked). Finally it fits each
figure linearly in N over the two largest sizes and extrapolates to ``--extrapolate`` documents
(on paper: the fit says how the cost grows, it is not a measurement).

Usage::

    python eval/bench_large.py --model RUN --corpus c30k.jsonl --corpus c100k.jsonl \
        --corpus c300k.jsonl --out /tmp/scale --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGE = re.compile(r"stage (\w+) done in ([\d.]+)s \(RSS anon (\d+) MB, file (\d+) MB; peak (\d+) MB\)")
TIME_V = {
    "wall": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)"),
    "user": re.compile(r"User time \(seconds\): ([\d.]+)"),
    "sys": re.compile(r"System time \(seconds\): ([\d.]+)"),
    "peak_kb": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "cpu_pct": re.compile(r"Percent of CPU this job got: (\d+)%"),
}


def _clock(s: str) -> float:
    parts = [float(p) for p in s.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def parse_build_log(text: str) -> dict[str, Any]:
    """Stage timings and memory from a ``tracer build`` log, plus ``/usr/bin/time -v``'s totals."""
    stages = {m[0]: {"seconds": float(m[1]), "rss_anon_mb": int(m[2]), "rss_file_mb": int(m[3]),
                     "peak_mb": int(m[4])} for m in STAGE.findall(text)}
    out: dict[str, Any] = {"stages": stages}
    for key, rx in TIME_V.items():
        m = rx.search(text)
        if m:
            out[key] = _clock(m.group(1)) if key == "wall" else float(m.group(1))
    if "user" in out and "sys" in out:
        out["cpu"] = round(out["user"] + out["sys"], 1)
    if "peak_kb" in out:
        out["peak_rss_gb"] = round(out.pop("peak_kb") / 1024 ** 2, 3)
    return out


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def build(corpus: Path, model: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One measured ``tracer build``; returns the parsed figures (the log is kept next to the index)."""
    exe = str(Path(sys.executable).with_name("tracer"))
    cmd = ["/usr/bin/time", "-v", exe, "build", "--corpus", str(corpus), "--model", model, "--out", str(out),
           "--overwrite", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    log = proc.stdout + proc.stderr
    out.with_name(out.name + ".build.log").write_text(log)
    if proc.returncode:
        raise SystemExit(f"build of {corpus} failed (exit {proc.returncode}); log: {out}.build.log\n{log[-2000:]}")
    rec = parse_build_log(log)
    rec["wall_measured"] = round(time.perf_counter() - t0, 1)
    rec["bytes"] = _du(out)
    return rec


def query_p50(index: Path, requests: int, queries: str | None = None) -> dict[str, Any]:
    """In-process ``Tracer.trace`` p50 on the built index (tracin, BM25's 1,000 candidates), next to the
    query floor, with ``eval/bench_service.py``'s interleaved measurement (in a subprocess, so this
    process's memory and threads stay out of the builds)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from bench_service import bench_floor_and_trace, load_queries;"
        "from tracer.tracer import Tracer;"
        "t = Tracer.open(sys.argv[2]); t.warm();"
        "qs = load_queries(sys.argv[4] or None, t, 32);"
        "opts = dict(method='tracin', candidates='bm25', k=10, num_candidates=1000);"
        "r = bench_floor_and_trace(t, qs, int(sys.argv[3]), opts);"
        "print(json.dumps({'p50_ms': r['trace']['p50_ms'], 'p95_ms': r['trace']['p95_ms'],"
        " 'floor_p50_ms': r['floor_p50_ms'], 'stages_p50_ms': r['stages_p50_ms']}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(index), str(requests),
                           queries or ""], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(per_unit, fixed)`` of ``y = fixed + per_unit * x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return b, my - b * mx


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="run dir or model dir (as tracer build --model)")
    p.add_argument("--corpus", action="append", required=True, help="corpus jsonl (repeat, smallest first)")
    p.add_argument("--out", required=True, help="directory for the indexes and logs")
    p.add_argument("--build-args", default="", help="extra tracer build flags, e.g. '--engine ray --workers 2'")
    p.add_argument("--requests", type=int, default=64, help="Trace calls for the query p50 (0: skip)")
    p.add_argument("--queries", help="queries.jsonl for the p50 (default: cut from the index's documents)")
    p.add_argument("--extrapolate", type=int, default=1_000_000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in a.corpus:
        corpus = Path(c)
        n = _count_lines(corpus)
        idx = out / f"idx-{corpus.stem}"
        print(f"building {corpus} ({n} documents) -> {idx}", file=sys.stderr)
        rec = {"corpus": str(corpus), "n": n, **build(corpus, a.model, idx, a.build_args.split())}
        rec["bytes_per_example"] = round(rec["bytes"] / n)
        if a.requests:
            rec["query"] = query_p50(idx, a.requests, a.queries)
        rows.append(rec)
        print(json.dumps(rec), file=sys.stderr)
    report: dict[str, Any] = {"rows": rows}
    if len(rows) >= 2:
        xs = [r["n"] for r in rows[-2:]]
        fits = {}
        for key in ("wall", "cpu", "bytes"):
            per, fixed = slope(xs, [r[key] for r in rows[-2:]])
            fits[key] = {"per_doc": per, "fixed": fixed, "at": fixed + per * a.extrapolate}
        peak_per, peak_fixed = slope(xs, [r["peak_rss_gb"] for r in rows[-2:]])
        fits["peak_rss_gb"] = {"per_doc": peak_per, "fixed": peak_fixed, "at": peak_fixed + peak_per * a.extrapolate}
        report["extrapolation"] = {"n": a.extrapolate, "from": xs, "fits": fits}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'docs':>9} {'wall s':>8} {'cpu s':>8} {'peak GB':>8} {'B/ex':>8} {'p50 ms':>7}  stages (s; anon MB after)")
    for r in rows:
        st = ", ".join(f"{k} {v['seconds']:.0f} ({v['rss_anon_mb']})" for k, v in r["stages"].items())
        q = r.get("query", {}).get("p50_ms")
        print(f"{r['n']:>9} {r['wall']:>8.0f} {r['cpu']:>8.0f} {r['peak_rss_gb']:>8.2f} {r['bytes_per_example']:>8}"
              f" {q if q is None else round(q, 1)!s:>7}  {st}")
    if "extrapolation" in report:
        e = report["extrapolation"]
        f = e["fits"]
        print(f"linear in N from {e['from']}, at {e['n']:,} documents (extrapolated, not measured): "
              f"wall {f['wall']['at'] / 3600:.1f} h, CPU {f['cpu']['at'] / 3600:.1f} h, "
              f"{f['bytes']['at'] / 1e9:.1f} GB, peak RSS {f['peak_rss_gb']['at']:.2f} GB")


if __name__ == "__main__":
    main()
