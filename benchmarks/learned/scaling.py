"""Scaling study of the learned route (issue 23, item 3): E_φ on abTEM held-out samples against the number of training
samples and the model size, with a fitted trend per size and its extrapolation to the seed's 3,500 samples.

    python benchmarks/learned/scaling.py --out scaling_output [--layout seed|reduced] [--sizes tiny small base]
        [--n-train 64 256 1024 3500] [--device cpu|cuda] [--max-minutes 9] [--phonons 4] [--n-heldout 8]

Everything is a step that leaves a file behind, and a rerun skips what exists, so the study runs in invocations
shorter than ``--max-minutes`` (each stops before a step it could not finish in time, and exits with status 3
while steps remain: ``until python scaling.py ...; do :; done`` runs it to the end):

1. ``data``: the training crystals, ``phasestem simulate`` in parts of :data:`PART` samples (part k: seed
   ``TRAIN_SEED + k``), so that the first n samples are the same for every n (nested training sets). A part cut
   off by the time limit resumes sample by sample (``phasestem simulate`` is resumable).
2. ``heldout``: held-out specimens drawn with ASE (:mod:`abtem_samples`), simulated by **abTEM** at the same
   geometry, noise-free, one file per sample (:func:`heldout_files`). No score here comes from
   phasestem-simulated held-out data.
3. ``train``: per (size, n) the three stages patch → stitch → end2end (``phasestem``'s one trainer, in this
   process), each cut into chunks of ``--chunk-epochs`` epochs; a chunk is one step and ends with the trainer's
   own checkpoint (``last/``, a few MB for tiny), which the next chunk resumes. Epochs per stage:
   :func:`stage_epochs` (the same number of sample passes at every n up to a floor of epochs).
4. ``score``: the end2end model on the held-out file (:func:`score_model`): E_φ, PSNR, SSIM and the data residual
   per sample, the training-mean image's E_φ beside it; one JSON per (size, n) under ``points/``.
5. ``report``: ``scaling.json`` (every point, the fits) and ``scaling.png`` (E_φ against n per size, log x, the
   fitted trend :func:`fit_power_law` and its value at 3,500).

Training is in-process (``phasestem.learn.registry.build_run``), so ``--device cuda`` and bf16 (``--amp``) apply as in
``phasestem train``. The layouts are :mod:`layouts`' (``seed``: the seed geometry; ``reduced``: its probe, step,
patterns and pixels on a quarter of the field, the CPU stand-in).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import LAYOUTS, log_seconds, sim_config, stage_configs, write_json  # noqa: E402

#: training samples per simulated part (the nested training sets grow by whole parts)
PART = 32
TRAIN_SEED = 5000
HELDOUT_SEED, ABTEM_SEED = 2311, 2312
#: the seed's training-set size, where the fitted trends are read off
SEED_SAMPLES = 3500
#: reference epochs per stage at :data:`REF_SAMPLES` training samples; other n get the same sample passes
#: (:func:`stage_epochs`), at least :data:`MIN_EPOCHS`
REF_EPOCHS = {"tiny": {"patch": 12, "stitch": 16, "end2end": 4},
              "small": {"patch": 10, "stitch": 12, "end2end": 3},
              "base": {"patch": 10, "stitch": 12, "end2end": 3}}
REF_SAMPLES = 64
MIN_EPOCHS = {"patch": 2, "stitch": 3, "end2end": 1}
#: exit status of an invocation that stopped at --max-minutes with steps left
INCOMPLETE = 3


class OutOfTime(Exception):
    """The invocation's time is up before the next step; rerun to continue."""


class Budget:
    """Wall-clock budget of one invocation: ``check(estimate)`` raises :class:`OutOfTime` when a step of
    ``estimate`` seconds would not end in time."""

    def __init__(self, minutes: float | None):
        self.t0 = time.perf_counter()
        self.seconds = None if minutes is None else 60.0 * minutes

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.perf_counter() - self.t0)

    def check(self, estimate: float, what: str) -> None:
        if estimate > self.left():
            raise OutOfTime(f"{what}: about {estimate:.0f} s, {max(self.left(), 0):.0f} s left")


def run_cli(args: list[str], timeout: float | None = None) -> bool:
    """``phasestem ARGS``: in this process without a ``timeout``, else in a subprocess that is stopped when it runs
    past ``timeout`` seconds (False then)."""
    print("$ phasestem " + " ".join(args), flush=True)
    if timeout is None or math.isinf(timeout):
        from phasestem.cli import main as phasestem

        if phasestem(args):
            raise subprocess.CalledProcessError(1, args)
        return True
    proc = subprocess.Popen([sys.executable, "-m", "phasestem.cli", *args])
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return False
    if rc:
        raise subprocess.CalledProcessError(rc, args)
    return True


# ------------------------------------------------------------------------------------------ data
def data_root(out: Path, layout: str, phonons: int, part: int = PART) -> Path:
    return out / "data" / (f"{layout}_ph{phonons}" + ("" if part == PART else f"_part{part}"))


def training_files(out: Path, layout: str, n: int, phonons: int, budget: Budget, part: int = PART) -> list[Path]:
    """The files of the first ``n`` training samples (``ceil(n / part)`` parts of ``part`` samples), simulating the
    missing parts; a part cut off by the budget raises :class:`OutOfTime` (its finished samples are kept)."""
    root = data_root(out, layout, phonons, part)
    files = []
    for k in range(math.ceil(n / part)):
        folder = root / f"part_{k:03d}"
        target = folder / "simulation_data1.h5"
        if not target.exists():
            cfg = root / f"part_{k:03d}.yaml"
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text(yaml.safe_dump(sim_config(layout, part, TRAIN_SEED + k, phonons), sort_keys=False))
            budget.check(0.0, f"simulate part {k}")
            t = time.perf_counter()
            if not run_cli(["simulate", str(cfg), "--out", str(folder)], timeout=budget.left()):
                raise OutOfTime(f"simulation of {folder} stopped at the time limit (its samples so far are kept)")
            log_seconds(out, f"simulate_{root.name}_part{k:03d}", time.perf_counter() - t)
        files.append(target)
    return files


# ------------------------------------------------------------------------------------------ held-out (abTEM)
def heldout_files(out: Path, layout: str, n: int, phonons: int, budget: Budget) -> list[Path]:
    """``n`` held-out specimens (random crystals drawn with ASE, seed :data:`HELDOUT_SEED`) simulated by abTEM at
    ``layout``'s 2 Å geometry, noise-free, in ``phasestem simulate``'s file layout (:mod:`abtem_samples`): one file
    per sample (abTEM seed ``ABTEM_SEED + i``), so that the set grows and resumes sample by sample."""
    from abtem_samples import write_abtem_file, write_structures

    from phasestem.simulate.config import SimulationConfig

    folder = out / "data" / f"abtem_{layout}_ph{phonons}"
    paths = [folder / f"heldout_{i:03d}.h5" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    structures = write_structures(out / "data" / f"structures_{layout}", n,
                                  SimulationConfig.model_validate(sim_config(layout, n, HELDOUT_SEED)), HELDOUT_SEED)
    done = json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    last = max([v for k, v in done.items() if k.startswith(f"abtem_{layout}_ph{phonons}_")], default=0.0)
    for i, path in enumerate(paths):
        if path.exists():
            continue
        budget.check(last, f"abTEM held-out sample {i}")  # as long as the longest one so far
        one = structures[i:i + 1]
        cfg = SimulationConfig.model_validate(sim_config(layout, 1, HELDOUT_SEED, phonons, structures=one))
        t = time.perf_counter()
        print(f"abTEM: held-out sample {i} at the {layout} layout ({phonons} frozen phonons)", flush=True)
        write_abtem_file(cfg, path, 1, seed=ABTEM_SEED + i, structures=one)
        last = max(last, time.perf_counter() - t)
        log_seconds(out, f"abtem_{layout}_ph{phonons}_{i:03d}", time.perf_counter() - t)
    return paths


# ------------------------------------------------------------------------------------------ training
def stage_epochs(size: str, n: int, ref_epochs: dict[str, int] | None = None,
                 ref_samples: int = REF_SAMPLES) -> dict[str, int]:
    """Epochs per stage at ``n`` training samples: ``ref_epochs`` (default :data:`REF_EPOCHS`) scaled to the same
    number of sample passes as at ``ref_samples`` samples, at least :data:`MIN_EPOCHS` (so that larger sets also get
    more compute)."""
    ref = ref_epochs or REF_EPOCHS[size]
    return {stage: max(MIN_EPOCHS[stage], round(ref[stage] * ref_samples / n)) for stage in ("patch", "stitch",
                                                                                               "end2end")}


class ChunkStop:
    """Trainer callback: stop (the trainer then writes its ``last/`` checkpoint) after ``epochs`` epochs of this
    invocation, or when the next epoch would not end within the budget."""

    def __init__(self, epochs: int, budget: Budget):
        self.epochs, self.budget = epochs, budget
        self.done, self.stopped, self.epoch_seconds = 0, False, 0.0

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        self.done += 1
        self.epoch_seconds = float(logs.get("time_s", 0.0))
        last = epoch + 1 >= trainer.config.epochs
        if not last and (self.done >= self.epochs or self.budget.left() < 1.1 * self.epoch_seconds):
            trainer.stop_training = self.stopped = True


def _epochs_done(run: Path) -> tuple[int, float]:
    """(epochs in the run's ``last/`` checkpoint, seconds of its last epoch) from its ``epochs.csv``."""
    import csv

    path = run / "epochs.csv"
    if not path.exists():
        return 0, 0.0
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return (int(float(rows[-1]["epoch"])), float(rows[-1].get("time_s") or 0.0)) if rows else (0, 0.0)


def train_stage(cfg: dict, config_path: Path, chunk_epochs: int, budget: Budget) -> bool:
    """Train one stage for at most ``chunk_epochs`` epochs from its last checkpoint (one step; in this process);
    True when the stage is finished (its ``.done`` marker is written)."""
    from phasestem.learn.registry import build_run, dump_config, load_run_config

    run = Path(cfg["out_dir"])
    done = run.with_name(run.name + ".done")
    if done.exists():
        return True
    epochs, last_s = _epochs_done(run)
    budget.check(min(chunk_epochs, cfg["trainer"]["epochs"] - epochs) * last_s, f"{run} epochs {epochs + 1}…")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_cfg = load_run_config(config_path, cfg["network"], {"resume": True})
    trainer = build_run(run_cfg)
    dump_config(run_cfg, run / "config.yaml")
    stop = ChunkStop(chunk_epochs, budget)
    trainer.callbacks.append(stop)
    t = time.perf_counter()
    summary = trainer.fit(resume=True)
    seconds = json.loads(done.with_suffix(".seconds").read_text()) if done.with_suffix(".seconds").exists() else 0.0
    seconds += time.perf_counter() - t
    done.with_suffix(".seconds").write_text(json.dumps(seconds))
    if stop.stopped:
        return False
    write_json(done, {"epochs": summary["epochs_run"], "best": summary["best"], "best_epoch": summary["best_epoch"],
                      "seconds": seconds})
    return True


def train_run(out: Path, size: str, layout: str, files: list[Path], n: int, epochs: dict[str, int], device: str,
              amp: str, chunk_epochs: int, budget: Budget, lr: float | None = None, runs: Path | None = None) -> Path:
    """The three stages of one (size, n) run, chunk by chunk; the end2end run folder when all are finished
    (:class:`OutOfTime` otherwise)."""
    runs = runs or out / "runs" / f"{size}_n{n}_e{'-'.join(str(epochs[s]) for s in ('patch', 'stitch', 'end2end'))}"
    cfgs = stage_configs(size, layout, files, n, runs, epochs, device, amp, lr)
    for stage, cfg in cfgs.items():
        while not train_stage(cfg, out / "configs" / f"{size}_n{n}_{stage}.yaml", chunk_epochs, budget):
            budget.check(0.0, f"{size} n={n} {stage}")
    return runs / "end2end"


def train_seconds(runs: Path) -> dict[str, float]:
    """Training seconds per stage of a finished run (from the ``.done`` markers)."""
    return {stage: json.loads((runs / f"{stage}.done").read_text())["seconds"]
            for stage in ("patch", "stitch", "end2end")}


# ------------------------------------------------------------------------------------------ scores
def score_model(model_dir: Path, heldout: list[Path], train_files: list[Path], n: int, device: str = "cpu") -> dict:
    """Mean (± standard error) E_φ, PSNR, SSIM and data residual of an end2end model on the abTEM files, per sample
    and against the mean phase of the first ``n`` training samples (``phasestem evaluate``'s metrics: E_φ over the
    whole image, offset removed, no shift alignment)."""
    from phasestem.learn.data import SampleIndex
    from phasestem.learn.evaluate import check_shapes, evaluate_model
    from phasestem.learn.registry import load_model

    model, meta = load_model(model_dir, ("end2end",))
    g = meta["data"]["geometry"]
    kw = {"block": g["block"], "stride": g["stride"], "patch": g["patch"], "target": meta["data"]["target"]}
    index = SampleIndex.from_paths([str(p) for p in heldout], **kw)
    check_shapes(meta, index)
    train = SampleIndex.from_paths([str(f) for f in train_files], **kw)
    train = train.subset(range(min(n, len(train))))
    res = evaluate_model(model, meta, index, train, batch_size=1, device=device)
    import h5py

    from phasestem.io import seed as seedfile

    rows = res["rows"]
    for k, (r, (f, i)) in enumerate(zip(rows, index.entries, strict=True)):  # number the samples of all files
        with h5py.File(index.files[f].path) as h:
            r["specimen"] = str(h[seedfile.patterns_key(i)].attrs.get("specimen", ""))
        r["sample"] = k
    res["examples"] = [(k, pred, gt) for k, (_, pred, gt) in enumerate(res["examples"])]
    out = {"n_heldout": len(rows), "rows": rows}
    for key in ("phase_error", "psnr", "ssim", "residual", "truth_residual", "baseline_phase_error", "baseline_psnr"):
        v = np.array([r[key] for r in rows if key in r and np.isfinite(r[key])], float)
        if len(v):
            out[key] = float(v.mean())
            out[key + "_sem"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    out["params"] = int(sum(p.numel() for p in model.parameters()))
    out["examples"] = res["examples"]
    return out


def point_path(out: Path, size: str, n: int) -> Path:
    return out / "points" / f"{size}_n{n}.json"


# ------------------------------------------------------------------------------------------ fit and report
def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """E(n) = a·n^(−b) + c."""
    return a * np.power(np.asarray(n, float), -b) + c


def fit_power_law(n: list[float], e: list[float], sem: list[float] | None = None) -> dict | None:
    """Fit E = a·n^(−b) + c (a ≥ 0, 0 ≤ b ≤ 3, 0 ≤ c ≤ min E) by weighted least squares (``sem``: the points'
    standard errors, as σ), or with two points E = a·n^(−b) (c = 0); None with fewer. Returns a, b, c, the
    parameters' standard errors where defined, the points used and ``at(3500)``."""
    from scipy.optimize import curve_fit

    n_, e_ = np.asarray(n, float), np.asarray(e, float)
    order = np.argsort(n_)
    n_, e_ = n_[order], e_[order]
    if len(n_) < 2:
        return None
    if len(n_) == 2:
        b = float(np.log(e_[0] / e_[1]) / np.log(n_[1] / n_[0]))
        a = float(e_[0] * n_[0] ** b)
        fit = {"a": a, "b": b, "c": 0.0, "form": "a·n^-b (2 points, c = 0)", "errors": None}
    else:
        sigma = None
        if sem is not None:
            s = np.asarray(sem, float)[order]
            sigma = s if np.all(np.isfinite(s)) and np.all(s > 0) else None
        b0 = 0.5
        c0 = 0.5 * float(e_.min())
        a0 = max(float(e_[0] - c0) * n_[0] ** b0, 1e-6)
        p, cov = curve_fit(power_law, n_, e_, p0=(a0, b0, c0), sigma=sigma, absolute_sigma=sigma is not None,
                           bounds=([0.0, 0.0, 0.0], [np.inf, 3.0, float(e_.min())]), maxfev=20000)
        err = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else None
        fit = {"a": float(p[0]), "b": float(p[1]), "c": float(p[2]), "form": "a·n^-b + c",
               "errors": None if err is None or len(n_) == 3 else [float(v) for v in err]}
    fit["points"] = [[float(x), float(y)] for x, y in zip(n_, e_, strict=True)]
    fit["at_seed"] = float(power_law(SEED_SAMPLES, fit["a"], fit["b"], fit["c"]))
    return fit


def collect(out: Path) -> dict[str, list[dict]]:
    """Every measured point under ``out/points``, per size, sorted by n (rows and examples dropped)."""
    by: dict[str, list[dict]] = {}
    for path in sorted((out / "points").glob("*.json")):
        p = json.loads(path.read_text())
        by.setdefault(p["size"], []).append({k: v for k, v in p.items() if k not in ("rows", "examples")})
    return {s: sorted(v, key=lambda p: p["n"]) for s, v in by.items()}


def report(out: Path, layout: str, heldout: str | None = None) -> dict:
    """``scaling.json`` (measured points, per-size fits, E_φ extrapolated to :data:`SEED_SAMPLES`) and
    ``scaling.png``; a table in ``scaling.md``."""
    points = collect(out)
    fits = {size: fit_power_law([p["n"] for p in ps], [p["phase_error"] for p in ps],
                                [p.get("phase_error_sem", float("nan")) for p in ps]) for size, ps in points.items()}
    result = {"layout": layout, "heldout": heldout, "points": points, "fits": fits, "seed_samples": SEED_SAMPLES,
              "seconds": json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}}
    write_json(out / "scaling.json", result)
    if points:
        figure(result, out / "scaling.png")
    (out / "scaling.md").write_text(table(result) + "\n")
    return result


def table(result: dict) -> str:
    lines = ["| size | parameters | training samples | E_φ (± s.e.m.) | training-mean E_φ | PSNR (dB) | SSIM | "
             "data residual | training (s) | source |", "|---|---|---|---|---|---|---|---|---|---|"]
    for size, ps in result["points"].items():
        for p in ps:
            nan = float("nan")
            lines.append(f"| {size} | {p['params'] / 1e6:.2f} M | {p['n']} | {p['phase_error']:.3f} ± "
                         f"{p.get('phase_error_sem', nan):.3f} | {p.get('baseline_phase_error', nan):.3f}"
                         f" | {p['psnr']:.2f} | {p['ssim']:.3f} | {p.get('residual', nan):.4f} | "
                         f"{sum(p['train_seconds'].values()):.0f} | measured ({p['device']}) |")
        fit = result["fits"].get(size)
        if fit:
            lines.append(f"| {size} | | {SEED_SAMPLES} | {fit['at_seed']:.3f} | | | | | | extrapolated: "
                         f"{fit['form']}, a = {fit['a']:.3g}, b = {fit['b']:.3g}, c = {fit['c']:.3g} |")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> Path:
    """E_φ against training samples (log x) per size: measured points with their standard errors, the fitted trend
    (dashed beyond the last measured n) and its value at :data:`SEED_SAMPLES` (open marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phasestem.plot import STYLE, save_figure

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for k, (size, ps) in enumerate(result["points"].items()):
            colour = f"C{k}"
            n = np.array([p["n"] for p in ps], float)
            e = np.array([p["phase_error"] for p in ps], float)
            s = np.array([p.get("phase_error_sem", 0.0) for p in ps], float)
            ax.errorbar(n, e, yerr=np.nan_to_num(s), fmt="o", color=colour, capsize=2, label=f"{size} (measured)")
            base = [p.get("baseline_phase_error") for p in ps if p.get("baseline_phase_error") is not None]
            if base and k == 0:
                ax.axhline(float(np.mean(base)), color="0.5", lw=0.8, ls=":", label="training-mean image")
            fit = result["fits"].get(size)
            if fit:
                grid = np.geomspace(n.min(), SEED_SAMPLES, 100)
                inside = grid <= n.max()
                ax.plot(grid[inside], power_law(grid[inside], fit["a"], fit["b"], fit["c"]), color=colour)
                ax.plot(grid[~inside], power_law(grid[~inside], fit["a"], fit["b"], fit["c"]), color=colour, ls="--")
                ax.plot([SEED_SAMPLES], [fit["at_seed"]], "o", mfc="none", color=colour,
                        label=f"{size} at {SEED_SAMPLES} (extrapolated {fit['at_seed']:.2f})")
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.set_ylabel("E_φ on abTEM held-out samples")
        ax.set_title(f"learned route, {result['layout']} layout: measured (filled), fitted trend (dashed: beyond data)")
        ax.legend(frameon=False)
        save_figure(fig, path, close=True)
    return path


# ------------------------------------------------------------------------------------------ main
def run_point(args, out: Path, size: str, n: int, heldout: list[Path], budget: Budget) -> dict:
    """Data, training and score of one (size, n) point (each part skipped when done)."""
    path = point_path(out, size, n)
    if path.exists():
        return json.loads(path.read_text())
    files = training_files(out, args.layout, n, args.phonons, budget, args.part)
    ref = dict(zip(("patch", "stitch", "end2end"), args.epochs, strict=True)) if args.epochs else None
    epochs = stage_epochs(size, n, ref, args.ref_samples)
    model = train_run(out, size, args.layout, files, n, epochs, args.device, args.amp, args.chunk_epochs, budget)
    budget.check(0.0, f"score {size} n={n}")
    score = score_model(model, heldout, files, n, args.device)
    score.pop("examples")
    point = {"size": size, "n": n, "layout": args.layout, "phonons": args.phonons, "epochs": epochs,
             "device": args.device, "train_seconds": train_seconds(model.parent), "model": str(model), **score}
    write_json(path, point)
    return point


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="scaling_output", help="work folder (reruns skip finished steps)")
    ap.add_argument("--layout", default="seed", choices=sorted(LAYOUTS))
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=sorted(REF_EPOCHS))
    ap.add_argument("--n-train", nargs="+", type=int, default=[64, 256, 1024, SEED_SAMPLES],
                    help="training-set sizes (nested: the first n samples of one simulated set)")
    ap.add_argument("--phonons", type=int, default=4, help="frozen phonons of the training samples")
    ap.add_argument("--part", type=int, default=PART, help="samples per simulated part")
    ap.add_argument("--epochs", type=int, nargs=3, metavar=("PATCH", "STITCH", "END2END"),
                    help="epochs per stage at --ref-samples samples (default per size: REF_EPOCHS); every n gets the "
                         "same sample passes (stage_epochs)")
    ap.add_argument("--ref-samples", type=int, default=REF_SAMPLES, help="training samples of --epochs")
    ap.add_argument("--heldout-phonons", type=int, default=4, help="frozen phonons of the abTEM held-out samples")
    ap.add_argument("--n-heldout", type=int, default=8, help="abTEM held-out samples")
    ap.add_argument("--device", default="cpu", help="torch device of training and scoring (cpu, cuda)")
    ap.add_argument("--amp", default="off", choices=["off", "bf16", "fp16", "auto"], help="mixed precision")
    ap.add_argument("--chunk-epochs", type=int, default=1, help="epochs per training step")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop before a step that would end later "
                    f"(exit status {INCOMPLETE}; rerun to continue)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--report-only", action="store_true", help="only rewrite scaling.json / .png / .md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()  # YAMLs under out/configs name absolute paths (a relative one: from its folder)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.max_minutes)
    heldout = None
    try:
        if not args.report_only:
            heldout = heldout_files(out, args.layout, args.n_heldout, args.heldout_phonons, budget)
            for size in args.sizes:
                for n in sorted(args.n_train):
                    run_point(args, out, size, n, heldout, budget)
    except OutOfTime as exc:
        report(out, args.layout, None if heldout is None else heldout[0].parent.name)
        print(f"stopped at --max-minutes ({exc}); rerun the same command to continue", flush=True)
        return INCOMPLETE
    result = report(out, args.layout, None if heldout is None else heldout[0].parent.name)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
