"""Split a per-checkpoint dimension budget across tracked groups by captured eigen-energy.

Under K-FAC the rotated coordinate ``(j, i)`` of a linear layer's gradient has energy
``w * s_j a_i / (sum s * sum a)``, where ``w`` is the group's exact share of the total
per-example gradient energy (fitted), and ``a``, ``s`` are the eigenvalues of ``A`` and ``S``.
Keeping the top ``k_out x k_in`` coordinates keeps ``w * (sum_{i<k_in} a_i)(sum_{j<k_out} s_j)``.

The allocation is greedy: bias / norm groups are kept exactly, densest first, while they
fit in ``exact_share`` of the budget; every linear layer starts at ``floor x floor``; then
the single step (one more input or output eigenvector of one layer, one more coordinate of
a projected vector group) with the largest energy gain per added dimension is taken until
no step fits. Shares are averaged over checkpoints, so one layout serves all of them.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import torch

from tracer.featurize.kfac import Factors
from tracer.featurize.layout import LINEAR, group_key


def _shares(factors: Sequence[Factors], key: str, field: str) -> torch.Tensor | None:
    """An eigenvalue vector normalised to sum 1, averaged over checkpoints."""
    vals = [getattr(f[key], field) for f in factors]
    if any(v is None for v in vals):
        return None
    out = [v.double() / v.double().sum().clamp_min(1e-300) for v in vals]
    return torch.stack(out).mean(0)


def allocate(factors: Sequence[Factors], groups: Sequence[tuple[str, str, int, int]], dim: int, floor: int = 4,
             exact_share: float = 0.5) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Per-group widths for a budget of ``dim`` coordinates per checkpoint.

    Args:
        factors: Fitted factors, one per checkpoint.
        groups: ``(module, kind, d_in, d_out)`` of every tracked group.
        dim: Coordinates per example per checkpoint.
        floor: Minimum ``k_in`` and ``k_out`` of every linear layer.
        exact_share: Fraction of ``dim`` bias / norm groups may fill while kept exactly.

    Returns:
        ``widths`` (group key -> ``[k_out, k_in]`` or ``[k]``; groups left out are not stored) and
        ``kept`` (group key -> fraction of the group's estimated energy kept).

    Raises:
        ValueError: If the floors alone exceed ``dim``.
    """
    total = [sum(f[group_key(m, k)].energy for m, k, _, _ in groups) or 1.0 for f in factors]
    weight = {group_key(m, k): sum(f[group_key(m, k)].energy / t for f, t in zip(factors, total)) / len(factors)
              for m, k, _, _ in groups}
    widths: dict[str, list[int]] = {}
    used = 0
    linear = [(group_key(m, k), di, do) for m, k, di, do in groups if k == LINEAR]
    for key, d_in, d_out in linear:
        widths[key] = [min(floor, d_out), min(floor, d_in)]
        used += widths[key][0] * widths[key][1]
    if used > dim:
        raise ValueError(f"dimension budget {dim} is below the floor of {used} ({floor}x{floor} for each of "
                         f"{len(linear)} tracked linear layers); raise --dim or lower the floor")
    vectors = sorted(((group_key(m, k), do) for m, k, _, do in groups if k != LINEAR),
                     key=lambda kv: -weight[kv[0]] / kv[1])
    projected: list[tuple[str, int]] = []
    exact_used = 0  # the exact share is for vectors alone (the linear floors are charged to the rest)
    for key, d in vectors:
        if exact_used + d <= exact_share * dim and used + d <= dim:
            widths[key] = [d]
            used += d
            exact_used += d
        else:
            projected.append((key, d))
    spec_in = {k: _shares(factors, k, "in_vals") for k, _, _ in linear}
    spec_out = {k: _shares(factors, k, "out_vals") for k, _, _ in linear}
    spec_out.update({k: _shares(factors, k, "out_vals") for k, _ in projected})
    cums = {k: torch.cat([torch.zeros(1, dtype=torch.float64), v.cumsum(0)]) for k, v in {
        **{f"{k}>in": v for k, v in spec_in.items()}, **{f"{k}>out": v for k, v in spec_out.items()}}.items()
        if v is not None}
    for key, _ in projected:
        if f"{key}>out" in cums:
            widths[key] = [0]

    heap: list[tuple[float, int, str, str, int, int]] = []
    version: dict[str, int] = {}
    seq = 0

    def push(key: str) -> None:
        nonlocal seq
        version[key] = version.get(key, 0) + 1
        w = widths[key]
        out = cums[f"{key}>out"]
        if len(w) == 2:
            inn = cums[f"{key}>in"]
            ko, ki = w
            if ki < len(inn) - 1:
                gain = weight[key] * float(inn[ki + 1] - inn[ki]) * float(out[ko])
                heapq.heappush(heap, (-gain / ko, seq, key, "in", ko, version[key]))
            if ko < len(out) - 1:
                gain = weight[key] * float(inn[ki]) * float(out[ko + 1] - out[ko])
                heapq.heappush(heap, (-gain / ki, seq, key, "out", ki, version[key]))
        elif w[0] < len(out) - 1:
            heapq.heappush(heap, (-weight[key] * float(out[w[0] + 1] - out[w[0]]), seq, key, "vec", 1, version[key]))
        seq += 1

    for key in widths:
        if f"{key}>out" in cums:
            push(key)
    while heap:
        _, _, key, side, cost, ver = heapq.heappop(heap)
        if ver != version[key] or used + cost > dim:
            continue
        w = widths[key]
        if side == "in":
            w[1] += 1
        elif side == "out":
            w[0] += 1
        else:
            w[0] += 1
        used += cost
        push(key)
    widths = {k: w for k, w in widths.items() if all(x > 0 for x in w)}
    kept = {}
    for key, w in widths.items():
        if len(w) == 2:
            kept[key] = float(cums[f"{key}>in"][w[1]] * cums[f"{key}>out"][w[0]])
        else:
            kept[key] = 1.0 if f"{key}>out" not in cums or w[0] == len(cums[f"{key}>out"]) - 1 \
                else float(cums[f"{key}>out"][w[0]])
    for key, _ in projected:
        kept.setdefault(key, 0.0)
    return widths, kept


def energy_kept(kept: dict[str, float], factors: Sequence[Factors]) -> float:
    """Estimated share of the total gradient energy the layout keeps (averaged over checkpoints)."""
    total = 0.0
    for f in factors:
        t = sum(s.energy for s in f.values()) or 1.0
        total += sum(f[k].energy / t * kept.get(k, 0.0) for k in f)
    return total / max(1, len(factors))
