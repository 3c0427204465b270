"""``tracer`` entry point: one sub-command per ``tracer.cli.cmd_<name>`` module.

Each command module defines ``register(subparsers)`` (adds its parser and sets
``func``) and returns an exit code from ``func(args)``. Domain errors become one
line on stderr and exit code 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from tracer.errors import TracerError

COMMANDS = ("synth", "train", "build", "add", "info", "eval", "lds", "serve", "query", "verify", "calibrate", "ui", "demo", "bench")


NOISY_LOGGERS = ("faiss", "faiss.loader", "bm25s", "urllib3", "filelock", "httpx", "datasets")


def _quiet_libraries(verbose: bool = False) -> None:
    """Third-party chatter (faiss's CPU-feature probing, bm25s's index messages...) stays below
    WARNING unless ``-v``; tracer's own INFO lines still show."""
    if not verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def build_parser() -> argparse.ArgumentParser:
    from tracer import __version__

    parser = argparse.ArgumentParser(prog="tracer", description="Trace LM facts back to training documents.")
    parser.add_argument("--version", action="version", version=f"tracer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"tracer.cli.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tracer.cli.cmd_{name}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries(args.verbose)
    try:
        return int(args.func(args) or 0)
    except TracerError as exc:
        print(f"tracer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tracer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
