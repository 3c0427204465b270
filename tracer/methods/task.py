"""Task-specific corrections fitted on an evaluation query set (TrackStar, Chang et al. 2024).

A method that wants one (``wants_task_fit``, e.g. ``tracin_cos`` with ``task_lambda`` > 0) gets
``R_eval = E_q[g_i(q)^2]``: the per-coordinate second moment of the query set's stored-basis
gradients, one ``(dim,)`` float64 array per checkpoint, through ``fit_task(moments, n_queries)``.
:func:`fit_task_corrections` computes it in one featurizing pass over the queries; ``evaluate``
and the LDS benchmark call it before scoring, so the correction always comes from the very
queries being evaluated (and is recorded in their reports).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tracer.methods.base import QueryFeatures


def query_moments(feats: Sequence[QueryFeatures], view: str) -> list[np.ndarray]:
    """``E_q[g_c,i(q)^2]`` per checkpoint ``c``: a list of ``(dim,)`` float64 arrays.

    Raises:
        ValueError: If ``feats`` is empty or a query lacks gradients of ``view``.
    """
    if not feats:
        raise ValueError("a task correction needs at least one query")
    n_ckpt = len(feats[0].grads[view])
    return [np.mean([np.asarray(q.grads[view][c], dtype=np.float64) ** 2 for q in feats], axis=0)
            for c in range(n_ckpt)]


def fit_task_corrections(retriever: Any, pairs: Sequence[tuple[str, str]], methods: Sequence[str],
                         batch_size: int = 32, deadline: float | None = None) -> dict[str, dict[str, Any]]:
    """Fit ``R_eval`` on ``pairs`` for every method in ``methods`` that wants it.

    Args:
        retriever: A :class:`tracer.retrieval.Retriever` (its cached method objects are fitted).
        pairs: The evaluation queries, ``(prompt, target)``.
        methods: Method names (those without ``wants_task_fit`` are left alone).
        batch_size: Queries featurized together.
        deadline: ``time.monotonic()`` deadline for featurizing.

    Returns:
        ``{method: task_info}`` for the fitted methods (empty when none wants a fit).
    """
    names = [m for m in methods if getattr(retriever.method(m), "wants_task_fit", False)]
    if not names or not pairs:
        return {}
    sums: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(pairs), batch_size):
        feats = retriever.features(list(pairs[s:s + batch_size]), names, "full", deadline)
        for name in names:
            view = retriever.method(name).view()
            part = [m * len(feats) for m in query_moments(feats, view)]
            acc = sums.get(view)
            sums[view] = part if acc is None else [a + b for a, b in zip(acc, part)]
    return {name: retriever.method(name).fit_task([m / len(pairs) for m in sums[retriever.method(name).view()]],
                                                 len(pairs)) for name in names}
