"""Where the learned route meets the reconstruction: the one module of :mod:`phasestem.learn` that imports
:mod:`phasestem.recon` (the rest of learn never does; ``tests/test_architecture.py`` checks it).

:func:`ad_phase`: a fast AD ptychography of a scan on a truth grid, the ``ad`` input source of
``phasestem make-pairs`` (:mod:`phasestem.learn.pair_sources`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..recon import Ptychography
from ..resample import BAND_LIMITED, resample_image

__all__ = ["ad_phase"]


def ad_phase(dataset, truth_shape: tuple[int, int], truth_sampling: tuple[float, float], epochs: int = 4,
             batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """A fast AD reconstruction of ``dataset`` (``epochs`` of the ``lsq`` solver, flat start, 1 slice, nominal
    probe fixed) on the truth grid (pixel (0, 0) at 0 Å, ``truth_shape`` pixels of ``truth_sampling`` Å; 0
    outside the reconstructed field)."""
    torch.manual_seed(0)
    model = Ptychography.from_dataset(dataset, learning_rates={"probe": 0.0}, on_band_limit="ignore").to(device)
    for _ in model.LSQ_optimize(epochs, dataset, batch_size=batch_size, seed=0, progress=False):
        pass
    ph = torch.as_tensor(model.phase_in_dataset_frame())
    ph = resample_image(ph, tuple(model.sampling), tuple(truth_sampling), order=BAND_LIMITED).numpy()
    out = np.zeros(truth_shape, np.float32)
    h, w = min(truth_shape[0], ph.shape[0]), min(truth_shape[1], ph.shape[1])
    out[:h, :w] = ph[:h, :w]
    return out
