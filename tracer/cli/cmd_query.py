"""``tracer query``: trace one fact through a server (``--server``) or an index directory (``--index-dir``).

Prints a ranked table, or the ``TraceResult`` as JSON with ``--json``. ``TRACER_SERVER`` and
``TRACER_TOKEN_FILE`` set the defaults of ``--server`` and ``--token-file``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tracer.cli.options import add_model_overrides, model_overrides
from tracer.errors import DataError
from tracer.types import TraceResult

_TEXT_COLUMN = 72  # characters of hit text shown in the table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("query", help="trace one fact (via a server or an index directory)",
                              description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", default=os.environ.get("TRACER_SERVER"), metavar="HOST:PORT",
                       help="address of a `tracer serve`")
    where.add_argument("--index-dir", metavar="DIR", help="query an index directory in-process, no server")
    p.add_argument("--verify", action="store_true",
                   help="with --index-dir: check every file's sha256 before answering (slow)")
    p.add_argument("--index", default=None, metavar="NAME",
                   help="index id on the server (optional if it serves only one)")
    p.add_argument("--prompt", required=True,
                   help='text before the completion, e.g. "Marie Curie was born in"')
    p.add_argument("--target", required=True, help='the completion to attribute, e.g. " Warsaw"')
    p.add_argument("--method", default=None,
                   help="tracin, tracin_cos, influence, trak, embedding, bm25 or random "
                        "(default: tracin if built, else bm25)")
    p.add_argument("--candidates", default=None,
                   help="bm25, embedding, gradient, union, full, or auto (with --budget-ms; needs "
                        "`tracer calibrate`) (default: bm25)")
    p.add_argument("--budget-ms", type=float, default=None, metavar="MS",
                   help="with --candidates auto: latency budget; the cascade with the best recall ceiling that fits")
    p.add_argument("-k", type=int, default=10, help="hits to show")
    p.add_argument("--num-candidates", type=int, default=100, metavar="N", help="candidates to rerank")
    p.add_argument("--include-text", action="store_true", help="show each hit's text")
    p.add_argument("--opponents", type=int, default=0, metavar="N",
                   help="with --index-dir: also show the N lowest-scored examples (most negative first)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--token-file", default=os.environ.get("TRACER_TOKEN_FILE"), metavar="FILE",
                   help="bearer token for a server started with --auth-token-file")
    p.add_argument("--tls-ca", default=None, metavar="FILE", help="CA certificate of a TLS server")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="deadline of the call")
    add_model_overrides(p)
    p.set_defaults(func=run)


def _remote(args: argparse.Namespace) -> TraceResult:
    from tracer.client import TracerClient

    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
    except OSError as exc:
        raise DataError(f"--token-file: cannot read {args.token_file}: {exc}") from exc
    with TracerClient(args.server, token=token, timeout=args.timeout, tls_ca=args.tls_ca,
                      index=args.index) as client:
        return client.trace(args.prompt, args.target, method=args.method, candidates=args.candidates,
                            k=args.k, num_candidates=args.num_candidates, include_text=args.include_text)


def _local(args: argparse.Namespace) -> TraceResult:
    import time

    from tracer.tracer import Tracer

    t: Any = Tracer.open(args.index_dir, verify=args.verify, **model_overrides(args))
    try:
        methods = t.available_methods()
        method = args.method or next((m for m in ("tracin", "bm25") if m in methods), "bm25")
        return t.trace(args.prompt, args.target, method=method, candidates=args.candidates or "bm25",
                       k=args.k, num_candidates=args.num_candidates, include_text=args.include_text,
                       deadline=time.monotonic() + args.timeout, opponents=args.opponents,
                       budget_ms=args.budget_ms)
    finally:
        t.close()


def format_table(result: TraceResult) -> str:
    """A plain-text table of ``result``: a header line, then rank, score, doc_id (and text)."""
    q = result.query
    timing = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items())
    if any(h.stable is not None for h in result.hits):
        timing += "; top-k in: checkpoints whose own top-k holds the hit, ✓ = all (stable)"
    header = (f"{q.prompt!r} -> {q.target!r}: {result.method} over {result.n_candidates} "
              f"{result.candidates} candidates (index {result.index_fingerprint[:12]}; {timing})")
    if result.recall_ceiling is not None:
        header += f"\nrecall ceiling of the candidate stage: {result.recall_ceiling:.3f}"
    if result.cascade is not None:
        c = result.cascade
        header += (f"\ncascade for a {c['budget_ms']:g} ms budget: {c['source']}@{c['num_candidates']} "
                   f"(est. {c['est_ms']:.0f} ms{'' if c['fits_budget'] else '; nothing fits: the cheapest'})")
    lines = [header]
    width = max([len(h.doc_id) for h in result.hits + result.opponents] + [6])
    for title, hits in (("", result.hits), ("opponents (lowest scores first)", result.opponents)):
        if title and hits:
            lines.append(title)
        stab = any(h.stable is not None for h in hits)
        if hits or not title:
            col = f"  {'top-k in':>9}" if stab else ""
            lines.append(f"{'rank':>4}  {'score':>12}{col}  {'doc_id':<{width}}  text")
        for h in hits:
            text = (h.text or "").replace("\n", " ")
            text = text if len(text) <= _TEXT_COLUMN else text[:_TEXT_COLUMN - 1] + "…"
            col = f"  {_stability_cell(h):>9}" if stab else ""
            lines.append(f"{h.rank:>4}  {h.score:>12.5g}{col}  {h.doc_id:<{width}}  {text}".rstrip())
    return "\n".join(lines)


def _stability_cell(h: Any) -> str:
    """``"3/3 ✓"``: in how many checkpoints' own top-k the hit is, ✓ when in all (stable)."""
    if h.stable is None:
        return ""
    n = len(h.checkpoint_scores)
    return f"{round((h.topk_fraction or 0) * n)}/{n} {'✓' if h.stable else '·'}"


def run(args: argparse.Namespace) -> int:
    if not args.server and not args.index_dir:
        raise DataError("query: give --server HOST:PORT or --index-dir DIR")
    if (args.checkpoint_dir or args.tokenizer) and not args.index_dir:
        raise DataError("query: --checkpoint-dir and --tokenizer apply to --index-dir (a server takes them at "
                        "`tracer serve`)")
    if args.budget_ms is not None and not args.index_dir:
        raise DataError("query: --budget-ms (candidates auto) is available with --index-dir")
    if args.opponents and not args.index_dir:
        raise DataError("query: --opponents is available with --index-dir (the gRPC API does not carry them yet)")
    if args.verify and not args.index_dir:
        raise DataError("query: --verify checks an index directory: use it with --index-dir (a server "
                        "verifies with `tracer serve --verify`)")
    result = _local(args) if args.index_dir else _remote(args)
    print(result.to_json() if args.json else format_table(result))
    if len(result.hits) < args.k:  # same in-process and over gRPC: fewer hits, said on stderr
        print(f"tracer query: note: {short_hits_note(result, args.k)}", file=sys.stderr)
    return 0


def short_hits_note(result: TraceResult, k: int) -> str:
    """Why ``result`` holds fewer than ``k`` hits: only that many candidates were reranked."""
    hint = ("the index holds no more documents" if result.candidates == "full"
            else "raise --num-candidates or use --candidates full")
    return (f"{len(result.hits)} hits, fewer than -k {k}: only {result.n_candidates} {result.candidates} "
            f"candidates were reranked ({hint})")
