"""``tracer ui``: the explorer, a small web page on loopback over an index or a tracer server."""

from __future__ import annotations

import argparse
from pathlib import Path

from tracer.cli.options import add_model_overrides, model_overrides
from tracer.errors import DataError

DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="the explorer: trace facts in a web page (needs tracer[ui])")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", help="index directory, opened in-process (tail-patch available)")
    src.add_argument("--server", help="HOST:PORT of a tracer server")
    p.add_argument("--index-name", help="index to ask with --server (default: the server's only one)")
    p.add_argument("--token-file", help="auth token file for --server")
    p.add_argument("--queries", help="benchmark queries.jsonl: pick a fact, see its proponents marked ✓")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = a free one)")
    add_model_overrides(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from tracer.ui import LocalBackend, RemoteBackend, create_app
        from tracer.ui.server import bind, serve
    except ImportError as exc:
        raise DataError(f"tracer ui needs the ui extra (pip install 'tracer[ui]'): {exc}") from None
    from tracer.corpus import load_queries

    queries = load_queries(args.queries) if args.queries else []
    if args.server:
        from tracer.client import TracerClient

        token = Path(args.token_file).read_text().strip() if args.token_file else None
        client = TracerClient(args.server, token=token)
        backend = RemoteBackend(client, args.index_name)
    else:
        from tracer.tracer import Tracer

        backend = LocalBackend(Tracer.open(args.index, **model_overrides(args)))
    info = backend.info()  # fail here, in one line, when the index or server is not there
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise DataError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port") from None
    host, port = sock.getsockname()[:2]
    print(f"tracer ui: {info['name']} ({info['n_documents']} documents, {len(queries)} benchmark queries) "
          f"on http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    serve(create_app(backend, queries), sock)
    return 0
