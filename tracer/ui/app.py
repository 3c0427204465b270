"""The explorer's web app (Starlette): the page and four JSON endpoints.

* ``GET /`` — the page (:mod:`tracer.ui.page`);
* ``GET /api/info`` — the index: name, fingerprint, methods, candidate sources, tail-patch or not;
* ``GET /api/queries?q=WORDS&limit=N`` — benchmark queries matching the words (with ``--queries``);
* ``POST /api/trace`` — ``{prompt, target, methods: [...], candidates, k, query_id?}`` → one result
  per method, ``{"results": {method: {"hits": [...], "n_candidates", "ms"} | {"error": str}}}``;
  hits are marked ✓ with the proponents of ``query_id`` when its fact is the one asked;
* ``POST /api/tail_patch`` — ``{prompt, target, doc_ids: [...]}`` → ``{"deltas": {doc_id: Δ log p}, ...}``.

Domain errors (:class:`tracer.errors.TracerError`) become ``{"error": message}`` with status 400
(404 for unknown ids); the page shows them. Nothing here touches files or the network itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tracer.errors import InvalidRequestError, NotFoundError, TracerError
from tracer.types import Query
from tracer.ui.backend import Backend

__all__ = ["MAX_K", "create_app"]

log = logging.getLogger(__name__)

MAX_K = 50  # hits per method the page asks for at most
MAX_METHODS = 8
QUERY_LIST_LIMIT = 50


def _error(exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, NotFoundError) else 400
    return JSONResponse({"error": str(exc)}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequestError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


def _fact(body: dict[str, Any]) -> tuple[str, str]:
    prompt, target = body.get("prompt"), body.get("target")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("prompt must be a non-empty string")
    if not isinstance(target, str) or not target.strip():
        raise InvalidRequestError("target must be a non-empty string")
    return prompt, target


def _matches(q: Query, words: Sequence[str]) -> bool:
    hay = " ".join([q.query_id, q.prompt, q.target, q.relation or "", *q.proponents]).lower()
    return all(w in hay for w in words)


def _query_dict(q: Query) -> dict[str, Any]:
    return {"query_id": q.query_id, "prompt": q.prompt, "target": q.target, "relation": q.relation,
            "proponents": list(q.proponents)}


def create_app(backend: Backend, queries: Sequence[Query] = ()) -> Starlette:
    """The explorer as an ASGI app.

    Args:
        backend: Where answers come from (:class:`tracer.ui.backend.LocalBackend` or ``RemoteBackend``).
        queries: Benchmark queries the page offers (with their proponents, for ✓ marks).
    """
    from tracer.ui.page import PAGE

    by_id = {q.query_id: q for q in queries}

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def info(request: Request) -> JSONResponse:
        try:
            out = await run_in_threadpool(backend.info)
        except TracerError as exc:
            return _error(exc)
        return JSONResponse({**out, "n_queries": len(by_id), "max_k": MAX_K})

    async def list_queries(request: Request) -> JSONResponse:
        words = request.query_params.get("q", "").lower().split()
        try:
            limit = max(1, min(500, int(request.query_params.get("limit", QUERY_LIST_LIMIT))))
        except ValueError:
            return _error(InvalidRequestError("limit must be an integer"))
        found = [q for q in queries if _matches(q, words)]
        return JSONResponse({"n_matching": len(found), "queries": [_query_dict(q) for q in found[:limit]]})

    async def trace(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request)
            prompt, target = _fact(body)
            methods = body.get("methods") or []
            if not isinstance(methods, list) or not methods or len(methods) > MAX_METHODS:
                raise InvalidRequestError(f"methods must list 1 to {MAX_METHODS} method names")
            k = body.get("k", 10)
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
                raise InvalidRequestError(f"k must be an integer in [1, {MAX_K}]")
            candidates = str(body.get("candidates") or "bm25")
            q = by_id.get(str(body.get("query_id") or ""))
            proponents = q.proponents if q is not None and (q.prompt, q.target) == (prompt, target) else ()
        except TracerError as exc:
            return _error(exc)
        results: dict[str, Any] = {}
        for m in methods:
            try:
                results[str(m)] = await run_in_threadpool(backend.trace, prompt, target, str(m), candidates, k,
                                                          proponents)
            except TracerError as exc:
                results[str(m)] = {"error": str(exc)}
        return JSONResponse({"prompt": prompt, "target": target, "candidates": candidates, "k": k,
                             "proponents": list(proponents), "results": results})

    async def tail_patch(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request)
            prompt, target = _fact(body)
            ids = body.get("doc_ids")
            if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
                raise InvalidRequestError("doc_ids must be a list of doc id strings")
            return JSONResponse(await run_in_threadpool(backend.tail_patch, prompt, target, ids))
        except TracerError as exc:
            return _error(exc)

    return Starlette(routes=[
        Route("/", page), Route("/api/info", info), Route("/api/queries", list_queries),
        Route("/api/trace", trace, methods=["POST"]), Route("/api/tail_patch", tail_patch, methods=["POST"]),
    ])
