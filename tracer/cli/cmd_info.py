"""``tracer info``: what an index holds (and whether it is intact)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an index and check its files")
    p.add_argument("index", help="index directory")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 (slow)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--modules", action="store_true", help="list every tracked parameter group")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.tracer import Tracer

    info = Tracer.open(args.index, verify=args.verify).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"index {info['name']}  fingerprint {info['fingerprint']}  ({'verified' if args.verify else 'sizes checked'})")
    print(f"  documents   {info['n_documents']}")
    print(f"  size        {info['size_bytes'] / 1e6:.1f} MB ({info['size_bytes'] / max(1, info['n_documents']):.0f} "
          "bytes/example)")
    print(f"  stages      {', '.join(info['stages'])}")
    print(f"  methods     {', '.join(info['methods'])}")
    print(f"  candidates  {', '.join(info['candidates'])}")
    f = info.get("featurize") or {}
    if f:
        widths = f"dim={f['dim']}" if f.get("projection") == "kfac" and f.get("dim") else \
            f"k_in={f['k_in']} k_out={f['k_out']}"
        print(f"  gradients   views={','.join(info['views'])} {widths} projection={f['projection']} "
              f"seed={f['seed']} dtype={f['dtype']} loss={f['loss_reduction']}")
    print("  bytes       per example by component (fixed costs in total bytes):")
    for comp, b in info["bytes_per_example"].items():
        print(f"    {comp:<26} {b['per_example']:>10,.1f} B/example" if not b["fixed"] else
              f"    {comp:<26} {b['fixed']:>10,d} B total")
    tracked = info.get("tracked") or []
    if tracked:
        kept = [t["energy_kept"] for t in tracked if t["energy_kept"] is not None]
        print(f"  tracked     {len(tracked)} parameter groups" + (
            f"; mean share of each group's fitted energy kept {sum(kept) / len(kept):.3f}" if kept else ""))
        for t in tracked if args.modules else []:
            shape = "x".join(map(str, t["shape"]))
            full = "x".join(map(str, t["full"]))
            share = "" if t["energy_kept"] is None else f"  energy kept {t['energy_kept']:.3f}"
            print(f"    {t['module']:<34} {t['kind']:<12} {shape:>9} of {full:<9}{share}")
    for c in info["checkpoints"]:
        print(f"  checkpoint  step={c['step']:<6} lr={c['lr']:.2e}  {c['path']}")
    print(f"  built       {info['created']} by tracer {info['tracer_version']}; seconds "
          + json.dumps(info["build_seconds"]))
    return 0
