"""The FTRACE-style synthetic benchmark: a knowledge base, a corpus with known provenance, queries."""

from __future__ import annotations

from tracer.benchmark.synth import PRESETS, SynthConfig, generate, write_benchmark

__all__ = ["PRESETS", "SynthConfig", "generate", "write_benchmark"]
