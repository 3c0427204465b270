"""Generated protobuf/gRPC stubs for ``proto/tracer/v1``; regenerate with ``python -m tracer._proto.generate``."""
