"""Attribution and retrieval methods; every score is higher = more supportive."""

from __future__ import annotations

from tracer.methods.base import Method, QueryFeatures
from tracer.methods.registry import METHODS, REGISTRY, create_method, method_class

__all__ = ["METHODS", "REGISTRY", "Method", "QueryFeatures", "create_method", "method_class"]
