"""``tracer demo``: the whole mission on the embedded default, end to end, over gRPC.

Stages (each reused when already built in ``--workdir``): synth the small benchmark ->
train the small LM with checkpoints -> build the index -> start ``tracer serve`` on a
free loopback port -> wait for health SERVING -> trace one fact -> run the benchmark for
every method over gRPC (metrics with CIs, tail-patch, HTML report) -> stop the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tracer.cli.cmd_ui import DEFAULT_PORT as DEFAULT_UI_PORT
from tracer.errors import TracerError

METHODS = ("bm25", "embedding", "tracin", "tracin_cos", "influence", "trak", "random")
NUM_CANDIDATES = 50  # per source (bm25, embedding, gradient), unioned; keeps the demo within its 6-minute budget


class StageError(TracerError):
    """A demo stage failed; the message says which and why."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole mission end to end (synth, train, build, serve, trace, eval)")
    p.add_argument("--workdir", default="runs/demo", help="where artifacts go (reused on re-runs)")
    p.add_argument("--preset", default="small", help="benchmark/training preset (default small)")
    p.add_argument("--tail-patch-queries", type=int, default=100, help="queries in the tail-patch check")
    p.add_argument("--max-queries", type=int, help="evaluate at most N learned queries")
    p.set_defaults(func=run)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except TracerError as exc:
        raise StageError(f"stage '{name}' failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the demo names the failed stage, then stops
        raise StageError(f"stage '{name}' failed: {type(exc).__name__}: {exc}") from exc
    print(f"   ({name}: {time.perf_counter() - t0:.1f}s)", flush=True)


def _synth(work: Path, preset: str) -> Path:
    from tracer.cli.cmd_synth import run as synth

    out = work / "bench"
    if (out / "meta.json").is_file():
        print(f"   reusing {out}")
    else:
        synth(argparse.Namespace(out=str(out), preset=preset, seed=0))
    return out


def _train(work: Path, bench: Path, preset: str) -> Path:
    from tracer.cli.cmd_train import run as train

    out = work / "run"
    if (out / "train_report.json").is_file():
        print(f"   reusing {out}")
    else:
        train(argparse.Namespace(data=str(bench), out=str(out), preset=preset, arch=None, epochs=None, seed=None))
    return out


def _build(work: Path, bench: Path, run_dir: Path) -> Path:
    from tracer.cli.cmd_build import register as build_register

    out = work / "index"
    if (out / "manifest.json").is_file():
        print(f"   reusing {out}")
        return out
    parser = argparse.ArgumentParser()
    build_register(parser.add_subparsers())
    args = parser.parse_args(["build", "--corpus", str(bench / "corpus.jsonl"), "--model", str(run_dir),
                              "--out", str(out)])
    args.func(args)
    return out


@contextlib.contextmanager
def _server(index: Path) -> Iterator[str]:
    cmd = [sys.executable, "-m", "tracer", "serve", "--index", str(index), "--host", "127.0.0.1", "--port", "0"]
    log_path = index.parent / "server.log"  # the server's request log (a pipe nobody reads would fill up)
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address = _wait_for_address(proc, log_path)
        print(f"   server log: {log_path}")
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        print(f"   server stopped (exit code {proc.returncode})", flush=True)


def _wait_for_address(proc: subprocess.Popen, log_path: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            err = log_path.read_text(encoding="utf-8", errors="replace")
            raise StageError(f"tracer serve exited with code {proc.returncode}: {err.strip()[-2000:]}")
        if "serving on" in line:
            return line.strip().rsplit(" ", 1)[-1]
    raise StageError("tracer serve did not report its address within 120s")


def _wait_healthy(client: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(TracerError):
            if client.health() == "SERVING":
                return
        time.sleep(0.2)
    raise StageError("server never reported health SERVING")


def _show_trace(client: Any, index: str, queries: list[Any]) -> None:
    q = queries[0]
    res = client.trace(q.prompt, q.target, method="tracin_cos", candidates="union", k=5, num_candidates=100,
                       include_text=True, index=index)
    print(f"   fact: {q.prompt!r} -> {q.target!r}   (relation {q.relation}; "
          f"ground-truth proponents: {', '.join(q.proponents)})")
    print(f"   top-5 by {res.method} over {res.n_candidates} {res.candidates} candidates "
          f"({res.timings_ms.get('total_ms', 0):.0f} ms):")
    for h in res.hits:
        mark = "✓ proponent" if h.doc_id in q.proponents else "  "
        print(f"   {h.rank}. {h.doc_id} {h.score:>10.4g} {mark}  {(h.text or '')[:90]}")


def _evaluate(client: Any, index: str, queries: list[Any], out: Path, tail_patch_queries: int) -> dict:
    from tqdm.auto import tqdm

    from tracer.metrics.report import markdown_table, write_report

    bar = tqdm(total=len(queries), desc="   eval over gRPC", unit="query")

    def progress(done: int, total: int, _stage: str) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    report = client.evaluate(queries, methods=list(METHODS), candidates="union", num_candidates=NUM_CANDIDATES,
                             tail_patch=True, tail_patch_max_queries=tail_patch_queries, on_progress=progress,
                             index=index, timeout=1800)
    bar.close()
    report["settings"]["slice"] = "learned"
    paths = write_report(out, report)
    print(markdown_table(report))
    print(f"   report: {paths['html']}  (open it in a browser; per-query values in {paths.get('per_query', paths['json'])})")
    return report


def run(args: argparse.Namespace) -> int:
    from tracer.client import TracerClient
    from tracer.cli.cmd_eval import select_queries
    from tracer.corpus import load_queries

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with stage("1/6 synthesize the FTRACE-style benchmark"):
        bench = _synth(work, args.preset)
    with stage("2/6 train the small LM from scratch (checkpoints for TracIn)"):
        run_dir = _train(work, bench, args.preset)
    with stage("3/6 build the index (gradients x checkpoints, influence, TRAK, embeddings, BM25)"):
        index = _build(work, bench, run_dir)
    queries = select_queries(load_queries(bench / "queries.jsonl"), "learned", run_dir / "train_report.json",
                             args.max_queries)
    with stage("4/6 start tracer serve and wait for health SERVING"), contextlib.ExitStack() as stack:
        address = stack.enter_context(_server(index))
        client = stack.enter_context(TracerClient(address, timeout=120))
        _wait_healthy(client)
        print(f"   serving {index.name} on {address}")
        stack_ok = stack.pop_all()
    with stack_ok:
        with stage("5/6 trace one fact over gRPC"):
            _show_trace(client, index.name, queries)
        with stage(f"6/6 benchmark every method over gRPC ({len(queries)} learned queries)"):
            report = _evaluate(client, index.name, queries, work / "report", args.tail_patch_queries)
    (work / "demo_summary.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                                                        "n_queries": len(queries),
                                                        "methods": list(report["methods"])}, indent=2))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; artifacts in {work}")
    print(f"report:   {work / 'report' / 'report.html'}")
    print(f"explorer: tracer ui --index {index} --queries {bench / 'queries.jsonl'}   "
          f"(then open http://127.0.0.1:{DEFAULT_UI_PORT}/)")
    return 0
