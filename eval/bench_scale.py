"""Build memory and ``tracer add`` cost against corpus size (issue #13), measured with ``/usr/bin/time -v``.

For each size N: the first N documents of ``--corpus`` are built into an index, the next
``N * --add-frac`` are added to a copy of it with ``tracer add``, and the first ``N * (1 + add_frac)``
(the union) are built from scratch. Every run is a separate process under ``/usr/bin/time -v``
(``OMP_NUM_THREADS=1``); the script prints, per run, wall and CPU seconds, peak RSS, and the
anonymous resident memory the build logs after each stage (``stage ... done in ...s (RSS anon ...``),
then the add's wall and CPU as a share of the union's full build. ``--pythonpath`` runs another
checkout of tracer (e.g. a ``git worktree`` of an older commit) for a before/after comparison.

    .venv/bin/python eval/bench_scale.py --corpus /tmp/a/s44k/corpus.jsonl \\
        --checkpoint /tmp/a/run/checkpoint-42 --tokenizer /tmp/a/run/tokenizer \\
        --sizes 10000 40000 --work /tmp/a/scale [--pythonpath /tmp/a/old] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STAGE = re.compile(r"stage (\w+) done in ([\d.]+)s \(RSS anon (\d+) MB")
TIME_FIELDS = {"User time (seconds)": "user_s", "System time (seconds)": "sys_s",
               "Maximum resident set size (kbytes)": "peak_kb", "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall"}


def _wall(text: str) -> float:
    parts = [float(x) for x in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def run(args: list[str], log: Path, pythonpath: str | None) -> dict:
    """One ``python -m tracer ...`` under ``/usr/bin/time -v``; its figures."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with open(log, "w") as err:
        rc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "tracer", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=err).returncode
    text = log.read_text()
    if rc:
        raise SystemExit(f"{' '.join(args)} failed (rc {rc}); see {log}")
    out: dict = {"stages": {m[1]: {"seconds": float(m[2]), "rss_anon_mb": int(m[3])} for m in STAGE.finditer(text)}}
    for line in text.splitlines():
        key, _, value = line.strip().partition(": ")
        if key in TIME_FIELDS:
            out[TIME_FIELDS[key]] = _wall(value) if key.startswith("Elapsed") else float(value)
    out["cpu_s"] = round(out.pop("user_s") + out.pop("sys_s"), 2)
    out["peak_mb"] = round(out.pop("peak_kb") / 1024)
    return out


def _head(src: Path, dst: Path, lo: int, hi: int) -> Path:
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        g.writelines(itertools.islice(f, lo, hi))
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True, help="a .jsonl corpus with enough documents")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000])
    p.add_argument("--add-frac", type=float, default=0.1)
    p.add_argument("--work", type=Path, required=True, help="scratch directory (indexes, corpora, logs)")
    p.add_argument("--pythonpath", default=None, help="run the tracer found here (a checkout) instead")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    ck = ["--checkpoint", args.checkpoint, "--tokenizer", args.tokenizer]
    results = {}
    for n in args.sizes:
        k = int(round(n * args.add_frac))
        w = args.work / f"n{n}"
        if w.exists():
            shutil.rmtree(w)
        w.mkdir()
        base, extra, union = (_head(args.corpus, w / "base.jsonl", 0, n), _head(args.corpus, w / "add.jsonl", n, n + k),
                              _head(args.corpus, w / "union.jsonl", 0, n + k))
        r = {"build": run(["build", "--corpus", str(base), *ck, "--out", str(w / "idx")], w / "build.log",
                          args.pythonpath)}
        shutil.copytree(w / "idx", w / "grown")
        r["add"] = run(["add", "--index", str(w / "grown"), "--corpus", str(extra)], w / "add.log", args.pythonpath)
        r["build_union"] = run(["build", "--corpus", str(union), *ck, "--out", str(w / "union")],
                               w / "union.log", args.pythonpath)
        r["add_share"] = {"wall": round(r["add"]["wall"] / r["build_union"]["wall"], 3),
                          "cpu": round(r["add"]["cpu_s"] / r["build_union"]["cpu_s"], 3)}
        results[n] = r
        if not args.json:
            for name in ("build", "add", "build_union"):
                x = r[name]
                anon = ", ".join(f"{s} {v['rss_anon_mb']}" for s, v in x["stages"].items())
                print(f"N={n} {name}: wall {x['wall']:.1f}s, CPU {x['cpu_s']:.1f}s, peak RSS {x['peak_mb']} MB; "
                      f"RSS anon (MB) after {anon}")
            print(f"N={n} add +{k} / build of {n + k}: wall {r['add_share']['wall']:.1%}, CPU {r['add_share']['cpu']:.1%}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
