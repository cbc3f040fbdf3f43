"""Independent evaluation of the learned route (issue 14, item 4): networks trained on phasestem-simulated data,
evaluated on held-out samples of phasestem's simulator *and* on held-out samples simulated by abTEM with the same
geometry. The gap between the two is what the own-simulator figures overstate.

    python benchmarks/learned/abtem_eval.py [--out learned_abtem_output] [--sizes tiny small]
        [--n-train 64] [--n-heldout 8] [--epochs-scale 1.0] [--lr LR] [--runs-from DIR] [--threads 2]

Steps (a step whose output exists is skipped, so a rerun only re-evaluates):

1. ``phasestem simulate`` of the training set (``simulate_train.yaml``: phasestem's random crystals, 25.6 Å
   cell, 16×16 scan of 64² patterns → 64² phase) and of a held-out set: the same config with another seed and
   ``specimen.kind: structures``, the specimens being random crystals drawn with ASE by :mod:`abtem_samples`
   and written as structure files;
2. the abTEM held-out set: the same specimens, sample by sample, simulated by abTEM (:mod:`abtem_samples`,
   conventions at its top: abTEM probe with defocus = −C10, Kirkland potential in one slice with the infinite
   projection, abTEM frozen phonons, 0.2 Å simulation pixels binned to the 0.4 Å phase pixels, abTEM's own
   reciprocal pixel), written in ``phasestem simulate``'s file layout. The two held-out sets differ only by
   the simulator (and their phonon draws), so the gap is paired: mean ± standard error over the samples of
   (abTEM − phasestem);
3. ``phasestem train patch|stitch|end2end`` for each model size (``--runs-from DIR``: reuse
   ``DIR/<size>/end2end`` instead of training);
4. ``phasestem evaluate`` of each model on each held-out set: mean E_φ, PSNR, SSIM and the measurement
   residual (the predicted phase pushed through the forward model against the set's own patterns; the true
   phase's residual is the floor), written to ``result.json`` and ``result.md`` in ``--out``.

Accuracy on abTEM data is a measurement phasestem did not make itself (no inverse crime); the phasestem
held-out figures are the round trip. Default run: about 15 minutes on 2 CPU cores. ``--epochs-scale`` and
``--n-train`` give longer runs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HELDOUT_SEED = 1011
ABTEM_SEED = 2022
#: epochs per stage (tiny, small) at --epochs-scale 1
EPOCHS = {"tiny": {"patch": 12, "stitch": 6, "end2end": 4}, "small": {"patch": 6, "stitch": 4, "end2end": 2}}
#: learning rate of the patch and stitch stages per size (end2end: a third); small does not train at 3e-3
LR = {"tiny": 3e-3, "small": 1e-3}
LEARNED = {"block": 4, "stride": 4, "patch": 24, "vit_patch": 8,
           "preprocess": {"bin": 2, "normalize": "pattern", "scale": "sqrt"}}
METRICS = ("phase_error", "psnr", "ssim", "residual", "truth_residual", "baseline_phase_error")


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "phasestem.cli", *args]
    print("$ phasestem " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def _trainer(epochs: int, lr: float) -> dict:
    return {"epochs": max(1, epochs), "lr": lr, "warmup_steps": 5, "device": "cpu", "monitor": "val/psnr",
            "monitor_mode": "max", "tensorboard": False, "progress": False, "checkpoint_every_epochs": 0}


def train_configs(size: str, train_file: Path, runs: Path, scale: float, lr: float | None = None) -> dict[str, dict]:
    ep = {k: round(v * scale) for k, v in EPOCHS[size].items()}
    data = {"files": [str(train_file)], "block": LEARNED["block"], "stride": LEARNED["stride"],
            "patch": LEARNED["patch"], "val_fraction": 0.15, "test_fraction": 0.0, "augment": False,
            "preprocess": LEARNED["preprocess"]}
    lr = lr or LR[size]
    return {
        "patch": {"stage": "patch", "out_dir": str(runs / "patch"), "data": {**data, "batch_size": 8},
                  "model": {"size": size}, "trainer": _trainer(ep["patch"], lr)},
        "stitch": {"stage": "stitch", "out_dir": str(runs / "stitch"),
                   "stitch_model": {"size": size, "vit_patch": LEARNED["vit_patch"]},
                   "data": {**data, "batch_size": 2, "stitch_noise": 0.05}, "trainer": _trainer(ep["stitch"], lr)},
        "end2end": {"stage": "end2end", "out_dir": str(runs / "end2end"), "patch_checkpoint": str(runs / "patch"),
                    "stitch_checkpoint": str(runs / "stitch"), "freeze_patch_epochs": 1,
                    "data": {**data, "batch_size": 1}, "loss": {"patch_weight": 0.5, "image_weight": 1.0},
                    "trainer": _trainer(ep["end2end"], lr / 3)},
    }


def simulate(out: Path, n_train: int, n_heldout: int) -> tuple[Path, Path, dict]:
    from abtem_samples import write_structures

    from phasestem.io import seed as seedfile
    from phasestem.simulate import load_config

    base = yaml.safe_load((HERE / "simulate_train.yaml").read_text())
    train = {**base, "output": {**base["output"], "samples_per_file": n_train}}
    structures = write_structures(out / "data" / "structures", n_heldout, load_config(HERE / "simulate_train.yaml"),
                                  HELDOUT_SEED)
    held = {**base, "output": {**base["output"], "samples_per_file": n_heldout, "prefix": "heldout"},
            "compute": {**base["compute"], "seed": HELDOUT_SEED},
            "specimen": {**base["specimen"], "kind": "structures", "files": [str(p.resolve()) for p in structures]}}
    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, cfg in (("train", train), ("heldout", held)):
        path = cfg_dir / f"simulate_{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        folder = out / "data" / name
        target = folder / seedfile.file_name(1, cfg["output"]["prefix"])
        if not target.exists():
            cli("simulate", str(path), "--out", str(folder))
        files[name] = target
    return files["train"], files["heldout"], held


def abtem_heldout(out: Path, held_file: Path, parametrization: str) -> Path:
    """abTEM simulations of the specimens of phasestem's held-out samples, sample by sample."""
    import h5py
    from abtem_samples import write_abtem_file

    from phasestem.io import seed as seedfile
    from phasestem.simulate import load_config

    path = out / "data" / "abtem" / "abtem_heldout1.h5"
    if not path.exists():
        cfg = load_config(out / "configs" / "simulate_heldout.yaml")
        folder = out / "data" / "structures"
        with h5py.File(held_file) as f:
            n = int(f.attrs["samples_per_file"])
            structures = [folder / f[seedfile.patterns_key(i)].attrs["specimen"] for i in range(n)]
        print(f"abTEM: {n} held-out samples ({parametrization}), the specimens of {held_file}", flush=True)
        write_abtem_file(cfg, path, n, seed=ABTEM_SEED, parametrization=parametrization, structures=structures)
    return path


def evaluate(run: Path, file: Path, out: Path) -> dict:
    if not (out / "metrics.csv").exists():
        cli("evaluate", "--model", str(run), "--files", str(file), "--out", str(out))
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    res = {k: float(np.mean([float(r[k]) for r in rows])) for k in METRICS if k in rows[0]}
    # standard error of the mean E_φ over the samples (the held-out sets are small)
    res["phase_error_sem"] = float(np.std([float(r["phase_error"]) for r in rows], ddof=1) / np.sqrt(len(rows))) \
        if len(rows) > 1 else float("nan")
    res["n"] = len(rows)
    res["rows"] = {int(r["sample"]): {k: float(r[k]) for k in METRICS if k in r} for r in rows}
    return res


def paired_gap(a: dict, p: dict) -> dict:
    """Mean and standard error over samples of (abTEM − phasestem), sample i of both holding the same specimen."""
    gap = {}
    for k in METRICS:
        d = np.array([a["rows"][i][k] - p["rows"][i][k] for i in sorted(p["rows"]) if i in a["rows"]])
        gap[k] = float(d.mean())
        gap[k + "_sem"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return gap


def table(result: dict) -> str:
    lines = ["| model | held-out source (samples) | E_φ (± s.e.m.) | E_φ of the training-mean image | PSNR (dB) | SSIM "
             "| data residual | true phase's residual |", "|---|---|---|---|---|---|---|---|"]
    for size, r in result["models"].items():
        for src in ("phasestem", "abtem"):
            m = r[src]
            lines.append(f"| {size} | {src} ({m['n']}) | {m['phase_error']:.3f} ± {m['phase_error_sem']:.3f} | "
                         f"{m['baseline_phase_error']:.3f} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['residual']:.4f} | "
                         f"{m['truth_residual']:.4f} |")
        g = r["gap"]
        lines.append(f"| {size} | gap (abTEM − phasestem, paired) | {g['phase_error']:+.3f} ± "
                     f"{g['phase_error_sem']:.3f} | "
                     f"{g['baseline_phase_error']:+.3f} | {g['psnr']:+.2f} | {g['ssim']:+.3f} | {g['residual']:+.4f} | "
                     f"{g['truth_residual']:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="learned_abtem_output", help="output folder (reruns skip finished steps)")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(EPOCHS))
    ap.add_argument("--n-train", type=int, default=64, help="phasestem-simulated training samples")
    ap.add_argument("--n-heldout", type=int, default=12, help="held-out samples of each source (the same "
                    "specimens in both)")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs")
    ap.add_argument("--lr", type=float, default=None, help=f"learning rate of the patch and stitch stages (end2end: a "
                    f"third of it; default per size: {LR})")
    ap.add_argument("--runs-from", default=None, help="reuse trained models DIR/<size>/end2end instead of training")
    ap.add_argument("--parametrization", default="kirkland", choices=["kirkland", "lobato"],
                    help="abTEM's potential table for the abTEM samples")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every step (1: the fastest on a "
                    "shared 2-core machine)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.out).resolve()  # the YAMLs written below name absolute paths (relative: from their folder)
    t0 = time.perf_counter()
    seconds = {}
    train_file, held_file, held_cfg = simulate(out, args.n_train, args.n_heldout)
    seconds["phasestem_simulate"] = time.perf_counter() - t0
    t = time.perf_counter()
    ab_file = abtem_heldout(out, held_file, args.parametrization)
    seconds["abtem_simulate"] = time.perf_counter() - t
    result = {"config": vars(args), "epochs": {s: {k: max(1, round(v * args.epochs_scale))
                                                   for k, v in EPOCHS[s].items()} for s in args.sizes},
              "files": {"train": str(train_file), "phasestem": str(held_file), "abtem": str(ab_file)},
              "models": {}, "seconds": seconds}
    for size in args.sizes:
        if args.runs_from:
            run = Path(args.runs_from) / size / "end2end"
        else:
            runs = out / "runs" / size
            t = time.perf_counter()
            for stage, cfg in train_configs(size, train_file, runs, args.epochs_scale, args.lr).items():
                done = runs / f"{stage}.done"
                if done.exists():
                    continue
                path = out / "configs" / f"train_{size}_{stage}.yaml"
                path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                cli("train", stage, str(path))
                done.write_text("finished\n")
            seconds[f"train_{size}"] = time.perf_counter() - t
            run = runs / "end2end"
        r = {src: evaluate(run, f, out / "eval" / f"{size}_{src}") for src, f in (("phasestem", held_file),
                                                                                 ("abtem", ab_file))}
        r["gap"] = paired_gap(r["abtem"], r["phasestem"])
        result["models"][size] = r
    seconds["total"] = time.perf_counter() - t0
    md = table(result)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    (out / "result.md").write_text(md + "\n")
    print(md)
    print(f"total {seconds['total']:.0f} s; {out / 'result.json'}")


if __name__ == "__main__":
    main()
