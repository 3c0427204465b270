"""Flags shared by the commands that open an index: where its models and tokenizer are now."""

from __future__ import annotations

import argparse
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def add_model_overrides(p: argparse.ArgumentParser) -> None:
    """``--checkpoint-dir`` (repeatable, in the index's checkpoint order) and ``--tokenizer``."""
    p.add_argument("--checkpoint-dir", action="append", default=None, metavar="DIR",
                   help="where a checkpoint the index was built from is now (repeat once per checkpoint, in order; "
                        "weights must still match the index's fingerprints)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: the one recorded at build time)")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``Tracer.open`` for the flags of :func:`add_model_overrides`."""
    out: dict[str, Any] = {}
    if getattr(args, "checkpoint_dir", None):
        out["checkpoint_dirs"] = list(args.checkpoint_dir)
    if getattr(args, "tokenizer", None):
        out["tokenizer"] = args.tokenizer
    return out


def comma_list(text: str | None, convert: Callable[[str], T], flag: str, what: str) -> list[T]:
    """A comma-separated flag value as a list (empty or ``None``: ``[]``).

    Raises:
        DataError: An item ``convert`` rejects: "``flag`` must be comma-separated ``what``".
    """
    from tracer.errors import DataError

    if not text:
        return []
    try:
        return [convert(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"{flag} must be comma-separated {what}, got {text!r}") from None
