"""Mini-batches of scan positions: random permutations or spatially compact groups (recursive bisection), and
the compact blocks of positions that the ranks of a data-parallel run own (:func:`shard_owners`)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..base.errors import PhasestemError


def compact_groups(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split positions (N, 2) into spatially compact groups of ≤ ``batch_size`` (recursive bisection)."""
    out: list[np.ndarray] = []

    def split(idx: np.ndarray):
        if len(idx) <= batch_size:
            out.append(idx)
            return
        p = positions[idx]
        axis = int(np.argmax(p.max(0) - p.min(0)))
        order = idx[np.argsort(p[:, axis], kind="stable")]
        n_groups = math.ceil(len(idx) / batch_size)
        cut = (n_groups // 2) * batch_size
        split(order[:cut])
        split(order[cut:])

    split(np.arange(len(positions)))
    return out


def make_batches(n: int, batch_size: int, mode: str, gen: torch.Generator, positions=None,
                 owner: np.ndarray | None = None) -> list[torch.Tensor]:
    """Mini-batches of flat indices for one epoch ('random' or 'compact', order shuffled).

    ``owner`` (N,) (the rank owning each position, several ranks): a 'compact' mini-batch is one compact group of
    ≤ ⌈batch_size / ranks⌉ positions from every rank's block, so every rank has work in every step."""
    if mode == "random":
        return list(torch.randperm(n, generator=gen).split(batch_size))
    if mode == "compact" and owner is not None and int(owner.max(initial=0)) > 0:
        positions = np.asarray(positions)
        sub = max(1, math.ceil(batch_size / (int(owner.max()) + 1)))
        per_rank = []
        for r in range(int(owner.max()) + 1):
            sel = np.flatnonzero(owner == r)
            groups = [sel[g] for g in compact_groups(positions[sel], sub)] if len(sel) else []
            order = torch.randperm(len(groups), generator=gen).tolist()
            per_rank.append([groups[i] for i in order])
        n_steps = max(len(g) for g in per_rank)
        return [torch.as_tensor(np.concatenate([g[k] for g in per_rank if k < len(g)]), dtype=torch.long)
                for k in range(n_steps)]
    if mode == "compact":
        groups = compact_groups(np.asarray(positions), batch_size)
        order = torch.randperm(len(groups), generator=gen).tolist()
        return [torch.as_tensor(groups[i], dtype=torch.long) for i in order]
    raise PhasestemError(f"batch_mode must be 'random' or 'compact', got {mode!r}")


def shard_owners(positions: np.ndarray, world: int) -> np.ndarray:
    """The rank (0 … world−1) owning each position (N, 2): ``world`` spatially compact blocks of nearly equal
    size by recursive bisection (:func:`compact_groups`)."""
    positions = np.asarray(positions)
    owner = np.zeros(len(positions), dtype=np.int64)
    if world <= 1 or len(positions) == 0:
        return owner
    for rank, group in enumerate(compact_groups(positions, math.ceil(len(positions) / world))):
        owner[group] = rank
    return owner
