"""The expected result of a plan, by running it: simulate a small field of the specimen at the planned settings
(phasestem's simulator, Poisson counts at the planned dose), reconstruct it as ``phasestem reconstruct FILE
--auto`` would (:func:`phasestem.recon.auto.run_auto`: calibrate from the data, SSB start, the --auto AD
settings), and score the phase against the simulated truth (E_φ and the FRC resolution, :mod:`phasestem.metrics`).

The simulation cell: a pattern of N pixels of Δθ mrad samples a window λ/Δθ Å at the reconstruction pixel
λ/(N·Δθ); the cell is an odd number f of windows (enough to hold the field and the probe), simulated at half the
reconstruction pixel (its anti-aliased band, 4/3 of the detector's extent, holds every detector pixel) and binned
f × f onto the N² detector, so the stored patterns have the planned angular sampling exactly. The aperture has a
hard edge, as a real one: the disk's half-intensity edge is at the semi-angle and --auto calibrates the angular
sampling as on real data (a soft simulated edge read it 1.2 % high and scaled the object against its positions).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import PhasestemError
from ..physics.optics import wavelength
from .config import PlanConfig, with_value
from .quantities import compute, probe_radius

log = logging.getLogger("phasestem.plan")

#: the simulated field (default): at least FIELD_ANGSTROM Å and FIELD_DIAMETERS probe diameters across, in
#: FIELD_POSITIONS (fewest, most) positions per side (the fewest: --auto's rotation and parallax fits need a field of
#: positions, not of Å; at a 1 Å step 10 positions left "rotation undetermined")
FIELD_ANGSTROM = 10.0
FIELD_POSITIONS = (12, 24)
FIELD_DIAMETERS = 3.0
#: the FRC resolution counts a crossing of 1/7 only after the curve has held above it for this many rings and
#: when it then stays below for as many (:func:`phasestem.metrics.frc_resolution`): on a 16 Å field the lowest
#: ring (16 Å period) of an --auto run on abTEM data correlated −0.93 with the truth and the single-ring rule put
#: the resolution at 1.0 Å, although every ring from 8 Å to 0.51 Å correlated > 0.7; at 1e4 e⁻/Å² the three
#: lowest rings (16, 8 and 5.3 Å) were below and a crossing there read 7.2 Å, where every ring from 4 Å to
#: 0.51 Å correlated > 0.25 (E_φ 0.23)
FRC_SUSTAIN = 2


@dataclass
class Expected:
    """What the simulated field gives (E_φ dimensionless, FRC resolution in Å)."""

    phase_error: float
    frc_resolution: float
    scan_shape: tuple[int, int]
    seconds: float
    pixel: float
    folder: str
    figure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def field_shape(cfg: PlanConfig) -> tuple[int, int]:
    """Positions (rows, cols) of the simulated field: ``expected.scan_shape``, else a field of
    ``expected.field`` Å (default: :data:`FIELD_ANGSTROM`, or :data:`FIELD_DIAMETERS` probe diameters if more) at
    the planned step, within :data:`FIELD_POSITIONS` and the acquisition."""
    if cfg.expected.scan_shape is not None:
        return tuple(int(v) for v in cfg.expected.scan_shape)
    side = cfg.expected.field
    if side is None:
        r, _, _ = probe_radius(cfg.optics.energy, cfg.optics.semiangle, cfg.optics.aberrations)
        side = max(FIELD_ANGSTROM, FIELD_DIAMETERS * 2 * r)
    n = int(math.ceil(side / cfg.scan.step - 1e-9)) + 1
    n = min(max(n, FIELD_POSITIONS[0]), FIELD_POSITIONS[1])
    return min(n, cfg.scan.shape[0]), min(n, cfg.scan.shape[1])


def simulation_config(cfg: PlanConfig, shape: tuple[int, int]):
    """The :class:`phasestem.simulate.SimulationConfig` of the simulated field (module docstring) and the
    reconstruction pixel (Å)."""
    from ..simulate.config import SimulationConfig

    n, dtheta = cfg.detector.shape, cfg.detector.mrad_per_pixel()
    window = wavelength(cfg.optics.energy) / (dtheta * 1e-3)
    r, _, _ = probe_radius(cfg.optics.energy, cfg.optics.semiangle, cfg.optics.aberrations)
    drift = [v * shape[0] / cfg.scan.shape[0] for v in cfg.scan.drift]  # the field drifts by as many Å a row
    wander = max(abs(v) for v in drift) + 3 * cfg.scan.position_error  # where a distorted probe may go
    span = (max(shape) - 1) * cfg.scan.step + 2 * r + 2 * wander
    f = max(1, int(math.ceil(span / window)))
    f += 1 - f % 2  # odd: the zero frequency stays on the central detector pixel
    extent = f * window
    d = cfg.scan.step
    origin = tuple((extent - (k - 1) * d) / 2 for k in shape)
    s = cfg.specimen
    kind = {"typical": "crystal", "crystal": "crystal", "structures": "structures", "amorphous": "amorphous"}[s.kind]
    specimen = {"kind": kind, "depth": (s.thickness, s.thickness), "slice_thickness": cfg.expected.simulation_slice,
                "phonons": cfg.expected.phonons, "phonon_sigma": cfg.expected.phonon_sigma, "max_tilt": s.max_tilt,
                "prototypes": ["perovskite"] if s.kind == "typical" else s.prototypes,
                "files": [str(p) for p in s.files], "elements": s.elements}
    sim = SimulationConfig.model_validate({
        "optics": cfg.optics.model_dump(),
        "grid": {"extent": (extent, extent), "sim_gpts": (2 * f * n, 2 * f * n), "phase_gpts": (f * n, f * n)},
        "scan": {"shape": shape, "step": (d, d), "origin": origin, "position_error": cfg.scan.position_error,
                 "drift": tuple(drift)},
        "detector": {"shape": (n, n), "max_angle": n * dtheta / 2, "dose": compute(cfg).dose},
        "specimen": specimen, "output": {"n_files": 1, "samples_per_file": 1},
        "compute": {"seed": cfg.expected.seed, "device": cfg.expected.device},
    })
    return sim, window / n


def simulate_field(cfg: PlanConfig, folder: Path, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Simulate the field into ``folder/scan.npy`` (counts, (Sy, Sx, N, N)); returns the file, the truth phase
    (rad, pixel (0, 0) at 0 Å of the cell), its sampling and the true positions (Å, row-major)."""
    from ..scan import GridScan
    from ..simulate.scan import simulate_sample

    shape = shape or field_shape(cfg)
    sim, pixel = simulation_config(cfg, shape)
    sample = simulate_sample(sim, 0)
    folder.mkdir(parents=True, exist_ok=True)
    patterns = sample["patterns"]
    if sim.detector.dose is not None:
        patterns = patterns.astype(np.int32)
    path = folder / "scan.npy"
    np.save(path, patterns)
    positions = GridScan(sim.scan.shape, sim.scan.step, origin=sim.scan.origin).positions()
    return {"file": path, "truth": sample["phase"], "truth_sampling": sim.grid.extent[0] / sim.grid.phase_gpts[0],
            "truth_positions": positions, "shape": shape, "pixel": pixel}


def score(results_file: str | Path, truth: np.ndarray, truth_sampling: float, truth_positions: np.ndarray,
          periodic: bool = True) -> dict[str, Any]:
    """E_φ and FRC resolution (1/7, sustained for :data:`FRC_SUSTAIN` rings) of a reconstruction (``results.h5``)
    against a truth phase, over the scanned field (the bounding box of the probe positions). The truth is mapped
    onto the reconstruction's grid through the positions (:func:`phasestem.metrics.truth_on_grid`: a calibrated
    rotation or scale is followed). Also returns the two images (reconstruction, truth) on that field and the
    sampling."""
    from ..metrics import figures_of_merit, truth_on_grid
    from ..recon.results import load_results

    res = load_results(results_file)
    s = tuple(float(v) for v in res["attrs"]["sampling"])
    pos = np.asarray(res["positions_initial"]) + np.asarray(res["attrs"]["origin"])  # Å, object frame
    phase = np.asarray(res["phase_sum"], np.float64)
    t = truth_on_grid(truth, truth_sampling, truth_positions, pos, s, phase.shape, periodic=periodic)
    lo = np.floor(pos.min(0) / s).astype(int)
    hi = np.ceil(pos.max(0) / s).astype(int) + 1
    fov = (slice(max(lo[0], 0), hi[0]), slice(max(lo[1], 0), hi[1]))
    fom = figures_of_merit(phase[fov], t[fov], sampling=s, frc_sustain=FRC_SUSTAIN)
    ring = 1.0 / (min(phase[fov].shape) * float(np.mean(s)))  # 1/Å: the width of one FRC ring (metrics.frc)
    return {"phase_error": float(fom["phase_error"]), "frc_resolution": float(fom["frc_resolution"]),
            "frc_ring": ring, "reconstruction": phase[fov], "truth": t[fov], "sampling": s}


def reconstruct_auto(file: Path, folder: Path, cfg: PlanConfig, **calibrate_options):
    """``phasestem reconstruct FILE --auto`` with the planned energy, semi-angle and step (what a user tells it)
    and the planned defocus (``--c10``: the microscopist knows what it was set to; its sign decides θ vs θ + 180°,
    which the patterns of a thin object alone cannot, and it is the defocus used where the data cannot measure
    one); returns ``results.h5`` and the :class:`phasestem.calibrate.pipeline.Calibration` --auto used."""
    from ..recon.auto import run_auto

    d = cfg.scan.step
    c10 = cfg.optics.aberrations.get("C10", 0.0)
    _, calibration, _ = run_auto(file, folder, energy=cfg.optics.energy, semiangle=cfg.optics.semiangle,
                                 scan_step=(d, d), epochs=cfg.reconstruction.epochs, device=cfg.expected.device,
                                 c10=c10 or None, **calibrate_options)
    return folder / "results.h5", calibration


def reconstruct_as_advised(file: Path, folder: Path, cfg: PlanConfig, **calibrate_options):
    """:func:`reconstruct_auto`, and where --auto finds no specimen contrast to calibrate the rotation (too few
    counts) again with it given, as the plan then tells a user to do (``--rotation``): the simulated field's
    geometry, 0° and no transpose. Returns ``results.h5``, the calibration and the plan's warning (None where
    --auto calibrated the rotation itself)."""
    from ..calibrate.rotation import NoContrastError

    try:
        return (*reconstruct_auto(file, folder, cfg, **calibrate_options), None)
    except NoContrastError as exc:
        warning = (f"--auto cannot calibrate the scan rotation from data of this dose ({str(exc).split(':')[0]}): "
                   "calibrate it on a thicker area or a standard at higher dose and give it (--rotation); the "
                   "expected result is with it given")
        log.warning(warning)
        return (*reconstruct_auto(file, folder, cfg, **calibrate_options, rotation=0.0, transpose=False), warning)


def expected_result(cfg: PlanConfig, folder: str | Path, figure: bool = True) -> Expected:
    """Simulate, reconstruct (--auto) and score the planned acquisition on a small field, in ``folder``
    (``scan.npy``, ``recon/``, ``expected.png``)."""
    folder = Path(folder)
    t0 = time.perf_counter()
    sim = simulate_field(cfg, folder)
    t_sim = time.perf_counter() - t0
    failed, calibration, warning = None, None, None
    try:
        results, calibration, warning = reconstruct_as_advised(sim["file"], folder / "recon", cfg)
    except PhasestemError as exc:  # e.g. too little signal to calibrate: what --auto would say on such data
        failed = str(exc).splitlines()[0]
        log.warning("--auto failed on the simulated field: %s", failed)
    t_auto = time.perf_counter() - t0 - t_sim
    nan = float("nan")
    scored = score(results, sim["truth"], sim["truth_sampling"], sim["truth_positions"]) if failed is None else {
        "phase_error": nan, "frc_resolution": nan, "frc_ring": nan}
    seconds = time.perf_counter() - t0
    out = Expected(phase_error=scored["phase_error"], frc_resolution=scored["frc_resolution"],
                   scan_shape=tuple(sim["shape"]), seconds=seconds, pixel=sim["pixel"], folder=str(folder),
                   extra={"simulation_seconds": t_sim, "auto_seconds": t_auto, "frc_ring": scored["frc_ring"]})
    if warning:
        out.extra["notes"] = [warning]
        out.extra["rotation_given"] = True
    if calibration is not None:
        undetermined = dict(calibration.undetermined)
        if cfg.optics.aberrations.get("C10", 0.0) and calibration.defocus_source != "parallax":
            undetermined.setdefault("C10", next((n for n in calibration.notes if n.startswith("parallax not used")),
                                                "no defocus fitted"))  # --auto took the C10 it was given
        if undetermined:
            out.extra["undetermined"] = undetermined
    if failed is not None:
        out.extra["auto_failed"] = failed
        return out
    log.info("expected result: E_phi %.3f, FRC resolution %.3g Å (%d × %d positions, %.0f s)", out.phase_error,
             out.frc_resolution, *out.scan_shape, seconds)
    if figure:
        out.figure = str(expected_figure(scored, out, folder / "expected.png"))
    return out


def expected_figure(scored: dict[str, Any], result: Expected, path: Path) -> Path:
    """Truth / reconstruction / error over the simulated field, with Å scale bars and colour bars."""
    import matplotlib.pyplot as plt

    from ..metrics import aligned_error_map
    from ..plot import phase_panels

    rec, truth = scored["reconstruction"], scored["truth"]
    shown = {"truth (simulated)": truth, "expected reconstruction (--auto)": rec - np.mean(rec - truth)}
    errors = {"expected reconstruction (--auto)": aligned_error_map(rec, truth)}
    metrics = {"expected reconstruction (--auto)": {"phase_error": result.phase_error,
                                                     "frc_resolution": result.frc_resolution}}
    fig = phase_panels(shown, path, errors=errors, sampling=scored["sampling"], metrics=metrics,
                       suptitle=f"expected result: {result.scan_shape[0]} × {result.scan_shape[1]} positions "
                                "simulated at the planned settings; error after sub-pixel alignment")
    plt.close(fig)
    return path


def sweep(cfg: PlanConfig, folder: str | Path) -> list[dict[str, Any]]:
    """The expected result for every value of the swept settings (``expected.sweep``; two settings: every
    combination). One row per run: the values set, E_φ, FRC resolution (Å), the width of one FRC ring (1/Å),
    seconds."""
    import itertools

    names = list(cfg.expected.sweep)
    rows = []
    for values in itertools.product(*(cfg.expected.sweep[n] for n in names)):
        run = cfg
        for name, value in zip(names, values, strict=True):
            run = with_value(run, name, value)
        tag = "_".join(f"{n.split('.')[-1]}{v:g}" for n, v in zip(names, values, strict=True))
        res = expected_result(run, Path(folder) / tag, figure=False)
        rows.append({**dict(zip(names, (float(v) for v in values), strict=True)),
                     "phase_error": res.phase_error, "frc_resolution": res.frc_resolution,
                     "frc_ring": res.extra["frc_ring"], "seconds": res.seconds})
    return rows
