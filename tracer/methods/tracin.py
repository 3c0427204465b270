"""TracIn-CP (Pruthi et al. 2020) on projected gradients, raw and cosine (TrackStar) variants.

``tracin``: ``sum_c lr_c <g_c(q), g_c(z)>`` — the first-order loss change summed over
checkpoints. ``tracin_cos``: ``mean_c cos(g~_c(q), g~_c(z))`` with second-moment-corrected
gradients (Chang et al. 2024, TrackStar; FTRACE's best TracIn variant). In a K-FAC index
``g~_i = g_i / sqrt(Lambda_i + lambda)`` with ``Lambda_i = E_z[g_i^2]`` the per-coordinate
second moment in the eigenbasis (the same diagonal EK-FAC influence uses; ``lambda`` =
``damping`` x its mean); with random projections ``g~ = g / sqrt(v)`` from Adam's state when
the index has it, raw gradients otherwise. Unit normalisation removes the bias toward
examples with large gradients (outliers, long documents).

TrackStar's task-specific correction (``task_lambda`` > 0, K-FAC indexes): the diagonal becomes
``R = task_lambda * R_eval + (1 - task_lambda) * R_train``, with ``R_train = Lambda`` (fitted at
build time, the index's moments) and ``R_eval = E_q[g_i(q)^2]`` over an evaluation query set
(:func:`tracer.methods.task.fit_task_corrections`, run by ``evaluate`` and the LDS benchmark, or
``task_moments`` given). ``R_eval`` is first rescaled to ``R_train``'s mean (queries' losses cover
a few target tokens, documents' their whole text, so their raw scales differ); directions shared
by every query of a template are then down-weighted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer.featurize.views import ADAM, RAW
from tracer.methods.base import GradientMethod, QueryFeatures


def tracin_space(vectors: list[np.ndarray], lrs: list[float]) -> np.ndarray:
    """``[sqrt(lr_c) v_c]_c`` concatenated: the space where ``<a, b>`` is the TracIn-CP sum over checkpoints.

    The one place this concatenation is written: the gradient FAISS index stores corpus rows in
    it, and queries are searched in it.
    """
    return np.concatenate([np.sqrt(lr) * np.asarray(v, dtype=np.float32) for v, lr in zip(vectors, lrs)], axis=-1)


def tracin_combine(dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """``sum_c <lr_c g_c(q), g_c(z)>`` from the per-checkpoint products (the lr is in the query vector)."""
    return np.sum([d[:, 0] for d, _ in dots.values()], axis=0)


def cosine_combine(dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """``mean_c <w_c g~_c(q)/|g~_c(q)|, g_c(z)> / |w_c g_c(z)|`` from products and squared products."""
    total = 0.0
    for d, sq in dots.values():
        assert sq is not None
        total = total + d[:, 0] / np.maximum(np.sqrt(np.maximum(sq[:, 0], 0.0)), 1e-30)
    return np.asarray(total, dtype=np.float64) / len(dots)


class TracIn(GradientMethod):
    name = "tracin"
    description = "sum over checkpoints of lr * <grad loss(query), grad loss(example)> (TracIn-CP)"

    def vectors(self, q: QueryFeatures, ci: int) -> np.ndarray:
        return (self.store.checkpoints[ci]["lr"] * q.grads[RAW][ci].astype(np.float64))[:, None]

    def combine(self, dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        return tracin_combine(dots)


DEFAULT_WHITEN_DAMPING = 0.1  # relative to the mean second moment; see the README's tracin_cos comparison
DEFAULT_TASK_LAMBDA = 0.0  # TrackStar's task-specific mix; 0 = R_train only (the build-time moments)


def whitening(moments: np.ndarray, damping: float) -> np.ndarray:
    """``1 / sqrt(Lambda + damping * mean(Lambda))`` per coordinate (float32)."""
    lam = np.asarray(moments, dtype=np.float64)
    return (1.0 / np.sqrt(lam + damping * max(float(lam.mean()), 1e-30))).astype(np.float32)


def task_mix(train: np.ndarray, task: np.ndarray, task_lambda: float) -> np.ndarray:
    """``lambda * R_eval * mean(R_train) / mean(R_eval) + (1 - lambda) * R_train`` (float64, TrackStar).

    Both are per-coordinate second moments; ``R_eval`` is rescaled to ``R_train``'s mean so that
    ``task_lambda`` weighs their shapes, not their scales, and the whitening damping keeps its meaning.
    """
    r_train = np.asarray(train, dtype=np.float64)
    r_eval = np.asarray(task, dtype=np.float64)
    if r_eval.shape != r_train.shape:
        raise ValueError(f"task moments have shape {r_eval.shape}, the index's {r_train.shape}")
    scale = max(float(r_train.mean()), 1e-30) / max(float(r_eval.mean()), 1e-30)
    return task_lambda * scale * r_eval + (1.0 - task_lambda) * r_train


def _load_task_moments(task_moments: Any) -> list[np.ndarray] | None:
    """``None``, a ``.npy`` path of shape ``(n_ckpt, dim)``, or one array per checkpoint."""
    if task_moments is None:
        return None
    if isinstance(task_moments, (str, bytes)) or hasattr(task_moments, "__fspath__"):
        task_moments = np.load(task_moments)
    return [np.asarray(m, dtype=np.float64) for m in task_moments]


class TracInCosine(GradientMethod):
    name = "tracin_cos"
    description = "mean over checkpoints of cosine of second-moment-corrected gradients (TrackStar)"

    def __init__(self, store, damping: float = DEFAULT_WHITEN_DAMPING,  # type: ignore[no-untyped-def]
                 task_lambda: float = DEFAULT_TASK_LAMBDA, task_moments: Any = None, **params):
        super().__init__(store, **params)
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        if not 0.0 <= task_lambda <= 1.0:
            raise ValueError(f"task_lambda must be in [0, 1], got {task_lambda}")
        self.damping = damping
        self.whiten = store.has("fit") and store.has("moments")
        if task_lambda > 0 and not self.whiten:
            raise ValueError("task_lambda needs a K-FAC index (fit and moments stages)")
        self.task_lambda = task_lambda
        self._task = _load_task_moments(task_moments)
        self._task_given = self._task is not None
        self._task_n: int | None = None  # queries R_eval was fitted on (None: given or unfitted)
        self._w: dict[int, np.ndarray] = {}
        self._norms: dict[int, np.ndarray] = {}  # ckpt -> |w x|^2 per corpus row (NaN: not yet computed)

    @property
    def wants_task_fit(self) -> bool:
        """True when ``R_eval`` must be fitted on the evaluated queries (λ > 0, no ``task_moments`` given)."""
        return self.task_lambda > 0 and not self._task_given

    def fit_task(self, moments: list[np.ndarray], n_queries: int) -> dict[str, Any]:
        """Set ``R_eval`` (one ``(dim,)`` array per checkpoint, ``E_q[g_i(q)^2]``) and rebuild the whitening.

        Not thread-safe: fit before concurrent scoring (``evaluate`` and the LDS benchmark do).
        """
        if len(moments) != len(self.store.checkpoints):
            raise ValueError(f"task moments for {len(moments)} checkpoints, "
                             f"the index has {len(self.store.checkpoints)}")
        self._task = [np.asarray(m, dtype=np.float64) for m in moments]
        self._task_n = n_queries
        self._w, self._norms = {}, {}
        self.prepare()
        return self.task_info()

    def task_info(self) -> dict[str, Any]:
        """What the correction used: ``task_lambda``, ``n_queries`` of ``R_eval`` (None: given), normalisation."""
        return {"task_lambda": self.task_lambda, "n_queries": self._task_n,
                "normalize": "mean(R_eval) = mean(R_train)"}

    def prepare(self) -> None:
        if not self.whiten:
            return
        if self.task_lambda > 0 and self._task is None:
            return  # R_eval not fitted yet: _weights() refuses to score
        self._w = {}
        for ci in range(len(self.store.checkpoints)):
            r = self.store.moments(RAW, ci)
            if self.task_lambda > 0:
                assert self._task is not None
                r = task_mix(r, self._task[ci], self.task_lambda)
            self._w[ci] = whitening(r, self.damping)

    def view(self) -> str:
        if self.whiten:
            return RAW
        return ADAM if ADAM in self.store.manifest.get("views", []) else RAW

    def _weights(self, ci: int, dim: int) -> np.ndarray:
        if self.whiten and ci not in self._w:
            self.prepare()
        if self.whiten and ci not in self._w:
            from tracer.errors import InvalidRequestError

            raise InvalidRequestError("tracin_cos with task_lambda > 0 needs R_eval: pass task_moments, or fit it on "
                                      "a query set (tracer.methods.task.fit_task_corrections; evaluate does)")
        return self._w[ci] if self.whiten else np.ones(dim, dtype=np.float32)

    def vectors(self, q: QueryFeatures, ci: int) -> np.ndarray:
        g = q.grads[self.view()][ci].astype(np.float64)
        w = self._weights(ci, len(g)).astype(np.float64)
        qv = g * w
        qn = qv / max(float(np.linalg.norm(qv)), 1e-30)
        return (qn * w)[:, None]  # <w x, qn> = <x, w qn>

    def row_squares(self, ci: int, rows: np.ndarray, mat: Any, sel: Any) -> np.ndarray:
        """``|w x|^2 = <x^2, w^2>`` per row: query-independent, so computed once per row and cached.

        The cache is one float64 per row and checkpoint (NaN until computed). Concurrent callers may
        compute the same row twice; they write the same value, so no lock is needed.
        """
        cache = self._norms.get(ci)
        if cache is None:
            cache = self._norms.setdefault(ci, np.full(self.store.n_documents, np.nan))
        rows = np.asarray(rows, dtype=np.int64)
        missing = np.nonzero(np.isnan(cache[rows]))[0]
        if len(missing):
            from tracer.methods.kernel import row_dots

            w = self._weights(ci, mat.shape[1]).astype(np.float64)
            local = missing + (sel.start or 0) if isinstance(sel, slice) else np.asarray(sel)[missing]
            _, sq, _ = row_dots(mat, local, None, (w * w)[:, None])
            cache[rows[missing]] = sq[:, 0]  # type: ignore[index]
        return cache[rows][:, None]

    checkpoint_reduce = "mean"

    def combine(self, dots: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        return cosine_combine(dots)
