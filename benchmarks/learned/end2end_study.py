"""Why End2End predicts the training-mean image, measured (issue 48, item 5): the seed's pipeline (PatchRecoveryNet →
PhaseStitchingNet → End2End, ``phasestem train``) trained three ways on the same phasestem crystals and scored on
abTEM held-out specimens it never saw.

    python benchmarks/learned/end2end_study.py --out OUT --steps simulate train --device cuda   # the GPU part
    python benchmarks/learned/end2end_study.py --out OUT --steps heldout evaluate report \\
        [--heldout-from runs/restore_seed/heldout]                                            # the CPU part

Runs (:data:`RUNS`), on a 60 Å cell of the user's seed-000 optics (300 keV, Cs 0.1 mm, C10 0; 0.39 Å phase pixels,
64² patterns at 0.98 mrad):

* ``seed_recipe``: 30 mrad, 2 Å step, the seed's recipe as our benchmarks ran it: no augmentation, the loss on the
  raw phase (its offset included), patches sized by the seed's 5 %-of-peak rule (55 px over 5 × 5 blocks);
* ``seed_fixed``: the same data with the three defects fixed: dihedral augmentation, an offset-free loss at every
  stage, patches holding :data:`FRACTION` of each probe's intensity (135 px: at 30 mrad and Cs 0.1 mm with no
  defocus, 90 % of the intensity lies in a 44.7 Å disk);
* ``dense``: the same crystals (same seeds) at 1.5 Å step (the issue's 1.6 Å does not tile the 60 Å cell, which the
  exact symmetries of augmentation need) and 20 mrad (90 % in 13.1 Å), fixed recipe: more overlap and a compact
  probe. If ``dense`` learns and ``seed_fixed`` does not, the seed geometry lacks overlap; if neither
  does, they lack data.

Steps (each skips what exists): ``simulate`` (``phasestem simulate``, ``--n-train`` crystals per geometry, files of
:data:`PART` samples, stopped after ``--sim-seconds``: the files written are kept), ``train`` (patch → stitch →
end2end per run, each stage stopped after its share of ``--train-seconds``: the last finished epoch is kept),
``heldout`` (abTEM: the structures of ``--heldout-from`` at each geometry, development half ``dev.h5``, validation
``val.h5``, and their counted copies at 1e4 e⁻/pattern ``*_1e4.h5``), ``evaluate`` (``phasestem evaluate`` of each
run's last End2End epoch: a fixed epoch, never the best on the truth) and ``report`` (``result.json``,
``result.md``: E_φ per half, the training-mean image's, the ratio, each stage's last validation PSNR, and AD's
truth-picked best on the seed geometry's files from ``--ad-best``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from abtem_eval import evaluate  # noqa: E402
from layouts import stage_configs  # noqa: E402

FRACTION = 0.9
CELL = 60.0
TRAIN_SEED, ABTEM_SEED, NOISE_SEED = 4811, 4812, 4813
#: held-out files scored: the two halves noise-free and as counts at 1e4 e⁻/pattern (:data:`ELECTRONS`)
HALVES = ("dev", "val", "dev_1e4", "val_1e4")
ELECTRONS = 1e4
PART = 32
#: geometry: aperture (mrad), scan step (Å) and positions per side, blocks (patterns per side) and their stride
GEOMETRIES = {"seed": {"semiangle": 30.0, "step": 2.0, "scan": 30, "block": 5, "stride": 5},
              "dense": {"semiangle": 20.0, "step": 1.5, "scan": 40, "block": 8, "stride": 8}}
#: run: its geometry and which of the three fixes are on (augmentation, offset-free loss, patches by intensity)
RUNS = {"seed_recipe": ("seed", False, False, False), "seed_fixed": ("seed", True, True, True),
        "dense": ("dense", True, True, True),
        # the fixes one at a time, and the dense geometry with the seed's recipe (the second GPU run)
        "seed_augment": ("seed", True, False, False), "seed_offset_free": ("seed", False, True, False),
        "dense_recipe": ("dense", False, False, False)}
FIRST = ("seed_recipe", "seed_fixed", "dense")
EPOCHS = {"patch": 16, "stitch": 8, "end2end": 8}
#: share of --train-seconds of each stage
SHARE = {"patch": 0.45, "stitch": 0.2, "end2end": 0.35}
BATCH = {"patch": 32, "stitch": 8, "end2end": 4}
#: canvas pixels per stitching token: a divisor of the 154-px phase image (22² tokens)
VIT_PATCH = 7
PREPROCESS = {"bin": 2, "normalize": "pattern", "scale": "sqrt"}


def sim_config(geometry: str, n: int = PART, structures: list[Path] | None = None, device: str = "cpu") -> dict:
    """``configs/simulate_seed.yaml`` on the :data:`CELL` Å cell (its 0.39 Å phase and 0.195 Å simulation pixels
    kept) with ``geometry``'s aperture and scan, 4 frozen phonons, noise-free; ``n`` training crystals in files of
    :data:`PART`, or the ``structures`` (held-out)."""
    from train_restorer import heldout_cell

    g = GEOMETRIES[geometry]
    cfg = heldout_cell(yaml.safe_load((ROOT / "configs" / "simulate_seed.yaml").read_text()), CELL)
    cfg["optics"]["semiangle"] = g["semiangle"]
    cfg["scan"] = {"shape": [g["scan"]] * 2, "step": [g["step"]] * 2, "origin": [0.0, 0.0]}
    cfg["specimen"]["phonons"] = 4
    cfg["compute"] = {**cfg["compute"], "seed": TRAIN_SEED, "batch": 128, "device": device}
    if structures is not None:
        cfg["specimen"] = {**cfg["specimen"], "kind": "structures", "files": [str(p) for p in structures]}
        cfg["output"] = {**cfg["output"], "n_files": 1, "samples_per_file": len(structures)}
    else:
        cfg["output"] = {**cfg["output"], "n_files": max(1, n // PART), "samples_per_file": min(PART, n),
                         "compression": 0}
    return cfg


def patch_side(geometry: str, fixed: bool) -> int:
    """Phase pixels of a block's patch: the square holding :data:`FRACTION` of each probe's intensity over the block
    (``fixed``), or the seed's 5 %-of-peak rule."""
    from phasestem.simulate.probe_extent import illuminated_extent

    g = GEOMETRIES[geometry]
    cfg = sim_config(geometry)
    ext = illuminated_extent(cfg["optics"]["energy"], g["semiangle"], cfg["optics"]["aberrations"],
                             block=g["block"], step=g["step"], pixels_per_angstrom=256 / 100.0,
                             fraction=FRACTION if fixed else None)
    return min(ext.side_px, cfg["grid"]["phase_gpts"][0])


def run_configs(out: Path, run: str, device: str) -> dict[str, dict]:
    """``phasestem train`` configs of ``run``'s three stages (:func:`layouts.stage_configs`, tiny networks)."""
    geometry, augment, offset_free, by_intensity = RUNS[run]
    g = GEOMETRIES[geometry]
    files = sorted((out / "data" / geometry).glob("*.h5"))
    learned = {"block": g["block"], "stride": g["stride"], "patch": patch_side(geometry, by_intensity),
               "vit_patch": VIT_PATCH, "preprocess": PREPROCESS}
    cfgs = stage_configs("tiny", learned, files, None, out / "runs" / run, EPOCHS, device,
                         amp="bf16" if device.startswith("cuda") else "off",
                         data={"val_fraction": 0.1, "augment": augment, "num_workers": 4 if device != "cpu" else 0},
                         batch=BATCH)
    for cfg in cfgs.values():
        cfg["loss"] = {**cfg.get("loss", {}), "offset_free": offset_free}
    return cfgs


def cli(args: list[str], seconds: float | None, log: Path) -> int:
    """``phasestem ARGS`` in a subprocess, stopped after ``seconds``; its return code (124: stopped)."""
    print("$ phasestem " + " ".join(args), flush=True)
    cmd = [sys.executable, "-m", "phasestem.cli", *args]
    with open(log, "a") as fh:
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            return 124


def step_simulate(out: Path, n: int, seconds: float, device: str) -> None:
    """Both geometries' training crystals at once (one process each), stopped after ``seconds``."""
    procs = []
    for geometry in GEOMETRIES:
        folder = out / "data" / geometry
        if folder.exists() and any(folder.glob("*.h5")):
            continue
        cfg_path = out / "configs" / f"simulate_{geometry}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(sim_config(geometry, n, device=device), sort_keys=False))
        log = open(out / f"simulate_{geometry}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "phasestem.cli", "simulate", str(cfg_path), "--out",
                                       str(folder)], stdout=log, stderr=subprocess.STDOUT))
    t0 = time.perf_counter()
    for p in procs:
        try:
            p.wait(max(1.0, seconds - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for geometry in GEOMETRIES:
        for tmp in (out / "data" / geometry).glob("*.tmp*"):
            tmp.unlink() if tmp.is_file() else shutil.rmtree(tmp)


def train_one(out: Path, run: str, device: str, seconds: float) -> dict:
    """``run``'s three stages in turn, each stopped after its share of ``seconds``; a stage stopped keeps its last
    finished epoch (``last/``), which the next stage starts from."""
    cfg_dir = out / "configs"
    record = {}
    for stage, cfg in run_configs(out, run, device).items():
        path = cfg_dir / f"train_{run}_{stage}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t = time.perf_counter()
        rc = cli(["train", cfg["network"], str(path)], SHARE[stage] * seconds, out / f"train_{run}.log")
        record[stage] = {"rc": rc, "seconds": round(time.perf_counter() - t, 1), "patch": cfg["data"]["patch"]}
    return record


def step_train(out: Path, runs: list[str], device: str, seconds: float) -> None:
    """``runs`` at once (on a GPU they share it), each within ``seconds``; their records join ``train.json``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(runs)) as pool:
        jobs = {run: pool.submit(train_one, out, run, device, seconds) for run in runs}
        record = {run: job.result() for run, job in jobs.items()}
    path = out / "train.json"
    path.write_text(json.dumps({**(json.loads(path.read_text()) if path.exists() else {}), **record}, indent=1))


def step_heldout(out: Path, source: Path) -> None:
    """abTEM simulations of ``source``'s held-out structures (even: development, odd: validation) at each geometry;
    the seed geometry's files are taken from ``source`` when they are there (the same cell and optics)."""
    from abtem_samples import counted_copy, write_abtem_file

    from phasestem.simulate.config import SimulationConfig

    structures = sorted((source / "structures").glob("*.xyz"))
    for geometry in GEOMETRIES:
        folder = out / "heldout" / geometry
        folder.mkdir(parents=True, exist_ok=True)
        for half, use in (("dev", structures[0::2]), ("val", structures[1::2])):
            target = folder / f"{half}.h5"
            if target.exists():
                continue
            if geometry == "seed" and (source / f"{half}.h5").exists():
                shutil.copy(source / f"{half}.h5", target)
                continue
            cfg = SimulationConfig.model_validate(sim_config(geometry, structures=use))
            write_abtem_file(cfg, target, len(use), seed=ABTEM_SEED, structures=use)
        for half in ("dev", "val"):
            counted = folder / f"{half}_1e4.h5"
            if not counted.exists():
                counted_copy(folder / f"{half}.h5", counted, ELECTRONS, NOISE_SEED)


def step_evaluate(out: Path) -> dict:
    """E_φ (and the training-mean image's) of each run's last End2End epoch on both halves of its geometry."""
    result = {}
    for run, (geometry, *_) in RUNS.items():
        model = out / "runs" / run / "end2end" / "last"
        files = [out / "heldout" / geometry / f"{half}.h5" for half in HALVES]
        if not model.exists() or not all(f.exists() for f in files):
            print(f"{run}: no End2End model ({model}) or held-out files", flush=True)
            continue
        result[run] = {half: evaluate(model, out / "heldout" / geometry / f"{half}.h5", out / "eval" / f"{run}_{half}")
                       for half in HALVES}
        for half, m in result[run].items():
            if "baseline_phase_error" not in m and (out / "train_mean_phase.npy").exists():
                m["baseline_phase_error"] = mean_image_error(out / "train_mean_phase.npy",
                                                             out / "heldout" / geometry / f"{half}.h5")
    return result


def mean_image_error(mean_file: Path, heldout: Path) -> float:
    """Mean over ``heldout``'s samples of E_φ of the training crystals' mean phase (``mean_file``, written where the
    training files are; ``phasestem evaluate`` computes it only beside them), as ``phasestem evaluate`` scores it."""
    import h5py
    import numpy as np

    from phasestem.io import seed as seedfile
    from phasestem.metrics import phase_error

    mean = np.load(mean_file)
    with h5py.File(heldout) as f:
        truths = [f[seedfile.phase_key(i)][()] for i in range(int(f.attrs["samples_per_file"]))]
    return float(np.mean([phase_error(mean, t, align=False) for t in truths]))


def ad_best(path: Path) -> dict[str, float]:
    """AD's truth-picked best E_φ (any setting), mean per half of :data:`HALVES`, from ``train_restorer.py``'s
    ``ad_best.json`` of the seed geometry's held-out files (its counts are its own draws at the same dose)."""
    import numpy as np

    record = json.loads(path.read_text())
    res = {}
    for half in HALVES:
        name, _, counted = half.partition("_")
        want = "1e+04" if counted else "none"
        best: dict[str, float] = {}
        for key, v in record.items():
            sample, dose, _ = key.split("|")
            if sample.startswith(name + ":") and dose == want:
                best[sample] = min(best.get(sample, np.inf), min(c[0] for c in v["curve"].values()))
        if best:
            res[half] = float(np.mean(list(best.values())))
    return res


def last_psnr(run_dir: Path) -> dict:
    """Each stage's epochs finished and last validation PSNR (dB) from its ``epochs.csv``."""
    import csv

    res = {}
    for stage in ("patch", "stitch", "end2end"):
        path = run_dir / stage / "epochs.csv"
        if path.exists():
            rows = list(csv.DictReader(path.open()))
            if rows:
                res[stage] = {"epochs": len(rows), "val_psnr": float(rows[-1].get("val/psnr", "nan") or "nan")}
    return res


def step_report(out: Path, scores: dict, ad_file: Path | None = None) -> str:
    lines = ["| run | geometry | fixes | patch (px) | half (n) | E_φ End2End | E_φ training-mean image | ratio | "
             "epochs patch/stitch/end2end | val PSNR end2end (dB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for run, halves in scores.items():
        geometry, augment, offset_free, by_intensity = RUNS[run]
        fixes = ", ".join(n for n, on in (("augment", augment), ("offset-free", offset_free),
                                          ("patch by intensity", by_intensity)) if on) or "none"
        g = GEOMETRIES[geometry]
        hist = last_psnr(out / "runs" / run)
        ep = "/".join(str(hist.get(s, {}).get("epochs", 0)) for s in ("patch", "stitch", "end2end"))
        for half, m in halves.items():
            ratio = m["phase_error"] / m["baseline_phase_error"]
            rows[f"{run}/{half}"] = {"phase_error": m["phase_error"], "sem": m["phase_error_sem"],
                                     "mean_image": m["baseline_phase_error"], "ratio": ratio, "n": m["n"]}
            lines.append(f"| {run} | {g['semiangle']:g} mrad, {g['step']:g} Å | {fixes} | "
                         f"{patch_side(geometry, by_intensity)} | {half} ({m['n']}) | {m['phase_error']:.3f} ± "
                         f"{m['phase_error_sem']:.3f} | {m['baseline_phase_error']:.3f} | {ratio:.2f} | {ep} | "
                         f"{hist.get('end2end', {}).get('val_psnr', float('nan')):.1f} |")
    ad = ad_best(ad_file) if ad_file and ad_file.exists() else {}
    for half, value in ad.items():
        lines.append(f"| AD, truth-picked best (any setting) | 30 mrad, 2 Å | – | – | {half} (6) | {value:.3f} "
                     "| | | | |")
    md = "\n".join(lines)
    train = json.loads((out / "train.json").read_text()) if (out / "train.json").exists() else {}
    (out / "result.json").write_text(json.dumps({"rows": rows, "ad_best": ad, "train": train, "epochs": EPOCHS},
                                                indent=1))
    (out / "result.md").write_text(md + "\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", nargs="+", default=["simulate", "train", "heldout", "evaluate", "report"],
                    choices=["simulate", "train", "heldout", "evaluate", "report"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", nargs="+", default=list(FIRST), choices=sorted(RUNS), help="runs to train")
    ap.add_argument("--n-train", type=int, default=384, help="training crystals per geometry (the same in both)")
    ap.add_argument("--sim-seconds", type=float, default=150.0)
    ap.add_argument("--train-seconds", type=float, default=330.0, help="wall seconds of each run's three stages")
    ap.add_argument("--epochs", nargs=3, type=int, default=None, metavar=("PATCH", "STITCH", "END2END"),
                    help=f"epochs per stage (default {EPOCHS})")
    ap.add_argument("--heldout-from", default="runs/restore_seed/heldout",
                    help="folder holding structures/*.xyz (and the seed geometry's abTEM dev.h5/val.h5)")
    ap.add_argument("--ad-best", default="runs/restore_seed/ad_best.json",
                    help="AD's truth-picked best per held-out sample of the seed geometry (train_restorer.py)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.epochs:
        EPOCHS.update(zip(("patch", "stitch", "end2end"), args.epochs, strict=True))
    if "simulate" in args.steps:
        step_simulate(out, args.n_train, args.sim_seconds, args.device)
    if "train" in args.steps:
        step_train(out, args.runs, args.device, args.train_seconds)
    if "heldout" in args.steps:
        step_heldout(out, Path(args.heldout_from).resolve())
    if "evaluate" in args.steps:
        (out / "scores.json").write_text(json.dumps(step_evaluate(out), indent=1, default=float))
    if "report" in args.steps:
        print(step_report(out, json.loads((out / "scores.json").read_text()), Path(args.ad_best)))


if __name__ == "__main__":
    main()
