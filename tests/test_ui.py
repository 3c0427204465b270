"""The explorer (tracer ui): its JSON endpoints through Starlette's test client, and the page in a
real headless Chromium (skipped, with the reason, where no browser is installed)."""

from __future__ import annotations

import math
import os
import shutil

import pytest

pytest.importorskip("starlette", reason="tracer[ui] is not installed")
from starlette.testclient import TestClient  # noqa: E402

from tracer.tracer import Tracer  # noqa: E402
from tracer.ui import LocalBackend, create_app  # noqa: E402

RTOL = 1e-5  # float32 pipeline
METHODS = ["bm25", "tracin"]


@pytest.fixture(scope="module")
def tracer_(tiny_index):
    with Tracer.open(tiny_index) as t:
        yield t


@pytest.fixture(scope="module")
def fact(tiny_bench):
    return next(q for q in tiny_bench.queries if q.proponents)


@pytest.fixture(scope="module")
def client(tracer_, tiny_bench):
    with TestClient(create_app(LocalBackend(tracer_), tiny_bench.queries)) as c:
        yield c


def test_info_and_query_search(client, tracer_, tiny_bench, fact) -> None:
    info = client.get("/api/info").json()
    assert info["name"] == tracer_.name and info["fingerprint"] == tracer_.fingerprint
    assert set(METHODS) <= set(info["methods"]) and "bm25" in info["candidates"]
    assert info["tail_patch"] is True and info["n_queries"] == len(tiny_bench.queries)
    found = client.get("/api/queries", params={"q": fact.query_id}).json()
    assert found["queries"][0]["query_id"] == fact.query_id
    assert found["queries"][0]["proponents"] == list(fact.proponents)
    assert client.get("/api/queries", params={"q": "no-such-words-anywhere"}).json()["n_matching"] == 0
    page = client.get("/")
    assert page.status_code == 200 and "tracer explorer" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_trace_endpoint_equals_the_api(client, tracer_, fact) -> None:
    body = {"prompt": fact.prompt, "target": fact.target, "methods": METHODS, "candidates": "bm25", "k": 5,
            "query_id": fact.query_id}
    got = client.post("/api/trace", json=body).json()
    assert got["proponents"] == list(fact.proponents)
    for m in METHODS:
        want = tracer_.trace(fact.prompt, fact.target, method=m, candidates="bm25", k=5, include_text=True)
        hits = got["results"][m]["hits"]
        assert [h["doc_id"] for h in hits] == [h.doc_id for h in want.hits]
        assert all(math.isclose(a["score"], b.score, rel_tol=RTOL, abs_tol=1e-6) for a, b in zip(hits, want.hits))
        assert [h["proponent"] for h in hits] == [h.doc_id in fact.proponents for h in want.hits]
        assert hits[0]["text"] == want.hits[0].text
    # Edited fact: the benchmark's proponents no longer apply, so nothing is marked.
    other = client.post("/api/trace", json={**body, "target": " Elsewhere"}).json()
    assert other["proponents"] == [] and all(h["proponent"] is None for h in other["results"]["bm25"]["hits"])


def test_trace_errors_are_one_line_json(client, fact) -> None:
    r = client.post("/api/trace", json={"prompt": fact.prompt, "target": " ", "methods": ["bm25"]})
    assert r.status_code == 400 and r.json() == {"error": "target must be a non-empty string"}
    r = client.post("/api/trace", json={"prompt": fact.prompt, "target": fact.target, "methods": ["bm25", "nope"]})
    assert r.status_code == 200
    assert r.json()["results"]["bm25"]["hits"] and "nope" in r.json()["results"]["nope"]["error"]
    assert client.post("/api/trace", content=b"{not json").status_code == 400
    r = client.post("/api/trace", json={"prompt": "a", "target": "b", "methods": ["bm25"], "k": 0})
    assert r.status_code == 400 and "k must be" in r.json()["error"]


def test_tail_patch_endpoint_equals_verify(client, tracer_, fact) -> None:
    ids = [h.doc_id for h in tracer_.trace(fact.prompt, fact.target, method="bm25", k=3).hits]
    got = client.post("/api/tail_patch", json={"prompt": fact.prompt, "target": fact.target, "doc_ids": ids}).json()
    want = tracer_.verify(fact.prompt, fact.target, ids, checkpoint=0, lr=1e-2)
    assert list(got["deltas"]) == ids
    for v in want.examples:
        assert math.isclose(got["deltas"][v.doc_id], v.delta_logprob, rel_tol=RTOL, abs_tol=1e-6)
    assert got["lr"] == 1e-2 and got["checkpoint"] == 0 and got["baseline_mean"] is not None
    r = client.post("/api/tail_patch", json={"prompt": fact.prompt, "target": fact.target, "doc_ids": ["NOPE"]})
    assert r.status_code == 404 and "NOPE" in r.json()["error"]
    r = client.post("/api/tail_patch", json={"prompt": fact.prompt, "target": fact.target, "doc_ids": []})
    assert r.status_code == 400


# ---------------------------------------------------------------- real browser

def _chromium() -> str | None:
    for cand in (os.environ.get("TRACER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and (path := shutil.which(cand) or (cand if os.path.isfile(cand) else None)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set TRACER_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        except Exception as exc:  # noqa: BLE001 - a browser that will not start is a skip, with why
            pytest.skip(f"Chromium at {exe} did not start: {exc}".splitlines()[0])
        yield b
        b.close()


@pytest.fixture(scope="module")
def live_url(tracer_, tiny_bench):
    from tracer.ui.server import start_in_thread

    server, thread, port = start_in_thread(create_app(LocalBackend(tracer_), tiny_bench.queries))
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_explorer_in_a_real_browser(browser, live_url, tracer_, fact, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_url)
    page.wait_for_selector("input[name=method]")
    # Pick the benchmark fact from the search box, choose the methods and the candidates, trace.
    page.fill("#bench-search", fact.query_id)
    page.click(f"#bench-list div[data-qid='{fact.query_id}']")
    assert page.input_value("#prompt") == fact.prompt and page.input_value("#target") == fact.target
    for box in page.query_selector_all("input[name=method]"):
        box.set_checked(box.get_attribute("value") in METHODS)
    page.select_option("#candidates", "bm25")
    page.fill("#k", "5")
    page.click("#trace-btn")
    page.wait_for_selector("#status[data-done]", timeout=60_000)
    for m in METHODS:
        want = tracer_.trace(fact.prompt, fact.target, method=m, candidates="bm25", k=5)
        hits = page.query_selector_all(f".col[data-method='{m}'] .hit")
        assert [h.get_attribute("data-doc") for h in hits] == [h.doc_id for h in want.hits]
        scores = [float(h.get_attribute("data-score")) for h in hits]
        assert all(math.isclose(a, b.score, rel_tol=RTOL, abs_tol=1e-6) for a, b in zip(scores, want.hits))
        marked = [h.query_selector(".ok") is not None for h in hits]
        assert marked == [h.doc_id in fact.proponents for h in want.hits]
    # The causal check on the shown bm25 hits puts a Δ log p beside each.
    page.click(".col[data-method='bm25'] .tp-btn")
    page.wait_for_selector(".col[data-method='bm25'][data-tailpatch]", timeout=120_000)
    deltas = page.query_selector_all(".col[data-method='bm25'] .hit .tp")
    assert len(deltas) == 5 and all("Δ log p" in d.inner_text() for d in deltas)
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and not errors
    page.close()


def test_report_drilldown_in_a_real_browser(browser, tiny_index, tiny_bench, tmp_path) -> None:
    """The report opens offline, its filter box narrows the list, and a row shows each method's hits."""
    from tracer.metrics.report import write_report

    queries = [q for q in tiny_bench.queries if q.proponents][:6]
    with Tracer.open(tiny_index) as t:
        report = t.evaluate(queries, methods=["bm25", "random"], n_boot=50)
    paths = write_report(tmp_path / "rep", report)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:") else route.continue_())
    page.goto(paths["html"].as_uri())
    assert len(page.query_selector_all("#dd-list tbody tr")) == len(queries)
    page.fill("#dd-search", queries[2].query_id)
    rows = page.query_selector_all("#dd-list tbody tr")
    assert [r.get_attribute("data-qid") for r in rows] == [queries[2].query_id]
    rows[0].click()
    cols = page.query_selector_all("#dd-detail .hits .col")
    assert len(cols) == 2 and queries[2].prompt in page.inner_text("#dd-detail")
    shown = [x.inner_text() for x in cols[0].query_selector_all(".hit .id")]
    want = report["details"]["hits"]["bm25"][queries[2].query_id]
    assert [s.split()[-1] for s in shown] == [d for d, _ in want]
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert not errors
    page.close()
