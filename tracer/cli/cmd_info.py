"""``tracer info``: what an index holds (and whether it is intact)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an index and check its files")
    p.add_argument("index", help="index directory")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 (slow)")
    p.add_argument("--json", action="store_true", help="print JSON")
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
        print(f"  gradients   views={','.join(info['views'])} k_in={f['k_in']} k_out={f['k_out']} "
              f"projection={f['projection']} seed={f['seed']} dtype={f['dtype']} loss={f['loss_reduction']}")
    for c in info["checkpoints"]:
        print(f"  checkpoint  step={c['step']:<6} lr={c['lr']:.2e}  {c['path']}")
    print(f"  built       {info['created']} by tracer {info['tracer_version']}; seconds "
          + json.dumps(info["build_seconds"]))
    return 0
