"""Calibration of a 4D-STEM scan from its own data: one function, one result object.

Order: bad pixels (summed pattern) → bright-field disk, descan plane and radius → angular
sampling (or semi-angle) → CoM field → rotation and transpose → tcBF parallax (defocus,
astigmatism, refined rotation, transpose check).

θ vs θ + 180° (the same data with −C10 and −φ): the dark-field rule of :mod:`.rotation`, then, when the
parallax is used, the skewness of the parallax phase (:func:`.parallax.phase_skewness`) where it is
clear (|skewness| ≥ MIN_SKEWNESS): it comes from the bright field, so anything in the dark field that is
not the specimen (the ringing of intensities shifted by Fourier interpolation upstream, a background)
cannot flip it; a known C10 (``c10``, the microscope's value) overrides both by its sign.

The defocus is the parallax's where it fits one; where the data cannot measure it (a focused probe, too few
counts for the parallax) a known ``c10`` is taken as it is, so a low-dose reconstruction does not start from a
focused probe it was not taken with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import ConfigError
from .badpixels import BadPixels, fill_bad_pixels, fill_plan, find_bad_pixels
from .com import com_field
from .disk import DiskFit, fit_disk
from .parallax import ParallaxFit, fit_parallax, group_contrast, phase_skewness
from .reading import summed_pattern
from .rotation import (
    MAX_CURL_RATIO,
    MIN_SCAN,
    ROTATION_FLAG,
    NoContrastError,
    RotationFit,
    choose_branch,
    fit_rotation,
    no_contrast_message,
    undersampled,
)


@dataclass
class Calibration:
    """Everything measured from the data (units: Å, mrad, degrees; detector px of the file's axes)."""

    energy: float
    scan_shape: tuple[int, int]
    scan_step: tuple[float, float]
    pattern_shape: tuple[int, int]
    semiangle: float
    angular_sampling: float  # mrad / px
    rotation: float  # degrees (phasestem's scan.rotation)
    transpose: bool
    aberrations: dict[str, float]
    rotation_source: str  # 'parallax', 'centre of mass', 'given' or 'undetermined'
    bad_pixels: BadPixels
    disk: DiskFit
    com: RotationFit
    com_alternatives: dict[bool, RotationFit]
    parallax: ParallaxFit | None
    com_field: np.ndarray  # (Sy, Sx, 2) px, file frame, descan removed
    dark_field: np.ndarray  # (Sy, Sx)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    #: where ``aberrations['C10']`` comes from: 'parallax' (fitted), 'given' (``c10``: the data do not measure it)
    #: or None (no defocus)
    defocus_source: str | None = None
    mean_pattern: np.ndarray | None = None  # (H, W) bad pixels filled
    #: quantity → why the data do not determine it; it keeps its default (rotation 0°, transpose False, no C10)
    undetermined: dict[str, str] = field(default_factory=dict)
    #: where each value of the written parameter file came from, by field (``optics.energy`` → ``flag``, ``file``
    #: or ``calibration``; :mod:`phasestem.base.provenance`), filled by :func:`phasestem.calibrate.files.calibrate_file`
    sources: dict[str, str] = field(default_factory=dict)
    #: sections added to the reconstruction parameters (e.g. the counted-data ``losses``), by section
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the dose the data file records (e⁻/Å²; ≤ 0: noise-free; None: not recorded): ``data.dose`` of the run
    dose: float | None = None
    #: whether the file's patterns are counts, and why (:func:`phasestem.io.counts.counts_decision`): ``data.counts``
    #: of the run; counted patterns are written as whole counts (:func:`phasestem.calibrate.output.write_corrected`)
    counts: Any = None

    @property
    def plan(self):
        """Bad-pixel fill plan for :func:`phasestem.calibrate.badpixels.fill_bad_pixels`."""
        return fill_plan(self.bad_pixels.mask)

    def centres(self) -> np.ndarray:
        """Descan plane (Sy, Sx, 2): the bright-field disk centre of every pattern (px, file frame)."""
        return self.disk.plane_at(self.scan_shape)

    def scan_origin(self) -> tuple[float, float]:
        """(y0, x0) Å that puts the rotated scan's top-left corner at 0 Å (dataset frame ≥ 0)."""
        from ..scan import GridScan

        lo = GridScan(self.scan_shape, self.scan_step, rotation=self.rotation).positions().min(0)
        return (float(-lo[0]), float(-lo[1]))

    def scan(self):
        """The calibrated :class:`phasestem.scan.GridScan` (rotation, origin from :meth:`scan_origin`)."""
        from ..scan import GridScan

        return GridScan(self.scan_shape, self.scan_step, origin=self.scan_origin(), rotation=self.rotation)

    def detector(self):
        """The calibrated :class:`phasestem.detector.PixelatedDetector` of the raw frames: angular sampling,
        the disk centre at the middle of the scan, transpose and bad pixels (per-pattern descan centres:
        :meth:`centres`, for ``detector.apply(frames, centres=...)``)."""
        from ..detector import PixelatedDetector

        mid = self.disk.plane_at(self.scan_shape)[self.scan_shape[0] // 2, self.scan_shape[1] // 2]
        return PixelatedDetector(shape=self.pattern_shape, angular_sampling=(self.angular_sampling,) * 2,
                                 centre=(float(mid[0]), float(mid[1])), transpose=self.transpose,
                                 bad_pixels=self.bad_pixels.mask)

    def sampling(self) -> float:
        """Real-space pixel (Å) of the reconstruction window: λ / (H · dk)."""
        from ..physics.optics import wavelength

        return wavelength(self.energy) / (max(self.pattern_shape) * self.angular_sampling * 1e-3)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a JSON/YAML record."""
        out = {"source": self.source, "energy_eV": self.energy, "semiangle_mrad": self.semiangle,
               "angular_sampling_mrad": self.angular_sampling, "rotation_deg": self.rotation,
               "transpose": self.transpose, "rotation_source": self.rotation_source,
               "aberrations": dict(self.aberrations), "defocus_source": self.defocus_source,
               "scan_shape": list(self.scan_shape), "scan_step": list(self.scan_step),
               "bad_pixels": self.bad_pixels.to_dict(), "disk": self.disk.to_dict(),
               "centre_of_mass": self.com.to_dict(),
               "parallax": None if self.parallax is None else self.parallax.to_dict(), "notes": list(self.notes),
               "undetermined": dict(self.undetermined),
               "scan": self.scan().to_dict(), "detector": self.detector().to_dict(), "sources": dict(self.sources),
               "dose": self.dose, "counts": None if self.counts is None else self.counts.counted,
               "counts_reason": None if self.counts is None else self.counts.reason}
        if "rotation" in self.undetermined:
            out["rotation_deg"] = None
        return out

    def params_dict(self, data_file: str | Path, detector_shifts: str | Path | None = None) -> dict[str, Any]:
        """The ``phasestem reconstruct`` parameter mapping of this calibration for the corrected patterns
        ``data_file`` (and the sub-pixel descan ``detector_shifts`` .npy), with the sections of :attr:`extra`."""
        from ..scan import GridScan

        dk = round(self.angular_sampling, 6)
        rotation = round(self.rotation, 3)
        pos = GridScan(self.scan_shape, self.scan_step, rotation=rotation).positions()
        origin = [float(np.ceil(-v * 1e4) / 1e4) + 0.0 for v in pos.min(0)]  # rounded up: positions ≥ 0 Å (no −0)
        params: dict[str, Any] = {
            "data": {"file": str(data_file), "transpose": self.transpose},
            "optics": {"energy": self.energy, "semiangle": round(self.semiangle, 4),
                       "aberrations": {k: round(v, 3) for k, v in self.aberrations.items()},
                       "angular_sampling": [dk, dk]},
            "scan": {"shape": list(self.scan_shape), "step": list(self.scan_step),
                     "rotation": rotation, "origin": origin},
            # the descan/centre fit leaves a few hundredths of a pixel, which the object would otherwise take up
            # as a phase ramp (recon.constraints.transfer_phase_ramp; benchmarks/real_data: r 0.36 → 0.89)
            "constraints": {"obj_ramp": {"enabled": True}},
        }
        if detector_shifts:
            params["data"]["detector_shifts"] = str(detector_shifts)
        if self.counts is not None:  # the original file's word: the corrected patterns need not show it
            params["data"]["counts"] = bool(self.counts.counted)
        if self.dose is not None:
            params["data"]["dose"] = float(self.dose)
        for key, val in self.extra.items():
            params.setdefault(key, {}).update(val)
        return params

    def rotation_text(self) -> str:
        """``rotation 29.32° (parallax)``, ``rotation 30.46° ± 4.1° (centre of mass)`` (± the halves' spread), or
        ``rotation undetermined (why; left at 0°)``."""
        if "rotation" in self.undetermined:
            return f"rotation undetermined ({self.undetermined['rotation']}; left at 0°)"
        spread = self.com.spread if self.rotation_source == "centre of mass" else None
        pm = "" if spread is None else f" ± {spread:.1f}°"
        return f"rotation {self.rotation:.2f}°{pm} ({self.rotation_source})"

    def summary(self) -> str:
        ab = ", ".join(f"{k} = {v:.4g}" for k, v in self.aberrations.items())
        ab += " (given)" if self.defocus_source == "given" else ""
        hot, dead = len(self.bad_pixels.hot), len(self.bad_pixels.dead)
        dy, dx = self.disk.drift
        return (f"angular sampling {self.angular_sampling:.4g} mrad/px (disk radius {self.disk.radius:.2f} px, "
                f"α = {self.semiangle:.4g} mrad); {self.rotation_text()}, "
                f"transpose {self.transpose}{' (undetermined)' if 'transpose' in self.undetermined else ''}; "
                f"{ab or 'no defocus'}; bad pixels {hot} hot, {dead} dead; descan drift "
                f"{dy:.2f} × {dx:.2f} px (residual rms {self.disk.to_dict()['residual_rms_px']:.2f} px)")


#: the parallax is used only when its aligned group images agree at least this well (mean Pearson r); at
#: focus the bright-field images differ in contrast, not position, and a "defocus" fitted to them is spurious
MIN_COHERENCE = 0.7

#: the parallax is fitted on at most this many scan rows and columns (the central block)
PARALLAX_SCAN = 64

#: the parallax phase decides θ vs θ + 180° when its skewness is at least this large (else the dark-field rule)
MIN_SKEWNESS = 0.2


def _group_contrast(dataset, plan, centres, radius):
    """Contrast images of the bright-field groups over the central ≤ PARALLAX_SCAN² block of the scan."""
    from .correct import corrected_chunks

    (sy, sx), n = dataset.scan_shape, PARALLAX_SCAN
    rows = slice(max(0, sy // 2 - n // 2), max(0, sy // 2 - n // 2) + min(sy, n))
    cols = slice(max(0, sx // 2 - n // 2), max(0, sx // 2 - n // 2) + min(sx, n))
    if (rows.stop - rows.start, cols.stop - cols.start) != (sy, sx):
        dataset, centres = dataset.scan_subset(rows, cols), centres[rows, cols]
    return group_contrast(dataset, radius, corrected_chunks(dataset, plan, centres))


def _branch_from_dark_field(pfit: ParallaxFit, com, transpose: bool, step, dark, notes: list[str],
                            ratio: float) -> None:
    """θ vs θ + 180° of a parallax-only rotation by the dark-field rule of :mod:`.rotation` (flips C in place)."""
    theta, rule, score = choose_branch(com, pfit.rotation, transpose, step, dark)
    if abs((theta - pfit.rotation + 180) % 360 - 180) > 90:  # θ + 180° ≡ −C
        pfit.flip_branch()
    notes.append(f"centre-of-mass field too weak for the rotation (relative curl {ratio:.2f}): rotation and transpose "
                 f"from the parallax alone; θ vs θ + 180° by the {rule} (score {score:.2f}, weak below 0.1)")


def _branch_from_skewness(pfit: ParallaxFit, con, weights, step, energy: float, semiangle: float,
                          com: RotationFit, notes: list[str]) -> None:
    """θ vs θ + 180° of a parallax fit by the skewness of its phase, where it is clear (flips C in place)."""
    pfit.skewness = phase_skewness(con, weights, pfit.fitted, pfit.C10, step, energy, semiangle)
    if abs(pfit.skewness) < MIN_SKEWNESS:
        notes.append(f"θ vs θ + 180°: the parallax phase is hardly skewed ({pfit.skewness:+.2f}); kept the "
                     f"{com.branch} rule's choice (score {com.branch_score:.2f}); give --c10-sign if the defocus "
                     "sign is known")
    elif pfit.skewness < 0:
        old = pfit.C10
        pfit.flip_branch()
        notes.append(f"θ vs θ + 180° from the parallax phase: skewness {-pfit.skewness:+.2f} with C10 = {old:.0f} Å, "
                     f"{pfit.skewness:+.2f} with C10 = {pfit.C10:.0f} Å (atoms are positive peaks); the "
                     f"{com.branch} rule (score {com.branch_score:.2f}) chose the other")


def calibrate(dataset, semiangle: float | None = None, angular_sampling: float | None = None,
              transpose: bool | None = None, parallax: bool = True, c10_range: float | None = None,
              edge_threshold: float = 0.5, c10: float | None = None,
              rotation: float | None = None) -> Calibration:
    """Calibrate a :class:`phasestem.dataset.FourDSTEM` (energy and scan step known) from its patterns.

    Give ``semiangle`` (mrad) to get the angular sampling from the disk radius, or
    ``angular_sampling`` (mrad/px) to get the semi-angle. ``transpose`` fixes the detector
    transpose. ``parallax=False`` skips the tcBF fit (no defocus; rotation from the CoM only).
    ``edge_threshold`` is the fraction of the disk level taken as its edge (0.5: the
    half-intensity edge of a real aperture; 0.25 for simulations with a soft amplitude edge).
    ``c10`` (Å, = −defocus: the microscope's value, or any number of the right sign) decides θ vs θ + 180°
    through the fitted defocus instead of the dark-field rule when the parallax is used, and is the defocus
    written when the parallax fits none (``defocus_source`` 'given'; a note says so).
    ``rotation`` (degrees), when known from another calibration, is taken as it is (with ``transpose``, else no
    transpose): the centre-of-mass fit is kept for the record only and the parallax fits the defocus at it, so
    data too weak to calibrate the rotation (low dose) still calibrate.
    """
    if (semiangle is None) == (angular_sampling is None):
        raise ConfigError("calibrate: give exactly one of semiangle (mrad) or angular_sampling (mrad/px)")
    notes: list[str] = []
    undetermined: dict[str, str] = {}
    small = min(dataset.scan_shape) < MIN_SCAN  # too few positions for a rotation or a parallax
    total = summed_pattern(dataset)
    bad = find_bad_pixels(total)
    plan = fill_plan(bad.mask)
    mean = fill_bad_pixels(total, plan) / dataset.n_patterns  # filling is linear: fill the sum
    disk = fit_disk(dataset, mean, plan, threshold=edge_threshold)
    notes += disk.notes
    if semiangle is not None:
        dk = float(semiangle) / disk.radius
    else:
        dk = float(angular_sampling)
        semiangle = dk * disk.radius
    centres = disk.plane_at(dataset.scan_shape)
    com, dark = com_field(dataset, centres, plan, dark_radius=1.15 * disk.radius)
    step = dataset.scan_step
    given = rotation is not None
    options = [False, True] if transpose is None and not given else [bool(transpose)]
    fits = {t: fit_rotation(com, step, dark, transpose=t, strict=False) for t in options}
    best = min(fits, key=lambda t: fits[t].curl_ratio[t])
    ratio = fits[best].curl_ratio[best]
    com_ok = ratio <= MAX_CURL_RATIO and not small
    chosen, pfit, source = best, None, "centre of mass"
    if parallax and small:
        undetermined["C10"] = (f"a {dataset.scan_shape[0]} × {dataset.scan_shape[1]} scan: the bright-field parallax "
                               f"needs at least {MIN_SCAN} × {MIN_SCAN} positions")
    elif parallax:
        con, weights, k_file = _group_contrast(dataset, plan, centres, disk.radius)
        pfits = {t: fit_parallax(con, weights, k_file[:, ::-1] if t else k_file, dk,
                                 rotation if given else fits[t].rotation if com_ok else None, step, c10_range,
                                 energy=dataset.energy)
                 for t in fits}
        usable = {t: p for t, p in pfits.items() if p.determinant > 0 and p.max_shift >= 1.0
                  and p.residual < 0.3 * p.max_shift and p.coherence >= MIN_COHERENCE}
        if usable:
            chosen = min(usable, key=lambda t: usable[t].residual)
            pfit, source = usable[chosen], "parallax"
            if com_ok and chosen != best:
                notes.append(f"transpose {chosen} from the parallax (det +1, residual {pfit.residual:.2f} px); the "
                             f"CoM curl preferred {best} ({fits[best].curl_ratio[best]:.2f} vs "
                             f"{fits[chosen].curl_ratio[chosen]:.2f})")
            if not com_ok and not given:
                _branch_from_dark_field(pfit, com, chosen, step, dark, notes, ratio)
        else:
            p = pfits[best]
            notes.append(f"parallax not used: largest shift {p.max_shift:.2f} scan px, residual {p.residual:.2f} px, "
                         f"det {p.determinant:+.0f}, aligned images agree to r = {p.coherence:.2f} (< {MIN_COHERENCE}: "
                         "focused data or too little contrast); no defocus fitted")
    if not com_ok and pfit is None and not small and not given:
        raise NoContrastError(no_contrast_message(ratio, step, dataset.energy, float(semiangle), c10))
    if pfit is not None and not given:  # a given rotation is its own branch: the fit's C10 sign follows from it
        _branch_from_skewness(pfit, con, weights, step, dataset.energy, float(semiangle), fits[chosen], notes)
    if c10 and pfit is not None and given and np.sign(pfit.C10) != np.sign(c10):
        notes.append(f"the defocus fitted at the given rotation, C10 = {pfit.C10:.0f} Å, has not the sign given "
                     f"({c10:+g}): is the rotation 180° off?")
    elif c10 and pfit is not None and np.sign(pfit.C10) != np.sign(c10):
        pfit.flip_branch()
        notes.append(f"θ + 180° taken so that C10 has the sign given ({c10:+g}); the data's branch rules "
                     "chose the other")
    rot = fits[chosen]
    if given:
        source = "given"
        notes.append(f"rotation {rotation:.2f}° as given (the centre-of-mass fit, kept for the record: "
                     f"{rot.rotation:.2f}°, relative curl {ratio:.2f})")
    else:
        rotation = pfit.rotation if pfit is not None else rot.rotation
    why = None if pfit is not None or given else rot.undetermined(dataset.scan_shape)
    cause = undersampled(step, dataset.energy, float(semiangle), c10) if why and not small else None
    if cause:  # "too little signal": say why, and what to pass
        why = f"{why.removesuffix(': too little signal')}: {cause}; {ROTATION_FLAG}"
    if why:  # the defaults stay: rotation 0°, transpose as given or False
        undetermined["rotation"] = why
        rotation, source = 0.0, "undetermined"
        if transpose is None:
            undetermined["transpose"] = why
            chosen = False
    if pfit is not None and com_ok:
        diff = abs((pfit.rotation - rot.rotation + 180) % 360 - 180)
        notes.append(f"rotation: parallax {pfit.rotation:.2f}°, centre of mass {rot.rotation:.2f}° "
                     f"(differ {diff:.2f}°)")
    aberrations = {} if pfit is None else {k: float(v) for k, v in pfit.aberrations().items()}
    if aberrations and aberrations.get("C12", 0.0) < 0.05 * max(abs(aberrations["C10"]), 1.0):
        notes.append(f"astigmatism C12 = {aberrations['C12']:.3g} Å is below 5 % of |C10|: not written")
        aberrations = {"C10": aberrations["C10"]}
    defocus_source = "parallax" if aberrations else None
    if not aberrations and c10:
        aberrations, defocus_source = {"C10": float(c10)}, "given"
        undetermined.pop("C10", None)  # not left at its default
        notes.append(f"C10 = {float(c10):g} Å as given (--c10): the data do not measure the defocus")
    for reason in dict.fromkeys(undetermined.values()):
        what = [k for k, v in undetermined.items() if v == reason]
        notes.append(f"{' and '.join(what)} undetermined by the data ({reason}): params.yaml leaves "
                     f"{', '.join(DEFAULTS[k] for k in what)} (the defaults); set {'them' if len(what) > 1 else 'it'} "
                     "if known")
    return Calibration(
        energy=dataset.energy, scan_shape=dataset.scan_shape, scan_step=tuple(step),
        pattern_shape=dataset.pattern_shape, semiangle=float(semiangle), angular_sampling=dk,
        rotation=float(rotation % 360.0), transpose=bool(chosen), aberrations=aberrations, rotation_source=source,
        defocus_source=defocus_source,
        bad_pixels=bad, disk=disk, com=rot, com_alternatives=fits, parallax=pfit, com_field=com, dark_field=dark,
        notes=notes, source=str(dataset.metadata.get("source", "")), mean_pattern=mean, undetermined=undetermined,
    )


#: what ``params.yaml`` holds for a quantity the data leave undetermined
DEFAULTS = {"rotation": "scan.rotation 0°", "transpose": "data.transpose false", "C10": "no optics.aberrations.C10"}
