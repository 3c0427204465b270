"""The token prefix (BOS) policy: the tokenizer's own template decides, and an index pins what it used."""

from __future__ import annotations

import pytest


def _bare_tokenizer(tiny_tokenizer):
    """The same vocabulary without a post-processor: a GPT-2-style tokenizer that adds no BOS."""
    import copy

    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    from tokenizers import processors

    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_prefix_follows_the_tokenizer(tiny_tokenizer):
    from tracer.model.tokenization import encode_example, special_prefix

    bos = tiny_tokenizer.bos_token_id
    assert special_prefix(tiny_tokenizer) == (bos,)  # tracer's tokenizers prepend <|endoftext|>
    enc = encode_example(tiny_tokenizer, "Paris is in", " France")
    assert enc.input_ids[0] == bos and enc.labels[0] == -100
    bare = _bare_tokenizer(tiny_tokenizer)
    assert special_prefix(bare) == ()  # GPT-2 / SmolLM2 style: nothing before the text
    enc2 = encode_example(bare, "Paris is in", " France")
    assert enc2.input_ids == enc.input_ids[1:] and enc2.labels == enc.labels[1:]


def test_index_pins_its_prefix_and_refuses_a_disagreeing_tokenizer(tiny_index):
    from tracer.encoder import QueryEncoder
    from tracer.errors import IndexMismatchError
    from tracer.index.store import IndexStore

    store = IndexStore.open(tiny_index)
    assert store.manifest["token_prefix"] == [0]
    assert QueryEncoder(store).encode_many([("Paris is in", " France")], need_embedding=False)
    store.manifest["token_prefix"] = []  # as if built with a tokenizer that adds no BOS
    with pytest.raises(IndexMismatchError, match=r"built with token prefix \[\] .* this tokenizer adds \[0\]"):
        QueryEncoder(store)
    del store.manifest["token_prefix"]  # an index from before the prefix was recorded: BOS, as then
    enc = QueryEncoder(store)
    from tracer.model.tokenization import special_prefix

    assert special_prefix(enc.tokenizer) == (0,)
