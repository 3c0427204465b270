"""Where the explorer's answers come from: an index opened in-process, or a tracer server.

Both backends return plain JSON-able dicts, so :mod:`tracer.ui.app` never sees a transport. A
trace marks hits ✓ when the caller passes the fact's known proponents; the tail-patch check is
:meth:`tracer.Tracer.verify` in-process and the ``Verify`` RPC over gRPC (the eval's computation,
one SGD step per example from the first checkpoint, with a seeded random baseline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from typing import Any, Protocol

from tracer.errors import InvalidRequestError

__all__ = ["MAX_TAIL_PATCH", "Backend", "LocalBackend", "RemoteBackend", "hit_dicts"]

# Hits checked per tail-patch request (one parameter copy each, stepped in chunks).
MAX_TAIL_PATCH = 20
TAIL_PATCH_LR = 1e-2  # the eval's step size (EvalConfig.tail_patch_lr)
TAIL_PATCH_CHECKPOINT = 0  # the eval's checkpoint: the first, where facts are not yet learned
N_RANDOM = 3  # seeded random corpus examples stepped on too: the baseline a real supporter should beat


class Backend(Protocol):
    """What the explorer needs from an index."""

    def info(self) -> dict[str, Any]: ...

    def trace(self, prompt: str, target: str, method: str, candidates: str, k: int,
              proponents: Collection[str]) -> dict[str, Any]: ...

    def tail_patch(self, prompt: str, target: str, doc_ids: Sequence[str]) -> dict[str, Any]: ...


def hit_dicts(hits: Sequence[Any], proponents: Collection[str]) -> list[dict[str, Any]]:
    """``Hit`` records as the page draws them; ``proponent`` is None when no proponent is known."""
    known = set(proponents)
    return [{"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "text": h.text or "",
             "proponent": (h.doc_id in known) if known else None} for h in hits]


class LocalBackend:
    """An index directory opened in-process (the tail-patch check is available)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self._lock = threading.Lock()  # one query at a time: the page is for one person

    def info(self) -> dict[str, Any]:
        t = self.tracer
        return {"name": t.name, "fingerprint": t.fingerprint, "n_documents": t.n_documents,
                "methods": t.available_methods(), "candidates": t.available_candidates(),
                "tail_patch": bool(t.store.manifest.get("checkpoints")), "source": "index"}

    def trace(self, prompt: str, target: str, method: str, candidates: str, k: int,
              proponents: Collection[str]) -> dict[str, Any]:
        with self._lock:
            res = self.tracer.trace(prompt, target, method=method, candidates=candidates, k=k, include_text=True)
        return {"method": res.method, "candidates": res.candidates, "n_candidates": res.n_candidates,
                "ms": round(res.timings_ms.get("total_ms", 0.0), 1), "hits": hit_dicts(res.hits, proponents)}

    def tail_patch(self, prompt: str, target: str, doc_ids: Sequence[str]) -> dict[str, Any]:
        ids = _check_ids(doc_ids)
        t0 = time.perf_counter()
        with self._lock:
            v = self.tracer.verify(prompt, target, ids, checkpoint=TAIL_PATCH_CHECKPOINT, lr=TAIL_PATCH_LR,
                                   n_random=N_RANDOM, max_examples=MAX_TAIL_PATCH + N_RANDOM)
        return _verification(v, t0)


class RemoteBackend:
    """A tracer server over gRPC (tail-patch through its ``Verify`` RPC)."""

    def __init__(self, client: Any, index: str | None = None) -> None:
        self.client = client
        self.index = index

    def info(self) -> dict[str, Any]:
        i = self.client.get_index(self.index)
        return {"name": i.get("name"), "fingerprint": i.get("fingerprint"), "n_documents": i.get("n_documents"),
                "methods": i.get("methods", []), "candidates": i.get("candidates", []),
                "tail_patch": bool(i.get("checkpoints")),
                "source": "server"}

    def trace(self, prompt: str, target: str, method: str, candidates: str, k: int,
              proponents: Collection[str]) -> dict[str, Any]:
        res = self.client.trace(prompt, target, method=method, candidates=candidates, k=k, include_text=True,
                                index=self.index)
        return {"method": res.method, "candidates": res.candidates, "n_candidates": res.n_candidates,
                "ms": round(res.timings_ms.get("total_ms", 0.0), 1), "hits": hit_dicts(res.hits, proponents)}

    def tail_patch(self, prompt: str, target: str, doc_ids: Sequence[str]) -> dict[str, Any]:
        ids = _check_ids(doc_ids)
        t0 = time.perf_counter()
        v = self.client.verify(prompt, target, ids, checkpoint=TAIL_PATCH_CHECKPOINT, lr=TAIL_PATCH_LR,
                               n_random=N_RANDOM, index=self.index)
        return _verification(v, t0)


def _verification(v: Any, t0: float) -> dict[str, Any]:
    """A :class:`tracer.verification.Verification` as the page shows it."""
    base = [b.delta_logprob for b in v.baseline]
    return {"deltas": {e.doc_id: e.delta_logprob for e in v.examples},
            "baseline_mean": sum(base) / len(base) if base else None, "lr": v.lr, "checkpoint": v.checkpoint,
            "ms": round((time.perf_counter() - t0) * 1e3, 1)}


def _check_ids(doc_ids: Sequence[str]) -> list[str]:
    ids = list(dict.fromkeys(str(d) for d in doc_ids))
    if not ids:
        raise InvalidRequestError("doc_ids is empty: nothing to tail-patch")
    if len(ids) > MAX_TAIL_PATCH:
        raise InvalidRequestError(f"at most {MAX_TAIL_PATCH} examples per tail-patch, got {len(ids)}")
    return ids
