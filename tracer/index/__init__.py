"""Index directories: build them (``build_index``) and open them (``IndexStore.open``)."""

from __future__ import annotations

from tracer.index.build import IndexConfig, build_index
from tracer.index.store import IndexStore

__all__ = ["IndexConfig", "IndexStore", "build_index"]
