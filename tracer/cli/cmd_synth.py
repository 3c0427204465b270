"""``tracer synth``: generate the FTRACE-style synthetic benchmark, or (``--from-lama DIR``) the real-text
one from LAMA T-REx facts and their Wikipedia evidence sentences."""

from __future__ import annotations

import argparse
import time

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the synthetic fact-tracing benchmark")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="small", help="tiny | small | medium (default: small)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--distractors", default="standard", choices=("standard", "hard"),
                   help="hard: a co-mention of subject and true object per fact (another relation), and "
                        "proponents worded with the templates sharing the fewest words with the query's")
    p.add_argument("--docs", type=int, default=None, metavar="N",
                   help="a large corpus of exactly N documents (300k-1M and more), streamed to disk block by "
                        "block with a growing knowledge base (replaces --preset; writes no kb.json)")
    g = p.add_argument_group("real text (LAMA T-REx; the data never leaves DIR and --out)")
    g.add_argument("--from-lama", metavar="DIR",
                   help="build the benchmark from LAMA T-REx facts and evidence sentences under DIR "
                        "(TREx/P*.jsonl[.gz], relations.jsonl, optional ParaRel graphs_json/P*.jsonl for "
                        "query paraphrases); replaces --preset")
    g.add_argument("--relations", metavar="P1,P2,...",
                   help="relations to include (default: the 10 development relations of issue #14)")
    g.add_argument("--max-facts-per-relation", type=int, default=50, metavar="N",
                   help="facts sampled per relation, seeded (default 50; 0 = all)")
    g.add_argument("--max-evidences-per-fact", type=int, default=2, metavar="N",
                   help="evidence sentences kept per fact, seeded (default 2; 0 = all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tracer.benchmark import PRESETS, generate, write_benchmark

    if getattr(args, "from_lama", None):
        return _run_lama(args)
    if getattr(args, "docs", None) is not None:
        return _run_large(args)
    if args.preset not in PRESETS:
        raise DataError(f"unknown preset {args.preset!r}; expected one of {', '.join(PRESETS)}")
    t0 = time.perf_counter()
    bench = generate(dataclasses.replace(PRESETS[args.preset], seed=args.seed,
                                         distractors=getattr(args, "distractors", "standard")))
    out = write_benchmark(bench, args.out)
    print(f"synth: {len(bench.documents)} documents, {len(bench.facts)} facts, {len(bench.queries)} queries "
          f"-> {out} ({time.perf_counter() - t0:.1f}s)")
    return 0


def _run_large(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tracer.benchmark.large import write_large

    if args.docs < 1:
        raise DataError(f"--docs must be >= 1, got {args.docs}")
    t0 = time.perf_counter()
    with tqdm(total=args.docs, desc="synth", unit="doc") as bar:
        meta = write_large(args.out, args.docs, seed=args.seed, on_docs=bar.update)
    print(f"synth: {meta['n_documents']} documents, {meta['n_facts']} facts, {meta['n_queries']} queries "
          f"-> {args.out} ({time.perf_counter() - t0:.1f}s, streamed)")
    return 0


def _run_lama(args: argparse.Namespace) -> int:
    from tracer.benchmark.lama import DEV_RELATIONS, LamaConfig, build_lama, write_lama_benchmark

    for flag in ("max_facts_per_relation", "max_evidences_per_fact"):
        if getattr(args, flag) < 0:
            raise DataError(f"--{flag.replace('_', '-')} must be >= 0 (0 = all), got {getattr(args, flag)}")
    if getattr(args, "docs", None) is not None or getattr(args, "distractors", "standard") != "standard":
        raise DataError("--from-lama cannot be combined with --docs or --distractors")
    relations = tuple(r.strip() for r in args.relations.split(",") if r.strip()) if args.relations \
        else DEV_RELATIONS
    try:
        cfg = LamaConfig(relations=relations, max_facts_per_relation=args.max_facts_per_relation or None,
                         max_evidences_per_fact=args.max_evidences_per_fact or None, seed=args.seed)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    t0 = time.perf_counter()
    bench = build_lama(args.from_lama, cfg)
    out = write_lama_benchmark(bench, args.out)
    skipped = [r["relation"] for r in bench.relations if r["template_source"] == "none"]
    note = f"; skipped {','.join(skipped)}: no completion template" if skipped else ""
    print(f"synth: {len(bench.documents)} documents, {len(bench.queries)} facts/queries from LAMA "
          f"({len(relations) - len(skipped)} relations{note}) -> {out} ({time.perf_counter() - t0:.1f}s)")
    return 0
