"""Index build stages that run after gradient featurization (each reads stored features back).

* moments: ``E_z[g_i(z)^2]`` per stored coordinate, view and checkpoint. In the K-FAC
  eigenbasis this is EK-FAC's eigenvalue-corrected diagonal (Grosse et al. 2023), restricted
  to the kept subspace and fitted on the whole corpus;
* gradient FAISS over the top-energy coordinates (by ``E[g_i^2]``, ``faiss_dim`` per
  checkpoint) of the TracIn concatenation ``[sqrt(lr_1) g_1, ..., sqrt(lr_C) g_C]``: a compact
  candidate generator whose inner product approximates TracIn-CP (Pruthi et al. 2020); the
  exact score is recomputed from the feature memmaps. ``faiss_dim=0`` holds every coordinate;
* influence: nothing more for a K-FAC index (it uses the moments); for random projections
  the per-block projected empirical Fisher ``F_b = 1/N sum_z g_b(z) g_b(z)^T`` of the final
  checkpoint for influence functions (Koh & Liang 2017; block-diagonal as in EK-FAC,
  Grosse et al. 2023, but on projected gradients); blocks wider than ``influence_block_dim``
  are JL-sketched first, so every solve is at most that wide;
* TRAK (Park et al. 2023): a seeded dense JL sketch ``Phi_c = G_c S`` per checkpoint and
  its Gram ``Phi_c^T Phi_c``;
* embeddings: mean-pooled final hidden states of the final checkpoint, written to disk batch by
  batch as they are computed.

``tracer add`` seeds a *row prefix* (``seed_row_prefix``, in ``build_state/prefix/``): the sums of
squares and the TRAK Grams over the first ``m`` rows, a multiple of ``CHUNK`` whose stored features
(and TRAK rows, copied) the grown index keeps unchanged. These sums over rows are then completed
from row ``m`` on only, equal to a full pass up to float64 summation order (``tests/test_add.py``
checks 1e-9 relative); TRAK rows from ``m`` on are sketched in the full pass's own blocks, so every
stored row equals a full pass's byte for byte.

Each stage shows one progress bar over the rows it streams (hidden when the build runs with
``progress=False``); a FAISS training call, which cannot report progress, is logged instead.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from tracer.featurize.views import RAW
from tracer.featurize.sketch import influence_sketch, trak_sketch
from tracer.index import files as F
from tracer.index.dense import build_faiss, fill_faiss, keeps_prefix, write_faiss
from tracer.index.quant import release_pages

CHUNK = 2048  # rows per streamed block
EMBED_BATCH = 256  # texts embedded per forward pass


def _bar(ctx: Any, total: int, desc: str) -> Any:
    """The stage's progress bar over ``total`` rows (disabled when the build runs without progress)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=not ctx.progress)


def _features(ctx: Any, view: str, ci: int) -> Any:
    from tracer.index.quant import open_features

    return open_features(ctx.root, view, ci, _layout(ctx))


def stage_info(ctx: Any, name: str) -> dict[str, Any]:
    """The info a finished stage of this build recorded."""
    import json

    return json.loads((ctx.root / F.BUILD_STATE / f"stage-{name}.json").read_text())["info"]


PREFIX_DIR = "prefix"  # in build_state/: statistics of the first rows, seeded by `tracer add`
PREFIX_INFO = "prefix.json"  # in PREFIX_DIR: {"rows": m}


def row_prefix(ctx: Any) -> tuple[int, Any]:
    """``(m, dir)``: the first ``m`` rows, whose sums ``tracer add`` seeded in ``dir`` (under the index's own
    file names: sums of squares for the moments, Grams for TRAK), or ``(0, None)`` for a build from scratch."""
    import json

    d = ctx.root / F.BUILD_STATE / PREFIX_DIR
    if not (d / PREFIX_INFO).is_file():
        return 0, None
    m = int(json.loads((d / PREFIX_INFO).read_text())["rows"])
    if not 0 < m <= len(ctx.docs) or m % CHUNK:
        raise ValueError(f"{d}: a seeded prefix of {m} rows must be a positive multiple of {CHUNK} "
                         f"and at most the corpus's {len(ctx.docs)} rows")
    return m, d


def seed_row_prefix(old_root: Any, part: Any, keep: int, cfg: Any, n_checkpoints: int, views: list[str],
                    layout: list[dict[str, Any]]) -> int:
    """Seed ``part`` (a grown index's partial directory) with the old index's sums over its first rows.

    Args:
        old_root: The index being grown.
        part: The partial directory of the grown index.
        keep: Rows whose stored features the grown index keeps (its shards marked done).
        cfg: The index's ``IndexConfig``.
        n_checkpoints: Checkpoints of the old index.
        views: Stored views.
        layout: The feature layout (the gradients stage's info).

    Returns:
        ``m``, the rows seeded: ``keep`` rounded down to a multiple of ``CHUNK`` (0: nothing seeded).
        The old index's statistics cover all its rows, so the part from row ``m`` on is taken back out
        of them, recomputed from the old index's own rows in its own blocks (the grown index featurizes
        its last, partly old shard again, whose old rows may differ in their last bits).
    """
    import json

    from tracer.index.quant import open_features

    old_n = int(np.load(old_root / F.DOC_OFFSETS, mmap_mode="r").shape[0]) - 1
    m = (min(keep, old_n) // CHUNK) * CHUNK
    if m == 0:
        return 0
    d = part / F.BUILD_STATE / PREFIX_DIR
    (d / F.MOMENTS_DIR).mkdir(parents=True, exist_ok=True)
    for ci in range(n_checkpoints):
        for v in views:
            mat = open_features(old_root, v, ci, layout)
            sums = np.load(old_root / F.moment_file(v, ci)) * old_n - column_square_sums(mat, m)
            np.save(d / F.moment_file(v, ci), sums)
        if cfg.trak:
            (d / F.TRAK_DIR).mkdir(parents=True, exist_ok=True)
            mat = open_features(old_root, RAW, ci, layout)
            k = min(cfg.trak_dim, mat.shape[1])
            sketch = torch.from_numpy(trak_sketch(mat.shape[1], k, cfg.seed))
            xtx = np.load(old_root / F.trak_xtx_file(ci))
            for lo in range(m, old_n, CHUNK):  # the old build's blocks
                phi = torch.from_numpy(np.array(mat[lo:lo + CHUNK], dtype=np.float32)) @ sketch
                xtx -= (phi.double().T @ phi.double()).numpy()
            np.save(d / F.trak_xtx_file(ci), xtx)
    (d / PREFIX_INFO).write_text(json.dumps({"rows": m}))
    return m


def column_square_sums(mat: Any, start: int = 0, bar: Any = None) -> np.ndarray:
    """``(dim,)`` float64 sum of squares of every column over rows ``start:``, streamed in ``CHUNK`` blocks."""
    n = mat.shape[0]
    acc = np.zeros(mat.shape[1])
    for lo in range(start, n, CHUNK):
        x = np.asarray(mat[lo:lo + CHUNK], dtype=np.float64)
        acc += np.einsum("ij,ij->j", x, x)
        release_pages(mat)
        if bar is not None:
            bar.update(len(x))
    return acc


def column_moments(mat: Any, bar: Any = None) -> np.ndarray:
    """``(dim,)`` float64 mean of squares of every column, streamed in blocks of ``CHUNK`` rows."""
    return column_square_sums(mat, 0, bar) / max(mat.shape[0], 1)


def moments_stage(ctx: Any) -> dict[str, Any]:
    views = stage_info(ctx, "gradients")["views"]
    (ctx.root / F.MOMENTS_DIR).mkdir(exist_ok=True)
    n = len(ctx.docs)
    m, prefix = row_prefix(ctx)
    with _bar(ctx, (n - m) * len(views) * len(ctx.checkpoints), "moments") as bar:
        for v in views:
            for ci in range(len(ctx.checkpoints)):
                mat = _features(ctx, v, ci)
                if prefix is None:
                    mo = column_moments(mat, bar)
                else:  # the seeded sums over rows :m, completed
                    mo = (np.load(prefix / F.moment_file(v, ci)) + column_square_sums(mat, m, bar)) / n
                np.save(ctx.root / F.moment_file(v, ci), mo)
    return {"views": views, "checkpoints": len(ctx.checkpoints), "statistic": "E_z[g_i(z)^2] over the corpus"}


def faiss_coords(moments: list[np.ndarray], lrs: list[float], m: int) -> np.ndarray:
    """``(n_ckpt, m')`` sorted coordinates with the largest ``lr * E[g_i^2]`` per checkpoint (all if m <= 0)."""
    dim = len(moments[0])
    if m <= 0 or m >= dim:
        return np.tile(np.arange(dim, dtype=np.int64), (len(moments), 1))
    return np.stack([np.sort(np.argsort(-(lr * mo), kind="stable")[:m]) for mo, lr in zip(moments, lrs)])


def tracin_rows(mats: list[Any], lrs: list[float], lo: int, hi: int,
                coords: np.ndarray | None = None) -> np.ndarray:
    """Rows ``lo:hi`` of the TracIn concatenation ``[sqrt(lr_c) g_c[coords_c]]``: float32."""
    parts = []
    for c, (m, lr) in enumerate(zip(mats, lrs)):
        x = np.asarray(m[lo:hi], dtype=np.float32)
        parts.append(np.sqrt(lr) * (x if coords is None else x[:, coords[c]]))
    return np.concatenate(parts, axis=1)


FAISS_PREFIX = "faiss-prefix.json"  # in build_state/: {"rows": m}, the pinned index's vectors `tracer add` keeps


def gradient_faiss_stage(ctx: Any) -> dict[str, Any]:
    """FAISS over the TracIn concatenation's top coordinates: fitted here (coordinates from the moments, the
    quantizer trained on a sample), or, with a pinned space (``BasisPin.faiss``: ``tracer add``), the pinned
    index's coordinates and trained quantizer reused and only the rows it lacks encoded."""
    n_ck = len(ctx.checkpoints)
    mats = [_features(ctx, RAW, ci) for ci in range(n_ck)]
    lrs = [c.lr for c in ctx.checkpoints]
    n = len(ctx.docs)
    pin = ctx.basis.faiss if ctx.basis is not None else None
    if pin is not None:
        pinned = _pinned_faiss(ctx, pin)
        coords = pinned[0]
    else:
        moments = [np.load(ctx.root / F.moment_file(RAW, ci)) for ci in range(n_ck)]
        coords = faiss_coords(moments, lrs, ctx.cfg.faiss_dim)
    np.save(ctx.root / F.GRADIENT_COORDS, coords)
    dim = coords.size

    def chunks(start: int = 0) -> Iterator[np.ndarray]:
        for lo in range(start, n, CHUNK):
            yield tracin_rows(mats, lrs, lo, min(n, lo + CHUNK), coords)
            release_pages(*mats)

    info = {"dim": dim, "factory": ctx.cfg.faiss_factory, "coords_per_checkpoint": int(coords.shape[1]),
            "space": "tracin: [sqrt(lr_c) * raw_c[coords_c]], coords = top lr * E[g^2] per checkpoint"
                     + (" of the documents the pinned space was fitted on" if pin is not None else "")}
    if pin is not None:
        _, index, keep, fit_rows = pinned
        if keep and not keeps_prefix(index):  # HNSW: every row again, in the pinned space
            keep = 0
        with _bar(ctx, n, "gradient FAISS") as bar:
            bar.update(keep)
            index = fill_faiss(index, n, lambda: chunks(keep), bar.update, keep)
        write_faiss(index, ctx.root / F.GRADIENT_FAISS)
        return dict(info, fit_rows=fit_rows, pinned=True, kept_rows=keep)

    def sample() -> np.ndarray:
        """The training sample in the FAISS space, gathered ``CHUNK`` rows at a time: dequantizing all
        sampled rows at full width first cost ``sample x dim x 4`` bytes (1.2 GB at 20k rows, 7680 dims)."""
        rng = np.random.default_rng(ctx.cfg.seed)
        rows = np.sort(rng.choice(n, size=min(n, ctx.cfg.faiss_train_size), replace=False))
        out = np.empty((len(rows), dim), dtype=np.float32)
        for lo in range(0, len(rows), CHUNK):
            part = rows[lo:lo + CHUNK]
            out[lo:lo + len(part)] = np.concatenate(
                [np.sqrt(lr) * np.asarray(m[part], dtype=np.float32)[:, coords[c]]
                 for c, (m, lr) in enumerate(zip(mats, lrs))], 1)
            release_pages(*mats)
        return out

    with _bar(ctx, n, "gradient FAISS") as bar:
        index = build_faiss(dim, n, chunks, ctx.cfg.faiss_factory, sample, on_rows=bar.update)
    write_faiss(index, ctx.root / F.GRADIENT_FAISS)
    return dict(info, fit_rows=n, pinned=False)


def _pinned_faiss(ctx: Any, pin: str) -> tuple[np.ndarray, Any, int, int]:
    """``(coords, index, keep, fit_rows)`` of a pinned FAISS space: the pinned index's coordinates and its
    FAISS index (read whole, to be refilled), the vectors to keep (seeded by ``tracer add``: rows whose
    features it kept; 0 otherwise), and how many documents the space was fitted on."""
    import json
    from pathlib import Path

    from tracer.index.build import IndexConfig
    from tracer.index.dense import read_faiss
    from tracer.index.manifest import read_manifest
    from tracer.model.loading import weights_fingerprint

    root = Path(pin)
    manifest = read_manifest(root)  # a missing or damaged pinned index: the store's own errors
    cfg, n_ck = IndexConfig.from_dict(manifest["config"]), len(ctx.checkpoints)
    coords = np.load(root / F.GRADIENT_COORDS)
    if (cfg.faiss_factory, cfg.faiss_dim) != (ctx.cfg.faiss_factory, ctx.cfg.faiss_dim) or len(coords) != n_ck:
        raise ValueError(f"the pinned FAISS space of {root} ({cfg.faiss_factory}, {cfg.faiss_dim} coordinates "
                         f"x {len(coords)} checkpoints) does not fit this build ({ctx.cfg.faiss_factory}, "
                         f"{ctx.cfg.faiss_dim} x {n_ck})")
    if [c["fingerprint"] for c in manifest["checkpoints"]] != [weights_fingerprint(c.path) for c in ctx.checkpoints]:
        raise ValueError(f"the pinned FAISS space of {root} was fitted on other checkpoints than this build's")
    index = read_faiss(root / F.GRADIENT_FAISS, mmap=False)
    if index.d != coords.size:  # type: ignore[attr-defined]
        raise ValueError(f"{root / F.GRADIENT_FAISS} holds {index.d}-wide vectors, its coordinates "  # type: ignore
                         f"{coords.size}: the index is damaged; rebuild it")
    marker = ctx.root / F.BUILD_STATE / FAISS_PREFIX
    keep = int(json.loads(marker.read_text())["rows"]) if marker.is_file() else 0
    stats = manifest.get("statistics", {})
    fit_rows = int(stats.get("faiss_fit_rows") or manifest["corpus"]["n_documents"])
    return coords, index, keep, fit_rows


def block_fisher(mat: Any, layout: list[dict[str, Any]], sketches: list[np.ndarray | None],
                 bar: Any = None) -> list[np.ndarray]:
    """Per-block ``1/N sum_z s_b s_b^T`` with ``s_b = g_b S_b`` (or ``g_b``), float64, streamed."""
    n = mat.shape[0]
    acc = [np.zeros((b["size"], b["size"]) if s is None else (s.shape[1], s.shape[1]))
           for b, s in zip(layout, sketches)]
    for lo in range(0, n, CHUNK):
        x = torch.from_numpy(np.asarray(mat[lo:lo + CHUNK], dtype=np.float64))
        for j, (b, sk) in enumerate(zip(layout, sketches)):
            xb = x[:, b["offset"]:b["offset"] + b["size"]]
            if sk is not None:
                xb = xb @ torch.from_numpy(sk)
            acc[j] += (xb.T @ xb).numpy()
        release_pages(mat)
        if bar is not None:
            bar.update(len(x))
    return [a / n for a in acc]


def build_influence_stage(ctx: Any) -> dict[str, Any]:
    layout = _layout(ctx)
    last = len(ctx.checkpoints) - 1
    if ctx.cfg.featurize.projection == "kfac":
        return {"checkpoint": last, "kind": "ekfac", "n_blocks": 0,
                "curvature": "EK-FAC: diagonal E[g_i^2] in the K-FAC eigenbasis (moments stage)"}
    dim = ctx.cfg.influence_block_dim
    sketches = [influence_sketch(b["size"], dim, j, ctx.cfg.seed) for j, b in enumerate(layout)]
    with _bar(ctx, len(ctx.docs), "influence Fisher") as bar:
        fishers = block_fisher(_features(ctx, RAW, last), layout, sketches, bar)
    (ctx.root / F.INFLUENCE_DIR).mkdir(exist_ok=True)
    for j, fb in enumerate(fishers):
        np.save(ctx.root / F.fisher_file(j), fb.astype(np.float32))
    return {"checkpoint": last, "n_blocks": len(fishers), "kind": "empirical Fisher of projected gradients",
            "blocks": "one per layout block", "block_dim": dim, "seed": ctx.cfg.seed}


def build_trak_stage(ctx: Any) -> dict[str, Any]:
    (ctx.root / F.TRAK_DIR).mkdir(exist_ok=True)
    n = len(ctx.docs)
    with _bar(ctx, n * len(ctx.checkpoints), "TRAK") as bar:
        for ci in range(len(ctx.checkpoints)):
            _trak_checkpoint(ctx, ci, bar)
    return {"trak_dim": min(ctx.cfg.trak_dim, _layout_dim(ctx)), "seed": ctx.cfg.seed,
            "checkpoints": len(ctx.checkpoints)}


def _trak_checkpoint(ctx: Any, ci: int, bar: Any) -> None:
    """Sketch checkpoint ``ci``'s features to ``trak/ckpt<ci>.npy`` and save their Gram.

    With a seeded row prefix of ``m`` rows (``tracer add``: ``trak/ckpt<ci>.npy`` already holds the old
    rows, grown to ``n``), only the blocks from row ``m`` (a multiple of ``CHUNK``) on are sketched, and
    their Grams are added to the seeded one.
    """
    n = len(ctx.docs)
    mat = _features(ctx, RAW, ci)
    k = min(ctx.cfg.trak_dim, mat.shape[1])
    sketch = torch.from_numpy(trak_sketch(mat.shape[1], k, ctx.cfg.seed))
    start, prefix = row_prefix(ctx)
    # rows stored as float16 (half the bytes; the Gram is accumulated from the float32 rows)
    if prefix is None:
        out = np.lib.format.open_memmap(ctx.root / F.trak_file(ci), mode="w+", dtype=np.float16, shape=(n, k))
        xtx = np.zeros((k, k))
    else:
        out = np.load(ctx.root / F.trak_file(ci), mmap_mode="r+")
        if out.shape != (n, k) or out.dtype != np.float16:
            raise ValueError(f"{ctx.root / F.trak_file(ci)}: seeded TRAK rows {out.shape} {out.dtype}, "
                             f"expected {(n, k)} float16")
        xtx = np.load(prefix / F.trak_xtx_file(ci))
        bar.update(start)
    for lo in range(start, n, CHUNK):
        phi = torch.from_numpy(np.array(mat[lo:lo + CHUNK], dtype=np.float32)) @ sketch
        out[lo:lo + len(phi)] = phi.numpy().astype(np.float16)
        out.flush()
        release_pages(mat, out)
        xtx += (phi.double().T @ phi.double()).numpy()
        bar.update(len(phi))
    out.flush()
    del out
    np.save(ctx.root / F.trak_xtx_file(ci), xtx)


def build_embedding_stage(ctx: Any) -> dict[str, Any]:
    """Embed every document (batches of ``EMBED_BATCH`` texts, read from the corpus as needed), write the
    float16 rows to ``embeddings.npy`` as they come, and fill a Flat FAISS index with the float32 rows.

    The Flat index is the one thing here that holds every row (``n x d x 4`` bytes, the size of the
    ``embedding.faiss`` it writes); no list of texts or of embeddings is kept.
    """
    from itertools import chain

    from tracer.featurize.checkpoint import embed_texts
    from tracer.model.loading import load_model

    model = load_model(ctx.checkpoints[-1].path)
    n = len(ctx.docs)
    prefix = embedding_prefix(ctx)  # rows an earlier version of the index already embedded (tracer add)
    start = len(prefix)
    bar = _bar(ctx, n - start, "embeddings")

    def blocks() -> Iterator[np.ndarray]:
        for lo in range(0, start, CHUNK):
            yield np.asarray(prefix[lo:lo + CHUNK], dtype=np.float32)
        for lo in range(start, n, EMBED_BATCH):
            texts = [d.text for d in ctx.docs[lo:lo + EMBED_BATCH]]
            block = embed_texts(model, ctx.tokenizer, texts, max_length=ctx.cfg.featurize.max_length)
            bar.update(len(block))
            yield block

    rows = blocks()
    first = next(rows)
    dim = int(first.shape[1])
    out = np.lib.format.open_memmap(ctx.root / F.EMBEDDINGS, mode="w+", dtype=np.float16, shape=(n, dim))
    written = 0

    def stored() -> Iterator[np.ndarray]:
        nonlocal written
        for block in chain([first], rows):
            out[written:written + len(block)] = block.astype(np.float16)
            written += len(block)
            if written % CHUNK < len(block):  # about every CHUNK rows: written pages are not ours to hold
                out.flush()
                release_pages(out)
            yield block

    with bar:
        index = build_faiss(dim, n, stored, "Flat")
    out.flush()
    write_faiss(index, ctx.root / F.EMBEDDING_FAISS)
    return {"dim": dim, "pooling": "mean of final hidden states", "normalized": True}


EMBEDDING_PREFIX = "embeddings-prefix.npy"  # in build_state/: (m, d) float32 rows already embedded, m % EMBED_BATCH == 0


def embedding_prefix(ctx: Any) -> np.ndarray:
    """Float32 embeddings of the first rows, seeded by ``tracer add`` from the previous version's Flat index
    (exact float32), so only new rows are embedded; batches stay aligned, so the result equals a full pass."""
    path = ctx.root / F.BUILD_STATE / EMBEDDING_PREFIX
    if not path.exists():
        return np.zeros((0, 0), np.float32)
    prefix = np.load(path, mmap_mode="r")
    if len(prefix) % EMBED_BATCH or len(prefix) > len(ctx.docs):
        raise ValueError(f"{path}: {len(prefix)} seeded rows are not a whole number of {EMBED_BATCH}-row batches")
    return prefix


def _layout(ctx: Any) -> list[dict[str, Any]]:
    import json

    marker = ctx.root / F.BUILD_STATE / "stage-gradients.json"
    return json.loads(marker.read_text())["info"]["layout"]


def _layout_dim(ctx: Any) -> int:
    return sum(b["size"] for b in _layout(ctx))
