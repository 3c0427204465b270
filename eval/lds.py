"""The LDS benchmark end to end: synth -> train -> build -> ``tracer lds`` (every step reused if done).

Runs the same commands a user would, in one process, into ``--workdir``:

    tracer synth --out W/bench --preset P
    tracer train --data W/bench --out W/run --preset P [--epochs E]
    tracer build --corpus W/bench/corpus.jsonl --model W/run --out W/index
    tracer lds --index W/index --queries W/bench/queries.jsonl --run W/run --cache W/subsets --out W/report

The subset models live in ``W/subsets`` keyed by corpus, recipe, tokenizer, α and seed, so a
rerun (or a new method) trains nothing. The figures in README's "LDS" subsection come from

    OMP_NUM_THREADS=1 python eval/lds.py --workdir runs/lds --preset tiny --epochs 30 --subsets 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/lds")
    ap.add_argument("--preset", default="tiny", help="synth and train preset (default tiny)")
    ap.add_argument("--distractors", default="standard", help="synth distractors: standard | hard")
    ap.add_argument("--epochs", type=int, help="override the train preset's epochs (tiny's 3 learn no fact)")
    ap.add_argument("--subsets", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0, help="subset sampling seed")
    ap.add_argument("--methods", default="", help="comma-separated (default: all the index offers)")
    ap.add_argument("--slice", default="all", help="all | learned")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from tracer.cli.main import main as tracer

    torch.set_num_threads(max(1, args.threads))
    w = Path(args.workdir)
    seconds: dict[str, float] = {}
    steps = [
        ("synth", w / "bench" / "queries.jsonl",
         ["synth", "--out", str(w / "bench"), "--preset", args.preset, "--distractors", args.distractors]),
        ("train", w / "run" / "train_report.json",
         ["train", "--data", str(w / "bench"), "--out", str(w / "run"), "--preset", args.preset]
         + (["--epochs", str(args.epochs)] if args.epochs else [])),
        ("build", w / "index" / "manifest.json",
         ["build", "--corpus", str(w / "bench" / "corpus.jsonl"), "--model", str(w / "run"), "--out",
          str(w / "index")]),
        ("lds", None,
         ["lds", "--index", str(w / "index"), "--queries", str(w / "bench" / "queries.jsonl"), "--run",
          str(w / "run"), "--cache", str(w / "subsets"), "--subsets", str(args.subsets),
          "--alpha", str(args.alpha),
          "--seed", str(args.seed), "--slice", args.slice, "--threads", str(args.threads), "--out",
          str(w / "report")] + (["--methods", args.methods] if args.methods else [])),
    ]
    for name, done, argv in steps:
        if done is not None and done.is_file():
            print(f"== {name}: reusing {done.parent}")
            continue
        print(f"== tracer {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        code = tracer(argv)
        seconds[name] = round(time.perf_counter() - t0, 1)
        if code:
            return code
    report_file = w / "report" / "lds.json"
    report = json.loads(report_file.read_text())
    report["cost"]["steps_seconds_this_run"] = seconds
    train_report = json.loads((w / "run" / "train_report.json").read_text())
    last = train_report["checkpoints"][-1]
    report["settings"]["full_model"] = {"train_seconds": train_report.get("train_seconds"),
                                        "n_learned": train_report.get("n_learned"),
                                        "acc_heldout_template": last["acc_heldout_template"]}
    report_file.write_text(json.dumps(report, indent=2))
    print(f"report: {report_file}  (this run's step seconds: {json.dumps(seconds)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
