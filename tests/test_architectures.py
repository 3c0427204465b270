"""Layer selection by architecture: tiny random models of every family in the table, built from
their configs (nothing downloaded); the featurizer's identity-projection oracle on each."""

from __future__ import annotations

import logging

import pytest
import torch

from tracer.featurize.architectures import FAMILIES, resolve_patterns
from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.exact import exact_features
from tracer.featurize.gradients import GradientFeaturizer
from tracer.featurize.layout import LINEAR, build_layout
from tracer.featurize.views import raw_view

VOCAB = 64


def _tiny(model_type: str, vocab: int = VOCAB):  # type: ignore[no-untyped-def]
    import transformers as T

    VOCAB = vocab  # noqa: N806 - the configs below read it
    common = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, num_hidden_layers=2)
    cfgs = {
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_head=2, n_layer=2, n_positions=128),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common, intermediate_size=64, max_position_embeddings=128),
        "llama": lambda: T.LlamaConfig(**common, intermediate_size=64, num_key_value_heads=2),
        "mistral": lambda: T.MistralConfig(**common, intermediate_size=64, num_key_value_heads=1),
        "qwen2": lambda: T.Qwen2Config(**common, intermediate_size=64, num_key_value_heads=2),
        "gemma": lambda: T.GemmaConfig(**common, intermediate_size=64, num_key_value_heads=1, head_dim=16),
        "olmo": lambda: T.OlmoConfig(**common, intermediate_size=64, num_key_value_heads=2),
        "opt": lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                                   ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=128),
        "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_head=2, n_layer=2),
        "falcon": lambda: T.FalconConfig(**common, new_decoder_architecture=False, multi_query=True),
        "phi": lambda: T.PhiConfig(**common, intermediate_size=64, max_position_embeddings=128),
        "phi3": lambda: T.Phi3Config(**common, intermediate_size=64, num_key_value_heads=2, pad_token_id=0),
    }
    torch.manual_seed(0)
    cfg = cfgs[model_type]()
    cfg._attn_implementation = "eager"
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def _batch(n: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # loss on the "target" tokens only
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "position_ids": torch.arange(length).expand(n, length)}


@pytest.mark.parametrize("model_type", sorted(FAMILIES.keys() - {"qwen3", "gemma2", "olmo2"}))
def test_every_block_tracks_attention_and_mlp(model_type):
    model = _tiny(model_type)
    assert model.config.model_type == model_type
    fam = FAMILIES[model_type]
    layout = build_layout(model, ("auto",), 4, 4)
    linears = [b.module for b in layout if b.kind == LINEAR]
    import fnmatch

    for pats in (fam.attention, fam.mlp):
        hits = [m for m in linears if any(fnmatch.fnmatch(m, p) for p in pats)]
        assert len(hits) >= 2 * 1, (model_type, pats, linears)  # at least one per block, 2 blocks
    assert not any("lm_head" in m or "embed" in m for m in linears)
    assert len(linears) == sum(len(pats) for pats in (fam.attention, fam.mlp)) * 2, linears


ALL_TINY = ["bloom", "falcon", "gemma", "gpt2", "gpt_neox", "llama", "mistral", "olmo", "opt", "phi", "phi3", "qwen2"]


@pytest.mark.parametrize("model_type", ALL_TINY)
def test_identity_features_equal_exact_gradients_per_family(model_type):
    """TracIn's features with an identity projection are the exact per-example gradients (torch.func)."""
    model = _tiny(model_type)
    cfg = FeaturizeConfig.exact()
    layout = build_layout(model, cfg.layers, cfg.k_in, cfg.k_out, cfg.include_norms, cfg.include_biases)
    view = raw_view(layout, cfg)
    batch = _batch()
    feats, _ = GradientFeaturizer(model, layout, {"raw": view}).featurize(batch)
    exact = exact_features(model, layout, view, batch)
    assert feats["raw"].abs().max() > 1e-3
    torch.testing.assert_close(feats["raw"], exact, rtol=1e-4, atol=1e-5)


def test_unknown_architecture_tracks_block_linears_and_warns(caplog):
    model = _tiny("llama")
    model.config.model_type = "my_new_arch"
    # an MLP-less block: drop block 1's MLP linears by renaming them away from the block
    with caplog.at_level(logging.WARNING, logger="tracer.featurize.architectures"):
        pats = resolve_patterns(model, ("auto",))
    assert "model.layers.0.self_attn.q_proj" in pats and "lm_head" not in pats
    assert any("not in tracer's table" in r.getMessage() for r in caplog.records)
    assert resolve_patterns(model, ("*q_proj",)) == ("*q_proj",)  # explicit patterns win


@pytest.mark.parametrize("model_type", ALL_TINY)
def test_every_family_builds_an_index_whose_tracin_is_exact(model_type, tmp_path, tiny_tokenizer, tiny_bench):
    """A tiny random model of each family, passed as an object to ``tracer.build_index``: the index's
    TracIn scores (identity projection, float32) equal brute-force inner products of exact
    per-example gradients (``torch.func``) over the same tracked parameters."""
    import tracer
    from tracer.featurize.exact import per_example_grads
    from tracer.featurize.layout import param_name
    from tracer.index.build import IndexConfig
    from tracer.model.tokenization import encode_example, pad_batch

    model = _tiny(model_type, vocab=len(tiny_tokenizer))
    docs, q = tiny_bench.documents[:10], tiny_bench.queries[0]
    cfg = IndexConfig(featurize=FeaturizeConfig.exact(batch_size=8), influence=False, trak=False, embeddings=False)
    idx = tracer.build_index(docs, model, tokenizer=tiny_tokenizer, out=tmp_path / "idx", config=cfg,
                             progress=False)
    with tracer.Tracer.open(idx) as t:
        got = {h.doc_id: h.score for h in t.trace(q.prompt, q.target, method="tracin", candidates="full",
                                                    k=len(docs)).hits}
        assert t.info()["tracked"]  # the family's modules are listed
    names = sorted({param_name(b) for b in build_layout(model, ("auto",), 0, 0)})
    encs = [encode_example(tiny_tokenizer, q.prompt, q.target)] + [encode_example(tiny_tokenizer, "", d.text)
                                                                   for d in docs]
    g = per_example_grads(model, pad_batch(encs, tiny_tokenizer.pad_token_id), names)
    flat = torch.cat([g[n].flatten(1) for n in names], dim=1).double()
    exact = (flat[1:] @ flat[0]).numpy()
    torch.testing.assert_close(torch.tensor([got[d.doc_id] for d in docs], dtype=torch.float64),
                               torch.tensor(exact), rtol=2e-3, atol=1e-3 * float(abs(exact).max()))
