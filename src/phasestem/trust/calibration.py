"""The verdict's calibration: specimens with known truth simulated at the run's own optics, scan and dose,
reconstructed by AD's recorded recipe and restored by the same model, scored site by site (issue 81, item 1).

**Specimens** (:func:`calibration_config`): phasestem's simulator (random crystals, :data:`PHONONS` frozen phonons,
10–20 Å thick, tilted up to 3°) with :data:`VACANCIES` vacant columns per nm², substituted columns and, on some
samples, a patch of amorphous carbon film: sites where the truth holds no column (vacancies, the film's spaces) and
columns of every weight. The cell is the smallest odd number of the detector's windows (λ/Δθ Å) at least
:data:`CELL` Å wide, simulated at half the detector's real-space pixel and binned onto the run's N² detector, so the
patterns have the run's angular sampling exactly (as :mod:`phasestem.plan.expected` does); the scan covers the
periodic cell at the run's step.

**Reconstruction and restoration**: AD with :func:`phasestem.learn.hybrid.ad_recipe` (``phasestem reconstruct``'s
parameter-file defaults, the run's ``model.upsampling``) on Poisson counts of the run's electrons per pattern (or
noise-free), the model's restoration of AD's end, the truth brought to AD's grid
(:func:`phasestem.learn.ad_pairs.truth_on_ad_grid`).

**Scores** (:func:`score_sample`): every candidate column of the restoration (:func:`phasestem.learn.verdict.
find_sites`) whose truth height is below :data:`TRUTH_EMPTY` of the truth's column scale is a **null** site
(its :func:`~phasestem.learn.verdict.evidence` score kept); every vacancy with no candidate within
:data:`~phasestem.learn.verdict.SEPARATION` Å is a null site the restoration left empty (score −∞); candidates of
at least :data:`TRUTH_COLUMN` column scales in the truth are **true** columns, whose scores say how many real
columns the verdict will support.

**Cache**: one folder per (geometry, dose, model, samples, cell, :data:`VERSION`), by default under
``$PHASESTEM_CACHE`` (or ``$XDG_CACHE_HOME/phasestem``, ``~/.cache/phasestem``) ``/verdict/<key>``: the
simulation (resumable, :func:`phasestem.simulate.writer.simulate_dataset`), each sample's AD phase, restoration,
truth on AD's grid, field and vacancies (``sample_<i>.npz``, written atomically as it is made) and
``calibration.json`` (each sample's CPU seconds), so an interrupted calibration resumes where it stopped, a second
restore at the same geometry reads it at once, and the scores are recomputed from the images (cheap). Its CPU
seconds are recorded and stated.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import h5py
import numpy as np

from ..base.errors import ConfigError
from ..learn.verdict import SEPARATION, column_heights, column_scale, conformal_p, evidence, find_sites

__all__ = ["CELL", "SAMPLES", "calibration_config", "cache_folder", "calibrate", "score_sample", "detector_pixels",
           "power"]

log = logging.getLogger("phasestem.learn")

#: Å: the calibration cell is at least this wide
CELL = 40.0
#: specimens simulated (each gives every column of its cell)
SAMPLES = 4
PHONONS = 4
#: vacant columns per nm² (a 60 Å cell: about 36)
VACANCIES = 1.0
#: a site of the truth below this many column scales holds no column (a vacancy's site reads -0.06 to 0.13 in the
#: truth of a 60 Å calibration specimen, a light column next to heavy ones 0.15 and more); at least TRUTH_COLUMN is a
#: column
TRUTH_EMPTY = 0.1
TRUTH_COLUMN = 0.3
#: the calibration's layout; a cache of another version is made anew
VERSION = 2
CACHE_ENV = "PHASESTEM_CACHE"


def detector_pixels(geometry: dict) -> int:
    """N, the detector's pixels across, from a run's geometry record: its pixel λ/(N·Δθ) = sampling × upsampling."""
    from ..physics.optics import wavelength

    for key in ("energy", "angular_sampling", "sampling"):
        if geometry.get(key) is None:
            raise ConfigError(f"the run's geometry record has no {key}; the verdict cannot be calibrated for it")
    pixel = float(geometry["sampling"][0]) * int(geometry.get("upsampling", 1) or 1)
    return int(round(wavelength(float(geometry["energy"])) / (float(geometry["angular_sampling"][0]) * 1e-3 * pixel)))


def calibration_config(geometry: dict, samples: int = SAMPLES, seed: int = 0, cell: float = CELL):
    """The :class:`phasestem.simulate.config.SimulationConfig` of the calibration specimens at ``geometry`` (a
    run's record: energy eV, semiangle mrad, aberrations Å, angular_sampling mrad, scan_step Å, sampling Å,
    upsampling), a cell at least ``cell`` Å wide; see the module docstring."""
    from ..physics.optics import wavelength
    from ..simulate.config import SimulationConfig

    if geometry.get("semiangle") is None or geometry.get("scan_step") is None:
        raise ConfigError("the run's geometry record has no semi-angle or scan step; the verdict cannot be "
                          "calibrated for it")
    n = detector_pixels(geometry)
    dtheta = float(geometry["angular_sampling"][0])
    window = wavelength(float(geometry["energy"])) / (dtheta * 1e-3)
    f = max(1, math.ceil(cell / window))
    f += 1 - f % 2  # odd: the zero frequency stays on the central detector pixel
    extent = f * window
    step = float(geometry["scan_step"][0])
    return SimulationConfig.model_validate({
        "optics": {"energy": float(geometry["energy"]), "semiangle": float(geometry["semiangle"]),
                   "aberrations": dict(geometry.get("aberrations") or {}), "aperture_edge": "hard"},
        "grid": {"extent": (extent, extent), "sim_gpts": (2 * f * n, 2 * f * n), "phase_gpts": (f * n, f * n)},
        "scan": {"shape": (int(extent // step),) * 2, "step": (step, step)},
        "detector": {"shape": (n, n), "max_angle": n * dtheta / 2},
        "specimen": {"kind": "crystal", "depth": (10.0, 20.0), "phonons": PHONONS, "vacancies": VACANCIES,
                     "defects": {"substitutions": 0.3, "film_probability": 0.5, "film_patch_probability": 1.0,
                                 "film_patch_fraction": (0.2, 0.4), "film_thickness": (5.0, 15.0)}},
        "output": {"n_files": 1, "samples_per_file": int(samples), "prefix": "calibration"},
        "compute": {"seed": int(seed), "device": "cpu"},
    })


def _cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phasestem"


def cache_folder(geometry: dict, model_path, electrons: float | None, samples: int = SAMPLES,
                 cell: float = CELL) -> Path:
    """The calibration's folder for this geometry, dose (2 significant digits), model (its weights' sha256), sample
    count and cell."""
    from ..learn.pretrained import sha256_file
    from ..learn.trainer.checkpoint import resolve_weights_path

    key = {"geometry": {k: geometry.get(k) for k in ("energy", "semiangle", "aberrations", "angular_sampling",
                                                      "scan_step", "sampling", "upsampling")},
           "electrons": None if electrons is None else float(f"{electrons:.2g}"),
           "model": sha256_file(resolve_weights_path(model_path)),
           "samples": int(samples), "cell": float(cell), "version": VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return _cache_root() / "verdict" / digest


def score_sample(ad: np.ndarray, restored: np.ndarray, truth: np.ndarray, field: np.ndarray,
                 sampling: tuple[float, float], vacancies_px: np.ndarray) -> dict:
    """The null and true scores of one calibration sample (module docstring), all on AD's grid."""
    sites = find_sites(restored, field, sampling)
    score, _, _ = evidence(ad, restored, sites, field, sampling)
    t = column_heights(truth, sites, sampling) / max(column_scale(truth, field, sampling), 1e-12)
    null = list(score[t < TRUTH_EMPTY])
    inside = np.asarray(field) > 0
    sep = SEPARATION / float(np.mean(sampling))
    for v in np.asarray(vacancies_px, np.float64).reshape(-1, 2):
        r, c = np.rint(v).astype(int)
        if not (0 <= r < inside.shape[0] and 0 <= c < inside.shape[1] and inside[r, c]):
            continue
        if not (len(sites) and np.hypot(*(sites - v).T).min() <= sep):
            null.append(-np.inf)
    return {"null": [float(s) for s in null], "true": [float(s) for s in score[t >= TRUTH_COLUMN]],
            "candidates": int(len(sites))}


def _vacancies(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[key].attrs.get("vacancies", np.zeros((0, 2))), np.float64).reshape(-1, 2)


def calibrate(geometry: dict, model_path, electrons: float | None, folder: str | Path | None = None,
              samples: int = SAMPLES, device: str = "cpu", progress: bool = True, cell: float = CELL) -> dict:
    """The calibration at ``geometry`` and ``electrons`` per pattern (None: noise-free) for the restorer
    ``model_path``, ``samples`` specimens on a cell of at least ``cell`` Å: {"null": scores of truth-empty sites,
    "true": scores of true columns, "samples", "null_sites", "dose", "cpu_seconds", "folder"}, read from the cache
    when it is there, made (or finished) otherwise."""
    from ..base.lock import hold_output
    from ..base.safety import atomic_file
    from ..io import seed as seedfile
    from ..learn.ad_pairs import counted, truth_on_ad_grid
    from ..learn.apply.restorer import load_restorer, restore_channels
    from ..learn.hybrid import ad_recipe_snapshots
    from ..learn.pairs import simulation_samples
    from ..simulate.writer import simulate_dataset

    folder = Path(folder) if folder is not None else cache_folder(geometry, model_path, electrons, samples, cell)
    record = folder / "calibration.json"
    state = json.loads(record.read_text()) if record.is_file() else {}
    if state.get("version") != VERSION:
        state = {"version": VERSION, "cpu_seconds": {}}
    dose = "noise-free" if electrons is None else f"{electrons:.3g} e⁻ per pattern"
    if len(state["cpu_seconds"]) < samples:
        cfg = calibration_config(geometry, samples, cell=cell)
        log.info("verdict: calibrating at this geometry (%s, %d specimens of %.0f Å, in %s; resumable)", dose,
                 samples, cfg.grid.extent[0], folder)
        cpu0 = time.process_time()
        files = simulate_dataset(cfg, folder / "simulation", progress=progress)
        simulated = time.process_time() - cpu0
        net, _ = load_restorer(model_path, device=device)
        upsampling = int(geometry.get("upsampling", 1) or 1)
        with hold_output(folder, "phasestem restore --verdict"):
            for _, path, i, clean, truth in simulation_samples([str(p) for p in files], progress):
                if str(i) in state["cpu_seconds"]:
                    continue
                cpu0 = time.process_time()
                data = counted(clean, electrons, np.random.default_rng((int(i), 81)))
                snaps, fitted = ad_recipe_snapshots(data, (), None, device, model={"upsampling": upsampling})
                last = snaps[max(snaps)]
                sampling = np.asarray(fitted.sampling, np.float64)
                ts = tuple(float(s) for s in clean.truth.get("sampling", clean.sampling))
                images = {"ad": last["phase"], "restored": restore_channels(net, last), "field": last["field"],
                          "truth": truth_on_ad_grid(truth, ts, tuple(sampling), last["phase"].shape),
                          "sampling": sampling,
                          "vacancies_px": _vacancies(Path(path), seedfile.patterns_key(i)) / sampling}
                with atomic_file(folder / f"sample_{i}.npz") as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **images)
                state["cpu_seconds"][str(i)] = time.process_time() - cpu0 + simulated / samples
                with atomic_file(record) as tmp:
                    Path(tmp).write_text(json.dumps(state))
    per_sample = [_scores(folder / f"sample_{i}.npz") for i in sorted(state["cpu_seconds"], key=int)]
    null = [s for v in per_sample for s in v["null"]]
    true = [s for v in per_sample for s in v["true"]]
    return {"null": np.asarray(null, np.float64), "true": np.asarray(true, np.float64),
            "samples": len(per_sample), "null_sites": len(null), "dose": dose,
            "cpu_seconds": float(sum(state["cpu_seconds"].values())), "folder": str(folder)}


def _scores(path: Path) -> dict:
    """:func:`score_sample` of a calibration sample's cached images (reading only arrays: no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return score_sample(z["ad"], z["restored"], z["truth"], z["field"], tuple(z["sampling"]), z["vacancies_px"])


def power(calibration: dict, alpha: float) -> float:
    """The share of the calibration's true columns whose p-value against its null is ≤ ``alpha`` (about the share
    of real columns the verdict supports when most candidates are real)."""
    true = calibration["true"]
    return float(np.mean(conformal_p(true, calibration["null"]) <= alpha)) if len(true) else float("nan")
