"""Benchmark the query path against its physical floor, in process and over gRPC.

Measures, on one index and one set of queries:

* the **query floor**: a plain forward+backward of the same (prompt, target) through every
  checkpoint's model, timed in this process, interleaved query by query with
* **in-process** ``Tracer.trace`` (k=10, reranking 1,000 candidates by default). Aim:
  p50 <= 1.2 x floor p50 + 5 ms;
* ``Trace`` through ``TracerClient`` at concurrency 1, 4 and 16 against a ``tracer serve``
  subprocess (its own process, so client and server do not share a GIL): p50/p95/p99, qps,
  errors by status code. Aims: gRPC p50 at c=1 <= 1.1 x in-process; qps at c=16 >= 3 x c=1;
* **full scan**: rows per second scoring the whole corpus with ``tracin`` for 1 and 64
  concurrent (pre-featurized) queries, next to the machine's memory-bandwidth bound (a large
  numpy copy, divided by the bytes each row's features occupy).

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


def plain_models(tracer: Any) -> list[Any]:
    """Fresh copies of every checkpoint's model (no hooks, eager attention): the floor's models."""
    from tracer.model.loading import load_model

    return [load_model(d) for d in tracer.encoder.dirs]


def query_floor_ms(models: list[Any], tracer: Any, q: Query) -> float:
    """One plain forward+backward of the query (loss on the target) through every checkpoint, in ms."""
    import torch

    from tracer.model.tokenization import encode_example, pad_batch

    enc = tracer.encoder
    batch = pad_batch([encode_example(enc.tokenizer, q.prompt, q.target, enc.cfg.max_length)],
                      enc.tokenizer.pad_token_id or 0, enc.cfg.padding_side)
    s = time.perf_counter()
    for m in models:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch["labels"][:, 1:].reshape(-1), ignore_index=-100,
                                                 reduction="sum")
        loss.backward()
        m.zero_grad(set_to_none=True)
    return (time.perf_counter() - s) * 1e3


def bench_floor_and_trace(tracer: Any, queries: list[Query], n_requests: int,
                          opts: dict[str, Any]) -> dict[str, Any]:
    """Floor and ``Tracer.trace`` interleaved query by query (drift hits both alike)."""
    models = plain_models(tracer)
    for q in queries:  # first sight of each sequence length builds kernels (oneDNN primitives): not timed
        query_floor_ms(models, tracer, q)
        tracer.trace(q.prompt, q.target, **opts)
    floor, lat, stages = [], [], {}
    for i in range(n_requests):
        q = queries[i % len(queries)]
        floor.append(query_floor_ms(models, tracer, q))
        s = time.perf_counter()
        r = tracer.trace(q.prompt, q.target, **opts)
        lat.append((time.perf_counter() - s) * 1e3)
        for k, v in r.timings_ms.items():
            stages.setdefault(k, []).append(v)
    f50, t50 = statistics.median(floor), statistics.median(lat)
    return {"floor_p50_ms": f50, "trace": _percentiles(lat),
            "stages_p50_ms": {k: statistics.median(v) for k, v in stages.items()},
            "ratio_to_floor": t50 / f50, "aim_ms": 1.2 * f50 + 5.0, "meets_aim": t50 <= 1.2 * f50 + 5.0}


def memory_bandwidth_gbs() -> float:
    """Copy bandwidth (bytes read + written per second) of a 400 MB numpy copy, best of 3, in GB/s."""
    import numpy as np

    a = np.ones(100_000_000, dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        s = time.perf_counter()
        a.copy()
        best = min(best, time.perf_counter() - s)
    return 2 * a.nbytes / best / 1e9


def run_threads(threads: list[threading.Thread]) -> float:
    """Start every thread, wait for all; the wall time in seconds."""
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def bench_full_scan(tracer: Any, queries: list[Query], concurrency: int, k: int) -> dict[str, Any]:
    """Rows/s of scoring the whole corpus with tracin for ``concurrency`` concurrent pre-featurized queries."""
    r = tracer.retriever
    feats = r.features([(q.prompt, q.target) for q in queries[:concurrency]] * (1 + concurrency // len(queries)),
                       ["tracin"], "full")[:concurrency]
    r.rank(feats[0], "tracin", k)  # warm the pages

    def one(qf: Any) -> None:
        r.rank(qf, "tracin", k)

    wall = run_threads([threading.Thread(target=one, args=(qf,)) for qf in feats])
    return {"concurrency": concurrency, "seconds": wall, "rows_per_s": concurrency * tracer.n_documents / wall}


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

    wall = run_threads([threading.Thread(target=worker) for _ in range(concurrency)])
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
    p.add_argument("--max-concurrent", type=int, default=32, help="server cap (RESOURCE_EXHAUSTED beyond it)")
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
    local.warm()
    for q in queries[:3]:  # warm caches (model load, FAISS pages) before timing
        local.trace(q.prompt, q.target, **opts)
    in_proc = bench_floor_and_trace(local, queries, args.requests, opts)
    bw = memory_bandwidth_gbs()
    row_bytes = sum(meta["size"] for rel, meta in local.store.manifest["files"].items()
                    if rel.startswith("features/raw/")) / local.n_documents
    scans = [bench_full_scan(local, queries, c, args.k) for c in (1, 64)]
    proc, address = start_server(args.index, args.max_concurrent)
    try:
        with TracerClient(address, timeout=60.0) as client:
            for q in queries:  # the server's first sight of each query shape, as above
                client.trace(q.prompt, q.target, **opts)
            grpc_runs = {c: bench_grpc(client, queries, args.requests, c, opts)
                         for c in (int(x) for x in args.concurrency.split(","))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = _report(args, opts, in_proc, grpc_runs)
    report["full_scan"] = {"scans": scans, "memory_bandwidth_gbs": bw, "feature_bytes_per_row": row_bytes,
                           "bandwidth_bound_rows_per_s": bw * 1e9 / 2 / row_bytes}
    print(json.dumps(report, indent=2) if args.json else _table(report))


def _report(args: argparse.Namespace, opts: dict[str, Any], in_proc: dict[str, Any],
            grpc_runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    c1 = grpc_runs.get(1)
    p50 = in_proc["trace"]["p50_ms"]
    ratio = c1["p50_ms"] / p50 if c1 and p50 > 0 else None
    c16 = grpc_runs.get(16)
    scaling = c16["qps"] / c1["qps"] if c1 and c16 and c1["qps"] > 0 else None
    unexpected = {c: {k: v for k, v in r["errors"].items() if k != "RESOURCE_EXHAUSTED"}
                  for c, r in grpc_runs.items()}
    return {"index": args.index, "options": opts, "server_max_concurrent": args.max_concurrent,
            "in_process": in_proc, "grpc": {str(c): r for c, r in grpc_runs.items()},
            "overhead_ratio_p50_c1": ratio, "aim_overhead": AIM_OVERHEAD,
            "qps_c16_over_c1": scaling, "aim_scaling": 3.0,
            "meets_aim": ratio is not None and ratio <= AIM_OVERHEAD and not any(unexpected.values()),
            "unexpected_errors": {str(c): e for c, e in unexpected.items() if e}}


def _table(report: dict[str, Any]) -> str:
    ip = report["in_process"]
    rows = [("in-process c=1", {**ip["trace"], "qps": 1e3 / ip["trace"]["mean_ms"]})]
    rows += [(f"gRPC c={c}", r) for c, r in report["grpc"].items()]
    lines = [f"{'':16} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'qps':>8}  errors"]
    for name, r in rows:
        lines.append(f"{name:16} {r['p50_ms']:9.2f} {r['p95_ms']:9.2f} {r['p99_ms']:9.2f} {r['qps']:8.1f}  "
                     f"{r.get('errors', {}) or ''}")
    ratio = report["overhead_ratio_p50_c1"]
    lines.append(f"overhead ratio (p50, c=1): {'n/a' if ratio is None else f'{ratio:.3f}'} "
                 f"(aim <= {report['aim_overhead']}); meets aim: {report['meets_aim']}")
    lines.append(f"query floor p50 {ip['floor_p50_ms']:.1f} ms; trace p50 {ip['trace']['p50_ms']:.1f} ms "
                 f"= {ip['ratio_to_floor']:.2f} x floor (aim <= 1.2 x floor + 5 ms = {ip['aim_ms']:.1f}: "
                 f"{ip['meets_aim']}); stages p50 {ip['stages_p50_ms']}")
    sc = report.get("qps_c16_over_c1")
    lines.append(f"throughput c=16 / c=1: {'n/a' if sc is None else f'{sc:.2f}'} (aim >= 3)")
    fs = report.get("full_scan")
    if fs:
        for s in fs["scans"]:
            lines.append(f"full scan, {s['concurrency']} concurrent: {s['rows_per_s']:,.0f} rows/s")
        lines.append(f"memory bandwidth {fs['memory_bandwidth_gbs']:.2f} GB/s (copy) -> bound "
                     f"{fs['bandwidth_bound_rows_per_s']:,.0f} rows/s at {fs['feature_bytes_per_row']:,.0f} B/row")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
