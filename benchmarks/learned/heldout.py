"""Both routes on abTEM held-out data (issue 23, item 1): the learned prediction, AD from a flat start (its
defaults, and its best settings), and the hybrid (AD from the prediction, with or without a proximal pull towards
it) on the same specimens, simulated by abTEM, which neither the networks nor the AD engine were built on.

    python benchmarks/learned/heldout.py [--out heldout_output] [--layout reduced|seed] [--n-heldout 8]
        [--n-train 96] [--size tiny] [--epochs-scale 1] [--device cpu|cuda] [--threads 1] [--steps ...]

Settings (:data:`SETTINGS`), all with the seed-geometry probe of ``benchmarks/learned_vs_ad`` (300 keV, 15 mrad,
C10 = 100 Å, ≈ 3 Å across) and 64² patterns:

* **a** the seed geometry: 2 Å step (little probe overlap), noise-free;
* **b** the same at low dose: 1e4 e⁻/pattern, Poisson;
* **c** a dense scan: 1 Å step over the same field, 1e5 e⁻/pattern.

Layouts (:data:`layouts.LAYOUTS`): ``seed`` is the seed's (a 50 × 50 scan at 2 Å over a 100 Å cell, 512² simulation
grid, 256² phase); ``reduced`` (the default on a CPU) keeps the step, probe, pattern size and the pixels
(0.195 Å simulation, 0.39 Å phase) on a 50 Å cell: a 25 × 25 scan (c: 50 × 50 at 1 Å).

Steps (each skips what exists, so a rerun resumes; ``--steps`` runs a subset):

1. ``structures``: ``--n-heldout`` specimens drawn with ASE by :mod:`abtem_samples` (kinds :data:`KIND_CYCLE`:
   its random crystals plus kinds phasestem's training generator never draws: wurtzite, amorphous, 2H-MoS2),
   frozen phonons. Samples 0, 2, 4 … are the development half (AD's and the hybrid's settings are chosen on it),
   1, 3, 5 … the validation half.
2. ``abtem``: abTEM simulations of them, noise-free, one file per scan step; Poisson copies at each setting's dose.
3. ``train``: ``phasestem simulate`` of ``--n-train`` training crystals (phasestem's generator, another seed) at
   the 2 Å geometry, noise-free, and its patterns as counts at 1e4 e⁻/pattern; ``phasestem train`` patch →
   stitch → end2end of ``--size`` on the noise-free set (model ``clean``), then End2End fine-tuned from its two
   networks on the counted set (model ``lowdose``).
4. ``ad`` (no network needed), then ``hybrid``: per setting and sample, each route's result in
   ``results/<setting>/<sample>/<route>.json`` (E_φ per epoch and the seconds to it, best and final E_φ, PSNR,
   SSIM, data residual, load average): ``ad_default`` (``phasestem reconstruct``'s defaults: ``lsq``, 20 epochs,
   cosine decay), the sweep :func:`ad_candidates` on the development half, ``ad_best`` (the candidate with the
   lowest mean best E_φ on it); ``learned`` (setting c: the prediction from every other position, a 2 Å scan, of
   the model the development half prefers) and the hybrid candidates :func:`hybrid_candidates` (AD from the
   prediction; the ``prior`` ones also pull the object towards it after every epoch,
   :class:`phasestem.recon.prior.PhasePrior`), the best on development run as ``hybrid`` on every sample.
5. ``prior-study`` (optional, not in the default steps): :func:`run_prior_study`, the hybrid from synthetic
   predictions of known E_φ (the truth low-passed): the prediction quality the targets would need.
6. ``report``: ``result.json`` and ``result.md``: the table per setting, route and half, the training-mean
   baseline and the acceptance ratios (:func:`acceptance`).

E_φ = √(Σ|φ − φ_true − c|² / Σ|φ_true|²) over the scanned field of view after sub-pixel alignment
(``phasestem.metrics.phase_error``), every route resampled onto the truth's grid. Seconds are the optimisation's
(E_φ after each epoch is not counted), the prediction's the median of 3 after a warm-up; every route of a setting
runs in the same process at ``--threads`` torch threads, CPU seconds are recorded beside wall seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from abtem_eval import BATCH, DATA, cli, train_stages  # noqa: E402
from layouts import LAYOUTS, LR, log_seconds, sim_config, stage_configs, write_json  # noqa: E402

SETTINGS = {
    "a": {"title": "seed geometry, 2 Å step, noise-free", "step": 2.0, "electrons": None},
    "b": {"title": "low dose, 2 Å step, 1e4 e⁻/pattern", "step": 2.0, "electrons": 1e4},
    "c": {"title": "dense, 1 Å step, 1e5 e⁻/pattern", "step": 1.0, "electrons": 1e5},
}
#: the learned model of each setting (c: chosen on the development half)
SETTING_MODEL = {"a": "clean", "b": "lowdose", "c": None}
#: specimen kind of held-out samples 2k and 2k+1 (one in each half): abtem_samples' kinds
KIND_CYCLE = ("crystal", "crystal", "wurtzite", "amorphous", "crystal", "mos2")
HELDOUT_SEED, ABTEM_SEED, NOISE_SEED, TRAIN_SEED = 2311, 2312, 2313, 2314
#: run ``phasestem simulate`` / ``train`` in this process instead of subprocesses (``--in-process``: smoke tests)
IN_PROCESS = False
#: epochs per stage; ``finetune``: End2End epochs of the low-dose model from the clean one's networks
EPOCHS = {"tiny": {"patch": 30, "stitch": 8, "end2end": 8, "finetune": 4},
          "small": {"patch": 8, "stitch": 6, "end2end": 3, "finetune": 3}}
#: AD epochs of the sweep and the hybrid, per scan step (the dense scan's epochs cost 4×)
AD_EPOCHS = {2.0: 40, 1.0: 20}
DEFAULT_EPOCHS = 20  # phasestem reconstruct's run.n_epochs
MAX_SHIFT_PX = 4.0  # largest alignment shift (phase pixels) applied before scoring


# ------------------------------------------------------------------------------------------ layout
def halves(n: int) -> dict[str, list[int]]:
    """Development (even) and validation (odd) sample indices."""
    return {"dev": list(range(0, n, 2)), "val": list(range(1, n, 2))}


def half_of(i: int) -> str:
    return "dev" if i % 2 == 0 else "val"


def _load_cfg(d: dict):
    from phasestem.simulate.config import SimulationConfig

    return SimulationConfig.model_validate(d)


# ------------------------------------------------------------------------------------------ data
def make_structures(out: Path, layout: str, n: int) -> list[Path]:
    """Step 1: the held-out specimens (structure files), kinds from :data:`KIND_CYCLE` per pair."""
    from abtem_samples import write_structures

    folder = out / "data" / "structures"
    paths = [folder / f"crystal_{k:03d}.xyz" for k in range(n)]
    if all(p.exists() for p in paths):
        return paths
    kinds = [KIND_CYCLE[(k // 2) % len(KIND_CYCLE)] for k in range(n)]
    return write_structures(folder, n, _load_cfg(sim_config(layout, 1, 0)), HELDOUT_SEED, kinds=kinds)


def heldout_file(out: Path, setting: str) -> Path:
    return out / "data" / "abtem" / f"heldout_{setting}.h5"


def simulate_heldout(out: Path, layout: str, structures: list[Path], settings: list[str],
                     n_dense: int | None = None) -> dict[str, Path]:
    """Step 2: abTEM files, noise-free per scan step, then each setting's (a Poisson copy when it counts); the
    dense scan of the first ``n_dense`` specimens only (default all)."""
    from abtem_samples import counted_copy, write_abtem_file

    files = {}
    for s in settings:
        step, electrons = SETTINGS[s]["step"], SETTINGS[s]["electrons"]
        clean = out / "data" / "abtem" / f"abtem_step{step:g}A.h5"
        use = structures if step >= 2.0 or n_dense is None else structures[:n_dense]
        if not clean.exists():
            cfg = _load_cfg(sim_config(layout, len(use), 0, step=step, structures=use))
            t = time.perf_counter()
            print(f"abTEM: {len(use)} samples at {step:g} Å", flush=True)
            write_abtem_file(cfg, clean, len(use), seed=ABTEM_SEED, structures=use)
            log_seconds(out, f"abtem_step{step:g}A", time.perf_counter() - t)
        target = heldout_file(out, s)
        if not target.exists():
            if electrons is None:
                target.symlink_to(clean.name)
            else:
                counted_copy(clean, target, electrons, NOISE_SEED)
        files[s] = target
    return files


def _samples_in(file: Path) -> int:
    import h5py

    with h5py.File(file) as f:
        return int(f.attrs["samples_per_file"])


def training_file(out: Path, model: str) -> Path:
    from phasestem.io import seed as seedfile

    return out / "data" / f"train_{model}" / seedfile.file_name(1, "simulation_data")


def simulate_training(out: Path, layout: str, n_train: int) -> dict[str, Path]:
    """Step 3a: ``phasestem simulate`` of the training crystals at 2 Å, noise-free (``clean``), and the same
    patterns as Poisson counts at 1e4 e⁻/pattern (``lowdose``; ``phasestem.physics.noise.poisson_counts``, what
    ``detector.dose`` draws, on the noise-free file instead of a second simulation)."""
    from abtem_samples import counted_copy

    clean = training_file(out, "clean")
    if not clean.exists():
        cfg = out / "configs" / "simulate_train_clean.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(sim_config(layout, n_train, TRAIN_SEED), sort_keys=False))
        t = time.perf_counter()
        cli("simulate", str(cfg), "--out", str(clean.parent), in_process=IN_PROCESS)
        log_seconds(out, "simulate_train_clean", time.perf_counter() - t)
    low = training_file(out, "lowdose")
    if not low.exists():
        low.parent.mkdir(parents=True, exist_ok=True)
        counted_copy(clean, low, SETTINGS["b"]["electrons"], NOISE_SEED + 1)
    return {"clean": clean, "lowdose": low}


def model_dir(out: Path, size: str, model: str) -> Path:
    return out / "runs" / size / model / "end2end"


def train_models(out: Path, layout: str, size: str, train: dict[str, Path], scale: float, device: str) -> dict:
    """Step 3b: the ``clean`` model (three stages) and the ``lowdose`` one (End2End from clean's networks)."""
    ep = {k: max(1, round(v * scale)) for k, v in EPOCHS[size].items()}
    runs = out / "runs" / size / "clean"
    t = time.perf_counter()
    cfgs = stage_configs(size, layout, [train["clean"]], None, runs, ep, device, lr=LR[size], data=DATA, batch=BATCH)
    if not (runs / "end2end.done").exists():
        train_stages(cfgs, runs, out / "configs", f"{size}_clean", IN_PROCESS)
        log_seconds(out, f"train_{size}_clean", time.perf_counter() - t)
    low = out / "runs" / size / "lowdose"
    fine = dict(cfgs["end2end"])
    fine.update(out_dir=str(low / "end2end"), data={**fine["data"], "files": [str(train["lowdose"])]},
                trainer={**fine["trainer"], "epochs": ep["finetune"]})
    if not (low / "end2end.done").exists():
        t = time.perf_counter()
        train_stages({"end2end": fine}, low, out / "configs", f"{size}_lowdose", IN_PROCESS)
        log_seconds(out, f"train_{size}_lowdose", time.perf_counter() - t)
    return {"clean": model_dir(out, size, "clean"), "lowdose": model_dir(out, size, "lowdose"), "epochs": ep}


# ------------------------------------------------------------------------------------------ one sample
@dataclasses.dataclass
class Sample:
    """One held-out sample: the dataset, its truth on the phase grid and the scanned field of view."""

    dataset: Any
    truth: np.ndarray
    sampling: tuple[float, float]
    fov: tuple[slice, slice]
    kind: str
    specimen: str

    @classmethod
    def load(cls, file: Path, index: int) -> Sample:
        from phasestem import io
        from phasestem.cli.demo import field_of_view

        ds = io.load(file, sample=index)
        truth = np.asarray(ds.truth["phase"], np.float32)
        sampling = tuple(float(s) for s in ds.truth["sampling"])
        import h5py

        from phasestem.io import seed as seedfile

        with h5py.File(file) as f:
            specimen = str(f[seedfile.patterns_key(index)].attrs.get("specimen", ""))
        structure = Path(file).resolve().parent.parent / "structures" / specimen.removeprefix("abtem:")
        if structure.is_file():  # the name the generator gave it ("wurtzite O2Zn2", "amorphous C", "Cu4" …)
            from ase.io import read

            specimen = str(read(structure).info.get("name", specimen))
        kind = next((k for k in ("wurtzite", "mos2", "amorphous") if specimen.startswith(k)), "crystal")
        return cls(ds, truth, sampling, field_of_view(ds, sampling, truth.shape), kind, specimen)

    def on_truth_grid(self, phase: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
        """A phase image (pixel (0, 0) at 0 Å, pixel ``sampling`` Å) on the truth's grid: cubic-spline point samples
        (the edge value continued beyond the image). Bilinear resampling (``phasestem.cli.demo.resample``, what
        ``bench_learned_vs_ad.py`` uses) from the AD object's 0.26 Å pixel to the 0.39 Å truth costs a band-limited
        image of these lattices E_φ 0.04–0.08 by itself, as much as AD's whole error on some samples."""
        from scipy.ndimage import map_coordinates

        phase = np.asarray(phase, np.float64)
        if all(abs(a - b) < 1e-9 for a, b in zip(sampling, self.sampling, strict=True)):
            out = np.zeros(self.truth.shape, np.float32)
            h, w = min(out.shape[0], phase.shape[0]), min(out.shape[1], phase.shape[1])
            out[:h, :w] = phase[:h, :w]
            return out
        yy, xx = np.meshgrid(*(np.arange(n) * t / s for n, s, t in zip(self.truth.shape, sampling, self.sampling,
                                                                           strict=True)), indexing="ij")
        return map_coordinates(phase, [yy, xx], order=3, mode="nearest").astype(np.float32)

    def error(self, phase: np.ndarray) -> float:
        """E_φ of a phase image on the truth grid, over the field of view."""
        return self.scores(phase, residual=False)["phase_error"]

    def scores(self, phase: np.ndarray, residual: bool = True) -> dict[str, float]:
        """E_φ, PSNR and SSIM over the field of view after sub-pixel alignment (``phasestem.metrics.shift_between``,
        as ``phase_error(align=True)``; a shift over :data:`MAX_SHIFT_PX` is not applied: the image is then too
        unlike the truth to register) and offset removal, and the data residual of the whole image (the phase
        through the forward model with the nominal probe against the measured patterns)."""
        from phasestem.learn.consistency import measurement_residual
        from phasestem.metrics import apply_shift, phase_error, psnr, remove_offset, shift_between, ssim

        rec, truth = phase[self.fov], self.truth[self.fov]
        shift = shift_between(rec, truth)
        if np.abs(shift).max() > MAX_SHIFT_PX:
            shift = np.zeros(2)
        moved = apply_shift(rec, shift)
        c = int(np.ceil(np.abs(shift).max())) + 1
        a, t = remove_offset(moved, truth)[c:-c, c:-c], truth[c:-c, c:-c].astype(np.float64)
        out = {"phase_error": float(phase_error(moved, truth, align=False, crop=c))}
        if residual:
            out.update(psnr=float(psnr(a, t)), ssim=float(ssim(a, t)),
                       residual=measurement_residual(phase, self.dataset, phase_sampling=self.sampling)["residual"])
        return out


def load_average() -> float:
    return float(os.getloadavg()[0])


class Clock:
    """Wall and CPU seconds of a region, synchronised with the device."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __enter__(self):
        self.sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def learned_route(sample: Sample, model, meta: dict, subsample: int = 1, repeats: int = 3,
                  device: str = "cpu") -> tuple[dict, np.ndarray]:
    """The network's prediction (timed: median of ``repeats`` after a warm-up) and its scores; ``subsample``: use
    every that-many-th scan position in both directions (the scan step times that)."""
    import torch

    from phasestem.learn.apply.phase import geometry_for, predict_phase

    def predict() -> tuple[np.ndarray, Any]:  # the patterns are read from the file inside, as AD reads them
        ds = sample.dataset
        if subsample > 1:
            pats = np.asarray(ds.patterns[::subsample, ::subsample], np.float32)
            ds = dataclasses.replace(ds, patterns=pats, scan_step=tuple(s * subsample for s in ds.scan_step))
        return predict_phase(model, meta, ds), ds

    with torch.inference_mode():
        predict()  # warm-up
        walls, cpus = [], []
        for _ in range(repeats):
            with Clock(device) as c:
                pred, ds = predict()
            walls.append(c.wall)
            cpus.append(c.cpu)
    phase = sample.on_truth_grid(pred, geometry_for(ds, meta).phase_sampling)
    out = {"seconds": float(np.median(walls)), "cpu_seconds": float(np.median(cpus)), "load": load_average(),
           **sample.scores(phase)}
    return out, phase


# ------------------------------------------------------------------------------------------ AD
@dataclasses.dataclass(frozen=True)
class ADSetting:
    """One AD run: ``solver`` (lsq | adam), object-phase step (lsq: fraction of a Gauss–Newton step; adam: rad per
    update; None: the solver's default), epochs, learning-rate decay, data term (gaussian | mixed = ½ Gaussian +
    ½ Poisson), and ``prior`` (λ of :class:`phasestem.recon.prior.PhasePrior`; hybrid runs only)."""

    solver: str = "lsq"
    step: float | None = None
    epochs: int = DEFAULT_EPOCHS
    decay: str = "cosine"
    loss: str = "gaussian"
    probe: bool = True
    prior: float = 0.0

    @property
    def name(self) -> str:
        step = "default" if self.step is None else f"{self.step:g}"
        extra = ("" if self.probe else "-probefixed") + (f"-prior{self.prior:g}" if self.prior else "")
        return f"{self.solver}{step}-{self.decay}{self.epochs}-{self.loss}{extra}"


def ad_candidates(setting: str, epochs: dict[float, int] | None = None) -> list[ADSetting]:
    """AD settings swept on the development half beside the defaults (which run on every sample anyway): twice the
    epochs at the default ``lsq`` step and at a larger one, Adam (probe fixed, as in ``bench_learned_vs_ad.py``), and
    on counted data the mixed data term (½ Gaussian + ½ Poisson, the parameter reference's setting for counts)."""
    s = SETTINGS[setting]
    e = (epochs or AD_EPOCHS)[s["step"]]
    if s["step"] < 2.0:  # the dense scan: an epoch costs 4×
        return [ADSetting("lsq", 1.0, e), ADSetting("lsq", 0.7, e, loss="mixed")]
    if s["electrons"] is None:
        return [ADSetting("lsq", 0.7, e), ADSetting("lsq", 1.0, e), ADSetting("adam", 0.005, e, "none", probe=False)]
    return [ADSetting("lsq", 0.7, e), ADSetting("lsq", 0.7, e, loss="mixed"), ADSetting("lsq", 0.35, e, loss="mixed"),
            ADSetting("adam", 0.002, e, "none", probe=False)]


def hybrid_candidates(best: ADSetting, setting: str, epochs: dict[float, int] | None = None) -> list[ADSetting]:
    """Hybrid settings tried on the development half: AD's best from the prediction, the same with half its
    ``lsq`` step (a start near the answer may want smaller steps), and AD's best with a proximal pull towards the
    prediction of strength λ = 0.1 and 0.5 (:class:`phasestem.recon.prior.PhasePrior`)."""
    e = (epochs or AD_EPOCHS)[SETTINGS[setting]["step"]]
    base = dataclasses.replace(best, epochs=e)
    low = dataclasses.replace(base, solver="lsq", step=0.5 * (base.step or 0.7) if base.solver == "lsq" else 0.35,
                              decay="cosine", probe=True)
    cands = [base, low, dataclasses.replace(base, prior=0.1), dataclasses.replace(base, prior=0.5)]
    return list({c.name: c for c in cands}.values())


def ad_route(sample: Sample, ad: ADSetting, device: str = "cpu", initial_phase: np.ndarray | None = None,
             prior: np.ndarray | None = None) -> dict:
    """AD on the sample's patterns with ``ad`` (``phasestem reconstruct``'s parameter-file defaults otherwise:
    nominal probe refined, batch 32), from a flat object or ``initial_phase`` (truth grid, rad); E_φ after every
    epoch and the optimisation seconds to it; scores of the final and the best epoch's phase."""
    import torch

    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import build_model, parse_params, run_sections
    from phasestem.recon.prior import PhasePrior
    from phasestem.recon.settings.losses import LossConfig

    ds = sample.dataset
    params = parse_params({"data": {"file": "unused.h5"}, "optics": {"energy": ds.energy, "semiangle": ds.semiangle},
                           "scan": {"step": list(ds.scan_step)},
                           "run": {"optimizer": ad.solver, "n_epochs": ad.epochs, "lr_decay": ad.decay,
                                   "progress": False, "device": device}})
    opts = run_sections(params)
    if ad.loss == "mixed":
        opts["losses"] = LossConfig(gaussian=0.5, poisson=0.5)
    torch.manual_seed(0)
    model = build_model(params, ds)
    rates = {} if ad.probe else {"probe": 0.0}
    if ad.step is not None:
        rates["obj_phase"] = ad.step
        if ad.solver == "adam":
            rates["obj_amplitude"] = ad.step / 2
    model.set_learning_rates(**rates)
    if initial_phase is not None:  # on the object's pixel already, as the recorded runs did (set_initial_phase
        model.set_initial_phase(spline_resample(initial_phase, sample.sampling, model.sampling))  # was bilinear then)
    pull = None
    if ad.prior:
        prior = prior if prior is not None else initial_phase
        pull = PhasePrior(model, spline_resample(prior, sample.sampling, model.sampling), None, ad.prior)
    model = model.to(device)

    def current() -> np.ndarray:
        return sample.on_truth_grid(model.phase_in_dataset_frame(), model.sampling)

    phase = current()
    errors, seconds, cpu = [sample.error(phase)], [0.0], [0.0]
    best = (errors[0], 0, phase)
    loads = [load_average()]
    clock = Clock(device)
    run = optimize_with_options(model, ds, ad.epochs, prior=pull, **opts)
    diverged = None
    while True:
        with clock:
            try:
                next(run)
            except StopIteration:
                break
            except FloatingPointError as exc:  # DivergenceError: the state is back at the best epoch
                diverged = str(exc)
        if diverged:
            break
        seconds.append(seconds[-1] + clock.wall)
        cpu.append(cpu[-1] + clock.cpu)
        phase = current()
        errors.append(sample.error(phase))
        if errors[-1] < best[0]:
            best = (errors[-1], len(errors) - 1, phase)
        loads.append(load_average())
    final = sample.scores(phase)
    at_best = sample.scores(best[2])
    return {"setting": dataclasses.asdict(ad), "name": ad.name, "errors": errors, "seconds": seconds,
            "cpu_seconds": cpu, "best_error": best[0], "best_epoch": best[1], "best_seconds": seconds[best[1]],
            "best_cpu_seconds": cpu[best[1]], "final": final, "at_best": at_best, "load": float(np.mean(loads)),
            "diverged": diverged}


def spline_resample(image: np.ndarray, sampling: tuple[float, float], target: tuple[float, float]) -> np.ndarray:
    """A periodic image (pixel (0, 0) at 0 Å, the whole cell) on pixels of ``target`` Å over the same cell: cubic
    spline interpolation, wrapped at the edges. The hybrid's start and prior go onto the AD object's pixel this way,
    as in the recorded runs: the bilinear resampling ``Ptychography.set_initial_phase`` used then costs a 0.39 Å
    lattice image E_φ 0.09–0.20 on its way to the 0.26 Å object pixel and back (measured on the held-out truths),
    this one 0.004–0.009 (set_initial_phase now resamples band-limited itself: ``phasestem.physics.resample``, order
    "fourier")."""
    from scipy.ndimage import map_coordinates

    shape = [int(round(n * s / t)) for n, s, t in zip(image.shape, sampling, target, strict=True)]
    yy, xx = np.meshgrid(*(np.arange(m) * t / s for m, s, t in zip(shape, sampling, target, strict=True)),
                         indexing="ij")
    return map_coordinates(np.asarray(image, np.float64), [yy, xx], order=3, mode="grid-wrap").astype(np.float32)


def time_to(curve: dict, target: float, offset: tuple[float, float] = (0.0, 0.0)) -> dict | None:
    """First epoch of an AD curve at E_φ ≤ ``target`` with its (wall, CPU) seconds plus ``offset``; None if never."""
    for k, e in enumerate(curve["errors"]):
        if e <= target + 1e-12:
            return {"epoch": k, "seconds": curve["seconds"][k] + offset[0],
                    "cpu_seconds": curve["cpu_seconds"][k] + offset[1]}
    return None


# ------------------------------------------------------------------------------------------ routes
def result_path(out: Path, setting: str, index: int, route: str) -> Path:
    return out / "results" / setting / f"{index:03d}" / f"{route}.json"


def _save(path: Path, data: dict) -> dict:
    write_json(path, data)
    return data


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


class Runner:
    """Runs (or reads back) the routes of one setting; every result is one JSON file."""

    def __init__(self, out: Path, setting: str, file: Path, models: dict[str, Path], device: str = "cpu"):
        self.out, self.setting, self.file, self.device = out, setting, file, device
        self.models = models
        self._predictors: dict[str, tuple] = {}
        self._samples: dict[int, Sample] = {}
        self._warm = False

    def sample(self, i: int) -> Sample:
        if i not in self._samples:
            self._samples[i] = Sample.load(self.file, i)
        return self._samples[i]

    def predictor(self, name: str):
        from phasestem.learn.apply.phase import load_predictor

        if name not in self._predictors:
            self._predictors[name] = load_predictor(self.models[name], device=self.device)
        return self._predictors[name]

    def _meta(self, i: int, route: str) -> dict:
        s = self.sample(i)
        return {"setting": self.setting, "sample": i, "half": half_of(i), "kind": s.kind, "specimen": s.specimen,
                "route": route}

    def learned(self, i: int, model_name: str, route: str = "learned") -> dict:
        path = result_path(self.out, self.setting, i, route)
        if (r := _load(path)) is not None:
            return r
        sub = int(round(SETTINGS["a"]["step"] / SETTINGS[self.setting]["step"]))
        model, meta = self.predictor(model_name)
        res, phase = learned_route(self.sample(i), model, meta, subsample=sub, device=self.device)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".npy"), phase)
        return _save(path, {**self._meta(i, route), "model": model_name, "subsample": sub, **res})

    def prediction(self, i: int, route: str = "learned") -> np.ndarray:
        return np.load(result_path(self.out, self.setting, i, route).with_suffix(".npy"))

    def warm_up(self, i: int) -> None:
        """One short AD run before the first timed one (first-call costs are not AD's)."""
        if not self._warm:
            ad_route(self.sample(i), ADSetting(epochs=1), self.device)
            self._warm = True

    def ad(self, i: int, ad: ADSetting, route: str, start: str | None = None) -> dict:
        """AD route ``route`` with ``ad``; ``start``: the learned route whose prediction starts it (hybrid)."""
        path = result_path(self.out, self.setting, i, route)
        if (r := _load(path)) is not None and r.get("name") == ad.name:
            return r
        from phasestem.cli.demo import hybrid_start

        self.warm_up(i)
        init = None if start is None else hybrid_start(self.prediction(i, start))
        res = ad_route(self.sample(i), ad, self.device, initial_phase=init)
        return _save(path, {**self._meta(i, route), "start": start or "flat", **res})


def mean_best(results: list[dict]) -> float:
    return float(np.mean([r["best_error"] for r in results]))


def run_ad(out: Path, setting: str, file: Path, n: int, device: str = "cpu",
           ad_epochs: dict[float, int] | None = None, default_epochs: int = DEFAULT_EPOCHS) -> dict:
    """Step 4a for one setting (no network needed): AD's defaults on every sample, the sweep on the development
    half, its best (lowest mean best E_φ) on every sample. ``ad_epochs`` per scan step for the sweep (default
    :data:`AD_EPOCHS`), ``default_epochs`` for the defaults. Returns the setting's choices."""
    run = Runner(out, setting, file, {}, device)
    default = ADSetting(epochs=default_epochs)
    choices_path = out / "results" / setting / "choices.json"
    choices = _load(choices_path) or {}
    for i in range(n):
        run.ad(i, default, "ad_default")
    if "ad_best" not in choices:
        sweep = {c.name: [run.ad(i, c, f"sweep_{c.name}") for i in halves(n)["dev"]]
                 for c in ad_candidates(setting, ad_epochs)}
        sweep[default.name] = [run.ad(i, default, "ad_default") for i in halves(n)["dev"]]
        ranking = {k: mean_best(v) for k, v in sweep.items()}
        best_name = min(ranking, key=ranking.get)
        best = next(c for c in [*ad_candidates(setting, ad_epochs), default] if c.name == best_name)
        choices["ad_best"], choices["ad_sweep_dev"] = dataclasses.asdict(best), ranking
        _save(choices_path, choices)
    best = ADSetting(**choices["ad_best"])
    for i in range(n):
        _reuse(out, setting, i, "ad_default" if best == default else f"sweep_{best.name}", "ad_best")
        run.ad(i, best, "ad_best")
    return choices


def _reuse(out: Path, setting: str, i: int, source: str, route: str) -> None:
    """Copy the result of route ``source`` as ``route`` (the same run) when it exists and ``route`` does not."""
    src, dst = result_path(out, setting, i, source), result_path(out, setting, i, route)
    if src.exists() and not dst.exists():
        _save(dst, {**_load(src), "route": route})


def run_hybrid(out: Path, setting: str, file: Path, models: dict[str, Path], n: int, device: str = "cpu",
               ad_epochs: dict[float, int] | None = None) -> dict:
    """Step 4b for one setting (after :func:`run_ad`): the learned prediction on every sample (setting c: of the model
    the development half prefers), the hybrid candidates on the development half, the best on every sample."""
    run = Runner(out, setting, file, models, device)
    h = halves(n)
    choices_path = out / "results" / setting / "choices.json"
    choices = _load(choices_path) or {}
    if "ad_best" not in choices:
        raise SystemExit(f"setting {setting}: run the 'ad' step first (AD's best settings start the hybrid's)")
    model_name = SETTING_MODEL[setting] or choices.get("model")
    if model_name is None:
        scores = {m: float(np.mean([run.learned(i, m, f"learned_{m}")["phase_error"] for i in h["dev"]]))
                  for m in ("clean", "lowdose")}
        model_name = min(scores, key=scores.get)
        choices["model"], choices["model_dev_errors"] = model_name, scores
        _save(choices_path, choices)
    for i in range(n):
        run.learned(i, model_name)
    best = ADSetting(**choices["ad_best"])
    if "hybrid" not in choices:
        cands = hybrid_candidates(best, setting, ad_epochs)
        rank = {c.name: mean_best([run.ad(i, c, f"hybrid_{c.name}", start="learned") for i in h["dev"]])
                for c in cands}
        hbest = next(c for c in cands if c.name == min(rank, key=rank.get))
        choices["hybrid"], choices["hybrid_dev"] = dataclasses.asdict(hbest), rank
        _save(choices_path, choices)
    hbest = ADSetting(**choices["hybrid"])
    for i in range(n):
        _reuse(out, setting, i, f"hybrid_{hbest.name}", "hybrid")
        run.ad(i, hbest, "hybrid", start="learned")
    return choices


def blurred_truth(sample: Sample, target: float) -> np.ndarray:
    """The truth low-passed by a Gaussian whose width (bisection) gives E_φ ≈ ``target``: a stand-in for a prediction
    of that error whose structure is right at low and missing at high spatial frequencies, as a network's is."""
    from scipy.ndimage import gaussian_filter

    lo, hi = 0.0, 20.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if sample.error(gaussian_filter(sample.truth, mid, mode="wrap")) < target:
            lo = mid
        else:
            hi = mid
    return gaussian_filter(sample.truth, 0.5 * (lo + hi), mode="wrap").astype(np.float32)


def run_prior_study(out: Path, setting: str, file: Path, n: int, levels: tuple[float, ...] = (0.15, 0.3),
                    weights: tuple[float, ...] = (0.0, 0.5), device: str = "cpu") -> dict:
    """What prediction quality would the hybrid need? AD's best setting started from (and, λ > 0, pulled towards)
    the truth blurred to E_φ = each of ``levels``, on the development half (after :func:`run_ad`). Results in
    ``results/<setting>/<i>/prior<level>_<name>.json``; returns the mean best E_φ and seconds per (level, λ)."""
    from phasestem.cli.demo import hybrid_start

    choices = _load(out / "results" / setting / "choices.json") or {}
    if "ad_best" not in choices:
        raise SystemExit(f"setting {setting}: run the 'ad' step first")
    best = ADSetting(**choices["ad_best"])
    run = Runner(out, setting, file, {}, device)
    summary = {}
    for level in levels:
        for w in weights:
            ad = dataclasses.replace(best, prior=w)
            rows = []
            for i in halves(n)["dev"]:
                path = result_path(out, setting, i, f"prior{level:g}_{ad.name}")
                if (r := _load(path)) is None:
                    run.warm_up(i)
                    start = blurred_truth(run.sample(i), level)
                    r = _save(path, {**run._meta(i, path.stem), "start_error": run.sample(i).error(start),
                                     **ad_route(run.sample(i), ad, device, initial_phase=hybrid_start(start))})
                rows.append(r)
            ad_best = [_load(result_path(out, setting, r["sample"], "ad_best")) for r in rows]
            reach = [time_to(r, a["best_error"]) for r, a in zip(rows, ad_best, strict=True)]
            summary[f"{level:g}/{w:g}"] = {
                "start_error": float(np.mean([r["start_error"] for r in rows])), "prior": w,
                "best_error": float(np.mean([r["best_error"] for r in rows])),
                "ad_best_error": float(np.mean([a["best_error"] for a in ad_best])),
                "ratio": float(np.mean([r["best_error"] / a["best_error"] for r, a in zip(rows, ad_best,
                                                                                           strict=True)])),
                "cpu_seconds_to_ad_best": [None if t is None else t["cpu_seconds"] for t in reach],
                "ad_cpu_seconds_to_best": [a["best_cpu_seconds"] for a in ad_best]}
    _save(out / "results" / setting / "prior_study.json", summary)
    return summary


# ------------------------------------------------------------------------------------------ report
ROUTES = ("learned", "ad_default", "ad_best", "hybrid")


def training_mean_errors(out: Path, setting: str, file: Path, n: int, train_file: Path) -> list[float]:
    """E_φ of the mean training phase image against each held-out truth (the baseline)."""
    import h5py

    from phasestem.io import seed as seedfile

    with h5py.File(train_file) as f:
        m = int(f.attrs["samples_per_file"])
        mean = np.mean([f[seedfile.phase_key(k)][...] for k in range(m)], axis=0).astype(np.float32)
    return [Sample.load(file, i).error(mean) for i in range(n)]


def _stats(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def acceptance(rows: dict[str, dict[str, list[dict]]]) -> dict:
    """Per sample: (i) the learned / hybrid best E_φ ÷ AD's best E_φ; (ii) AD's seconds to its best ÷ the learned
    route's seconds to the same E_φ (the prediction alone if it is as good, else prediction + hybrid AD epochs;
    None when neither gets there); (iii) the hybrid's seconds to AD's final E_φ (defaults) ÷ AD's seconds, and beside
    it the control ``iii_flat_*``: AD's best settings from a flat start to the same E_φ ÷ AD's seconds (what the
    hybrid gains from its settings rather than from the prediction)."""
    out: dict[str, list] = {"i_learned": [], "i_hybrid": [], "ii_wall": [], "ii_cpu": [], "iii_wall": [],
                            "iii_cpu": [], "iii_flat_wall": [], "iii_flat_cpu": []}
    by = {route: {r["sample"]: r for r in rows[route]} for route in rows}
    for i, ab in by["ad_best"].items():
        le, hy, ad = by["learned"][i], by["hybrid"][i], by["ad_default"][i]
        out["i_learned"].append(le["phase_error"] / ab["best_error"])
        out["i_hybrid"].append(min(le["phase_error"], hy["best_error"]) / ab["best_error"])
        target = ab["best_error"]
        if le["phase_error"] <= target:
            t = {"seconds": le["seconds"], "cpu_seconds": le["cpu_seconds"]}
        else:
            t = time_to(hy, target, (le["seconds"], le["cpu_seconds"]))
        out["ii_wall"].append(None if t is None else ab["best_seconds"] / t["seconds"])
        out["ii_cpu"].append(None if t is None else ab["best_cpu_seconds"] / t["cpu_seconds"])
        t3 = time_to(hy, ad["errors"][-1], (le["seconds"], le["cpu_seconds"]))
        out["iii_wall"].append(None if t3 is None else t3["seconds"] / ad["seconds"][-1])
        out["iii_cpu"].append(None if t3 is None else t3["cpu_seconds"] / ad["cpu_seconds"][-1])
        tf = time_to(ab, ad["errors"][-1])
        out["iii_flat_wall"].append(None if tf is None else tf["seconds"] / ad["seconds"][-1])
        out["iii_flat_cpu"].append(None if tf is None else tf["cpu_seconds"] / ad["cpu_seconds"][-1])
    return out


def report(out: Path, settings: list[str], files: dict[str, Path], n_samples: dict[str, int], train_file: Path
           ) -> dict:
    """Step 5: ``result.json`` and ``result.md`` (``n_samples`` per setting)."""
    result: dict[str, Any] = {"settings": {}, "seconds": _load(out / "seconds.json") or {}}
    lines = []
    for s in settings:
        n = n_samples[s]
        rows = {route: [r for i in range(n) if (r := _load(result_path(out, s, i, route))) is not None]
                for route in ROUTES}
        if not all(len(v) == n for v in rows.values()):
            print(f"setting {s}: routes incomplete ({ {k: len(v) for k, v in rows.items()} }); skipped")
            continue
        base = training_mean_errors(out, s, files[s], n, train_file)
        choices = _load(out / "results" / s / "choices.json")
        table = {}
        for half, idx in (("dev", halves(n)["dev"]), ("val", halves(n)["val"]), ("all", list(range(n)))):
            sel = {route: [r for r in rows[route] if r["sample"] in idx] for route in ROUTES}
            t = {"baseline": _stats([base[i] for i in idx])}
            for route, rs in sel.items():
                if route == "learned":
                    e, sec, cpu = ([r["phase_error"] for r in rs], [r["seconds"] for r in rs],
                                   [r["cpu_seconds"] for r in rs])
                    sc = rs
                else:
                    e = [r["best_error"] for r in rs]
                    sec, cpu = [r["best_seconds"] for r in rs], [r["best_cpu_seconds"] for r in rs]
                    sc = [r["at_best"] for r in rs]
                entry = {"best_error": _stats(e), "seconds_to_best": _stats(sec), "cpu_seconds_to_best": _stats(cpu),
                         "psnr": _stats([r["psnr"] for r in sc]), "ssim": _stats([r["ssim"] for r in sc]),
                         "residual": _stats([r["residual"] for r in sc]),
                         "load": _stats([r["load"] for r in rs])}
                if route != "learned":
                    entry["final_error"] = _stats([r["final"]["phase_error"] for r in rs])
                    entry["seconds_total"] = _stats([r["seconds"][-1] for r in rs])
                    entry["epochs"] = rs[0]["setting"]["epochs"]
                    entry["name"] = rs[0]["name"]
                t[route] = entry
            acc = acceptance(sel)
            t["acceptance"] = {k: _ratio_stats(v) for k, v in acc.items()}
            t["acceptance_per_sample"] = acc
            table[half] = t
        samples = [Sample.load(files[s], i) for i in range(n)]
        truth_res = [x.scores(x.truth)["residual"] for x in samples]
        per_sample = [{"sample": i, "half": half_of(i), "kind": x.kind, "specimen": x.specimen, "baseline": base[i],
                       **{route: rows[route][i]["phase_error" if route == "learned" else "best_error"]
                          for route in ROUTES}} for i, x in enumerate(samples)]
        result["settings"][s] = {"title": SETTINGS[s]["title"], "choices": choices, "table": table,
                                 "truth_residual": _stats(truth_res), "kinds": [x.kind for x in samples],
                                 "per_sample": per_sample}
        lines.append(setting_table(s, result["settings"][s]))
    (out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "result.md").write_text("\n\n".join(lines) + "\n")
    print("\n\n".join(lines))
    return result


def _ratio_stats(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    return {"mean": float(np.mean(got)) if got else None, "median": float(np.median(got)) if got else None,
            "reached": len(got), "n": len(values)}


LABELS = {"learned": "learned prediction", "ad_default": "AD, defaults (flat start)",
          "ad_best": "AD, best settings (flat start)", "hybrid": "hybrid (AD from the prediction)"}


def setting_table(s: str, r: dict) -> str:
    lines = [f"**({s}) {r['title']}**", "",
             "| route | half | E_φ (best) | E_φ (final) | PSNR (dB) | SSIM | data residual | seconds to best "
             "(CPU s) | settings |", "|---|---|---|---|---|---|---|---|---|"]
    for half in ("dev", "val"):
        t = r["table"][half]
        b = t["baseline"]
        lines.append(f"| training-mean image | {half} | {b[0]:.3f} ± {b[1]:.3f} | | | | | | |")
        for route in ROUTES:
            e = t[route]
            fin = f"{e['final_error'][0]:.3f}" if "final_error" in e else ""
            name = e.get("name", "")
            lines.append(f"| {LABELS[route]} | {half} | {e['best_error'][0]:.3f} ± {e['best_error'][1]:.3f} | {fin} | "
                         f"{e['psnr'][0]:.2f} | {e['ssim'][0]:.3f} | {e['residual'][0]:.4f} | "
                         f"{e['seconds_to_best'][0]:.2f} ({e['cpu_seconds_to_best'][0]:.2f}) | {name} |")
    lines.append(f"\ntrue phase's data residual: {r['truth_residual'][0]:.4f}")
    lines += ["", "| sample | half | specimen | training mean | learned | AD defaults | AD best | hybrid |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['sample']} | {p['half']} | {p['specimen']} | {p['baseline']:.3f} | "
              + " | ".join(f"{p[route]:.3f}" for route in ROUTES) + " |" for p in r["per_sample"]]
    lines.append("")
    for half in ("dev", "val"):
        a = r["table"][half]["acceptance"]

        def f(k, a=a):
            v = a[k]
            return "never" if v["mean"] is None else \
                f"{v['mean']:.2f} (median {v['median']:.2f}, {v['reached']}/{v['n']})"
        lines.append(f"- {half}: (i) learned ÷ AD best E_φ {f('i_learned')}, with the hybrid {f('i_hybrid')}; "
                     f"(ii) AD's seconds to its best ÷ learned route's to the same E_φ {f('ii_wall')} "
                     f"[CPU {f('ii_cpu')}]; (iii) hybrid's seconds to AD's final E_φ ÷ AD's {f('iii_wall')} "
                     f"[CPU {f('iii_cpu')}]; AD's best settings from a flat start to the same E_φ ÷ AD's "
                     f"{f('iii_flat_wall')} [CPU {f('iii_flat_cpu')}]")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
STEPS = ("structures", "abtem", "train", "ad", "hybrid", "prior-study", "report")


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="heldout_output", help="output folder (reruns skip finished steps)")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="reduced")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS))
    ap.add_argument("--n-heldout", type=int, default=8, help="held-out specimens (even: development, odd: "
                    "validation)")
    ap.add_argument("--n-dense", type=int, default=None, help="specimens of the dense setting c (the first ones; "
                    "default all --n-heldout: its abTEM run costs 4× per specimen); read from its file once written")
    ap.add_argument("--n-train", type=int, default=96, help="phasestem-simulated training crystals per dose")
    ap.add_argument("--size", default="tiny", choices=sorted(EPOCHS), help="network size")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every training stage's epochs")
    ap.add_argument("--device", default="cpu", help="torch device of training, prediction and AD")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every step")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=[s for s in STEPS if s != "prior-study"])
    ap.add_argument("--ad-epochs", type=int, default=None, help=f"AD epochs of the sweep and the hybrid at every "
                    f"step (default per step: {AD_EPOCHS})")
    ap.add_argument("--default-epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of the AD defaults run")
    ap.add_argument("--in-process", action="store_true", help="run phasestem simulate / train in this process")
    args = ap.parse_args(argv)
    global IN_PROCESS
    IN_PROCESS = args.in_process
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=1))
    steps = set(args.steps)
    structures = make_structures(out, args.layout, args.n_heldout)
    files = simulate_heldout(out, args.layout, structures, args.settings, args.n_dense) \
        if steps - {"structures", "train"} else {}
    n = {s: min(args.n_heldout, _samples_in(files[s])) if s in files else args.n_heldout for s in args.settings}
    train = simulate_training(out, args.layout, args.n_train) if steps & {"train", "hybrid", "report"} else {}
    models = train_models(out, args.layout, args.size, train, args.epochs_scale, args.device) \
        if steps & {"train", "hybrid"} else {}
    epochs = None if args.ad_epochs is None else dict.fromkeys(AD_EPOCHS, args.ad_epochs)
    for s in args.settings:
        if "ad" in steps:
            run_ad(out, s, files[s], n[s], args.device, epochs, args.default_epochs)
        if "prior-study" in steps:
            print(json.dumps(run_prior_study(out, s, files[s], n[s], device=args.device), indent=1))
        if "hybrid" in steps:
            run_hybrid(out, s, files[s], models, n[s], args.device, epochs)
    if "report" in steps:
        return report(out, args.settings, files, n, train["clean"])
    return None


if __name__ == "__main__":
    main()
