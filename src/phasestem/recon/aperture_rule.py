"""``constraints.probe_aperture: auto``: whether a run holds the probe's spectrum to the nominal aperture
(:func:`~phasestem.recon.constraints.hold_probe_aperture`), decided once from the data when the run starts.

The hold helps where the free probe takes up the object's scattering, a strong multislice specimen, and costs where
the nominal aperture is not the data's (a semi-angle 1 % off costs a weak specimen 0.025 in r). So it is on where
the mean pattern shows a strong scatterer and the data's disk edge matches the nominal probe's, both edges measured
alike (:func:`phasestem.calibrate.disk.image_edge_radius`), so their common sampling bias cancels.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..detector import centre_window
from .constraints import Constraints

log = logging.getLogger("phasestem.recon")

#: ``probe_aperture: auto`` holds the aperture where more than this share of the mean pattern's intensity lies beyond
#: :data:`DARK_FIELD_FROM` × the bright-field disk: a strong scatterer. Chosen on the development half of
#: ``benchmarks/independent``: dev_strong 0.048, the other seven 0.0012–0.0043 (validation: val_strong 0.094,
#: val_thick 0.073, the other six 0.0013–0.0034); the weak single slice on a 12 Å window of
#: ``tests/test_independent_accuracy.py``, where the hold costs 0.017, stays below it.
STRONG_DARK_FIELD = 0.01
DARK_FIELD_FROM = 1.1
#: and where the data's disk edge is within this fraction of the nominal probe's (both measured alike by
#: :func:`phasestem.calibrate.disk.image_edge_radius`): held to a disk 1 % too large dev_strong loses 0.002, 2 %
#: 0.006, 5 % 0.052; with the right semi-angle the two edges agree to 0.06 % on the fifteen NumPy cases and 1.3 % on
#: the abTEM one (val_thick)
APERTURE_EDGE_TOLERANCE = 0.015
#: and where the disk is at least this many detector pixels in radius: a disk of 10 px reads a semi-angle 3 % off as
#: 0.7 % (its edge is measured in whole pixels' rings); at 19.5 px 1 / 2 / 5 % read as 0.65 / 1.6 / 4.6 %
MIN_DISK_RADIUS_PX = 15.0


def probe_aperture_rule(mean_pattern: np.ndarray, nominal_probe: torch.Tensor, upsampling: int = 1
                        ) -> tuple[bool, str]:
    """Whether ``probe_aperture: auto`` holds the aperture, and why (one line for the run log).

    ``mean_pattern`` (H, W): the data's mean pattern, zero frequency near the centre; ``nominal_probe`` (M, h, w):
    the probe the hold keeps (:attr:`Experiment.probe`; on a window ``upsampling`` × the detector at its Δk, whose
    spectrum's central detector pixels are compared). On when the specimen scatters strongly (more than
    :data:`STRONG_DARK_FIELD` of the mean intensity beyond :data:`DARK_FIELD_FROM` × the disk: there the free probe
    takes up the object's scattering) and the nominal aperture's edge is within :data:`APERTURE_EDGE_TOLERANCE` of
    the data's (a wrong semi-angle held costs more than a free probe), on a disk of at least
    :data:`MIN_DISK_RADIUS_PX` pixels."""
    from ..calibrate.disk import NoDiskError, disk_of_mean, image_edge_radius

    mean = np.asarray(mean_pattern, dtype=np.float64)
    probe = torch.as_tensor(nominal_probe).detach().cpu()
    if upsampling > 1 and tuple(probe.shape[-2:]) == (mean.shape[0] * upsampling, mean.shape[1] * upsampling):
        spec = torch.fft.fftshift(torch.fft.fft2(probe.to(torch.complex128)), dim=(-2, -1))
        probe = torch.fft.ifft2(torch.fft.ifftshift(centre_window(spec, mean.shape), dim=(-2, -1)))
    if tuple(probe.shape[-2:]) != mean.shape:
        return False, (f"off: the probe window {tuple(probe.shape[-2:])} is not the detector's {mean.shape} "
                       "(oversampling), so the data's disk is not compared with it")
    spec = torch.fft.fftshift(torch.fft.fft2(probe.to(torch.complex128)).abs().square().sum(0)).numpy()
    try:
        centre, r0 = disk_of_mean(mean)
        r_nominal = image_edge_radius(spec, (mean.shape[0] // 2, mean.shape[1] // 2), disk_of_mean(spec)[1])
    except NoDiskError:
        return False, "off: no bright-field disk in the mean pattern"
    dark, r_data = dark_field_share(mean, centre, r0)
    edge = r_data / r_nominal - 1
    what = (f"{100 * dark:.2g} % of the mean pattern's intensity lies beyond {DARK_FIELD_FROM:g} × the disk; the "
            f"data's disk edge is {100 * edge:+.2g} % from the nominal aperture's")
    if dark <= STRONG_DARK_FIELD:
        return False, f"off: {what} (a strong scatterer has more than {100 * STRONG_DARK_FIELD:g} %)"
    if r_data < MIN_DISK_RADIUS_PX:
        return False, (f"off: {what}, but the disk is {r_data:.3g} px in radius, too few pixels to tell its edge from "
                       f"the nominal one's to {100 * APERTURE_EDGE_TOLERANCE:g} % (at least {MIN_DISK_RADIUS_PX:g} px)")
    if abs(edge) > APERTURE_EDGE_TOLERANCE:
        return False, (f"off: {what}, more than {100 * APERTURE_EDGE_TOLERANCE:g} %: give the measured semi-angle "
                       "(phasestem calibrate) to hold it")
    return True, f"on: {what}"


def dark_field_share(mean_pattern: np.ndarray, centre: tuple[float, float] | None = None,
                     r0: float | None = None) -> tuple[float, float]:
    """(the share of ``mean_pattern``'s (H, W) intensity beyond :data:`DARK_FIELD_FROM` × its bright-field disk, the
    disk's edge radius in px); ``centre`` and ``r0`` (px): the disk as :func:`~phasestem.calibrate.disk.disk_of_mean`
    finds it, found here when not given (:class:`~phasestem.calibrate.disk.NoDiskError` without a disk)."""
    from ..calibrate.disk import disk_of_mean, image_edge_radius

    mean = np.asarray(mean_pattern, dtype=np.float64)
    if centre is None or r0 is None:
        centre, r0 = disk_of_mean(mean)
    r_data = image_edge_radius(mean, centre, r0)
    yy, xx = np.indices(mean.shape)
    return float(mean[np.hypot(yy - centre[0], xx - centre[1]) > DARK_FIELD_FROM * r_data].sum() / mean.sum()), r_data


def dark_field_or_none(mean_pattern: np.ndarray | None) -> float | None:
    """:func:`dark_field_share`'s share, or None when there is no pattern or no bright-field disk in it."""
    from ..calibrate.disk import NoDiskError

    if mean_pattern is None:
        return None
    try:
        return dark_field_share(mean_pattern)[0]
    except NoDiskError:
        return None


def resolve_probe_aperture(model, mean_pattern: np.ndarray, constraints: Constraints) -> Constraints:
    """``constraints`` with ``probe_aperture: auto`` decided for this run (:func:`probe_aperture_rule` on
    ``mean_pattern``, the engine's prepared data's: no pass over the data of its own; logged); unchanged when it is
    true or false, or when the probe is not refined at all."""
    if constraints.probe_aperture.enabled != "auto":
        return constraints
    schedule = getattr(model, "schedules", {}).get("probe")
    on, why = False, "off: the probe is not refined"
    if model.probe.requires_grad and (schedule is None or schedule.lr != 0):
        on, why = probe_aperture_rule(mean_pattern, model.experiment.probe, model.experiment.upsampling)
        log.info("constraints.probe_aperture auto: %s", why)
    model.history.notes["probe_aperture"] = why  # for the run's records (results.h5 provenance)
    held = constraints.probe_aperture.model_copy(update={"enabled": on})
    return constraints.model_copy(update={"probe_aperture": held})
