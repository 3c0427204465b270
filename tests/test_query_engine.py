"""The query engine: the int8 scoring kernel against float64 brute force, the micro-batcher, and
concurrent queries answered exactly as when run alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tracer.batching import BatchingConfig, MicroBatcher
from tracer.errors import DeadlineExceededError, InvalidRequestError
from tracer.index.quant import Int8Rows, block_bounds, quantize
from tracer.methods import kernel


def _int8_matrix(n=300, widths=(40, 7, 100, 1, 64), seed=0, prescale=True):
    rng = np.random.default_rng(seed)
    layout, off = [], 0
    for w in widths:
        layout.append({"offset": off, "size": w})
        off += w
    bounds = block_bounds(layout)
    x = rng.standard_normal((n, off)).astype(np.float32) * rng.uniform(0.01, 10, off).astype(np.float32)
    pre = rng.uniform(0.1, 3, off).astype(np.float32) if prescale else None
    q, s = quantize(x / pre if prescale else x, bounds)
    return Int8Rows(q, s, bounds, pre)


@pytest.mark.parametrize("rows", ["sorted", "unsorted", "contiguous", "tiny", "slice"])
@pytest.mark.parametrize("prescale", [True, False])
def test_int8_kernel_equals_float64_brute_force(rows, prescale):
    mat = _int8_matrix(prescale=prescale)
    rng = np.random.default_rng(1)
    sel = {"sorted": np.sort(rng.choice(300, 170, replace=False)),
           "unsorted": rng.choice(300, 170, replace=False),
           "contiguous": np.arange(20, 290),
           "tiny": np.array([5, 3]),
           "slice": slice(10, 280)}[rows]
    x = np.asarray(mat[np.arange(300)], dtype=np.float64)[sel]
    v = rng.standard_normal((mat.shape[1], 3))
    want = x @ v
    got, sq, exact = kernel.row_dots(mat, sel, v, (v * v)[:, :1], v[:, :2])
    scale = np.abs(x).max() * np.abs(v).sum(0).max()  # bound on any |<x, v>|
    assert np.abs(got - want).max() <= 1e-4 * scale  # 2 int8 digits: ~3e-5 of each block's max
    assert np.abs(exact - want[:, :2]).max() <= 1e-8 * scale  # 4 digits
    np.testing.assert_allclose(sq[:, 0], (x * x) @ (v * v)[:, 0], rtol=1e-5)


def test_int8_terms_reconstruct_within_the_stated_bound():
    rng = np.random.default_rng(2)
    bounds = np.array([0, 5, 5, 50, 51, 200])  # an empty block and a one-wide block too
    v = rng.standard_normal((200, 2)) * np.repeat(rng.uniform(1e-3, 1e3, 5), np.diff(bounds))[:, None]
    for terms in (1, 2, 3, 4):
        digits, amp = kernel.int8_terms(v, bounds, terms)
        assert digits.shape[1] % 16 == 0
        nb = len(bounds) - 1
        d = digits[:, : nb * terms * 2].reshape(200, nb, terms, 2).astype(np.float64)
        back = np.einsum("dbtk,btk->dk", d, amp)
        for b in range(nb):
            sl = slice(bounds[b], bounds[b + 1])
            if bounds[b + 1] > bounds[b]:
                top = np.abs(v[sl]).max(0)
                assert np.all(np.abs(back[sl] - v[sl]).max(0) <= top / (2 * 127.0**terms) * (1 + 1e-9))


def test_float_rows_take_the_float_path():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 30)).astype(np.float16)
    v = rng.standard_normal((30, 2))
    got, _, exact = kernel.row_dots(x, np.array([4, 1, 9]), v, None, v)
    want = x.astype(np.float64)[[4, 1, 9]] @ v
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exact, want, rtol=1e-12)


def test_every_gradient_method_scores_the_same_alone_and_together(tiny_index, tiny_bench):
    from tracer import Tracer

    t = Tracer.open(tiny_index)
    names = ["tracin", "tracin_cos", "influence"]
    q = tiny_bench.queries[2]
    qf = t.features([(q.prompt, q.target)], names)[0]
    rows = np.arange(0, t.n_documents, 3)
    together = kernel.score_together(t.store, qf, rows, [t.method(n) for n in names])
    for n in names:
        np.testing.assert_allclose(together[n], t.method(n).score(qf, rows), rtol=1e-12)
    full = t.retriever.rank_many(qf, names, 5)  # blockwise full scan, all methods in one pass
    for n in names:
        s = t.method(n).score(qf, np.arange(t.n_documents))
        assert list(full[n][1]) == list(np.lexsort((np.arange(t.n_documents), -s))[:5])


# ----------------------------------------------------------------------------- micro-batching
def test_micro_batcher_batches_concurrent_callers_and_splits_results():
    calls: list[list[int]] = []
    gate = threading.Event()

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            gate.wait(5)  # hold the first batch so the others queue up behind it
        return [x * 10 for x in items]

    b = MicroBatcher(fn, BatchingConfig(max_batch=8))
    out: dict[int, list[int]] = {}
    first = threading.Thread(target=lambda: out.__setitem__(0, b.submit([0])))
    first.start()
    while not calls:
        time.sleep(0.001)
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, b.submit([i, i + 100]))) for i in range(1, 7)]
    for th in threads:
        th.start()
    time.sleep(0.2)
    gate.set()
    for th in [first, *threads]:
        th.join(5)
    assert out == {0: [0], **{i: [10 * i, 10 * (i + 100)] for i in range(1, 7)}}
    assert len(calls[1]) == 8 and len(calls) == 3  # 12 queued items: a batch of 8 (4 requests), then 4


def test_micro_batcher_deadline_and_isolation():
    gate = threading.Event()

    def fn(items: list[int]) -> list[int]:
        if items == [0]:
            gate.wait(5)
        if -1 in items:
            raise InvalidRequestError("bad item")
        return items

    b = MicroBatcher(fn)
    th = threading.Thread(target=b.submit, args=([0],))
    th.start()
    time.sleep(0.05)
    with pytest.raises(DeadlineExceededError):  # waiting behind a running batch, past its deadline
        b.submit([1], deadline=time.monotonic() + 0.1)
    results: dict[str, object] = {}

    def run(name: str, items: list[int]) -> None:
        try:
            results[name] = b.submit(items)
        except InvalidRequestError as exc:
            results[name] = exc

    ts = [threading.Thread(target=run, args=("good", [2, 3])), threading.Thread(target=run, args=("bad", [-1]))]
    for t in ts:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in [th, *ts]:
        t.join(5)
    assert results["good"] == [2, 3] and isinstance(results["bad"], InvalidRequestError)


def test_concurrent_traces_answer_as_alone(tiny_index, tiny_bench):
    """16 threads, different queries and methods at once: every answer equals the query run alone."""
    from tracer import Tracer

    t = Tracer.open(tiny_index)
    t.warm()
    jobs = [(q, m) for q in tiny_bench.queries[:8] for m in ("tracin", "influence")]
    alone = {(q.query_id, m): t.trace(q.prompt, q.target, method=m, k=10, num_candidates=40) for q, m in jobs}
    got: dict[tuple[str, str], object] = {}
    start = threading.Barrier(len(jobs))

    def run(q, m):  # type: ignore[no-untyped-def]
        start.wait()
        got[(q.query_id, m)] = t.trace(q.prompt, q.target, method=m, k=10, num_candidates=40)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert len(got) == len(jobs)
    for key, want in alone.items():
        res = got[key]
        assert [h.doc_id for h in res.hits] == [h.doc_id for h in want.hits], key  # type: ignore[attr-defined]
        np.testing.assert_allclose([h.score for h in res.hits], [h.score for h in want.hits],  # type: ignore
                                   rtol=1e-4, atol=1e-6)
    assert t.retriever.batcher.batches < t.retriever.batcher.items  # some queries shared a batch


def test_tracer_is_a_context_manager(tiny_index, tiny_bench):
    from tracer import Tracer

    q = tiny_bench.queries[0]
    with Tracer.open(tiny_index) as t:
        assert t.trace(q.prompt, q.target, method="bm25", k=2).hits
        assert t.retriever._methods  # loaded
    assert not t.retriever._methods and t.retriever._encoder is None  # released on exit
