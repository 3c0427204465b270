"""Verify on demand: the eval's tail-patch for any fact and examples, bounded and deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.errors import InvalidRequestError, LimitExceededError, NotFoundError


def test_verify_equals_the_eval_tail_patch(tiny_index, tiny_bench):
    """Same computation as ``tracer eval --tail-patch``: identical deltas for the same examples."""
    from tracer import Tracer
    from tracer.causal import tail_patch_deltas
    from tracer.featurize.checkpoint import encode_documents
    from tracer.model.loading import load_model
    from tracer.model.tokenization import encode_example

    q = tiny_bench.queries[0]
    with Tracer.open(tiny_index) as t:
        hits = t.trace(q.prompt, q.target, method="tracin", k=5).hits
        ids = [h.doc_id for h in hits]
        v = t.verify(q.prompt, q.target, ids, n_random=3, seed=7)
        enc = t.retriever.encoder
        model = load_model(enc.dirs[0], attn_implementation="eager")
        docs = t.get_documents(ids + [b.doc_id for b in v.baseline])
        ref = tail_patch_deltas(model, enc.tokenizer, encode_example(enc.tokenizer, q.prompt, q.target, 128),
                                encode_documents(enc.tokenizer, docs, 128), 1e-2)
        again = t.verify(q.prompt, q.target, ids, n_random=3, seed=7)
        other = t.verify(q.prompt, q.target, ids, n_random=3, seed=8)
    got = [x.delta_logprob for x in v.examples + v.baseline]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert [x.doc_id for x in v.examples] == ids and not any(x.baseline for x in v.examples)
    assert len(v.baseline) == 3 and all(x.baseline and x.doc_id not in ids for x in v.baseline)
    assert again.to_dict()["examples"][0]["delta_logprob"] == v.examples[0].delta_logprob
    assert [x.doc_id for x in again.baseline] == [x.doc_id for x in v.baseline]  # deterministic per seed
    assert [x.doc_id for x in other.baseline] != [x.doc_id for x in v.baseline]
    assert v.timings_ms["load_ms"] > 0 and again.timings_ms["load_ms"] == 0  # the model is kept
    assert all(x.ms > 0 for x in v.examples) and v.checkpoint == 0 and v.lr == 1e-2


def test_verify_bad_input(tiny_index, tiny_bench):
    from tracer import Tracer

    q = tiny_bench.queries[0]
    d = tiny_bench.documents[0].doc_id
    with Tracer.open(tiny_index) as t:
        with pytest.raises(LimitExceededError, match="exceed the cap of 32"):
            t.verify(q.prompt, q.target, [x.doc_id for x in tiny_bench.documents[:30]], n_random=3)
        with pytest.raises(NotFoundError, match="nope"):
            t.verify(q.prompt, q.target, ["nope"])
        with pytest.raises(InvalidRequestError, match="at least one"):
            t.verify(q.prompt, q.target, [])
        with pytest.raises(InvalidRequestError, match="checkpoint must be in"):
            t.verify(q.prompt, q.target, [d], checkpoint=5)
        with pytest.raises(InvalidRequestError, match="lr must be a positive"):
            t.verify(q.prompt, q.target, [d], lr=0.0)
        with pytest.raises(InvalidRequestError, match="prompt must be a non-empty"):
            t.verify(" ", q.target, [d])
        from tracer.errors import DeadlineExceededError
        import time

        with pytest.raises(DeadlineExceededError):
            t.verify(q.prompt, q.target, [d], deadline=time.monotonic() - 1)


def test_tail_patch_chunking_is_sized_to_the_model_and_changes_no_delta(tiny_index, tiny_bench):
    """One example at a time gives the deltas of eight at once; the default chunk shrinks with the model's
    bytes (8 for the tiny model, 1 when three parameter copies exceed the budget)."""
    from tracer import Tracer
    from tracer.causal import step_chunk, tail_patch_deltas
    from tracer.featurize.checkpoint import encode_documents
    from tracer.model.loading import load_model
    from tracer.model.tokenization import encode_example

    q = tiny_bench.queries[1]
    with Tracer.open(tiny_index) as t:
        enc = t.retriever.encoder
        model = load_model(enc.dirs[0], attn_implementation="eager")
        docs = list(tiny_bench.documents[:10])
        query = encode_example(enc.tokenizer, q.prompt, q.target, 128)
        examples = encode_documents(enc.tokenizer, docs, 128)
        one = tail_patch_deltas(model, enc.tokenizer, query, examples, 1e-2, chunk=1)
        eight = tail_patch_deltas(model, enc.tokenizer, query, examples, 1e-2, chunk=8)
    np.testing.assert_allclose(one, eight, rtol=1e-5, atol=1e-7)
    assert np.abs(one).max() > 0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert step_chunk(model) == 8
    assert step_chunk(model, budget=3 * weights * 2) == 2
    assert step_chunk(model, budget=weights) == 1
