"""Index directories: build them (``build_index``) and open them (``IndexStore.open``).

``build`` is imported on first use only, so the query path (``IndexStore``) never loads build code.
"""

from __future__ import annotations

from typing import Any

from tracer.index.store import IndexStore

__all__ = ["IndexConfig", "IndexStore", "build_index"]


def __getattr__(name: str) -> Any:
    if name in ("IndexConfig", "build_index"):
        from tracer.index import build

        return getattr(build, name)
    raise AttributeError(f"module 'tracer.index' has no attribute {name!r}")
