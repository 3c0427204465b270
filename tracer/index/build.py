"""``build_index``: corpus + checkpoints -> an index directory, crash-safe and resumable.

The build writes into ``<out>.partial`` and renames it to ``<out>`` only when every stage
is done, so a crash never leaves a directory that loads. Gradient featurization is
sharded; each finished shard (all views, one checkpoint) leaves a done-marker, and
rerunning the same build resumes from the first missing shard. Shards are aligned to
batches and featurization is deterministic, so a resumed build is byte-identical to an
uninterrupted one. Stages after featurization read the stored features back (streamed in
chunks), which keeps them resumable and keeps memory independent of corpus size.

The corpus is not held in memory either: once the partial directory's ``documents.jsonl`` is
written (streamed from ``docs``, which may itself be a lazy ``tracer.corpus.DocumentFile``),
every stage reads documents from it on demand, and the gradient stage tokenizes only the
shard it is about to featurize.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from tracer.corpus.io import DocumentFile, document_row, fingerprints
from tracer.featurize.checkpoint import (
    EncodedDocuments,
    encode_documents,
    fit_checkpoint,
    fit_sample,
    view_names,
)
from tracer.featurize.config import FeaturizeConfig
from tracer.index import files as F
from tracer.index.manifest import write_manifest
from tracer.index.shards import ShardEngine
from tracer.index.stages import (
    build_embedding_stage,
    build_influence_stage,
    build_trak_stage,
    gradient_faiss_stage,
    moments_stage,
    stage_info,
)
from tracer.model.loading import Checkpoint, load_tokenizer, weights_fingerprint
from tracer.model.tokenization import special_prefix
from tracer.types import Document

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    """What an index contains and how it is built (saved in the manifest)."""

    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig, metadata={"help": "gradient features"})
    # --- stages ---
    gradients: bool = field(default=True, metadata={"help": "projected gradient features per checkpoint"})
    influence: bool = field(default=True, metadata={"help": "per-block projected Fisher for influence"})
    trak: bool = field(default=True, metadata={"help": "TRAK sketch features and Gram matrices"})
    embeddings: bool = field(default=True, metadata={"help": "mean-pooled hidden states + FAISS"})
    bm25: bool = field(default=True, metadata={"help": "bm25s lexical index"})
    # --- parameters ---
    trak_dim: int = field(default=1024, metadata={"help": "TRAK sketch width per checkpoint"})
    influence_block_dim: int = field(default=1024, metadata={"help": "wider influence blocks are sketched to this"})
    faiss_factory: str = field(default="SQ8", metadata={
        "help": "FAISS factory string for gradient candidate search (over faiss_dim coordinates per checkpoint)"})
    faiss_dim: int = field(default=256, metadata={
        "help": "coordinates per checkpoint FAISS holds: the top ones by lr * E[g_i^2] (0: all; then FAISS "
                "holds a second copy of the features)"})
    faiss_train_size: int = field(default=20000, metadata={"help": "training sample for approximate FAISS"})
    shard_size: int = field(default=256, metadata={"help": "examples per resumable shard"})
    seed: int = field(default=0, metadata={"help": "seed of TRAK sketch and FAISS training sample"})

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.shard_size % self.featurize.batch_size:
            raise ValueError(f"IndexConfig.shard_size ({self.shard_size}) must be a positive multiple of "
                             f"featurize.batch_size ({self.featurize.batch_size})")
        if self.trak_dim < 1 or self.influence_block_dim < 1 or self.faiss_dim < 0:
            raise ValueError("IndexConfig.trak_dim and influence_block_dim must be >= 1, faiss_dim >= 0")
        if (self.influence or self.trak) and not self.gradients:
            raise ValueError("IndexConfig: influence and trak need gradients=True")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["featurize"] = self.featurize.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        d = dict(d)
        d["featurize"] = FeaturizeConfig.from_dict(d.get("featurize", {}))
        return cls(**d)


@dataclass(frozen=True)
class BasisPin:
    """Pins the feature basis of a build to an earlier one (``tracer add``, and the equal from-scratch build).

    Attributes:
        fit_pool: The K-FAC fit sample is drawn from the first ``fit_pool`` documents (by default
            from all of them), so a corpus that grew draws the sample the original build drew.
        widths: Per-group widths of the dimension budget, as an earlier fit allocated them (``None``:
            allocate from this build's factors). A checkpoint added later keeps the original layout.
        energy_kept: The earlier fit's energy shares for ``widths`` (recorded, not recomputed).
        faiss: An index directory whose gradient FAISS *space* this build reuses: its coordinates per
            checkpoint and its trained quantizer (``tracer add`` of documents pins the index being grown,
            so its codes stay valid and only new rows are encoded). ``None``: fitted on this corpus.
    """

    fit_pool: int
    widths: dict[str, list[int]] | None = None
    energy_kept: dict[str, float] | None = None
    faiss: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _SimulatedCrash(RuntimeError):
    """Raised by the test hook ``fail_after_shards``."""


def build_index(docs: Sequence[Document], checkpoints: Sequence[Checkpoint], out: str | Path,
                cfg: IndexConfig | None = None, *, tokenizer_path: str | Path | None = None,
                overwrite: bool = False, corpus_path: str = "", progress: bool = True,
                fail_after_shards: int | None = None, basis: BasisPin | None = None,
                engine: ShardEngine | None = None) -> dict[str, Any]:
    """Build (or resume building) an index directory.

    Args:
        docs: The training corpus, in row order.
        checkpoints: Training checkpoints, oldest first; the last one is "the model".
        out: Final index directory (must not exist unless ``overwrite``).
        cfg: Build configuration.
        tokenizer_path: Tokenizer directory (default: the last checkpoint's directory).
        overwrite: Replace an existing index at ``out``.
        corpus_path: Recorded in the manifest for provenance.
        progress: Show progress bars.
        fail_after_shards: Test hook: raise after this many newly written shards.
        basis: Pin the K-FAC fit sample (and widths) to an earlier build's (see :class:`BasisPin`).
        engine: Where gradient shards are featurized (default: this process;
            ``tracer.index.distributed.RayEngine``: Ray actors). The index is the same either way.

    Returns:
        The manifest written.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        ValueError: Empty corpus or no checkpoints.
    """
    cfg = cfg or IndexConfig()
    out = Path(out)
    if not docs:
        raise ValueError("cannot build an index over an empty corpus")
    if cfg.gradients:
        from tracer.index.dense import check_factory

        check_factory(cfg.faiss_factory)  # fail before hours of featurizing, not after
    if not checkpoints:
        raise ValueError("at least one checkpoint is needed")
    with build_lock(out):
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
        return _build_locked(docs, checkpoints, out, cfg, tokenizer_path, corpus_path, progress, fail_after_shards,
                             basis, engine=engine)


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<out>.lock`` for a whole build, partial dir to published swap.

    The lock file is left in place (removing it would let a third writer lock a fresh inode
    while a second still holds the old one); the kernel releases the lock when the process
    exits, however it exits.

    Raises:
        BuildLockedError: Another process holds it.
    """
    import fcntl

    from tracer.errors import BuildLockedError

    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(out.name + ".lock")
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise BuildLockedError(f"another tracer build (pid {holder}) is writing {out}; wait for it to finish "
                                   f"or stop it (lock: {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _build_locked(docs: Sequence[Document], checkpoints: Sequence[Checkpoint], out: Path, cfg: IndexConfig,
                  tokenizer_path: str | Path | None, corpus_path: str, progress: bool,
                  fail_after_shards: int | None, basis: BasisPin | None = None,
                  history: list[dict[str, Any]] | None = None,
                  engine: ShardEngine | None = None) -> dict[str, Any]:
    """Run every unfinished stage in ``<out>.partial``, write the manifest, swap it in as ``out``.

    ``history`` is the manifest's record of how the index came to be (default: this one build);
    ``tracer add`` seeds the partial directory with finished work and passes the grown history.
    """
    t_start = time.perf_counter()
    part, want = _prepare_partial(out, docs, checkpoints, cfg, corpus_path, basis)
    tok = load_tokenizer(tokenizer_path or checkpoints[-1].path)
    stored = DocumentFile.from_index(part)  # every stage reads documents from here, on demand
    stored._memo["fingerprints"] = (want["corpus"], want["loss_split"])
    try:
        return _run_build(part, out, stored, checkpoints, cfg, tok, corpus_path, progress, fail_after_shards,
                          basis, history, engine, t_start)
    finally:
        stored.close()


def _run_build(part: Path, out: Path, docs: DocumentFile, checkpoints: Sequence[Checkpoint], cfg: IndexConfig,
               tok: Any, corpus_path: str, progress: bool, fail_after_shards: int | None, basis: BasisPin | None,
               history: list[dict[str, Any]] | None, engine: ShardEngine | None, t_start: float) -> dict[str, Any]:
    timings: dict[str, float] = {}
    ctx = _BuildContext(part, docs, list(checkpoints), cfg, tok, progress, fail_after_shards, basis, engine)
    views = view_names(cfg.featurize, checkpoints)
    stages: list[tuple[str, bool, Callable[[_BuildContext], dict[str, Any]]]] = [
        ("fit", cfg.gradients and cfg.featurize.projection == "kfac", _fit_stage),
        ("gradients", cfg.gradients, lambda c: _gradient_stage(c, views)),
        ("moments", cfg.gradients, moments_stage),
        ("gradient_faiss", cfg.gradients, gradient_faiss_stage),
        ("influence", cfg.influence, build_influence_stage),
        ("trak", cfg.trak, build_trak_stage),
        ("embeddings", cfg.embeddings, build_embedding_stage),
        ("bm25", cfg.bm25, _bm25_stage),
    ]
    stage_info: dict[str, Any] = {}
    for name, enabled, fn in stages:
        if enabled:
            stage_info[name], timings[name] = _run_stage(ctx, name, fn)
    manifest = _manifest(ctx, views, stage_info, timings, corpus_path)
    manifest["build_seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    manifest["history"] = history if history is not None else [history_entry(
        "build", n_documents=len(docs), checkpoints=len(checkpoints), corpus=corpus_path,
        seconds=manifest["build_seconds"]["total"])]
    # Manifest first (it skips the build-state files), then the resume guard, then the state, then
    # swap in: a crash at any point leaves a resumable partial, a partial the next run discards (no
    # guard), or a complete index; never a half one, and never a partial that fails every rerun.
    manifest = write_manifest(part, manifest, skip=(F.BUILD_STATE, F.BUILD_CONFIG))
    (part / F.BUILD_CONFIG).unlink()
    shutil.rmtree(part / F.BUILD_STATE)
    docs.close()  # the file moves with the directory
    publish(part, out)
    log.info("index written to %s (%d documents)", out, len(docs))
    return manifest


def history_entry(action: str, **fields: Any) -> dict[str, Any]:
    """One record of the manifest's ``history``: what was done to the index, when, with counts."""
    return {"action": action, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}


def publish(part: Path, out: Path) -> None:
    """Make ``part`` the index at ``out``.

    Where the kernel can (Linux ``renameat2(RENAME_EXCHANGE)``) the two directories swap in one
    atomic step, so a reader or a crash sees the old index or the new one, never neither; the
    old version, now at ``part``, is removed after. Elsewhere: ``out -> out.old``, ``part -> out``.
    """
    if out.exists() and _exchange(part, out):
        shutil.rmtree(part)
        return
    old = out.with_name(out.name + ".old")
    if old.exists():  # left by a kill during an earlier swap
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    part.rename(out)
    if old.exists():
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(..., RENAME_EXCHANGE)``; False where unsupported."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


@dataclass
class _BuildContext:
    root: Path
    docs: Sequence[Document]  # the partial directory's documents.jsonl, read on demand (a DocumentFile)
    checkpoints: list[Checkpoint]
    cfg: IndexConfig
    tokenizer: Any
    progress: bool
    fail_after_shards: int | None
    basis: BasisPin | None = None
    engine: ShardEngine | None = None  # where gradient shards run (None: this process)
    dims: dict[str, Any] = field(default_factory=dict)
    layout: list[Any] = field(default_factory=list)


def build_want(docs: Sequence[Document], checkpoints: Sequence[Checkpoint], cfg: IndexConfig,
               basis: BasisPin | None = None) -> dict[str, Any]:
    """What a build produces, as its partial directory records it (the resume guard)."""
    corpus, split = fingerprints(docs)  # one streaming pass (remembered by a DocumentFile)
    return {"config": cfg.to_dict(), "corpus": corpus,
            "loss_split": split, "basis": basis.to_dict() if basis else None,
            "checkpoints": [{"path": str(c.path.resolve()), "lr": c.lr, "step": c.step,
                             "weights": weights_fingerprint(c.path)} for c in checkpoints]}


def resumable_partial(out: Path, want: dict[str, Any], what: str) -> tuple[Path, bool]:
    """``<out>.partial`` and whether an interrupted ``what`` (build, add) of the same ``want`` can resume
    there; a partial of another config, or with an incomplete state, is removed."""
    part = out.with_name(out.name + ".partial")
    if not part.exists():
        return part, False
    try:
        have = json.loads((part / F.BUILD_CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        have = None
    if have == want and (part / F.BUILD_STATE).is_dir():
        log.info("resuming the interrupted %s in %s", what, part)
        return part, True
    log.warning("discarding %s: %s", part, "it was started with a different corpus, model or config"
                if have != want else "its build state is incomplete (killed while finishing)")
    shutil.rmtree(part)
    return part, False


def _prepare_partial(out: Path, docs: Sequence[Document], checkpoints: Sequence[Checkpoint], cfg: IndexConfig,
                     corpus_path: str, basis: BasisPin | None = None) -> tuple[Path, dict[str, Any]]:
    """Create or reuse ``<out>.partial`` (and say what it builds); a partial build of a different config is discarded."""
    want = build_want(docs, checkpoints, cfg, basis)
    part, resumed = resumable_partial(out, want, "build")
    if resumed:
        return part, want
    (part / F.BUILD_STATE).mkdir(parents=True)
    write_documents(part, docs)
    # the resume guard last: a build killed while the documents stream in leaves a partial without it,
    # which the next run discards instead of resuming into missing offsets
    (part / F.BUILD_CONFIG).write_text(json.dumps(want, sort_keys=True))
    return part, want


def split_fingerprint(docs: Sequence[Document]) -> str:
    """Hash of the (prompt, target) split, which decides the loss mask (ids and texts are in the corpus hash)."""
    return fingerprints(docs)[1]


def write_documents(root: Path, docs: Sequence[Document]) -> None:
    """``documents.jsonl`` (with the ``prompt``/``target`` split where a document has one: the loss
    mask ``tracer add --checkpoint`` needs), its byte offsets, and ``doc_ids.txt``; streamed."""
    offsets = np.empty(len(docs) + 1, dtype=np.int64)
    offsets[0] = 0
    i = 0
    with open(root / F.DOCUMENTS, "wb") as fh, open(root / F.DOC_IDS, "w", encoding="utf-8") as ids:
        for i, d in enumerate(docs, start=1):
            line = json.dumps(document_row(d)).encode() + b"\n"
            fh.write(line)
            offsets[i] = offsets[i - 1] + len(line)
            ids.write(d.doc_id + "\n")
    if i != len(docs):
        raise ValueError(f"the corpus yielded {i} documents, but has length {len(docs)}")
    np.save(root / F.DOC_OFFSETS, offsets)


def _memory() -> str:
    """Resident memory of this process now (anonymous / file-backed) and its peak so far (Linux)."""
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        mb = {k: int(status[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile", "VmHWM")}
    except (OSError, KeyError, ValueError):
        return "memory: n/a"
    return f"RSS anon {mb['RssAnon']:.0f} MB, file {mb['RssFile']:.0f} MB; peak {mb['VmHWM']:.0f} MB"


def _run_stage(ctx: _BuildContext, name: str, fn: Callable[[_BuildContext], dict[str, Any]]) -> tuple[Any, float]:
    marker = ctx.root / F.BUILD_STATE / f"stage-{name}.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        return saved["info"], saved["seconds"]
    log.info("stage %s started", name)  # bm25 and FAISS training have no bar: say they are running
    t0 = time.perf_counter()
    info = fn(ctx)
    dt = round(time.perf_counter() - t0, 2)
    log.info("stage %s done in %.1fs (%s)", name, dt, _memory())
    marker.write_text(json.dumps({"info": info, "seconds": dt}))
    return info, dt


def _fit_stage(ctx: _BuildContext) -> dict[str, Any]:
    """K-FAC factors per checkpoint over a seeded sample, then the per-group widths of the budget."""
    from tqdm.auto import tqdm

    from tracer.featurize.budget import allocate, energy_kept
    from tracer.featurize.kfac import load_factors, prescale, save_factors, truncate_factors
    from tracer.featurize.layout import build_layout, tracked_groups
    from tracer.model.loading import load_model

    fcfg = ctx.cfg.featurize
    pool = ctx.basis.fit_pool if ctx.basis else len(ctx.docs)
    rows = fit_sample(pool, fcfg)
    enc = encode_documents(ctx.tokenizer, [ctx.docs[int(r)] for r in rows], fcfg.max_length)  # the sample only
    factors, groups = [], []
    for ci, ck in enumerate(ctx.checkpoints):
        path = ctx.root / F.kfac_file(ci)
        done = ctx.root / F.BUILD_STATE / f"fit-ckpt{ci}.done"
        model = load_model(ck.path)
        groups = tracked_groups(model, fcfg.layers, fcfg.include_norms, fcfg.include_biases)
        if not done.exists():
            t0 = time.perf_counter()
            bar = tqdm(total=len(enc), desc=f"fit K-FAC ckpt {ci + 1}/{len(ctx.checkpoints)}", unit="ex",
                       disable=not ctx.progress)
            save_factors(fit_checkpoint(ck, ctx.tokenizer, fcfg, enc, model=model, progress=bar.update), path)
            bar.close()
            log.info("K-FAC fit of checkpoint %d: %.1fs", ci, time.perf_counter() - t0)
            done.touch()
        factors.append(load_factors(path))
    info: dict[str, Any] = {"fit_docs": len(rows), "fit_pool": pool, "seed": fcfg.seed,
                            "statistics": "A = E_t[x x^T], S = E_z[sum_t delta delta^T] (empirical, data labels)"}
    if fcfg.budgeted and ctx.basis is not None and ctx.basis.widths is not None:  # layout of an earlier fit
        widths, kept = ctx.basis.widths, dict(ctx.basis.energy_kept or {})
    elif fcfg.budgeted:
        widths, kept = allocate(factors, groups, fcfg.dim, fcfg.fit_floor, fcfg.exact_share)
    else:
        from tracer.featurize.layout import group_key

        widths = None
        kept = {}
        for m, k, di, do in groups:
            key, f = group_key(m, k), factors[-1][group_key(m, k)]
            if k == "linear":
                ko = do if fcfg.k_out <= 0 else min(fcfg.k_out, do)
                ki = di if fcfg.k_in <= 0 else min(fcfg.k_in, di)
                kept[key] = float(f.in_vals[:ki].sum() / f.in_vals.sum().clamp_min(1e-300)
                                  * f.out_vals[:ko].sum() / f.out_vals.sum().clamp_min(1e-300))
            else:
                kept[key] = 1.0
    info.update(widths=widths, energy_kept={k: round(v, 6) for k, v in kept.items()},
                total_energy_kept=round(energy_kept(kept, factors), 6))
    # the index keeps only the eigenvectors its layout uses (idempotent, so a resumed build agrees)
    layout = build_layout(model, fcfg.layers, fcfg.k_in, fcfg.k_out, fcfg.include_norms, fcfg.include_biases,
                          widths=widths)
    for ci, f in enumerate(factors):
        if not (ctx.root / F.prescale_file(ci)).exists():  # needs the untruncated factors: before truncating
            _save_atomic(ctx.root / F.prescale_file(ci), prescale(layout, f).numpy())
        save_factors(truncate_factors(f, layout), ctx.root / F.kfac_file(ci))
    return info


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _gradient_stage(ctx: _BuildContext, views: list[str]) -> dict[str, Any]:
    """Featurize the shards each checkpoint lacks on ``ctx.engine``; store each, then its done-marker."""
    from tqdm.auto import tqdm

    from tracer.index.shards import LocalEngine, ShardFeaturizer, ShardJob, ShardOutputs, plan_shards

    fcfg = ctx.cfg.featurize
    enc = EncodedDocuments(ctx.tokenizer, ctx.docs, fcfg.max_length)  # a shard is tokenized when it is sliced
    n, shard = len(enc), ctx.cfg.shard_size
    engine = ctx.engine if ctx.engine is not None else LocalEngine()
    widths = stage_info(ctx, "fit").get("widths") if fcfg.projection == "kfac" else None
    doc_ids = _DocIds(ctx.docs)
    written, dim, layout = 0, 0, []
    for ci, ck in enumerate(ctx.checkpoints):
        job = ShardJob(ctx.root, ci, ck, fcfg, tuple(views), widths)
        local = ShardFeaturizer(job, ctx.tokenizer)
        dim, layout = local.dim, local.layout
        outputs = ShardOutputs(job, n, dim, len(layout))
        todo = plan_shards(n, shard, lambda s: _shard_marker(ctx, ci, s).exists())  # noqa: B023
        bar = tqdm(total=n, initial=n - sum(hi - lo for _, lo, hi in todo), unit="ex",
                   desc=f"gradients ckpt {ci + 1}/{len(ctx.checkpoints)}", disable=not ctx.progress)
        for s, arrays in engine.featurize(job, local, todo, enc):
            lo, hi = s * shard, min(n, (s + 1) * shard)
            outputs.store(lo, hi, arrays, doc_ids)
            _shard_marker(ctx, ci, s).touch()
            written += 1
            if ctx.fail_after_shards is not None and written >= ctx.fail_after_shards:
                raise _SimulatedCrash(f"simulated crash after {written} shards")
            bar.update(hi - lo)
        bar.close()
        del outputs, local
    return {"dim": dim, "views": views, "layout": [b.to_dict() for b in layout],
            "n_shards": (n + shard - 1) // shard, "dtype": fcfg.dtype}


class _DocIds(Sequence[str]):
    """``doc_ids[i]``: the id of row ``i``, read when asked (only error messages ask)."""

    def __init__(self, docs: Sequence[Document]) -> None:
        self._docs = docs

    def __len__(self) -> int:
        return len(self._docs)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [d.doc_id for d in self._docs[i]]
        return self._docs[i].doc_id


def _shard_marker(ctx: _BuildContext, ci: int, s: int) -> Path:
    """The done-marker of gradient shard ``s`` of checkpoint ``ci``."""
    return ctx.root / F.BUILD_STATE / f"grad-ckpt{ci}-shard{s}.done"


def _bm25_stage(ctx: _BuildContext) -> dict[str, Any]:
    from tracer.index.lexical import STOPWORDS, TOKEN_PATTERN, build_bm25

    build_bm25((d.text for d in ctx.docs), ctx.root / F.BM25_DIR, n=len(ctx.docs))
    return {"stopwords": STOPWORDS, "token_pattern": TOKEN_PATTERN, "k1": 1.5, "b": 0.75}


def _manifest(ctx: _BuildContext, views: list[str], stages: dict[str, Any], timings: dict[str, float],
              corpus_path: str) -> dict[str, Any]:
    from tracer import __version__

    return {
        "format_version": F.FORMAT_VERSION,
        "tracer_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "corpus": {"path": corpus_path, "fingerprint": fingerprints(ctx.docs)[0], "n_documents": len(ctx.docs),
                   "loss_split": fingerprints(ctx.docs)[1]},
        "checkpoints": [{"path": str(c.path.resolve()), "lr": c.lr, "step": c.step,
                         "fingerprint": weights_fingerprint(c.path)} for c in ctx.checkpoints],
        "tokenizer": str(Path(ctx.tokenizer.name_or_path).resolve()) if ctx.tokenizer.name_or_path else "",
        "token_prefix": list(special_prefix(ctx.tokenizer)),  # ids the tokenizer puts before every text
        "config": ctx.cfg.to_dict(),
        "featurize": ctx.cfg.featurize.to_dict() if ctx.cfg.gradients else None,
        "loss": {"masking": "prompt tokens -100; loss on target tokens", "reduction": ctx.cfg.featurize.loss_reduction},
        "views": views if ctx.cfg.gradients else [],
        "stages": stages,
        # what the corpus statistics were fitted on; `tracer add` keeps the basis, updates or recomputes the rest
        "statistics": {"basis_fit_pool": ctx.basis.fit_pool if ctx.basis else len(ctx.docs),
                       "basis_widths_pinned": bool(ctx.basis and ctx.basis.widths is not None),
                       "faiss_fit_rows": stages.get("gradient_faiss", {}).get("fit_rows"),
                       "policy": "K-FAC basis, prescale and budget widths from a fit sample of the first "
                                 "basis_fit_pool documents; the gradient FAISS space (coordinates, trained "
                                 "quantizer) from the first faiss_fit_rows documents; moments, influence, TRAK, "
                                 "embeddings, BM25 and the FAISS codes over every document (tracer add completes "
                                 "the moments and TRAK Grams, sums over rows, from the rows it adds: equal to a "
                                 "full pass up to float64 summation order)"},
        "build_seconds": dict(timings),
    }
