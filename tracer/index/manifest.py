"""``manifest.json``: what an index is, and the checks that refuse a damaged or mismatched one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tracer.errors import IndexCorruptError, IndexMismatchError, NotFoundError
from tracer.index.files import FORMAT_HISTORY, FORMAT_VERSION, MANIFEST


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_table(root: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``relpath -> {size, sha256}`` for every file under ``root`` except the manifest and ``skip`` (top-level names)."""
    table = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and p.name != MANIFEST and rel.parts[0] not in skip:
            table[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return table


FINGERPRINTED = ("corpus", "checkpoints", "featurize", "format_version", "config", "views", "stages", "files")
VIEWS = ("raw", "adam")
STAGES = ("fit", "gradients", "moments", "gradient_faiss", "influence", "trak", "embeddings", "bm25")


def fingerprint(manifest: dict[str, Any]) -> str:
    """A short stable id of an index: a hash of everything that decides its scores (corpus,
    checkpoints and their learning rates, configs, views, stage records, and every file's sha256).
    Recomputed on every open, so an edited manifest cannot keep its old identity."""
    key = json.dumps({k: manifest.get(k) for k in FINGERPRINTED}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _self_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    manifest = dict(manifest, files=file_table(root, skip))
    manifest["fingerprint"] = fingerprint(manifest)
    manifest["manifest_sha256"] = _self_checksum(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(root: Path, verify: bool = False) -> dict[str, Any]:
    """Load and check a manifest.

    Args:
        root: Index directory.
        verify: Also compare every file's sha256 (slow); otherwise sizes only.

    Raises:
        NotFoundError: No index at ``root``.
        IndexCorruptError: Unreadable manifest, missing file, size or checksum mismatch.
        IndexMismatchError: Format version newer than this tracer understands.
    """
    path = root / MANIFEST
    if not root.is_dir():
        raise NotFoundError(f"no index directory at {root}")
    if not path.is_file():
        raise IndexCorruptError(f"{root} is not a tracer index: {MANIFEST} is missing "
                                "(an interrupted build leaves only a '.partial' directory)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON: {exc}") from exc
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexMismatchError(f"{root}: index format version {version!r} is newer than this tracer supports "
                                 f"({FORMAT_VERSION}); upgrade tracer")
    if version < FORMAT_VERSION:
        raise IndexMismatchError(
            f"{root}: index format version {version} ({FORMAT_HISTORY.get(version, 'unknown')}) predates this "
            f"tracer's format {FORMAT_VERSION} ({FORMAT_HISTORY[FORMAT_VERSION]}); rebuild it with `tracer build` "
            "(same --corpus and --model)")
    if manifest.get("manifest_sha256") != _self_checksum(manifest):
        raise IndexCorruptError(f"{path}: manifest was modified after the build (its checksum does not match)")
    if manifest.get("fingerprint") != fingerprint(manifest):
        raise IndexCorruptError(f"{path}: manifest was modified after the build (its fingerprint does not match "
                                "its contents)")
    bad = [v for v in manifest.get("views", []) if v not in VIEWS]
    bad += [st for st in manifest.get("stages", {}) if st not in STAGES]
    bad += [rel for rel in manifest.get("files", {}) if rel.startswith("/") or ".." in rel.split("/")]
    if bad:
        raise IndexCorruptError(f"{path}: unknown view, stage or file name {str(bad[0])[:200]!r} in the manifest")
    _check_files(root, manifest.get("files", {}), verify)
    return manifest


def _check_files(root: Path, files: dict[str, dict[str, Any]], verify: bool) -> None:
    for rel, meta in files.items():
        p = root / rel
        if p.is_symlink() or not p.resolve().is_relative_to(root.resolve()):
            raise IndexCorruptError(f"{root}: file {rel} is a symlink; an index must not point outside itself")
        if not p.is_file():
            raise IndexCorruptError(f"{root}: file {rel} is missing")
        size = p.stat().st_size
        if size != meta["size"]:
            raise IndexCorruptError(f"{root}: file {rel} has {size} bytes, manifest says {meta['size']}")
        if verify and sha256_file(p) != meta["sha256"]:
            raise IndexCorruptError(f"{root}: checksum mismatch in {rel} (file is corrupt)")
