"""gRPC service ``tracer.v1.TracerService``: a thin edge over the in-process :class:`tracer.Tracer`.

``server`` builds and runs the server (config, health, reflection, auth, caps, SIGTERM drain),
``servicer`` implements the RPCs, ``convert`` maps protos to ``tracer.types`` and ``status``
maps ``TracerError`` classes to status codes.
"""

from __future__ import annotations

from tracer.service.server import ServiceConfig, TracerServer, create_server, serve

__all__ = ["ServiceConfig", "TracerServer", "create_server", "serve"]
