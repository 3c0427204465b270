"""``tracer verify``: did these training examples teach the fact? One SGD step on each (tail-patch).

Through a server (``--server``) or an index directory (``--index-dir``). Prints, per example, the
change in ``log p(target | prompt)`` after one step on it from a checkpoint, next to seeded random
examples as the baseline; ``--json`` prints the whole ``Verification``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tracer.cli.options import add_model_overrides, model_overrides
from tracer.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="causal check of training examples for a fact (tail-patch)",
                              description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", default=os.environ.get("TRACER_SERVER"), metavar="HOST:PORT")
    where.add_argument("--index-dir", metavar="DIR", help="verify in-process against an index directory")
    p.add_argument("--index", default=None, metavar="NAME", help="index id on the server")
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--example", action="append", required=True, metavar="DOC_ID",
                   help="training example id to step on (repeatable)")
    p.add_argument("--checkpoint", type=int, default=0,
                   help="checkpoint stepped from (0 = first, as eval --tail-patch; -1 = last)")
    p.add_argument("--lr", type=float, default=1e-2, help="SGD step size")
    p.add_argument("--random", type=int, default=3, metavar="N", help="random baseline examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--json", action="store_true")
    p.add_argument("--token-file", default=os.environ.get("TRACER_TOKEN_FILE"), metavar="FILE")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S")
    add_model_overrides(p)
    p.set_defaults(func=run)


def _run(args: argparse.Namespace) -> Any:
    import time

    kw = dict(checkpoint=args.checkpoint, lr=args.lr, n_random=args.random, seed=args.seed)
    if args.index_dir:
        from tracer.tracer import Tracer

        with Tracer.open(args.index_dir, **model_overrides(args)) as t:
            return t.verify(args.prompt, args.target, args.example, deadline=time.monotonic() + args.timeout, **kw)
    from tracer.client import TracerClient

    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
    except OSError as exc:
        raise DataError(f"--token-file: cannot read {args.token_file}: {exc}") from exc
    with TracerClient(args.server, token=token, timeout=args.timeout, index=args.index) as client:
        return client.verify(args.prompt, args.target, args.example, **kw)


def format_table(v: Any) -> str:
    lines = [f"{v.prompt!r} -> {v.target!r}: one SGD step (lr {v.lr:g}) from checkpoint {v.checkpoint} on each "
             f"example; Δ log p(target) (positive = supports the fact)",
             f"{'':>8}  {'Δ log p':>11}  {'ms':>7}  doc_id"]
    for x in v.examples + v.baseline:
        lines.append(f"{'random' if x.baseline else 'asked':>8}  {x.delta_logprob:>+11.5f}  {x.ms:>7.1f}  {x.doc_id}")
    if v.baseline:
        lines.append(f"random baseline mean: {v.baseline_mean:+.5f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not args.server and not args.index_dir:
        raise DataError("verify: give --server HOST:PORT or --index-dir DIR")
    if (args.checkpoint_dir or args.tokenizer) and not args.index_dir:
        raise DataError("verify: --checkpoint-dir and --tokenizer apply to --index-dir")
    v = _run(args)
    print(json.dumps(v.to_dict(), indent=2) if args.json else format_table(v))
    return 0
