"""Attribution methods against oracles on a tiny model (exact gradients, explicit solves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tracer import Tracer
from tracer.errors import IndexNotReadyError, InvalidRequestError
from tracer.featurize.config import FeaturizeConfig
from tracer.featurize.exact import per_example_grads
from tracer.index.build import IndexConfig, build_index
from tracer.methods.influence import DEFAULT_DAMPING as INFLUENCE_DAMPING
from tracer.methods.trak import DEFAULT_DAMPING as TRAK_DAMPING
from tracer.model.loading import load_checkpoints, load_model
from tracer.model.tokenization import encode_example, pad_batch
from tracer.retrieval import reciprocal_rank_fusion, scan_full, top_k

N_DOCS = 40
LAYER = "*h.0.attn.c_proj*"  # one Conv1D layer (32x32) + its bias: small enough for explicit matrices
RTOL = 1e-4


@pytest.fixture(scope="module")
def exact_index(tmp_path_factory, tiny_bench, tiny_run):
    """Identity projection, float32 storage, one tracked layer: features are exact gradients."""
    fcfg = FeaturizeConfig.exact(layers=(LAYER,), include_norms=False, dtype="float32", batch_size=8)
    out = tmp_path_factory.mktemp("exact") / "idx"
    build_index(tiny_bench.documents[:N_DOCS], load_checkpoints(tiny_run), out,
                IndexConfig(featurize=fcfg, shard_size=16, trak_dim=256), progress=False)
    return out


def _exact_grads(ck_path, tok, pairs):
    model = load_model(ck_path, attn_implementation="eager")
    enc = [encode_example(tok, p, t) for p, t in pairs]
    batch = pad_batch(enc, tok.pad_token_id)
    names = ["transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias"]
    g = per_example_grads(model, batch, names)
    return torch.cat([g[n].reshape(len(enc), -1) for n in names], 1).double().numpy()


@pytest.fixture(scope="module")
def oracle(exact_index, tiny_bench, tiny_run):
    t = Tracer.open(exact_index)
    tok = t.encoder.tokenizer
    docs = tiny_bench.documents[:N_DOCS]
    q = tiny_bench.queries[0]
    grads = []
    for ck in load_checkpoints(tiny_run):
        g_docs = _exact_grads(ck.path, tok, [("", d.text) for d in docs])
        g_q = _exact_grads(ck.path, tok, [(q.prompt, q.target)])[0]
        grads.append((ck.lr, g_docs, g_q))
    return t, q, grads


def _full_scores(t, q, method):
    res = t.trace(q.prompt, q.target, method=method, candidates="full", k=t.n_documents)
    order = t.store.rows([h.doc_id for h in res.hits])
    out = np.empty(t.n_documents)
    out[order] = [h.score for h in res.hits]
    return out


def test_tracin_equals_exact_gradient_dot_products(oracle):
    t, q, grads = oracle
    expect = sum(lr * g_docs @ g_q for lr, g_docs, g_q in grads)
    np.testing.assert_allclose(_full_scores(t, q, "tracin"), expect, rtol=RTOL, atol=1e-6 * np.abs(expect).max())


def test_influence_equals_explicit_damped_gauss_newton_solve(oracle):
    t, q, grads = oracle
    _, g_docs, g_q = grads[-1]
    n, d_w = g_docs.shape[0], 32 * 32
    fisher = g_docs.T @ g_docs / n
    damped = np.zeros_like(fisher)  # block-diagonal: weight block, bias block
    for sl in (slice(0, d_w), slice(d_w, None)):
        fb = fisher[sl, sl]
        damped[sl, sl] = fb + INFLUENCE_DAMPING * np.trace(fb) / len(fb) * np.eye(len(fb))
    expect = g_docs @ np.linalg.solve(damped, g_q)
    got = _full_scores(t, q, "influence")
    np.testing.assert_allclose(got, expect, rtol=1e-3, atol=1e-5 * np.abs(expect).max())


def test_trak_equals_the_formula_in_numpy(oracle):
    from tracer.featurize.sketch import trak_sketch

    t, q, grads = oracle
    qf = t.features([(q.prompt, q.target)], ["trak"])[0]
    total = np.zeros(t.n_documents)
    for ci in range(len(grads)):
        feats = np.asarray(t.store.features("raw", ci), dtype=np.float64)
        k = min(256, feats.shape[1])
        s = trak_sketch(feats.shape[1], k, 0).astype(np.float64)
        phi = feats @ s
        xtx = phi.T @ phi
        stored = np.asarray(t.store.trak_features(ci)[0], dtype=np.float64)  # float16 rows
        np.testing.assert_allclose(stored, phi, rtol=2 ** -10, atol=2 ** -10 * np.abs(phi).max())
        phi = stored  # the Gram is from the float32 rows; scores read the stored float16 rows
        lam = TRAK_DAMPING * np.trace(xtx) / k
        phi_q = qf.grads["raw"][ci].astype(np.float64) @ s
        p = np.exp(-np.asarray(t.store.losses(ci), dtype=np.float64))
        total += (phi @ np.linalg.solve(xtx + lam * np.eye(k), phi_q)) * (1 - p)
    expect = total / len(grads)
    np.testing.assert_allclose(_full_scores(t, q, "trak"), expect, rtol=1e-3, atol=1e-5 * np.abs(expect).max())


def test_tracin_cos_is_mean_cosine_of_corrected_gradients(oracle):
    t, q, _ = oracle
    qf = t.features([(q.prompt, q.target)], ["tracin_cos"])[0]
    expect = np.zeros(t.n_documents)
    for ci in range(3):
        x = np.asarray(t.store.features("adam", ci), dtype=np.float64)
        g = qf.grads["adam"][ci].astype(np.float64)
        expect += x @ g / np.linalg.norm(x, axis=1) / np.linalg.norm(g) / 3
    np.testing.assert_allclose(_full_scores(t, q, "tracin_cos"), expect, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["bm25", "embedding", "tracin", "tracin_cos", "influence", "trak", "random"])
def test_rerank_equals_full_scoring_restricted_to_candidates(tiny_index, tiny_bench, method):
    t = Tracer.open(tiny_index)
    q = tiny_bench.queries[3]
    qf = t.features([(q.prompt, q.target)], [method], "bm25")[0]
    from tracer.retrieval import candidate_rows

    cand = candidate_rows(t.store, qf, "bm25", 30)
    full = t.method(method).score(qf, np.arange(t.n_documents))
    expect = top_k(full[cand], cand, 10)[1]
    got = t.trace(q.prompt, q.target, method=method, candidates="bm25", num_candidates=30, k=10)
    assert [h.doc_id for h in got.hits] == [t.store.doc_ids[r] for r in expect]


def _reference_bm25(docs_tokens, query_tokens, k1=1.5, b=0.75):
    n = len(docs_tokens)
    avgdl = sum(len(d) for d in docs_tokens) / n
    out = np.zeros(n)
    for term in set(query_tokens):
        df = sum(term in d for d in docs_tokens)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))  # Lucene's BM25 idf
        for i, d in enumerate(docs_tokens):
            tf = d.count(term)
            # Lucene >= 8 (and bm25s "lucene") drop the constant (k1 + 1) factor: ranking is unchanged
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_matches_a_reference_implementation(tiny_index, tiny_bench):
    from tracer.index.lexical import _tokenize

    t = Tracer.open(tiny_index)
    docs_tokens = _tokenize([d.text for d in tiny_bench.documents])
    for q in tiny_bench.queries[:5]:
        got = t.store.bm25().scores(q.prompt + q.target)
        expect = _reference_bm25(docs_tokens, _tokenize([q.prompt + q.target])[0])
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)


def test_embedding_scores_are_cosines(tiny_index, tiny_bench):
    from tracer.featurize.checkpoint import embed_texts

    t = Tracer.open(tiny_index)
    q = tiny_bench.queries[0]
    model = load_model(t.store.checkpoints[-1]["path"])
    e_docs = embed_texts(model, t.encoder.tokenizer, [d.text for d in tiny_bench.documents])
    e_q = embed_texts(model, t.encoder.tokenizer, [q.prompt + q.target])[0]
    np.testing.assert_allclose(_full_scores(t, q, "embedding"), e_docs @ e_q, rtol=1e-2, atol=2e-3)  # fp16 storage


def test_top_k_ties_and_full_scan():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, np.nan])
    rows = np.arange(6)
    s, r = top_k(scores, rows, 3)
    assert r.tolist() == [1, 2, 4] and s.tolist() == [3.0, 3.0, 3.0]
    rng = np.random.default_rng(0)
    big = rng.integers(0, 50, 10_000).astype(float)
    s, r = scan_full(lambda rr: big[rr], len(big), 25, block=777)
    expect = np.lexsort((np.arange(len(big)), -big))[:25]
    assert r.tolist() == expect.tolist()


def test_reciprocal_rank_fusion():
    s, r = reciprocal_rank_fusion([np.array([5, 1, 2]), np.array([1, 5, 9])], k=60)
    assert r[:2].tolist() == [1, 5] and s[0] == pytest.approx(1 / 62 + 1 / 61)


def test_random_is_seeded_and_row_independent(tiny_index, tiny_bench):
    t = Tracer.open(tiny_index)
    q = tiny_bench.queries[0]
    qf = t.features([(q.prompt, q.target)], ["random"])[0]
    a = t.method("random").score(qf, np.arange(20))
    b = t.method("random").score(qf, np.arange(10, 20))
    assert np.array_equal(a[10:], b) and len(set(a)) == 20


def test_bad_requests(tiny_index):
    t = Tracer.open(tiny_index)
    with pytest.raises(InvalidRequestError, match="target must be a non-empty string"):
        t.trace("x", "  ")
    with pytest.raises(InvalidRequestError, match="prompt must be a non-empty string"):
        t.trace("", " y")
    with pytest.raises(InvalidRequestError, match="unknown method 'magic'"):
        t.trace("x", " y", method="magic")
    with pytest.raises(InvalidRequestError, match="unknown candidates source"):
        t.trace("x", " y", candidates="everything")
    with pytest.raises(InvalidRequestError, match="k must be >= 1"):
        t.trace("x", " y", k=0)


def test_method_without_its_features_is_not_ready(tmp_path, tiny_bench, tiny_run):
    from conftest import build_tiny_index

    idx = build_tiny_index(tmp_path / "lex", tiny_bench, tiny_run, gradients=False, influence=False, trak=False,
                           embeddings=False)
    t = Tracer.open(idx)
    assert t.available_methods() == ["bm25", "random"]
    with pytest.raises(IndexNotReadyError, match="built without 'gradients'"):
        t.trace("x", " y", method="tracin")
    with pytest.raises(IndexNotReadyError, match="candidates='gradient'"):
        t.trace("x", " y", method="bm25", candidates="gradient")


def test_evaluation_does_not_depend_on_query_order(tiny_index, tiny_bench):
    from tracer.evaluation import EvalConfig, run_evaluation

    t = Tracer.open(tiny_index)
    qs = list(tiny_bench.queries[:12])
    cfg = EvalConfig(methods=("bm25", "tracin", "random"), policy="ftrace", n_boot=50, batch_size=5)
    a = run_evaluation(t.retriever, qs, cfg)
    b = run_evaluation(t.retriever, qs[::-1], cfg)
    for m in cfg.methods:  # queries are featurized in different batches: scores equal to float error
        for qid, ranked in a.runs[m].items():
            other = b.runs[m][qid]
            assert [d for d, _ in ranked[:10]] == [d for d, _ in other[:10]], (m, qid)
            np.testing.assert_allclose([s for _, s in ranked], [s for _, s in other], rtol=1e-4, atol=1e-6)
    assert a.report["methods"]["bm25"] == b.report["methods"]["bm25"]


def test_evaluate_checks_its_deadline_per_query(tiny_index, tiny_bench, monkeypatch):
    """D2: the deadline is checked before every query, not once per featurized batch of 32."""
    import itertools

    import tracer.evaluation as ev
    from tracer.errors import DeadlineExceededError

    t = Tracer.open(tiny_index)
    clock = itertools.count(0.0, 10.0)  # each reading of the clock is 10 s later
    monkeypatch.setattr(ev.time, "monotonic", lambda: next(clock))
    with pytest.raises(DeadlineExceededError, match=r"after [1-4] of 5 queries"):
        t.evaluate(tiny_bench.queries[:5], methods=["bm25"], deadline=15.0)
