"""The explorer (``tracer ui``): a small web page over an index or a server, to look at one fact.

:mod:`tracer.ui.backend` answers (in-process :class:`tracer.Tracer` or a gRPC
:class:`tracer.client.TracerClient`), :mod:`tracer.ui.app` is the Starlette app (JSON endpoints
and the page), :mod:`tracer.ui.page` the page itself (inline HTML/CSS/JS, nothing fetched) and
:mod:`tracer.ui.server` runs it under uvicorn. Needs the ``tracer[ui]`` extra.
"""

from __future__ import annotations

from tracer.ui.app import create_app
from tracer.ui.backend import Backend, LocalBackend, RemoteBackend

__all__ = ["Backend", "LocalBackend", "RemoteBackend", "create_app"]
