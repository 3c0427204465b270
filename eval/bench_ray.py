"""Ray engine vs single-process build on one machine: throughput, overhead, and a kill -9 mid-build.

Runs ``tracer build`` (the CLI, as a user would) on one corpus and model four ways — local with
torch's default threads, local with one thread, Ray with 1 worker, Ray with 2 workers (one CPU and
one torch thread each) — then a Ray build with 2 workers where one worker process is SIGKILLed once
the gradient stage is under way. Prints a JSON table: wall seconds of the command, seconds of the
gradient stage, its examples/s (documents x checkpoints), and whether every array file and the
manifest (except timings) equal the local build's.

    python eval/bench_ray.py --corpus runs/demo/bench/corpus.jsonl --model runs/demo/run --out /tmp/raybench \
        --fit-docs 256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

VOLATILE = ("build_seconds", "created", "history", "manifest_sha256")


def _build(args: argparse.Namespace, name: str, extra: list[str], env: dict[str, str] | None = None,
           on_start: object = None) -> dict:
    out = Path(args.out) / name
    cmd = [sys.executable, "-m", "tracer", "build", "--corpus", args.corpus, "--model", args.model,
           "--out", str(out), "--overwrite", *args.build_args, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    if on_start is not None:
        threading.Thread(target=on_start, args=(out, proc.pid), daemon=True).start()
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: {' '.join(cmd)} failed")
    start = re.search(r"ready in ([0-9.]+)s", stdout)
    ray_start = float(start.group(1)) if start else 0.0
    wall = time.perf_counter() - t0
    m = json.loads((out / "manifest.json").read_text())
    ex = m["corpus"]["n_documents"] * len(m["checkpoints"])
    g = m["build_seconds"]["gradients"]
    return {"run": name, "wall_s": round(wall, 1), "gradients_s": g,
            "gradient_examples_per_s": round(ex / g, 1),
            "ray_start_s": ray_start, "examples_per_s_after_ray_start": round(ex / (g - ray_start), 1),
            "fit_s": m["build_seconds"].get("fit"), "total_s": m["build_seconds"]["total"]}


def _descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _kill_one_worker(out: Path, build_pid: int) -> None:
    """Once the gradient stage has stored a shard, SIGKILL one Ray worker process of this build."""
    state = out.with_name(out.name + ".partial") / "build_state"
    while not any(state.glob("grad-ckpt0-shard*.done")):
        time.sleep(0.2)
    found = subprocess.run(["pgrep", "-f", "ray::ShardWorker"], capture_output=True, text=True).stdout.split()
    ours = [int(p) for p in found if _descends_from(int(p), build_pid)]
    if ours:
        os.kill(ours[0], signal.SIGKILL)
        print(f"killed worker pid {ours[0]}", file=sys.stderr)


def _same_as(a: Path, b: Path) -> bool:
    def arrays(root: Path) -> dict[str, bytes]:
        files = [*root.rglob("*.npy"), *root.rglob("*.safetensors"), *root.rglob("*.faiss")]
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(files)}

    def manifest(root: Path) -> dict:
        m = json.loads((root / "manifest.json").read_text())
        return {k: v for k, v in m.items() if k not in VOLATILE}

    return arrays(a) == arrays(b) and manifest(a) == manifest(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="/tmp/raybench")
    p.add_argument("--no-kill", action="store_true", help="skip the kill -9 run")
    a, a.build_args = p.parse_known_args()  # other flags go to every `tracer build` (e.g. --fit-docs 256)
    rows = [_build(a, "local", []), _build(a, "local-1thread", [], env={"OMP_NUM_THREADS": "1"}),
            _build(a, "ray-1worker", ["--engine", "ray", "--workers", "1"]),
            _build(a, "ray-2workers", ["--engine", "ray", "--workers", "2"])]
    if not a.no_kill:
        rows.append(_build(a, "ray-2workers-kill9", ["--engine", "ray", "--workers", "2"],
                           on_start=_kill_one_worker))
    for r in rows:
        r["identical_to_local"] = _same_as(Path(a.out) / r["run"], Path(a.out) / "local")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
