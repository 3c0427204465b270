"""The linear datamodeling score (LDS; Park et al. 2023, TRAK §2) as pure functions.

LDS asks whether attribution scores predict what retraining does. Draw ``M`` random subsets
``S_j`` of the training corpus, each holding a fraction ``α`` of it; train one model per subset
with the same recipe; measure each query's target loss under each subset model. A method's
*predicted* effect of subset ``S_j`` on query ``q`` is the sum of its attribution scores
``g(q, S_j) = Σ_{z ∈ S_j} τ(q, z)``, and the query's LDS is the Spearman rank correlation over
the ``M`` subsets between ``g(q, S_j)`` and the measured outcome.

Sign convention: tracer's scores are *higher = more supportive*, so a larger predicted sum
should mean a **lower** loss. The outcome correlated here is therefore ``−loss`` (the target's
log-probability), and a perfect method has LDS +1, chance 0, an anti-correlated one −1.

A query whose predictions (or outcomes) are constant over the subsets has no defined rank
correlation; it counts as **0** (no rank information), so every method is averaged over the
same queries. The number of such queries is reported next to the mean.
"""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import NDArray

from tracer.metrics.bootstrap import bootstrap_ci

# Relative spread below which a row counts as constant (its ranks would be float noise).
CONSTANT_RTOL = 1e-12


def sample_subsets(n_docs: int, n_subsets: int, alpha: float = 0.5, seed: int = 0) -> NDArray[np.bool_]:
    """Seeded α-subsets of the corpus rows, each of exactly ``round(α · n_docs)`` rows.

    Subset ``j`` is drawn from its own generator seeded by ``(seed, j)``, so asking for more
    subsets never changes the first ones (cached subset models stay valid).

    Args:
        n_docs: Corpus size, ``>= 2``.
        n_subsets: ``M``, ``>= 1``.
        alpha: Fraction of the corpus in each subset, in ``(0, 1)``.
        seed: Sampling seed.

    Returns:
        ``(n_subsets, n_docs)`` bool; row ``j`` marks the documents of subset ``j``.

    Raises:
        ValueError: On an argument out of range.
    """
    if n_docs < 2:
        raise ValueError(f"n_docs must be >= 2, got {n_docs}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    size = min(n_docs - 1, max(1, round(alpha * n_docs)))
    masks = np.zeros((n_subsets, n_docs), dtype=bool)
    for j in range(n_subsets):
        rows = np.random.default_rng([seed, j]).choice(n_docs, size=size, replace=False)
        masks[j, rows] = True
    return masks


def subset_sums(scores: NDArray[np.floating], masks: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Predicted subset effects: each query's attribution scores summed over each subset.

    Args:
        scores: ``(n_queries, n_docs)`` attribution scores (higher = more supportive).
        masks: ``(n_subsets, n_docs)`` bool, from :func:`sample_subsets`.

    Returns:
        ``(n_queries, n_subsets)`` float64, ``scores @ masks.T``.

    Raises:
        ValueError: On mismatched widths or non-finite scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or masks.ndim != 2 or s.shape[1] != masks.shape[1]:
        raise ValueError(f"scores {s.shape} and masks {masks.shape} must be (n_queries, n) and "
                         "(n_subsets, n)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain a non-finite value")
    return s @ masks.T.astype(np.float64)


def top_k_scores(scores: NDArray[np.floating], k: int) -> NDArray[np.float64]:
    """Each query's ``k`` highest scores kept, every other score set to 0: a sparse datamodel that predicts a
    subset's effect from the method's top hits alone (ties broken by document order).

    Args:
        scores: ``(n_queries, n_docs)``.
        k: Scores kept per query (``k >= n_docs`` keeps them all).

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    s = np.asarray(scores, dtype=np.float64)
    if k >= s.shape[1]:
        return s.copy()
    keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(s)
    np.put_along_axis(out, keep, np.take_along_axis(s, keep, axis=1), axis=1)
    return out


def average_ranks(x: NDArray[np.floating]) -> NDArray[np.float64]:
    """Ranks ``1..n`` along the last axis, ties sharing their mean rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        # group boundaries of equal values; each group gets the mean of its 1-based positions
        starts = np.r_[0, np.nonzero(np.diff(sorted_row))[0] + 1]
        ends = np.r_[starts[1:], len(row)]
        mean_rank = (starts + ends + 1) / 2.0
        out[i, order] = np.repeat(mean_rank, ends - starts)
    return out.reshape(x.shape)


def _is_constant(x: NDArray[np.float64]) -> NDArray[np.bool_]:
    spread = x.max(axis=-1) - x.min(axis=-1)
    scale = np.maximum(np.abs(x).max(axis=-1), 1e-300)
    return spread <= CONSTANT_RTOL * scale


def spearman_rows(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Spearman correlation of each row of ``a`` with the same row of ``b``.

    Args:
        a: ``(n_rows, m)``.
        b: ``(n_rows, m)``, ``m >= 2``.

    Returns:
        ``(n_rows,)`` float64 in ``[-1, 1]``; NaN where either row is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"a {a.shape} and b {b.shape} must both be (n_rows, m) with m >= 2")
    ra = average_ranks(a)
    rb = average_ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    undefined = _is_constant(a) | _is_constant(b) | (den == 0)
    rho = (ra * rb).sum(axis=1) / np.where(undefined, 1.0, den)
    return np.where(undefined, np.nan, np.clip(rho, -1.0, 1.0))


def lds_per_query(predicted: NDArray[np.floating], losses: NDArray[np.floating]) -> NDArray[np.float64]:
    """Each query's LDS: Spearman(predicted subset sums, −loss); 0 where undefined (constant rows).

    Args:
        predicted: ``(n_queries, n_subsets)`` from :func:`subset_sums`.
        losses: ``(n_queries, n_subsets)`` target losses (``−log p(target | prompt)``) under each
            subset model.

    Returns:
        ``(n_queries,)`` float64 in ``[-1, 1]``.
    """
    rho = spearman_rows(predicted, -np.asarray(losses, dtype=np.float64))
    return np.nan_to_num(rho, nan=0.0)


def summarize_lds(per_query: NDArray[np.floating], n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0, label: str = "") -> dict[str, float]:
    """Mean LDS over queries with a percentile-bootstrap interval over queries.

    Args:
        per_query: ``(n_queries,)`` from :func:`lds_per_query`.
        n_boot: Bootstrap resamples.
        confidence: Interval coverage.
        seed: Bootstrap seed (mixed with ``crc32(label)`` so methods resample independently).
        label: E.g. the method name.

    Returns:
        ``{"mean", "lo", "hi", "n"}``.
    """
    v = np.asarray(per_query, dtype=np.float64).reshape(-1, 1)
    if v.shape[0] == 0:
        raise ValueError("per_query is empty: cannot summarize zero queries")
    rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
    mean, lo, hi = bootstrap_ci(v, n_boot, confidence, rng)
    return {"mean": float(mean[0]), "lo": float(lo[0]), "hi": float(hi[0]), "n": int(v.shape[0])}


def lds(scores: NDArray[np.floating], masks: NDArray[np.bool_], losses: NDArray[np.floating],
        n_boot: int = 1000, seed: int = 0, label: str = "") -> dict[str, float]:
    """One method's LDS from its ``(n_queries, n_docs)`` scores, the subsets and the measured losses.

    Returns:
        :func:`summarize_lds`'s dict plus ``n_undefined`` (queries with constant predictions or
        outcomes, counted as 0).
    """
    predicted = subset_sums(scores, masks)
    rho = spearman_rows(predicted, -np.asarray(losses, dtype=np.float64))
    out = summarize_lds(np.nan_to_num(rho, nan=0.0), n_boot=n_boot, seed=seed, label=label)
    out["n_undefined"] = int(np.isnan(rho).sum())
    return out
