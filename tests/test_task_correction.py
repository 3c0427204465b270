"""TrackStar's task-specific correction for ``tracin_cos`` (Chang et al. 2024), against brute force.

The oracle index tracks one Conv1D layer and its bias at full width in the K-FAC basis, float32:
its rows are exact per-example gradients rotated (``test_kfac`` checks that), so the formula
``R = lambda R_eval + (1 - lambda) R_train`` can be recomputed here from the stored rows and the
query gradients, with nothing from the method's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tracer.featurize.config import FeaturizeConfig

LAMBDA, DAMPING = 0.4, 0.3


@pytest.fixture(scope="module")
def exact_index(tmp_path_factory, tiny_bench, tiny_run):
    from tracer.index.build import IndexConfig, build_index
    from tracer.model.loading import load_checkpoints

    fcfg = FeaturizeConfig(layers=("*h.0.attn.c_proj*",), include_norms=False, k_in=0, k_out=0, dim=0,
                           dtype="float32", batch_size=8)
    out = tmp_path_factory.mktemp("task_exact") / "idx"
    build_index(tiny_bench.documents[:40], load_checkpoints(tiny_run), out,
                IndexConfig(featurize=fcfg, shard_size=16, trak=False, embeddings=False), progress=False)
    return out


def _scores(t, q, method):
    res = t.trace(q.prompt, q.target, method=method, candidates="full", k=t.n_documents)
    out = np.empty(t.n_documents)
    out[t.store.rows([h.doc_id for h in res.hits])] = [h.score for h in res.hits]
    return out


def _brute_force(t, pairs, q_pair, lam, damping):
    """mean_c cos(g(q) w_c, x w_c), w_c = 1/sqrt(R_c + damping mean R_c), R_c the normalised mix."""
    qfs = t.features(list(pairs), ["tracin"])
    g = t.features([q_pair], ["tracin"])[0]
    out = np.zeros(t.n_documents)
    n_ckpt = len(t.store.checkpoints)
    for ci in range(n_ckpt):
        x = np.asarray(t.store.features("raw", ci), dtype=np.float64)
        r_train = (x ** 2).mean(0)
        r_eval = np.mean([qf.grads["raw"][ci].astype(np.float64) ** 2 for qf in qfs], axis=0)
        r = lam * r_eval * r_train.mean() / r_eval.mean() + (1 - lam) * r_train
        w = 1 / np.sqrt(r + damping * r.mean())
        gq = g.grads["raw"][ci].astype(np.float64) * w
        out += (x * w) @ gq / np.linalg.norm(x * w, axis=1) / np.linalg.norm(gq) / n_ckpt
    return out


def test_task_corrected_tracin_cos_equals_brute_force(exact_index, tiny_bench):
    from tracer import Tracer
    from tracer.methods.task import fit_task_corrections

    pairs = [(q.prompt, q.target) for q in tiny_bench.queries[:8]]
    t = Tracer.open(exact_index, method_params={"tracin_cos": {"damping": DAMPING, "task_lambda": LAMBDA}})
    info = fit_task_corrections(t.retriever, pairs, ["tracin", "tracin_cos"], batch_size=3)
    assert info == {"tracin_cos": {"task_lambda": LAMBDA, "n_queries": 8,
                                   "normalize": "mean(R_eval) = mean(R_train)"}}
    q = tiny_bench.queries[9]
    want = _brute_force(t, pairs, (q.prompt, q.target), LAMBDA, DAMPING)
    np.testing.assert_allclose(_scores(t, q, "tracin_cos"), want, rtol=1e-4, atol=1e-6)
    # the correction changes the scores (else the test would prove nothing)
    plain = _brute_force(t, pairs, (q.prompt, q.target), 0.0, DAMPING)
    assert np.abs(want - plain).max() > 1e-3


def test_lambda_zero_is_plain_tracin_cos_and_given_moments_equal_fitted(exact_index, tiny_bench, tmp_path):
    from tracer import Tracer
    from tracer.methods.task import fit_task_corrections, query_moments

    q = tiny_bench.queries[9]
    plain = _scores(Tracer.open(exact_index, method_params={"tracin_cos": {"damping": DAMPING}}), q, "tracin_cos")
    zero = Tracer.open(exact_index, method_params={"tracin_cos": {"damping": DAMPING, "task_lambda": 0.0}})
    assert not zero.retriever.method("tracin_cos").wants_task_fit
    np.testing.assert_array_equal(_scores(zero, q, "tracin_cos"), plain)

    pairs = [(x.prompt, x.target) for x in tiny_bench.queries[:8]]
    fitted = Tracer.open(exact_index, method_params={"tracin_cos": {"damping": DAMPING, "task_lambda": LAMBDA}})
    fit_task_corrections(fitted.retriever, pairs, ["tracin_cos"])
    moments = np.stack(query_moments(fitted.features(pairs, ["tracin"]), "raw"))
    np.save(tmp_path / "r_eval.npy", moments)
    given = Tracer.open(exact_index, method_params={"tracin_cos": {"damping": DAMPING, "task_lambda": LAMBDA,
                                                                   "task_moments": str(tmp_path / "r_eval.npy")}})
    assert not given.retriever.method("tracin_cos").wants_task_fit
    np.testing.assert_allclose(_scores(given, q, "tracin_cos"), _scores(fitted, q, "tracin_cos"), rtol=1e-6)


def test_unfitted_correction_refuses_and_bad_lambda_is_rejected(exact_index, tiny_bench):
    from tracer import Tracer
    from tracer.errors import InvalidRequestError

    t = Tracer.open(exact_index, method_params={"tracin_cos": {"task_lambda": 0.5}})
    q = tiny_bench.queries[0]
    with pytest.raises(InvalidRequestError, match="needs R_eval"):
        t.trace(q.prompt, q.target, method="tracin_cos", candidates="full", k=3)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="task_lambda must be in"):
            Tracer.open(exact_index, method_params={"tracin_cos": {"task_lambda": bad}}).retriever.method("tracin_cos")


def test_evaluate_fits_on_its_queries_and_records_lambda(exact_index, tiny_bench):
    from tracer import Tracer

    queries = [q for q in tiny_bench.queries[:10] if q.proponents]
    t = Tracer.open(exact_index, method_params={"tracin_cos": {"damping": DAMPING, "task_lambda": LAMBDA}})
    report = t.evaluate(queries, methods=["tracin_cos"], candidates="full", n_boot=10)
    assert report["settings"]["task_corrections"]["tracin_cos"]["task_lambda"] == LAMBDA
    assert report["settings"]["task_corrections"]["tracin_cos"]["n_queries"] == len(queries)
    json.dumps(report["settings"])  # serialisable
