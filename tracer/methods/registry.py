"""Method names (the same as the proto enum, lower-cased) -> implementation."""

from __future__ import annotations

from typing import Any

from tracer.errors import InvalidRequestError
from tracer.index.store import IndexStore
from tracer.methods.base import Method
from tracer.methods.baselines import BM25, Embedding, Random
from tracer.methods.influence import Influence
from tracer.methods.tracin import TracIn, TracInCosine
from tracer.methods.trak import Trak

REGISTRY: dict[str, type[Method]] = {m.name: m for m in (BM25, Embedding, TracIn, TracInCosine, Influence, Trak,
                                                         Random)}
METHODS: tuple[str, ...] = ("bm25", "embedding", "tracin", "tracin_cos", "influence", "trak", "random")


def method_class(name: str) -> type[Method]:
    """The class of a method name; ``InvalidRequestError`` listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidRequestError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def create_method(name: str, store: IndexStore, **params: Any) -> Method:
    return method_class(name)(store, **params)
