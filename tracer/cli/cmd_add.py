"""``tracer add``: grow a built index by documents (``--corpus``) or by a checkpoint (``--checkpoint``)."""

from __future__ import annotations

import argparse
import json

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add", help="append documents or a checkpoint to a built index, atomically")
    p.add_argument("--index", required=True, help="the index directory to grow")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--corpus", help="documents to append (jsonl/json/parquet or save_to_disk dir); their ids "
                      "must be new")
    what.add_argument("--checkpoint", metavar="DIR", help="a checkpoint to append as the newest (every document "
                      "is featurized under it)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of --checkpoint (default: recorded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracer.index.grow import add_checkpoint, add_documents

    if args.lr is not None and not args.checkpoint:
        raise DataError("--lr goes with --checkpoint")
    try:
        if args.corpus:
            from tracer.corpus import open_corpus

            with open_corpus(args.corpus, spill_dir=Path(args.index).resolve().parent) as docs:  # read lazily
                m = add_documents(args.index, docs, corpus_path=str(Path(args.corpus).resolve()))
                what = f"{len(docs)} documents"
        else:
            from tracer.cli.cmd_build import resolve_checkpoints
            from tracer.model.loading import checkpoint_provenance

            ck = resolve_checkpoints(None, [args.checkpoint], [args.lr] if args.lr is not None else [])[0]
            print(checkpoint_provenance(ck.path, lr_flag=args.lr), flush=True)
            m = add_checkpoint(args.index, ck)
            what = f"checkpoint {ck.path} (lr {ck.lr:g})"
    except (FileExistsError, ValueError) as exc:
        raise DataError(str(exc)) from None
    size = sum(f["size"] for f in m["files"].values())
    n = m["corpus"]["n_documents"]
    print(f"add: {what} -> {args.index}: now {n} documents, {len(m['checkpoints'])} checkpoints "
          f"({size / 1e6:.1f} MB, {size / n:.0f} bytes/example)")
    print("  seconds per stage: " + json.dumps(m["build_seconds"]))
    return 0
