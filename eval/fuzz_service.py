"""Fuzz a running ``tracer serve`` process and watch its memory.

Starts ``tracer serve`` on an index (a subprocess, loopback, ephemeral port), sends seeded fuzzed
requests over every RPC (``tracer.service.fuzz``), and prints the status-code histogram, contract
violations (UNKNOWN, or INTERNAL for a well-formed message), whether the server survived, and its
resident memory (VmRSS and RssAnon from /proc) before and at every checkpoint of the run.

    python eval/fuzz_service.py --index runs/index-final --requests 4000 --json runs/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tracer.index.store import IndexStore
from tracer.service import fuzz


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and RssAnon of a process, in MB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def start_server(index: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tracer", "serve", "--index", str(index), "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("tracer serving on "):
            return proc, line.split()[-1]
    raise SystemExit(f"server exited before serving (code {proc.wait()})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=500, help="memory sample interval (requests)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `tracer serve` argument")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    store = IndexStore.open(args.index)
    proc, address = start_server(args.index, args.serve_arg)
    channel = grpc.insecure_channel(address)
    samples = [{"requests": 0, **memory_mb(proc.pid)}]
    fz = fuzz.RequestFuzzer(args.seed, [args.index.name], store.doc_ids[:200])
    t0 = time.perf_counter()

    def on_call(i: int) -> None:
        if (i + 1) % args.every == 0:
            samples.append({"requests": i + 1, **memory_mb(proc.pid)})
            print(f"{i + 1:>6} requests  {samples[-1]}", flush=True)

    stats = fuzz.run(channel, fz, args.requests, on_call=on_call)
    seconds = time.perf_counter() - t0
    alive = proc.poll() is None
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status \
        if alive else None
    proc.terminate()
    t1 = time.perf_counter()
    code = proc.wait(60)
    result = {
        "index": str(args.index), "requests": stats.total, "seconds": round(seconds, 1),
        "codes": dict(stats.codes.most_common()), "by_rpc": dict(stats.by_rpc), "violations": stats.violations,
        "server_alive": alive, "serving_after": health == health_pb2.HealthCheckResponse.SERVING,
        "memory_mb": samples, "rss_growth": round(samples[-1]["VmRSS"] / samples[0]["VmRSS"] - 1, 3),
        "sigterm_exit_code": code, "sigterm_exit_s": round(time.perf_counter() - t1, 2),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "memory_mb"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if alive and not stats.violations else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
