"""``tracer serve``: answer trace queries over gRPC for one or more index directories.

Flags default from the environment (``TRACER_HOST``, ``TRACER_PORT``, ``TRACER_INDEX`` as an
``os.pathsep``-separated list, ``TRACER_AUTH_TOKEN_FILE``, ``TRACER_TLS_CERT``, ``TRACER_TLS_KEY``,
``TRACER_MAX_CONCURRENT``, ``TRACER_GRACE_S``); ``TRACER_MALLOC_ARENAS`` caps glibc's malloc
arenas (default 2, see :func:`limit_malloc_arenas`). ``--otel-endpoint`` (or the standard
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``) instruments every index with :mod:`tracer.telemetry`.
Once every index is loaded it prints ``tracer serving on HOST:PORT`` (flushed) so scripts can
wait for that line; SIGTERM drains and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracer.cli.options import add_model_overrides, model_overrides
from tracer.errors import DataError


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"TRACER_{name}", default)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve indexes over gRPC (tracer.v1.TracerService)",
                              description=__doc__.splitlines()[0])
    env_indexes = [d for d in str(_env("INDEX", "")).split(os.pathsep) if d]
    p.add_argument("--index", action="append", default=None, metavar="DIR",
                   help="index directory (repeatable); its name is the directory name")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=int(_env("PORT", 50051)), help="port; 0 picks a free one")
    p.add_argument("--auth-token-file", default=_env("AUTH_TOKEN_FILE"), metavar="FILE",
                   help="require 'authorization: Bearer <token>' with the token in FILE")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"), metavar="FILE", help="PEM certificate chain")
    p.add_argument("--tls-key", default=_env("TLS_KEY"), metavar="FILE", help="PEM private key")
    p.add_argument("--max-concurrent", type=int, default=int(_env("MAX_CONCURRENT", 16)), metavar="N",
                   help="concurrent calls before RESOURCE_EXHAUSTED")
    p.add_argument("--max-workers", type=int, default=None, metavar="N", help="handler threads (default: N)")
    p.add_argument("--max-top-k", type=int, default=1000, metavar="K", help="largest top_k accepted")
    p.add_argument("--max-batch", type=int, default=256, metavar="N", help="most queries per BatchTrace")
    p.add_argument("--max-verify", type=int, default=32, metavar="N",
                   help="most examples (asked + random) per Verify (the causal check)")
    p.add_argument("--grace", type=float, default=float(_env("GRACE_S", 10.0)), metavar="S",
                   help="seconds in-flight calls get to finish on SIGTERM")
    p.add_argument("--verify", action="store_true", help="verify index checksums while loading")
    p.add_argument("--otel-endpoint", default=None, metavar="URL",
                   help="export an OpenInference RETRIEVER span per traced query to this OTLP/HTTP "
                        "traces URL, e.g. http://localhost:6006/v1/traces (Phoenix); or set "
                        "OTEL_EXPORTER_OTLP_ENDPOINT (needs pip install 'tracer[otel]')")
    p.add_argument("--no-reflection", dest="reflection", action="store_false",
                   help="do not serve gRPC server reflection (it follows --auth-token-file when set)")
    add_model_overrides(p)
    p.set_defaults(func=run, env_indexes=env_indexes)


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise DataError(f"--auth-token-file: cannot read {path}: {exc}") from exc
    if not token:
        raise DataError(f"--auth-token-file: {path} is empty")
    return token


def _open_index(path: Path, verify: bool, **overrides: Any) -> Any:
    """Open one index (replaced by tests with a fake)."""
    from tracer.tracer import Tracer

    tracer = Tracer.open(path, verify=verify, **overrides)
    tracer.warm()  # models and indexes loaded before health turns SERVING
    return tracer


def _indexes(dirs: list[Path], verify: bool, overrides: dict[str, Any],
             otel_provider: Any = None) -> Iterator[tuple[str, Any]]:
    for d in dirs:
        tracer = _open_index(d, verify, **overrides)
        if otel_provider is not None:
            from tracer.telemetry import instrument

            instrument(tracer, tracer_provider=otel_provider)
        yield d.name, tracer


# The standard OpenTelemetry variables that turn spans on without --otel-endpoint.
OTEL_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _otel_provider(endpoint: str | None) -> Any:
    """An OTLP span provider when ``--otel-endpoint`` or an ``OTEL_EXPORTER_OTLP_*`` variable asks for one.

    Without the ``otel`` extra the flag is an error; a variable alone (set for other processes
    too) only warns, and the server runs without spans.
    """
    from_env = endpoint is None and any(os.environ.get(v) for v in OTEL_ENV)
    if endpoint is None and not from_env:
        return None
    try:
        from tracer.telemetry import configure_otlp
    except ImportError as exc:
        if from_env:
            print(f"tracer serve: warning: {' or '.join(OTEL_ENV)} is set but {exc}; no spans",
                  file=sys.stderr)
            return None
        raise DataError(f"--otel-endpoint: {exc}") from exc
    return configure_otlp(endpoint)  # None: the exporter reads the OTEL_ variables itself


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at ``n`` (``mallopt(M_ARENA_MAX)``); False where that is not glibc.

    glibc gives each contending thread its own arena and rarely returns their freed memory, so a
    server with 16 handler threads grew from 774 to 1,030 MB resident over 4,000 fuzzed requests
    (and kept growing); with 2 arenas it stayed at ~700 MB (``eval/fuzz_service.py``). Must run
    before the handler threads allocate.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-8, int(n)))  # M_ARENA_MAX = -8
    except (OSError, AttributeError):
        return False


def run(args: argparse.Namespace) -> int:
    from tracer.service.server import ServiceConfig, serve

    dirs = [Path(d) for d in (args.index or args.env_indexes)]
    if not dirs:
        raise DataError("--index: at least one index directory is required (or set TRACER_INDEX)")
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        raise DataError(f"--index: index names (directory names) must be unique, got {names}")
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"--index: {d} is not a directory")
    overrides = model_overrides(args)
    if overrides and len(dirs) > 1:
        raise DataError("--checkpoint-dir and --tokenizer apply to one index: serve it alone")
    try:
        cfg = ServiceConfig(host=args.host, port=args.port, auth_token=_read_token(args.auth_token_file),
                            tls_cert=args.tls_cert, tls_key=args.tls_key,
                            max_concurrent_rpcs=args.max_concurrent,
                            max_workers=args.max_workers or args.max_concurrent, max_top_k=args.max_top_k,
                            max_batch=args.max_batch, max_verify=args.max_verify, grace_s=args.grace,
                            reflection=args.reflection)
    except ValueError as exc:
        raise DataError(f"invalid server settings: {exc}") from exc

    limit_malloc_arenas(int(_env("MALLOC_ARENAS", 2)))

    def announce(address: str) -> None:
        print(f"tracer serving on {address}", flush=True)

    from tracer.service.server import UNCLEAN_STOP

    otel = _otel_provider(args.otel_endpoint)
    try:
        code = serve(cfg, _indexes(dirs, args.verify, overrides, otel), on_ready=announce)
    except OSError as exc:
        print(f"tracer serve: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if otel is not None:
            otel.shutdown()  # flush queued spans
    if code == UNCLEAN_STOP:  # gRPC threads may never finish: do not let interpreter shutdown wait on them
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code
