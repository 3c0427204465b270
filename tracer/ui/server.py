"""Run the explorer under uvicorn on a loopback socket (a bound port 0 reports its real port)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["bind", "serve", "start_in_thread"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def _server(app: Any) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))


def serve(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until interrupted (Ctrl-C / SIGTERM)."""
    _server(app).run(sockets=[sock])


def start_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 30.0) -> tuple[Any, threading.Thread, int]:
    """Serve ``app`` from a daemon thread; returns ``(server, thread, port)``.

    Stop it with ``server.should_exit = True; thread.join()``.
    """
    sock = bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tracer-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the explorer did not start")
        time.sleep(0.02)
    return server, thread, sock.getsockname()[1]
