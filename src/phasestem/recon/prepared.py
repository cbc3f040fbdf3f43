"""The measured patterns in the engine's form: on the device (:class:`PreparedData`) or streamed per batch
(:class:`~phasestem.recon.streaming.StreamedData`), chosen and cached on the model by :func:`prepared_data`."""
from __future__ import annotations

import logging
import math

import torch

from ..base.errors import PhasestemError

log = logging.getLogger("phasestem.recon")


class PreparedData:
    """Measured patterns in the engine's internal form (unshifted, normalised, on the device).

    ``meas`` (N, ny, nx) = patterns / ``counts`` (the mean total count per pattern);
    ``meas_p`` = (meas + ε)^p for the Gaussian term; ``pacbed_p`` the mean pattern^p (summed in float64, as the
    streamed form sums it); ``mean_pattern`` (H, W) float64 the mean of the raw, fftshift-ed patterns.
    """

    def __init__(self, dataset, device, power: float = 0.5, eps: float = 1e-8):
        from .streaming import pacbed_power

        pats = dataset.get_patterns()  # (N, H, W) float32, fftshift-ed
        if tuple(pats.shape[-2:]) != tuple(dataset.pattern_shape):
            raise PhasestemError("dataset patterns do not match its pattern_shape")
        self.counts = float(pats.sum((-2, -1)).mean())
        if not math.isfinite(self.counts) or self.counts <= 0:
            raise PhasestemError(f"measured patterns have a mean total intensity of {self.counts}: nothing to fit")
        step = max(1, 2**26 // max(1, pats[0].numel()))  # float64 partial sums of ≤ 512 MiB
        total = sum(pats[a : a + step].sum(0, dtype=torch.float64).numpy() for a in range(0, len(pats), step))
        n = len(pats)
        # one new array per result, the arithmetic in place, and the raw copy let go before the second result: the
        # whole-data temporaries of `pats / counts`, `+ eps` and `.pow` took the --auto run of a 4 GiB scan from
        # 12.6 to 16.4 GiB while they lived; the raw copy beside both results took a 1 GiB scan to 5.0 GiB
        meas = torch.fft.ifftshift(pats, dim=(-2, -1)).contiguous().div_(self.counts)
        del pats
        self.meas = meas.to(device)
        del meas
        self.power, self.eps = power, eps
        self.meas_p = self.meas.clamp_min(0).add_(eps).pow_(power)
        self.mean_pattern = total / n
        self.pacbed_p = pacbed_power(total, n, self.counts, power, device)
        self.n = self.meas.shape[0]

    def put(self, index, patterns: torch.Tensor) -> None:
        """Rows ``index`` (k,) replaced by ``patterns`` (k, H, W), in the form ``dataset.get_patterns()`` gives
        (fftshift-ed), normalised like the others (the counts of construction): a live scan's frames as they
        arrive (:mod:`phasestem.live`)."""
        index = torch.as_tensor(index, device=self.meas.device)
        meas = torch.fft.ifftshift(patterns.to(self.meas.device, torch.float32), dim=(-2, -1)).div_(self.counts)
        self.meas[index] = meas
        self.meas_p[index] = meas.clamp_min_(0).add_(self.eps).pow_(self.power)

    def schedule(self, batches) -> None:
        """The coming batches' order (used by :class:`~phasestem.recon.streaming.StreamedData` to read ahead)."""

    def batch(self, index, need_meas: bool = True):
        """(meas or None, meas_p) rows ``index`` on the device."""
        index = torch.as_tensor(index).to(self.meas.device)
        return (self.meas[index] if need_meas else None), self.meas_p[index]


def prepared_data(model, dataset, power: float, eps: float = 1e-8, data_in_memory=None,
                  memory_budget_gb: float | None = None):
    """The measured data in the engine's form, cached on the model: :class:`PreparedData` (every pattern on the
    device) or :class:`~phasestem.recon.streaming.StreamedData` (read per batch), as ``data_in_memory``
    ('auto' | True | False; None: whichever form is cached, else 'auto') and ``memory_budget_gb`` (GiB) choose
    (:func:`~phasestem.recon.streaming.choose_in_memory`)."""
    from .streaming import StreamedData, budget_bytes, choose_in_memory, normalise_mode

    key = (id(dataset), power, eps, str(model.device))
    setting = None if data_in_memory is None else (normalise_mode(data_in_memory), memory_budget_gb)
    cache = model._data_cache
    if cache is not None and cache[0] == key and (setting is None or cache[2] == setting):
        return cache[1]
    setting = setting or ("auto", memory_budget_gb)
    if cache is not None and isinstance(cache[1], StreamedData):
        cache[1].close()
    if choose_in_memory(setting[0], setting[1], dataset.n_patterns, dataset.pattern_shape, model.device):
        data = PreparedData(dataset, model.device, power, eps)
    else:
        data = StreamedData(dataset, model.device, power, eps, budget_bytes(setting[1]))
        log.info("measured patterns streamed from the data file (%d patterns, budget %.3g GiB)", data.n,
                 data.budget / 1024**3)
    if data.n != model.positions.shape[0]:
        raise PhasestemError(f"the dataset has {data.n} patterns but the model {model.positions.shape[0]} positions")
    model._data_cache = (key, data, setting)
    return data
