"""``phasestem demo``: the whole story on a built-in example, ending in ``report.md`` with PNGs.

Stages (each timed, each with its own progress bar):

1. simulate the training samples (``configs/simulate_demo.yaml``) and one held-out sample (another seed);
2. AD ptychography of the held-out sample from a flat object (:class:`phasestem.recon.Ptychography`, the ``lsq``
   solver, phasestem's default);
3. the learned route: PatchRecoveryNet → PhaseStitchingNet → End2End (tiny, a few epochs) trained on the
   training samples, then the held-out prediction;
4. a tiny Phaseformer trained on (degraded truth → truth) and (learned prediction → truth) pairs of the
   training samples, applied to the held-out learned prediction;
5. the hybrid route: AD started from the learned prediction; epochs and seconds to reach the phase error
   the flat start reaches at its last epoch.

``learned=False`` (``--skip-learned``) runs stages 1 (the held-out sample alone) and 2; ``quick`` (``--quick``) the
smallest sizes of every stage (:class:`DemoQuick`); ``device`` (``--device``) runs simulation, AD and training there.

Figures of merit (:mod:`phasestem.metrics`) are computed on the scanned field of view against the true
phase: PSNR and SSIM after offset removal and sub-pixel alignment, and the relative phase error E_φ.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import Field

from ..base.configfile import StrictModel
from ..base.safety import atomic_file
from ..physics.resample import sample_on_grid
from ..plot import pyplot, save_figure, styled
from ..plot.panels import format_metric

log = logging.getLogger("phasestem.cli.demo")

CONFIG_DIR = Path(str(files("phasestem") / "configs"))  # package data, wherever this module sits
BUILTIN_SIMULATION = CONFIG_DIR / "simulate_demo.yaml"
BUILTIN_DEMO = CONFIG_DIR / "demo.yaml"


# ------------------------------------------------------------------------------------------ settings
class DemoRecon(StrictModel):
    """AD ptychography of the held-out sample (flat and hybrid starts use the same settings; the probe is fixed at
    its nominal form)."""

    optimizer: Literal["lsq", "adam"] = Field("lsq", description="solver of each AD run: lsq (phasestem's default: "
                                              "least-squares steps, no learning rate to tune) or adam")
    n_epochs: int = Field(30, ge=1, description="epochs of each AD run")
    batch_size: int = Field(32, ge=1, description="patterns per mini-batch")
    lr_phase: float | None = Field(None, gt=0, description="learning rate of the object phase: with lsq a fraction "
                                   "of the Gauss–Newton step, with adam rad per step; null: the solver's default "
                                   "(phasestem.recon.schedule.SOLVER_DEFAULTS)")
    lr_amplitude: float | None = Field(None, ge=0, description="learning rate of the object amplitude (as lr_phase)")


class DemoLearned(StrictModel):
    """The tiny learned pipeline (patch → stitch → end2end)."""

    block: int = Field(4, ge=1, description="patterns per block side")
    stride: int = Field(4, ge=1, description="block stride on the scan grid")
    patch: int = Field(24, ge=4, description="phase patch side (px) predicted per block")
    preprocess: dict[str, Any] = Field(default_factory=dict, description="pattern preprocessing (learn Preprocess)")
    model_size: str = Field("tiny", description="PatchRecoveryNet / PhaseStitchingNet size preset")
    vit_patch: int = Field(8, ge=1, description="ViT token size of the stitching net (px)")
    patch_epochs: int = Field(20, ge=1, description="epochs of the patch stage")
    stitch_epochs: int = Field(6, ge=1, description="epochs of the stitch stage")
    end2end_epochs: int = Field(8, ge=1, description="epochs of the joint stage")
    lr: float = Field(3e-3, gt=0, description="peak learning rate of the three stages")


class DemoPhaseformer(StrictModel):
    """The tiny Phaseformer refinement."""

    epochs: int = Field(4, ge=1, description="training epochs")
    dim: int = Field(8, ge=2, description="channels of the first level")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")


class DemoQuick(StrictModel):
    """Overrides for ``--quick``: every stage at its smallest (a check that everything runs; the figures of merit
    mean nothing)."""

    n_train: int = Field(4, ge=3, description="training samples")
    scan_shape: tuple[int, int] = Field((8, 8), description="scan positions (rows, cols) of the quick simulation")
    recon_epochs: int = Field(4, ge=1, description="AD epochs")
    patch_epochs: int = Field(1, ge=1, description="patch-stage epochs")
    stitch_epochs: int = Field(1, ge=1, description="stitch-stage epochs")
    end2end_epochs: int = Field(1, ge=1, description="end2end epochs")
    phaseformer_epochs: int = Field(1, ge=1, description="Phaseformer epochs")


class DemoConfig(StrictModel):
    """Settings of ``phasestem demo`` (``configs/demo.yaml`` inside the package)."""

    heldout_seed: int = Field(1001, description="simulation seed of the held-out sample")
    cpu_threads: int | None = Field(1, ge=1, description="torch threads during the demo (null: torch's default, one "
                                    "per core). 1: the tiny networks and 64² patterns gain nothing from more, and "
                                    "lose several times over when another process shares the cores (2 patch "
                                    "epochs: 16 s on 1 thread, 63–138 s on 2, 2-core machine at load 3)")
    recon: DemoRecon = Field(default_factory=DemoRecon, description="AD ptychography")
    learned: DemoLearned = Field(default_factory=DemoLearned, description="learned pipeline")
    phaseformer: DemoPhaseformer = Field(default_factory=DemoPhaseformer, description="Phaseformer refinement")
    quick: DemoQuick = Field(default_factory=DemoQuick, description="overrides of --quick")


def load_demo_config(path: Path = BUILTIN_DEMO, quick: bool = False) -> DemoConfig:
    """The demo settings; ``quick`` applies the ``quick`` section."""
    from ..base.configfile import load_yaml_config

    cfg = load_yaml_config(DemoConfig, path)
    if quick:
        q = cfg.quick
        cfg.recon.n_epochs = q.recon_epochs
        cfg.learned.patch_epochs, cfg.learned.stitch_epochs = q.patch_epochs, q.stitch_epochs
        cfg.learned.end2end_epochs, cfg.phaseformer.epochs = q.end2end_epochs, q.phaseformer_epochs
    return cfg


# ------------------------------------------------------------------------------------------ helpers
class Timer:
    """Wall-clock seconds per stage: ``with timer("name"): ...`` adds to ``timer.seconds["name"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def field_of_view(dataset, truth_sampling: tuple[float, float], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Truth pixels (y, x slices) inside the scanned area (first to last probe position)."""
    pos = np.asarray(dataset.positions_angstrom())
    sl = []
    for ax in (0, 1):
        lo = max(0, int(math.ceil(pos[:, ax].min() / truth_sampling[ax])))
        hi = min(shape[ax], int(math.floor(pos[:, ax].max() / truth_sampling[ax])) + 1)
        sl.append(slice(lo, hi))
    return sl[0], sl[1]


# ------------------------------------------------------------------------------------------ stages
def simulate(out: Path, cfg: DemoConfig, quick: bool, learned: bool = True, device: str = "cpu"
             ) -> tuple[list[Path], Path]:
    """Training files (none when not ``learned``) and the held-out file (one sample, another seed)."""
    from ..simulate import load_config, simulate_dataset

    over = {"output.samples_per_file": cfg.quick.n_train, "scan.shape": list(cfg.quick.scan_shape)} if quick else {}
    over["compute.device"] = device
    train = []
    if learned:
        train = simulate_dataset(load_config(BUILTIN_SIMULATION, over), out / "data" / "train")
    held = load_config(BUILTIN_SIMULATION, {**over, "output.samples_per_file": 1, "compute.seed": cfg.heldout_seed,
                                            "output.prefix": "heldout"})
    heldout = simulate_dataset(held, out / "data" / "heldout")
    return [Path(p) for p in train], Path(heldout[0])


def ad_run(dataset, rc: DemoRecon, truth: np.ndarray, truth_sampling, fov, initial_phase: np.ndarray | None = None,
           label: str = "flat", progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """AD ptychography (``rc.optimizer``, the probe fixed) on ``device``; returns the final phase on the truth grid
    and E_φ / seconds after every epoch (seconds of the optimisation alone, synchronised with the device)."""
    from ..metrics import phase_error
    from ..recon import Ptychography

    torch.manual_seed(0)
    model = Ptychography.from_dataset(
        dataset, initial_phase=initial_phase, initial_phase_sampling=truth_sampling if initial_phase is not None
        else None, learning_rates={"obj_phase": rc.lr_phase, "obj_amplitude": rc.lr_amplitude, "probe": 0.0},
        on_band_limit="ignore").to(device)  # no anti-aliasing in the model: the whole detector window is usable
    solve = model.LSQ_optimize if rc.optimizer == "lsq" else model.Adam_optimize
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def on_truth_grid() -> np.ndarray:
        return sample_on_grid(model.phase_in_dataset_frame(), model.sampling, truth_sampling, truth.shape)

    errors = [phase_error(on_truth_grid()[fov], truth[fov])]
    seconds = [0.0]
    t = 0.0
    t0 = time.perf_counter()
    for _ in solve(rc.n_epochs, dataset, batch_size=rc.batch_size, seed=0, progress=progress):
        sync()
        t += time.perf_counter() - t0
        errors.append(phase_error(on_truth_grid()[fov], truth[fov]))
        seconds.append(t)
        t0 = time.perf_counter()
    log.info("AD (%s, %s start): E_phi %.3f → %.3f in %.1f s", rc.optimizer, label, errors[0], errors[-1], t)
    return {"phase": on_truth_grid(), "errors": errors, "seconds": seconds}


def _trainer(epochs: int, lr: float, device: str = "cpu") -> dict[str, Any]:
    return {"epochs": epochs, "lr": lr, "warmup_steps": 5, "device": device, "monitor": "val/psnr",
            "monitor_mode": "max", "tensorboard": False, "progress": True, "checkpoint_every_epochs": 0}


def train_learned(train_files: list[Path], runs: Path, lc: DemoLearned, device: str = "cpu") -> Path:
    """Patch → stitch → end2end on the training files; returns the end2end run folder."""
    from ..learn.config import TrainRunConfig
    from ..learn.training.route import train_run

    data = {"files": [str(f) for f in train_files], "block": lc.block, "stride": lc.stride, "patch": lc.patch,
            "val_fraction": 0.15, "test_fraction": 0.0, "augment": False, "preprocess": lc.preprocess}
    model = {"size": lc.model_size}
    stitch = {"size": lc.model_size, "vit_patch": lc.vit_patch}
    train_run(TrainRunConfig(stage="patch", out_dir=str(runs / "patch"), data={**data, "batch_size": 8},
                             model=model, trainer=_trainer(lc.patch_epochs, lc.lr, device)))
    train_run(TrainRunConfig(stage="stitch", out_dir=str(runs / "stitch"), stitch_model=stitch,
                             data={**data, "batch_size": 2, "stitch_noise": 0.05},
                             trainer=_trainer(lc.stitch_epochs, lc.lr, device)))
    train_run(TrainRunConfig(stage="end2end", out_dir=str(runs / "end2end"), patch_checkpoint=str(runs / "patch"),
                             stitch_checkpoint=str(runs / "stitch"), freeze_patch_epochs=1,
                             data={**data, "batch_size": 1}, loss={"patch_weight": 0.5, "image_weight": 1.0},
                             trainer=_trainer(lc.end2end_epochs, lc.lr / 3, device)))
    return runs / "end2end"


def predict_files(run: Path, files: list[Path], device: str = "cpu") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Learned predictions and truths of every sample of ``files``."""
    from .. import io
    from ..learn.apply.phase import load_predictor, predict_phase
    from ..learn.pairs import simulation_phases

    model, meta = load_predictor(run, device=device)
    preds, truths = [], []
    for f in files:
        for key in simulation_phases(f):
            ds = io.load(f, sample=int(key.split("_")[-1]))
            preds.append(predict_phase(model, meta, ds))
            truths.append(np.asarray(ds.truth["phase"], np.float32))
    return preds, truths


def train_phaseformer(train_files: list[Path], pairs: Path, out: Path, pc: DemoPhaseformer, device: str = "cpu"
                      ) -> Path:
    """A tiny Phaseformer on degraded-truth pairs of the training files plus the learned-prediction pairs."""
    from ..learn.config import PhaseformerRunConfig
    from ..learn.training.phaseformer import train_phaseformer as _train

    cfg = PhaseformerRunConfig(
        out_dir=str(out), data={"train": [str(pairs)] + [str(f) for f in train_files], "crop": 32,
                                "batch_size": 4, "val_fraction": 0.15},
        model={"dim": pc.dim, "blocks": (1, 1, 1, 1), "heads": (1, 1, 2, 2), "refinement_blocks": 1},
        loss={"components": ["charbonnier", "gradient"]}, trainer=_trainer(pc.epochs, pc.lr, device))
    _train(cfg)
    return out


def hybrid_start(prediction: np.ndarray) -> np.ndarray:
    """The learned prediction with its mean removed, as the start of the hybrid AD run.

    A constant phase is invisible to the data, but the AD object's padding (outside the image) starts at 0 rad:
    an offset in the prediction would leave a phase step at the image edge that AD must undo slowly (measured with
    Adam on the demo data with 24 training samples: mean removal ends at E_φ ≈ 0.040 after 30 epochs, a
    2nd-percentile shift at 0.049, no shift at 0.050).
    """
    p = np.asarray(prediction, np.float32)
    return p - np.float32(p.mean())


def iterations_to_reach(errors: list[float], target: float) -> int | None:
    """First epoch (0 = the start) whose E_φ ≤ ``target``; None if never."""
    for i, e in enumerate(errors):
        if e <= target + 1e-12:
            return i
    return None


# ------------------------------------------------------------------------------------------ report
@styled
def _hybrid_plot(flat: dict, hybrid: dict, path: Path) -> Path:
    fig, axes = pyplot().subplots(1, 2, figsize=(8, 3.0))
    for run, name in ((flat, "flat start"), (hybrid, "learned start (hybrid)")):
        axes[0].plot(range(len(run["errors"])), run["errors"], marker=".", label=name)
        axes[1].plot(run["seconds"], run["errors"], marker=".", label=name)
    axes[0].set_xlabel("AD epoch")
    axes[1].set_xlabel("AD time (s)")
    for ax in axes:
        ax.set_ylabel("phase error E_φ")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110, close=True)
    return path


def _write_report(out: Path, summary: str, fom: dict[str, dict[str, float]], route_seconds: dict[str, float],
                  stage_seconds: dict[str, float], hybrid: dict[str, Any] | None, quick: bool, rc: DemoRecon) -> Path:
    """``report.md``; ``hybrid`` None: the learned routes were skipped (``--skip-learned``)."""
    lines = ["# phasestem demo", "",
             f"Held-out sample: {summary}." + (" (`--quick`: tiny sizes, results are not meaningful.)" if quick
                                               else ""),
             "", "All routes on the scanned field of view, with the truth (top) and the aligned, offset-free error "
             "maps (bottom):", "", "![routes](routes.png)", "",
             "| route | PSNR (dB) | SSIM | phase error E_φ | time (s) |", "|---|---|---|---|---|"]
    for name, m in fom.items():  # the numbers as routes.png prints them
        cells = " | ".join(format_metric(k, m[k]) for k in ("psnr", "ssim", "phase_error"))
        lines.append(f"| {name} | {cells} | {route_seconds.get(name, float('nan')):.1f} |")
    lines += ["", f"AD ptychography: the `{rc.optimizer}` solver"
              + (" (phasestem's default)" if rc.optimizer == "lsq" else "")
              + f", {rc.n_epochs} epochs of {rc.batch_size}-pattern batches from a flat object, the probe fixed at "
              "its nominal form. PSNR and SSIM after removing the constant phase offset and the best sub-pixel shift; "
              "E_φ = sqrt(Σ|φ−φ_true|² / Σ|φ_true|²) (`phasestem.metrics.phase_error`)."]
    if hybrid is None:
        lines += ["", "The learned routes were skipped (`--skip-learned`)."]
    else:
        lines[-1] += (" Times: the learned routes include their training (prediction alone: see the stage times); "
                      "the hybrid time is its AD epochs plus the prediction.")
        lines += ["", "## Hybrid route: AD started from the learned prediction", "", "![hybrid](hybrid.png)", ""]
        h = hybrid
        lines += [f"Target: the phase error the flat start reaches after {h['n_epochs']} epochs, "
                  f"E_φ = {h['target']:.3f} (and, below, the errors it reaches on the way). The learned start has "
                  f"E_φ = {h['hybrid_start']:.3f} before any AD epoch (flat: {h['flat_start']:.3f}).", "",
                  "| target E_φ | flat start: epochs (AD s) | learned start: epochs (AD s) |", "|---|---|---|"]
        for row in h["table"]:
            cells = [f"{row[k]} ({row[k + '_seconds']:.1f})" if row[k] is not None else "not reached"
                     for k in ("flat", "hybrid")]
            lines.append(f"| {row['target']:.3f} | {cells[0]} | {cells[1]} |")
        lines.append("")
        gains = [r for r in h["table"] if r["hybrid"] is not None and r["hybrid"] < r["flat"]]
        if gains:  # the most demanding target the learned start reaches in fewer epochs
            r = gains[-1]
            lines.append(f"The learned start reaches E_φ = {r['target']:.3f} after {r['hybrid']} AD epochs instead of "
                         f"{r['flat']} ({r['flat'] - r['hybrid']} fewer; the learned prediction itself took "
                         f"{h['predict_seconds']:.2f} s once the network was trained).")
        last = h["table"][-1]
        if last["hybrid"] is not None and last["hybrid"] >= last["flat"]:
            lines.append(f"At the flat start's final E_φ = {last['target']:.3f} it has no lead left ({last['hybrid']} "
                         f"epochs against {last['flat']}).")
        if h["hybrid_epochs"] is None:
            lines.append(f"It then levels off at E_φ = {h['hybrid_best']:.3f}, above the flat start's final "
                         f"{h['target']:.3f}: the tiny network's errors are not all undone within {h['n_epochs']} "
                         "epochs.")
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stage_seconds.items()]
    lines += ["", "Other figures: [simulation.png](simulation.png) (held-out truth, probe, patterns), "
              "[inspect.png](inspect.png) (mean pattern, virtual images, centre of mass).", ""]
    path = out / "report.md"
    with atomic_file(path, field="--out") as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _hybrid_summary(flat: dict, hyb: dict, rc: DemoRecon, predict_seconds: float) -> dict[str, Any]:
    """Epochs and AD seconds of the flat and hybrid runs to reach the flat run's errors on the way (report table)."""
    target = flat["errors"][-1]
    n_flat = iterations_to_reach(flat["errors"], target)
    n_hyb = iterations_to_reach(hyb["errors"], target)
    table = []
    n = len(flat["errors"]) - 1
    for k in sorted({min(2, n), n // 6, n // 3, n // 2, n} - {0}):
        t = flat["errors"][k]
        nf, nh = iterations_to_reach(flat["errors"], t), iterations_to_reach(hyb["errors"], t)
        table.append({"target": float(t), "flat": nf, "flat_seconds": float(flat["seconds"][nf]), "hybrid": nh,
                      "hybrid_seconds": float(hyb["seconds"][nh]) if nh is not None else float("nan")})
    return {"n_epochs": rc.n_epochs, "target": target, "flat_start": flat["errors"][0], "table": table,
            "hybrid_best": float(min(hyb["errors"])),
            "hybrid_start": hyb["errors"][0], "flat_epochs": n_flat, "hybrid_epochs": n_hyb,
            "flat_seconds": flat["seconds"][n_flat],
            "hybrid_seconds": hyb["seconds"][n_hyb] if n_hyb is not None else float("nan"),
            "predict_seconds": predict_seconds}


# ------------------------------------------------------------------------------------------ main
def run_demo(out: Path, quick: bool = False, config: str | Path | None = None, device: str = "cpu",
             learned: bool = True, overwrite: bool = False) -> Path:
    """Run every stage into ``out`` (holding its lock, :mod:`phasestem.base.lock`); returns the report path
    (``out/report.md``). A folder holding another demo run is refused, or with ``overwrite`` cleared of that run's
    files first (:mod:`phasestem.cli.demo_folder`). ``config``: a :class:`DemoConfig` YAML (default: the built-in
    ``phasestem/configs/demo.yaml`` inside the package);
    ``device``: torch device of simulation, the reconstructions and the training ('auto': a GPU when there is one);
    ``learned=False``: simulation of the held-out scan and AD ptychography only. Torch runs on
    ``cpu_threads`` threads of the settings meanwhile (restored after)."""
    from ..base.lock import hold_output
    from ..base.runtime import resolve_device
    from .demo_folder import prepare_output

    cfg = load_demo_config(Path(config) if config else BUILTIN_DEMO, quick=quick)
    threads = torch.get_num_threads()
    with hold_output(out, "phasestem demo"):
        prepare_output(Path(out), overwrite)
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        try:
            return _run_demo(Path(out), quick, cfg, str(resolve_device(device)), learned)
        finally:
            torch.set_num_threads(threads)


def _run_demo(out: Path, quick: bool, cfg: DemoConfig, device: str, learned: bool = True) -> Path:
    from .. import io
    from ..calibrate.overview import inspect
    from ..metrics import aligned_error_map, figures_of_merit
    from ..plot import phase_panels
    from ..simulate.overview import write_overview

    plt = pyplot()

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    routes: dict[str, np.ndarray] = {}
    route_seconds: dict[str, float] = {}
    n_stages = 5 if learned else 2

    log.info("1/%d simulating%s on %s", n_stages, "" if learned else " the held-out sample", device)
    with timer("simulate"):
        train_files, heldout = simulate(out, cfg, quick, learned, device)
    ds = io.load(heldout, sample=0)
    truth = np.asarray(ds.truth["phase"], np.float32)
    ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
    fov = field_of_view(ds, ts, truth.shape)
    write_overview(heldout, out / "simulation.png", sample=0)
    plt.close(inspect(ds, path=out / "inspect.png"))

    log.info("2/%d AD ptychography (%s, flat start)", n_stages, cfg.recon.optimizer)
    warm_up = cfg.recon.model_copy(update={"n_epochs": 1})  # first-epoch overheads out of the timings
    ad_run(ds, warm_up, truth, ts, fov, label="warm-up", progress=False, device=device)
    with timer("AD ptychography"):
        flat = ad_run(ds, cfg.recon, truth, ts, fov, label="flat", device=device)
    routes["AD ptychography"] = flat["phase"]
    route_seconds["AD ptychography"] = flat["seconds"][-1]

    hyb = hybrid = None
    if learned:
        hyb = _learned_routes(out, cfg, ds, train_files, truth, ts, fov, device, timer, routes, route_seconds)
        hybrid = _hybrid_summary(flat, hyb, cfg.recon, timer.seconds["learned: prediction"])
        _hybrid_plot(flat, hyb, out / "hybrid.png")

    # figures of merit on the scanned field of view
    t_fov = truth[fov]
    fom = {name: figures_of_merit(img[fov], t_fov, sampling=ts) for name, img in routes.items()}
    shown = {"truth": t_fov, **{n: img[fov] - np.mean(img[fov] - t_fov) for n, img in routes.items()}}
    errors = {n: aligned_error_map(img[fov], t_fov) for n, img in routes.items()}
    plt.close(phase_panels(shown, out / "routes.png", errors=errors, sampling=ts, metrics=fom,
                           suptitle="phase over the scanned field of view (offsets removed); errors after "
                                    "sub-pixel alignment"))
    report = _write_report(out, ds.summary(), fom, route_seconds, timer.seconds, hybrid, quick, cfg.recon)
    record: dict[str, Any] = {"routes": fom, "route_seconds": route_seconds, "stage_seconds": timer.seconds,
                              "device": device, "solver": cfg.recon.optimizer,
                              "flat_errors": [float(e) for e in flat["errors"]]}
    if hybrid is not None:
        record["hybrid"] = {k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in hybrid.items()}
        record["hybrid_errors"] = [float(e) for e in hyb["errors"]]
    with atomic_file(out / "figures_of_merit.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    return report


def _learned_routes(out: Path, cfg: DemoConfig, ds, train_files: list[Path], truth: np.ndarray, ts, fov,
                    device: str, timer: Timer, routes: dict, route_seconds: dict) -> dict[str, Any]:
    """Stages 3–5: the learned pipeline, the Phaseformer refinement and the hybrid AD run (returned); their phases
    and times go into ``routes`` and ``route_seconds``."""
    from ..learn.apply.phase import load_predictor, predict_phase
    from ..learn.apply.refine import load_phaseformer, refine_phase
    from ..learn.pairs import write_pairs

    log.info("3/5 learned pipeline")
    with timer("learned: training"):
        run = train_learned(train_files, out / "runs", cfg.learned, device)
    with timer("learned: prediction"):
        model, meta = load_predictor(run, device=device)
        learned = predict_phase(model, meta, ds)
    routes["learned (end2end)"] = learned
    route_seconds["learned (end2end)"] = timer.seconds["learned: training"] + timer.seconds["learned: prediction"]

    log.info("4/5 Phaseformer refinement")
    with timer("Phaseformer: training"):
        preds, truths = predict_files(run, train_files, device)
        pairs = write_pairs(out / "runs" / "learned_pairs.h5", np.stack(preds), np.stack(truths), {"units": "rad"})
        pf_run = train_phaseformer(train_files, pairs, out / "runs" / "phaseformer", cfg.phaseformer, device)
    with timer("Phaseformer: refinement"):
        net, _ = load_phaseformer(pf_run, device=device)
        refined, _ = refine_phase(net, learned, size=None)
    routes["learned + Phaseformer"] = refined
    route_seconds["learned + Phaseformer"] = (route_seconds["learned (end2end)"]
                                              + timer.seconds["Phaseformer: training"]
                                              + timer.seconds["Phaseformer: refinement"])

    log.info("5/5 hybrid: AD from the learned prediction")
    with timer("hybrid AD"):
        hyb = ad_run(ds, cfg.recon, truth, ts, fov, initial_phase=hybrid_start(learned), label="learned",
                     device=device)
    routes["hybrid (AD from learned)"] = hyb["phase"]
    route_seconds["hybrid (AD from learned)"] = hyb["seconds"][-1] + timer.seconds["learned: prediction"]
    return hyb
