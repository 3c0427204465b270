"""Compare two index directories file by file, by the per-file sha256 their manifests record.

Prints one line per file that differs (or exists in one only) and a summary; exits 1 if any differ.
With ``--tolerate-sums``, the files ``tracer add`` updates by summation (``moments/*.npy``,
``trak/xtx_ckpt*.npy``) may differ by up to ``--rtol`` relative (of the array's largest magnitude).

    .venv/bin/python eval/compare_indexes.py OLD_INDEX NEW_INDEX [--tolerate-sums]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _summed(rel: str) -> bool:
    return rel.startswith("moments/") or (rel.startswith("trak/") and "xtx" in rel)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--tolerate-sums", action="store_true")
    p.add_argument("--rtol", type=float, default=1e-9)
    args = p.parse_args(argv)
    fa = json.loads((args.a / "manifest.json").read_text())["files"]
    fb = json.loads((args.b / "manifest.json").read_text())["files"]
    bad = 0
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            print(f"only in {'b' if rel in fb else 'a'}: {rel}")
            bad += 1
        elif fa[rel]["sha256"] != fb[rel]["sha256"]:
            if args.tolerate_sums and _summed(rel):
                x, y = np.load(args.a / rel), np.load(args.b / rel)
                err = float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-300))
                ok = x.shape == y.shape and err <= args.rtol
                print(f"{'within tolerance' if ok else 'DIFFERS'}: {rel} (max relative difference {err:.2e})")
                bad += not ok
            else:
                print(f"DIFFERS: {rel}")
                bad += 1
    print(f"{len(set(fa) | set(fb))} files, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
