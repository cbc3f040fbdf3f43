"""The closed-form numbers of an acquisition plan, and a one-line warning for each that falls outside the range
where ptychography is known to work.

Formulas (λ the electron wavelength, α the semi-angle, d the scan step, Δθ the detector pixel, N its pixels):

* probe radius r = √(r_geo² + r_diff²), phasestem's one probe size (:func:`phasestem.physics.optics.probe_radius`,
  also what ``phasestem probe-extent`` reports): r_geo = max over θ ≤ α of |C10·θ + C30·θ³| + |C12|·α (the ray
  displacement of the aberration function at the aperture), r_diff = 0.61 λ/α (the Airy radius). A disk of radius
  r holds most of the intensity (84 % of an aberration-free probe; ~98 % at 30 mrad, Cs 0.1 mm, where the
  central peak alone is 3.7 Å across but r = 27 Å);
* real-space overlap: the shared area of two disks of radius r whose centres are d apart, as a fraction of one
  disk, O(x) = (2/π)(arccos x − x√(1 − x²)) with x = d/(2r); 0 when d ≥ 2r;
* Fourier-space overlap: the same fraction for two bright-field disks of semi-angle α whose centres are λ/(2d)
  apart (the scan's Nyquist frequency 1/(2d) scatters the disk by that angle): the share of the disk that carries
  interference at the finest period the scan samples. 0 when d ≤ λ/(4α) (the scan samples every frequency the
  aperture transfers); near 1, the direct methods (SSB, the start of --auto) alias;
* probe window λ/Δθ (Å): the real-space field a pattern samples; it must hold the probe (diameter 2r), twice over
  for Nyquist sampling of the pattern;
* detector extent θ_max = N·Δθ/2; reconstruction pixel Δx = λ/(N·Δθ) = λ/(2θ_max); the reconstruction grid's
  anti-aliased band (phasestem's and abTEM's 2/3 of Nyquist) is (2/3)·θ_max and must hold α;
* dose: e⁻ per pattern = I·t/e (or D·d², or as given); e⁻/Å² D = electrons per pattern / d²
  (:mod:`phasestem.physics.noise`);
* depth of field λ/α²: a specimen thicker than it is not a projection (use slices); slices much thinner than it
  cannot be told apart;
* data volume = positions × N² × bytes per value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..physics.noise import electrons_per_area, electrons_per_pattern
from ..physics.optics import ANTIALIAS_FRACTION, probe_radius, probe_size_text, wavelength
from .config import PlanConfig, PlanDose

#: elementary charge (C)
ELECTRON_CHARGE = 1.602176634e-19

# thresholds of the warnings (each states where ptychography is known to work)
#: real-space overlap below which reconstructions lose stability (Moshtaghpour & Kirkland, arXiv 2502.00762: ≥ 40 %)
MIN_OVERLAP = 0.4
#: Fourier-space overlap above which the scan under-samples what the aperture transfers (direct methods alias)
MAX_FOURIER_OVERLAP = 0.8
#: probe window / probe diameter below which the patterns under-sample the probe (Nyquist: 2)
MIN_WINDOW_RATIO = 2.0
#: bright-field disk radius in detector pixels below which the disk and the probe are coarsely sampled
MIN_BF_PIXELS = 5.0
#: dose (e⁻/Å²) below which atomic-resolution ptychography is noise limited
LOW_DOSE = 1e3
#: slices thinner than this fraction of the depth of field cannot be told apart
MIN_SLICE_FRACTION = 0.25

#: reconstruction time of --auto (calibration + 10 epochs of batch 16), from this project's measurements. CPU (2
#: cores): per pattern and epoch about the same at 64² (59–68 s for 1024 patterns, benchmarks/plan/accuracy.py) and
#: at 256² (763 s for 16384 patterns, README "calibrate + --auto on a 128 × 128 Merlin .mib"): ~5.5 ms, the batches'
#: overheads dominate; larger patterns are taken to scale with their pixels. GPU (H100, docs/benchmarks.md "AD
#: seconds per iteration"): 0.047 s per iteration of 4096 × 128² at batch 256 per pattern-pixel, plus the launch
#: cost of a batch (0.115 s per 1024-pattern iteration at batch 32: 3.6 ms a batch) for --auto's batches of 16
CPU_SECONDS_PER_PATTERN = 5.5e-3
CPU_PIXELS_FLAT = 256 * 256
GPU_SECONDS_PER_PIXEL = 0.047 / (4096 * 128 * 128)
GPU_SECONDS_PER_BATCH = 0.115 / (1024 / 32)
AUTO_BATCH = 16


def circle_overlap(distance: float, radius: float) -> float:
    """Shared area of two disks of ``radius`` whose centres are ``distance`` apart, as a fraction of one disk."""
    if radius <= 0:
        return 0.0
    x = distance / (2.0 * radius)
    if x >= 1.0:
        return 0.0
    return (2.0 / math.pi) * (math.acos(x) - x * math.sqrt(1.0 - x * x))


def planned_dose(dose: PlanDose, step: float) -> tuple[float | None, float | None]:
    """(e⁻ per pattern, e⁻/Å²) of the plan's ``dose`` at a scan ``step`` (Å) from whichever of its three forms
    it gives; (None, None) for none (noise-free)."""
    square = (step, step)
    if dose.electrons_per_area is not None:
        return electrons_per_pattern(dose.electrons_per_area, square), float(dose.electrons_per_area)
    if dose.electrons_per_pattern is not None:
        return float(dose.electrons_per_pattern), electrons_per_area(dose.electrons_per_pattern, square)
    if dose.beam_current is not None:
        electrons = dose.beam_current * 1e-12 * dose.dwell_time * 1e-6 / ELECTRON_CHARGE
        return electrons, electrons_per_area(electrons, square)
    return None, None


@dataclass
class Quantities:
    """The numbers :func:`compute` reports (units in the names' descriptions of :data:`ROWS`)."""

    wavelength: float
    step: float
    probe_radius: float
    probe_radius_geometric: float
    probe_radius_diffraction: float
    overlap: float
    fourier_overlap: float
    angular_sampling: float
    bf_pixels: float
    probe_window: float
    window_ratio: float
    detector_extent: float
    band_limit: float
    pixel: float
    electrons_per_pattern: float | None
    dose: float | None
    electrons_per_bf_pixel: float | None
    depth_of_field: float
    thickness: float
    slice_thickness: float | None
    data_bytes: float
    field_of_view: tuple[float, float]
    acquisition_seconds: float | None
    cpu_seconds: float
    gpu_seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def compute(cfg: PlanConfig) -> Quantities:
    """The quantities of the plan ``cfg`` and its warnings (each one line)."""
    o, s, det = cfg.optics, cfg.scan, cfg.detector
    lam = wavelength(o.energy)
    a = o.semiangle * 1e-3
    r, r_geo, r_diff = probe_radius(o.energy, o.semiangle, o.aberrations)
    d = s.step
    dtheta = det.mrad_per_pixel()
    n = det.shape
    window = lam / (dtheta * 1e-3)
    extent = n * dtheta / 2
    band = ANTIALIAS_FRACTION * extent
    pixel = lam / (n * dtheta * 1e-3)
    n_pos = s.shape[0] * s.shape[1]
    dz = cfg.reconstruction.slice_thickness
    slices = 1 if dz is None else max(1, math.ceil(cfg.specimen.thickness / dz))
    per_bf = seconds = None
    electrons, dose = planned_dose(cfg.dose, d)
    if cfg.dose.dwell_time is not None:
        seconds = n_pos * cfg.dose.dwell_time * 1e-6
    bf_pixels = o.semiangle / dtheta
    if electrons is not None:
        per_bf = electrons / max(math.pi * bf_pixels**2, 1.0)
    work = n_pos * n * n * cfg.reconstruction.epochs * slices
    q = Quantities(
        wavelength=lam, step=d, probe_radius=r, probe_radius_geometric=r_geo, probe_radius_diffraction=r_diff,
        overlap=circle_overlap(d, r), fourier_overlap=circle_overlap(lam / (2 * d), a),
        angular_sampling=dtheta, bf_pixels=bf_pixels, probe_window=window, window_ratio=window / (2 * r),
        detector_extent=extent, band_limit=band, pixel=pixel, electrons_per_pattern=electrons, dose=dose,
        electrons_per_bf_pixel=per_bf, depth_of_field=lam / a**2, thickness=cfg.specimen.thickness,
        slice_thickness=dz, data_bytes=float(n_pos * n * n * det.bytes_per_value),
        field_of_view=((s.shape[0] - 1) * d, (s.shape[1] - 1) * d), acquisition_seconds=seconds,
        cpu_seconds=work / (n * n) * CPU_SECONDS_PER_PATTERN * max(1.0, n * n / CPU_PIXELS_FLAT),
        gpu_seconds=work * GPU_SECONDS_PER_PIXEL
        + cfg.reconstruction.epochs * math.ceil(n_pos / AUTO_BATCH) * GPU_SECONDS_PER_BATCH)
    q.warnings = warnings_for(q, o.semiangle)
    return q


def warnings_for(q: Quantities, semiangle: float) -> list[str]:
    """One line per quantity outside the range where ptychography is known to work (empty: none)."""
    out = []
    if q.overlap <= 0:
        out.append(f"no overlap: the scan step {q.step:.3g} Å is at least the probe diameter "
                   f"{2 * q.probe_radius:.3g} Å, so neighbouring positions share nothing; use a step below "
                   f"{_step_for(MIN_OVERLAP, q.probe_radius):.3g} Å or more defocus")
    elif q.overlap < MIN_OVERLAP:
        out.append(f"low overlap: {100 * q.overlap:.0f} % between neighbouring positions (below "
                   f"{100 * MIN_OVERLAP:.0f} % reconstructions become unstable); a step of "
                   f"{_step_for(MIN_OVERLAP, q.probe_radius):.3g} Å gives {100 * MIN_OVERLAP:.0f} %")
    if q.window_ratio < 1:
        out.append(f"aliases the probe: the probe (diameter {2 * q.probe_radius:.3g} Å) is larger than the window "
                   f"a pattern samples (λ/Δθ = {q.probe_window:.3g} Å); use a finer detector pixel (longer camera "
                   f"length) below {_window_sampling(q, 1.0):.3g} mrad, or a smaller probe (less defocus or "
                   "aberration)")
    elif q.window_ratio < MIN_WINDOW_RATIO:
        out.append(f"coarse angular sampling: the probe fills {100 / q.window_ratio:.0f} % of the window a pattern "
                   f"samples (λ/Δθ = {q.probe_window:.3g} Å; Nyquist needs at most 50 %); use a detector pixel "
                   f"below {_window_sampling(q, MIN_WINDOW_RATIO):.3g} mrad")
    if q.detector_extent < semiangle:
        out.append(f"the detector (±{q.detector_extent:.3g} mrad) does not hold the bright-field disk (α = "
                   f"{semiangle:.3g} mrad); shorten the camera length")
    elif q.band_limit < semiangle:
        out.append(f"aliases the probe: the reconstruction grid's anti-aliased band ±{q.band_limit:.3g} mrad "
                   f"(2/3 of the detector's ±{q.detector_extent:.3g} mrad) is below the semi-angle {semiangle:.3g} "
                   f"mrad; the detector must span ±{1.5 * semiangle:.3g} mrad (shorter camera length)")
    if q.bf_pixels < MIN_BF_PIXELS:
        out.append(f"coarse angular sampling: the bright-field disk is {q.bf_pixels:.3g} px in radius (below "
                   f"{MIN_BF_PIXELS:.0f} px its edge and the probe are poorly sampled)")
    if q.fourier_overlap > MAX_FOURIER_OVERLAP:
        out.append(f"high Fourier-space overlap: {100 * q.fourier_overlap:.0f} % (the scan samples periods down "
                   f"to {2 * q.step:.3g} Å, the aperture transfers {q.wavelength / (2 * semiangle * 1e-3):.3g} "
                   "Å): direct methods (SSB, the --auto start) alias; the iterations rely on the real-space overlap")
    if q.dose is not None and q.dose < LOW_DOSE:
        out.append(f"low dose: {q.dose:.3g} e⁻/Å² (below {LOW_DOSE:.0e} e⁻/Å² atomic-resolution ptychography is "
                   "noise limited; see the expected result)")
    if q.slice_thickness is None and q.thickness > q.depth_of_field:
        out.append(f"thick specimen: {q.thickness:.3g} Å is more than the depth of field λ/α² = "
                   f"{q.depth_of_field:.3g} Å, so one slice (--auto) blurs it; reconstruct with about "
                   f"{math.ceil(q.thickness / q.depth_of_field)} slices (reconstruction.slice_thickness)")
    if q.slice_thickness is not None and q.slice_thickness < MIN_SLICE_FRACTION * q.depth_of_field:
        out.append(f"thin slices: {q.slice_thickness:.3g} Å is below {MIN_SLICE_FRACTION:g} × the depth of field "
                   f"λ/α² = {q.depth_of_field:.3g} Å; slices that thin cannot be told apart")
    return out


def _step_for(target: float, radius: float) -> float:
    """The scan step (Å) that gives the real-space overlap ``target`` for a probe of ``radius`` (bisection)."""
    lo, hi = 0.0, 2.0 * radius
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if circle_overlap(mid, radius) > target else (lo, mid)
    return 0.5 * (lo + hi)


def _window_sampling(q: Quantities, ratio: float) -> float:
    """The detector pixel (mrad) whose window λ/Δθ is ``ratio`` probe diameters."""
    return q.wavelength / (ratio * 2 * q.probe_radius) * 1e3


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.2g} s"
    if seconds < 5400:
        return f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.2g} h"


def _size(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def format_quantities(q: Quantities, cfg: PlanConfig) -> str:
    """The quantities as the lines ``phasestem plan`` prints, then one ``warning:`` line each."""
    n, s = cfg.detector.shape, cfg.scan.shape
    lines = [
        f"probe: {probe_size_text(cfg.optics.energy, cfg.optics.semiangle, cfg.optics.aberrations)}; λ = "
        f"{q.wavelength * 100:.4g} pm",
        f"overlap: real space {100 * q.overlap:.0f} % at a {q.step:.3g} Å step; Fourier space "
        f"{100 * q.fourier_overlap:.0f} %",
        f"sampling: {q.angular_sampling:.3g} mrad/px, bright-field disk {q.bf_pixels:.3g} px in radius; window "
        f"λ/Δθ = {q.probe_window:.3g} Å ({q.window_ratio:.3g} probe diameters)",
        f"detector: ±{q.detector_extent:.3g} mrad ({n}² px), band limit ±{q.band_limit:.3g} mrad for α = "
        f"{cfg.optics.semiangle:.3g} mrad; reconstruction pixel {q.pixel:.3g} Å",
    ]
    if q.dose is None:
        lines.append("dose: not given (noise-free)")
    else:
        lines.append(f"dose: {q.dose:.3g} e⁻/Å², {q.electrons_per_pattern:.3g} e⁻ per pattern "
                     f"({q.electrons_per_bf_pixel:.3g} per bright-field pixel)")
    slices = "one slice" if q.slice_thickness is None else \
        f"slices of {q.slice_thickness:.3g} Å ({math.ceil(q.thickness / q.slice_thickness)})"
    lines.append(f"depth of field λ/α² = {q.depth_of_field:.3g} Å; specimen {q.thickness:.3g} Å, {slices}")
    acq = f", acquired in {_duration(q.acquisition_seconds)}" if q.acquisition_seconds is not None else ""
    lines.append(f"data: {s[0]} × {s[1]} patterns of {n}² ({q.field_of_view[0]:.3g} × {q.field_of_view[1]:.3g} Å), "
                 f"{_size(q.data_bytes)}{acq}; reconstruction (--auto, {cfg.reconstruction.epochs} epochs) ≈ "
                 f"{_duration(q.cpu_seconds)} on 2 CPU cores, {_duration(q.gpu_seconds)} on one H100 (from the "
                 f"measured rates: {CPU_SECONDS_PER_PATTERN * 1e3:.2g} ms per pattern (to 256² px) and epoch on 2 "
                 "CPU cores, the H100's per pixel and batch; README, docs/benchmarks.md)")
    lines += [f"warning: {w}" for w in q.warnings]
    return "\n".join(lines)
