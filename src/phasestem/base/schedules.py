"""THE learning-rate schedule shape shared by training (per optimizer step) and reconstruction (per epoch)."""
from __future__ import annotations

import math


def lr_lambda(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at step ``step`` (0-based) for warm-up + cosine/constant.

    'cosine' falls from 1 to ``min_ratio`` as ``step`` goes from ``warmup`` to ``total``; 'constant' stays 1.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
