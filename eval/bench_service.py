"""Benchmark the gRPC service against the in-process library on the same index and queries.

Measures ``Trace`` (k=10, reranking 1,000 candidates by default) through ``TracerClient`` at
concurrency 1, 4 and 16 against a ``tracer serve`` subprocess (its own process, so client and
server do not share a GIL), next to the same queries through ``tracer.Tracer`` in this process.
Reports p50/p95/p99 latency, throughput, errors by status code, and the gRPC overhead ratio
(p50 over gRPC at concurrency 1 / p50 in-process). Aim: ratio <= 1.2, and no errors other than
RESOURCE_EXHAUSTED when the concurrency exceeds the server's cap.

Usage::

    python eval/bench_service.py --index indexes/bench --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tracer.client import TracerClient
from tracer.errors import TracerError
from tracer.types import Query

AIM_OVERHEAD = 1.2
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep model-loading chatter off the report
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _percentiles(lat_ms: list[float]) -> dict[str, float]:
    if not lat_ms:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "mean_ms"), float("nan"))
    s = sorted(lat_ms)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "mean_ms": statistics.fmean(s)}


def load_queries(path: str | None, tracer: Any, n: int) -> list[Query]:
    """Queries from a JSONL file (``prompt``/``target``), else cut from the index's first documents."""
    if path:
        lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        return [Query.from_dict({"id": f"q{i}", **d}) for i, d in enumerate(lines[:n])]
    ids = list(tracer.store.doc_ids[:n])  # bench-only peek at the store
    out = []
    for i, doc in enumerate(tracer.get_documents(ids)):
        words = re.sub(r"[^\w\s]", " ", doc.text).split()
        if len(words) >= 2:
            out.append(Query(f"q{i}", " ".join(words[:-1]), " " + words[-1]))
    return out


def bench_in_process(tracer: Any, queries: list[Query], n_requests: int,
                     opts: dict[str, Any]) -> dict[str, Any]:
    """Sequential ``Tracer.trace`` calls (concurrency 1)."""
    lat = []
    t0 = time.perf_counter()
    for i in range(n_requests):
        q = queries[i % len(queries)]
        s = time.perf_counter()
        tracer.trace(q.prompt, q.target, **opts)
        lat.append((time.perf_counter() - s) * 1e3)
    wall = time.perf_counter() - t0
    return {**_percentiles(lat), "qps": n_requests / wall, "requests": n_requests}


def bench_grpc(client: TracerClient, queries: list[Query], n_requests: int, concurrency: int,
               opts: dict[str, Any]) -> dict[str, Any]:
    """``n_requests`` Trace calls spread over ``concurrency`` threads sharing one channel."""
    lat: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            q = queries[i % len(queries)]
            s = time.perf_counter()
            try:
                client.trace(q.prompt, q.target, **opts)
                ok = True
            except TracerError as exc:
                ok = False
                code = str(getattr(exc, "code", type(exc).__name__))
            with lock:
                if ok:
                    lat.append((time.perf_counter() - s) * 1e3)
                else:
                    errors[code] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {**_percentiles(lat), "qps": len(lat) / wall, "requests": n_requests, "ok": len(lat),
            "errors": dict(errors)}


def start_server(index: str, max_concurrent: int) -> tuple[subprocess.Popen[str], str]:
    """``tracer serve`` on a free loopback port; returns the process and its address."""
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "serve", "--index", index, "--port", "0",
                             "--max-concurrent", str(max_concurrent), "--grace", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("tracer serving on "):
        proc.kill()
        raise SystemExit(f"tracer serve did not start: {line!r}")
    return proc, line.split()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--queries", help="JSONL of {prompt, target} (default: cut from the index's documents)")
    p.add_argument("--requests", type=int, default=100, help="Trace calls per measurement")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client concurrencies")
    p.add_argument("--max-concurrent", type=int, default=16, help="server cap (RESOURCE_EXHAUSTED beyond it)")
    p.add_argument("--method", default=None, help="method (default: the server's default)")
    p.add_argument("--candidates", default="bm25")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--num-candidates", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args()

    from tracer.tracer import Tracer

    local = Tracer.open(args.index)
    method = args.method or ("tracin" if "tracin" in local.available_methods() else "bm25")
    opts = {"method": method, "candidates": args.candidates, "k": args.k,
            "num_candidates": args.num_candidates}
    queries = load_queries(args.queries, local, 32)
    for q in queries[:3]:  # warm caches (model load, FAISS pages) before timing
        local.trace(q.prompt, q.target, **opts)
    in_proc = bench_in_process(local, queries, args.requests, opts)
    proc, address = start_server(args.index, args.max_concurrent)
    try:
        with TracerClient(address, timeout=60.0) as client:
            for q in queries[:3]:
                client.trace(q.prompt, q.target, **opts)
            grpc_runs = {c: bench_grpc(client, queries, args.requests, c, opts)
                         for c in (int(x) for x in args.concurrency.split(","))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = _report(args, opts, in_proc, grpc_runs)
    print(json.dumps(report, indent=2) if args.json else _table(report))


def _report(args: argparse.Namespace, opts: dict[str, Any], in_proc: dict[str, Any],
            grpc_runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    c1 = grpc_runs.get(1)
    ratio = c1["p50_ms"] / in_proc["p50_ms"] if c1 and in_proc["p50_ms"] > 0 else None
    unexpected = {c: {k: v for k, v in r["errors"].items() if k != "RESOURCE_EXHAUSTED"}
                  for c, r in grpc_runs.items()}
    return {"index": args.index, "options": opts, "server_max_concurrent": args.max_concurrent,
            "in_process": in_proc, "grpc": {str(c): r for c, r in grpc_runs.items()},
            "overhead_ratio_p50_c1": ratio, "aim_overhead": AIM_OVERHEAD,
            "meets_aim": ratio is not None and ratio <= AIM_OVERHEAD and not any(unexpected.values()),
            "unexpected_errors": {str(c): e for c, e in unexpected.items() if e}}


def _table(report: dict[str, Any]) -> str:
    rows = [("in-process c=1", report["in_process"])]
    rows += [(f"gRPC c={c}", r) for c, r in report["grpc"].items()]
    lines = [f"{'':16} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'qps':>8}  errors"]
    for name, r in rows:
        lines.append(f"{name:16} {r['p50_ms']:9.2f} {r['p95_ms']:9.2f} {r['p99_ms']:9.2f} {r['qps']:8.1f}  "
                     f"{r.get('errors', {}) or ''}")
    ratio = report["overhead_ratio_p50_c1"]
    lines.append(f"overhead ratio (p50, c=1): {'n/a' if ratio is None else f'{ratio:.3f}'} "
                 f"(aim <= {report['aim_overhead']}); meets aim: {report['meets_aim']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
