"""``tracer build``: featurize a corpus into an index directory."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from tracer.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build an index (gradients, influence, TRAK, embeddings, BM25)")
    p.add_argument("--corpus", required=True, help="corpus file (jsonl/json/parquet) or save_to_disk dir")
    p.add_argument("--model", help="a training run dir (tracer train) or one model dir")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: the run's tokenizer/, else the last checkpoint's dir)")
    p.add_argument("--checkpoint", action="append", default=[], help="checkpoint dir, oldest first (repeatable)")
    p.add_argument("--lr", action="append", type=float, default=[], help="lr per --checkpoint (default: recorded)")
    p.add_argument("--out", required=True, help="index directory, e.g. indexes/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument("--max-docs", type=int, help="index only the first N documents")
    g = p.add_argument_group("features")
    g.add_argument("--projection", default="kfac",
                   help="kfac (default: top eigenvectors of the fitted K-FAC factors) | orthogonal | gaussian | "
                        "rademacher | identity")
    g.add_argument("--dim", type=int, default=None,
                   help="kfac: coordinates per example per checkpoint, split across layers by eigen-energy "
                        "(default 7680: <= 8 KB per example per checkpoint in int8; 0: a uniform --k-in x --k-out)")
    g.add_argument("--k-in", type=int, default=64, help="input-side width per linear layer (random projections, "
                   "or kfac with --dim 0)")
    g.add_argument("--k-out", type=int, default=64, help="output-side width per linear layer (as --k-in)")
    g.add_argument("--fit-docs", type=int, default=2048, help="kfac: documents in the seeded factor-fit sample")
    g.add_argument("--layers", default="auto",
                   help="comma-separated fnmatch patterns of linear modules; 'auto' (default): the attention and "
                        "MLP linears of the model's family (GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen2/SmolLM, "
                        "OPT, BLOOM, Falcon, Phi, Gemma, OLMo), else every linear in its decoder blocks")
    g.add_argument("--dtype", default="int8", help="int8 (default, per-row scale per block) | float16 | float32")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--max-length", type=int, default=128)
    g.add_argument("--no-optimizer-correction", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stability-seeds", default=None, metavar="S,S,...",
                   help="also build gradient-only siblings with these projection seeds, so each hit's stability "
                        "spans checkpoints x seeds (tracer.index.seeds; one more featurize per seed and query)")
    s = p.add_argument_group("stages")
    for name in ("gradients", "influence", "trak", "embeddings", "bm25"):
        s.add_argument(f"--no-{name}", action="store_true", help=f"skip {name}")
    s.add_argument("--faiss-factory", default="SQ8", help="FAISS factory string for gradient candidate search "
                   "(default SQ8; Flat, IVF1024,PQ64, HNSW32...); candidates are rescored exactly")
    s.add_argument("--faiss-dim", type=int, default=256, help="coordinates per checkpoint in the gradient FAISS "
                   "index, the top ones by lr * E[g^2] (0: all, a second full copy of the features)")
    s.add_argument("--trak-dim", type=int, default=1024)
    s.add_argument("--shard-size", type=int, default=256)
    r = p.add_argument_group("engine")
    r.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where gradient shards are featurized: this process (default) or Ray actors "
                        "(pip install 'tracer[ray]'; --out must be on storage every worker sees)")
    r.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="join this Ray cluster ('auto': the one `ray start` put this machine in); "
                        "default: start a local Ray with --workers CPUs")
    r.add_argument("--workers", type=int, default=2, help="Ray actors, one model replica each (default 2)")
    p.set_defaults(func=run)


def resolve_checkpoints(model: str | None, checkpoints: list[str], lrs: list[float]) -> list:
    """Checkpoints from ``--model`` (run dir or model dir) and/or ``--checkpoint`` flags."""
    from tracer.model.loading import RUN_CHECKPOINTS, Checkpoint, load_checkpoints, read_checkpoint

    if checkpoints:
        if lrs and len(lrs) != len(checkpoints):
            raise DataError(f"--lr given {len(lrs)} times for {len(checkpoints)} --checkpoint values")
        cks = [read_checkpoint(c) for c in checkpoints]
        return [Checkpoint(c.path, lrs[i], c.step) for i, c in enumerate(cks)] if lrs else cks
    if not model:
        raise DataError("give --model (a run or model directory) or --checkpoint")
    if (Path(model) / RUN_CHECKPOINTS).is_file():
        return load_checkpoints(model)
    return [read_checkpoint(model)]


def run(args: argparse.Namespace) -> int:
    from tracer.corpus import open_corpus
    from tracer.model.loading import checkpoint_provenance

    cks = resolve_checkpoints(args.model, args.checkpoint, args.lr)
    for c in cks:  # one line per checkpoint: where its lr and optimizer state come from
        print(checkpoint_provenance(c.path, lr_flag=c.lr if args.lr else None), flush=True)
    if args.max_docs is not None and args.max_docs < 0:
        raise DataError(f"--max-docs must be >= 0 (0: all), got {args.max_docs}")
    # read lazily: a .jsonl in place, other formats spilled beside the index (deleted after)
    with open_corpus(args.corpus, spill_dir=Path(args.out).resolve().parent, max_docs=args.max_docs or None) as docs:
        try:
            return _build(args, cks, docs)
        except (FileExistsError, ValueError) as exc:
            raise DataError(str(exc)) from None


def _engine(args: argparse.Namespace) -> Any:
    """A context manager giving the shard engine of ``--engine`` (``None``: the local one)."""
    if args.engine == "local":
        return contextlib.nullcontext()
    if args.workers < 1:
        raise DataError(f"--workers must be >= 1, got {args.workers}")
    from tracer.index.distributed import RayEngine, RayOptions

    try:
        return RayEngine(RayOptions(address=args.ray_address, workers=args.workers))
    except ImportError as exc:
        raise DataError(f"--engine ray needs Ray ({exc}): pip install 'tracer[ray]'") from None


def _build(args: argparse.Namespace, cks: list, docs: Any) -> int:
    from tracer.featurize.config import DEFAULT_DIM, FeaturizeConfig
    from tracer.index.build import IndexConfig, build_index

    seeds = _stability_seeds(args.stability_seeds, args.seed)  # before hours of featurizing, not after
    ident = args.projection == "identity"
    fcfg = FeaturizeConfig(layers=tuple(x for x in args.layers.split(",") if x), k_in=0 if ident else args.k_in,
                           k_out=0 if ident else args.k_out, projection=args.projection, seed=args.seed,
                           dim=(DEFAULT_DIM if args.dim is None else args.dim) if args.projection == "kfac" else 0,
                           fit_docs=args.fit_docs,
                           dtype=args.dtype, batch_size=args.batch_size, max_length=args.max_length,
                           optimizer_correction=not args.no_optimizer_correction)
    cfg = IndexConfig(featurize=fcfg, gradients=not args.no_gradients, influence=not (args.no_influence or
                      args.no_gradients), trak=not (args.no_trak or args.no_gradients),
                      embeddings=not args.no_embeddings, bm25=not args.no_bm25, faiss_factory=args.faiss_factory,
                      faiss_dim=args.faiss_dim, trak_dim=args.trak_dim, shard_size=args.shard_size, seed=args.seed)
    tok_dir = Path(args.model) / "tokenizer" if args.model and (Path(args.model) / "tokenizer").is_dir() else None
    tok_dir = Path(args.tokenizer) if args.tokenizer else tok_dir
    with _engine(args) as engine:
        m = build_index(docs, cks, args.out, cfg, tokenizer_path=tok_dir, overwrite=args.overwrite,
                        corpus_path=str(Path(args.corpus).resolve()), engine=engine)
    size = sum(f["size"] for f in m["files"].values())
    print(f"build: {len(docs)} documents, {len(cks)} checkpoints -> {args.out} "
          f"({size / 1e6:.1f} MB, {size / len(docs):.0f} bytes/example)")
    print("  seconds per stage: " + json.dumps(m["build_seconds"]))
    if getattr(engine, "worker_pids", None):  # a Ray build that featurized something
        print(f"  ray: {engine.featurized} shards on {len(engine.worker_pids)} worker processes "
              f"(Ray start and actors ready in {engine.startup_seconds:.1f}s, part of the gradients stage)")
    if seeds:
        from tracer.index.seeds import build_seeds

        rec = build_seeds(args.out, seeds)
        print(f"  stability seeds: {', '.join(str(x) for x in rec['seeds'])} (gradient-only siblings in "
              f"{args.out}/seeds)")
    return 0


def _stability_seeds(text: str | None, seed: int) -> list[int]:
    """``--stability-seeds``: comma-separated integers, at least one other than ``--seed`` (empty/None: none)."""
    from tracer.cli.options import comma_list

    if not text:
        return []
    seeds = comma_list(text, int, "--stability-seeds", "integers")
    if not set(seeds) - {seed}:
        raise DataError(f"--stability-seeds needs a seed other than --seed ({seed}), got {text!r}")
    return seeds
