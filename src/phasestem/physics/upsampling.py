"""An object grid finer than the detector gives: the probe's whole band on the model's grid.

A detector of N pixels of Δk mrad fixes the real-space pixel λ/(N·Δk) of a window as wide as the detector's field
of view; the anti-aliased band of that pixel (2/3 of Nyquist, :func:`phasestem.physics.optics.band_limit_mrad`)
can lie below the probe's semi-angle (300 keV, 64 pixels of 0.984 mrad: 0.3125 Å, 21 mrad for a 30 mrad probe).
Upsampling by an integer u divides the pixel by u over the same window extent: the model's far field lies on a
u·N grid at the same Δk, and the detector measures its central N (:func:`phasestem.detector.detector_response`:
scattering beyond the detector is computed and dropped, not wrapped back in). Not the same as ``oversampling``,
which widens the window at the same pixel and bins a finer far field.

:func:`choose_upsampling` is the rule (``auto``: the smallest u whose band holds the semi-angle) with its reason;
:func:`finer_probe` and :func:`padded_spectrum` carry a probe or an aperture given on the detector's grid onto the
finer one.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..base.errors import ConfigError
from . import optics

#: ``auto`` chooses at most this factor (the model's transforms grow as u²)
MAX_UPSAMPLING = 4


def upsampling_setting(value) -> int | str:
    """``'auto'`` or a whole factor 1 … :data:`MAX_UPSAMPLING`; anything else is refused in one line."""
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= int(value) <= MAX_UPSAMPLING:
        raise ConfigError(f"model.upsampling must be 'auto' or a whole number from 1 to {MAX_UPSAMPLING}, "
                          f"got {value!r}")
    return int(value)


def choose_upsampling(setting, semiangle: float | None, sampling: tuple[float, float], energy: float
                      ) -> tuple[int, str]:
    """(u, why): the factor by which the object pixel is the detector's pixel ``sampling`` (Å) divided, and one line
    for the run log. ``setting`` 'auto': the smallest u whose anti-aliased band (mrad) at ``energy`` (eV) holds the
    probe's ``semiangle`` (mrad), at most :data:`MAX_UPSAMPLING` (1 when the semi-angle is not known); an integer is
    taken as given."""
    setting = upsampling_setting(setting)
    band = optics.band_limit_mrad(sampling, energy)
    pixel = max(sampling)
    if setting != "auto":
        return setting, f"{setting} (given): pixel {pixel / setting:.4g} Å, band {band * setting:.3g} mrad"
    if not semiangle:
        return 1, f"1: the probe semi-angle is not known, so the detector's pixel {pixel:.4g} Å is kept"
    if semiangle <= band + 1e-9:
        return 1, (f"1: the detector's pixel {pixel:.4g} Å has an anti-aliased band of {band:.3g} mrad, which holds "
                   f"the probe's {semiangle:g} mrad")
    need = math.ceil(semiangle / band - 1e-9)
    u = min(need, MAX_UPSAMPLING)
    capped = f" (it needs {need}; capped at {MAX_UPSAMPLING})" if need > u else ""
    return u, (f"{u}{capped}: the probe's {semiangle:g} mrad exceeds the {band:.3g} mrad anti-aliased band of the "
               f"detector's pixel {pixel:.4g} Å; pixels of {pixel / u:.4g} Å hold {band * u:.3g} mrad (the far field "
               f"on {u} × the detector's grid, its central part measured)")


def padded_spectrum(spectrum, shape: tuple[int, int]) -> torch.Tensor:
    """A spectrum (..., h, w) in fftfreq order placed at the centre of a zero ``shape`` (H, W) ≥ (h, w) grid of the
    same Δk, fftfreq order: zero frequency to zero frequency, nothing beyond the given band."""
    from ..detector import centre_window

    spec = torch.as_tensor(spectrum)
    centred = torch.fft.fftshift(spec, dim=(-2, -1)).cpu().numpy()
    return torch.fft.ifftshift(torch.as_tensor(centre_window(centred, shape)), dim=(-2, -1))


def finer_probe(probe, factor: int) -> torch.Tensor:
    """Probe modes (M, h, w) on a window of the detector's pixel → (M, u·h, u·w) on pixels ``factor`` = u times
    smaller over the same extent: the unitary spectrum padded with zeros (band-limited interpolation; Σ|ψ|² kept),
    the window's centre pixel (h//2, w//2) moved onto the finer window's (u·h//2, u·w//2)."""
    p = torch.as_tensor(probe)
    u = int(factor)
    if u == 1:
        return p
    h, w = p.shape[-2:]
    spectrum = torch.fft.fft2(p.to(torch.complex128), norm="ortho")
    fine = torch.fft.ifft2(padded_spectrum(spectrum, (u * h, u * w)), norm="ortho")
    offset = ((u * h) // 2 - u * (h // 2), (u * w) // 2 - u * (w // 2))  # odd windows: one fine pixel
    return torch.roll(fine, offset, dims=(-2, -1)).to(torch.complex64)
