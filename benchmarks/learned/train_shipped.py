"""Train, score and ship a pretrained seed-geometry End2End (issue 23, item 4): ``--model seed-<size>``.

    python benchmarks/learned/train_shipped.py --size tiny --n-train 64 --phonons 1 --out shipped_output   # CPU
    python benchmarks/learned/train_shipped.py --size small --n-train 3500 --device cuda --amp bf16 \\
        --out shipped_output --max-minutes 9          # a GPU session: rerun until it exits 0

The same steps as a point of the scaling study (:mod:`scaling`, ``--layout seed``), resumable in the same way
(``--max-minutes``, exit status 3 while steps remain):

1. the training crystals, ``phasestem simulate`` at the seed geometry (:mod:`layouts`: 50 × 50 scan at 2 Å, 100 Å
   cell on 512², 64² patterns, 256² phase; 300 keV, 15 mrad, C10 = 100 Å), ``--phonons`` frozen phonons;
2. ``--n-heldout`` held-out crystals drawn with ASE and simulated by **abTEM** at the same geometry;
3. patch → stitch → end2end of ``--size`` (epochs per stage: :func:`scaling.stage_epochs`, or ``--epochs P S E``);
4. the scores on the abTEM samples (E_φ, PSNR, SSIM, data residual, the training-mean image's E_φ);
5. unless ``--no-ship``: the best end2end weights rewritten into ``src/phasestem/data/models/seed-<size>.safetensors``
   (safetensors; the metadata's file paths made relative to ``--out`` and the name and card added), the registry
   entry (size, sha256, geometry, scores: :func:`phasestem.learn.pretrained.register_model`), the model card
   ``docs/models/seed-<size>.md`` and its figure of held-out predictions.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import scaling  # noqa: E402
from layouts import LAYOUTS, LR, OPTICS, SPECIMEN, sim_config, write_json  # noqa: E402

LAYOUT = "seed"


def relative_meta(value: Any, base: Path) -> Any:
    """``value`` (model metadata) with every string holding an absolute path under ``base`` made relative to it, so
    that no path of the training machine is shipped."""
    prefix = str(base.resolve()) + os.sep
    if isinstance(value, dict):
        return {k: relative_meta(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_meta(v, base) for v in value]
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix):]
    return value


def ship(name: str, run: Path, out: Path, card: str) -> Path:
    """The best weights of the run folder ``run`` as ``<name>.safetensors`` in the model folder
    (:func:`phasestem.learn.pretrained.model_dir`: the package's unless ``PHASESTEM_MODEL_DIR`` names another), the
    metadata's paths made relative and ``meta["pretrained"]`` added; returns the file."""
    from phasestem.learn.pretrained import model_dir
    from phasestem.learn.trainer.checkpoint import load_weights, save_weights

    state, meta = load_weights(run)
    meta = relative_meta(meta, out)
    meta["pretrained"] = {"name": name, "card": card}
    path = save_weights(state, model_dir() / f"{name}.safetensors", meta)
    path.chmod(0o644)  # the atomic writer's temporary file is private; a shipped file is read by everyone
    return path


def examples_png(score: dict, path: Path, sampling: float) -> Path:
    from phasestem.plot import examples_figure, save_figure

    by = {r["sample"]: r for r in score["rows"]}
    ex = [(f"abTEM sample {sid}", pred, gt) for sid, pred, gt in score["examples"][:3]]
    metrics = {f"abTEM sample {sid}": by[sid] for sid, _, _ in score["examples"][:3]}
    fig = examples_figure(ex, label="phase (rad)", metrics=metrics, sampling=(sampling, sampling))
    return save_figure(fig, path, dpi=60, close=True)


def card_text(name: str, entry: dict, info: dict) -> str:
    """The model card (Markdown) from the registry entry and the run's record."""
    s, lay, sc = info["score"], LAYOUTS[LAYOUT], info["score"]
    phase_px = lay["extent"] / lay["phase_gpts"]
    ep, secs = info["epochs"], info["train_seconds"]
    sim = yaml.safe_dump(info["simulate_config"], sort_keys=False).strip()
    nan = float("nan")
    rows = "\n".join(f"| {r['sample']} ({r['specimen'].removeprefix('abtem:')}) | {r['phase_error']:.3f} | "
                     f"{r.get('baseline_phase_error', nan):.3f} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r.get('residual', nan):.4f} |" for r in s["rows"])
    return f"""# Pretrained model `{name}`

`phasestem predict scan.h5 --model {name}` (also `phasestem evaluate --model {name} --files …`, and
`load_model("{name}")` / `predict_file(scan, "{name}", out)` in Python) applies this End2End network without
training. It is shipped inside the package as `src/phasestem/data/models/{entry['file']}`
({entry['bytes'] / 1e6:.2f} MB, safetensors), sha256 `{entry['sha256']}`, checked every time the name is
resolved (a truncated or corrupted copy stops with one line naming the file and both checksums). Regenerate this
card and the weights with the command under *Reproduce*.

## What it is

End2End `{info['size']}` (PatchRecoveryNet → PhaseStitchingNet, trained stage by stage and then jointly):
{sc['params']:,} parameters. Input: the 2,500 diffraction patterns of one scan (binned 2× to 32², square-root
scaled, each normalised); output: the 256² phase (rad) over the 100 Å field.

## Geometry it applies to (anything else is refused up front)

| | |
|---|---|
| scan | {lay['scan']} × {lay['scan']} positions, step 2.0 Å |
| patterns | {lay['pattern']} × {lay['pattern']} px at {info['angular_sampling']:.4g} mrad (zero frequency at the \
centre) |
| beam | {OPTICS['energy'] / 1e3:g} keV, probe semi-angle {OPTICS['semiangle']:g} mrad, \
C10 = {OPTICS['aberrations']['C10']:g} Å (underfocus; no other aberrations) |
| output | {lay['phase_gpts']}² phase at {phase_px:.4g} Å/px |

A scan of another shape or pattern size is refused by `check_training_shapes`; another energy, semi-angle,
aberration, detector pixel or scan step (beyond 1–2 %) by `check_training_optics`
(`phasestem.learn.apply.phase`), in one line, before anything is predicted. Bin, crop or pad the patterns to 64²
first (`FourDSTEM.binned/cropped/padded`).

## Training data

`phasestem simulate` of {info['n_train']} random crystals (phasestem's generator: fcc, bcc, hcp, diamond,
rocksalt, zincblende, perovskite prototypes, random in-plane rotation, zone-axis tilt ≤ {SPECIMEN['max_tilt']:g}°, depth
{SPECIMEN['depth'][0]:g}–{SPECIMEN['depth'][1]:g} Å), noise-free, {info['phonons']} frozen-phonon
configuration(s) of σ = {SPECIMEN['phonon_sigma']:g} Å, in parts of {info['part']} samples (part k: seed
{scaling.TRAIN_SEED} + k); 10 % of them held out for validation (model selection). Config of part 0:

```yaml
{sim}
```

## Training

| stage | epochs | seconds |
|---|---|---|
| patch | {ep['patch']} | {secs['patch']:.0f} |
| stitch | {ep['stitch']} | {secs['stitch']:.0f} |
| end2end | {ep['end2end']} | {secs['end2end']:.0f} |

Device: {info['device']} ({info['machine']}), {info['threads']} torch thread(s), mixed precision {info['amp']};
learning rate {LR[info['size']]:g} (end2end a third), AdamW, cosine schedule, augmentation on. Data
simulation: {info['simulate_seconds']:.0f} s; training: {sum(secs.values()):.0f} s.

## Held-out scores (abTEM, never phasestem-simulated)

{s['n_heldout']} crystals drawn with ASE by `benchmarks/learned/abtem_samples.py` (seed {scaling.HELDOUT_SEED}; the
same families of prototypes as the training generator, other draws),
simulated by **abTEM** at the same geometry ({info['heldout_phonons']} frozen phonon configuration(s), noise-free);
phasestem only writes the file layout. Metrics as `phasestem evaluate` computes them: E_φ over the whole image
after removing the mean offset, PSNR and SSIM against the truth, the data residual (the predicted phase through
the forward model with the nominal probe against the abTEM patterns; the true phase's residual is the floor).

| predictor | E_φ (± s.e.m.) | PSNR (dB) | SSIM | data residual |
|---|---|---|---|---|
| `{name}` | {s['phase_error']:.3f} ± {s['phase_error_sem']:.3f} | {s['psnr']:.2f} | {s['ssim']:.3f} | \
{s.get('residual', nan):.4f} |
| training-mean image | {s['baseline_phase_error']:.3f} | {s.get('baseline_psnr', float('nan')):.2f} | – | – |
| true phase | 0 | – | – | {s.get('truth_residual', float('nan')):.4f} |

| abTEM sample | E_φ | training-mean E_φ | PSNR (dB) | SSIM | data residual |
|---|---|---|---|---|---|
{rows}

![held-out predictions]({Path(info['figure']).name})

## Reproduce

```bash
{info['command']}
```
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=sorted(scaling.REF_EPOCHS))
    ap.add_argument("--n-train", type=int, default=64, help="simulated training samples (10 %% for validation)")
    ap.add_argument("--phonons", type=int, default=4, help="frozen phonons of the training samples")
    ap.add_argument("--part", type=int, default=scaling.PART, help="samples per simulated part")
    ap.add_argument("--n-heldout", type=int, default=8, help="abTEM held-out samples")
    ap.add_argument("--heldout-phonons", type=int, default=4, help="frozen phonons of the abTEM samples")
    ap.add_argument("--epochs", type=int, nargs=3, metavar=("PATCH", "STITCH", "END2END"),
                    help="epochs per stage (default: scaling.stage_epochs)")
    ap.add_argument("--out", default="shipped_output", help="work folder (shares its data with scaling.py's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="off", choices=["off", "bf16", "fp16", "auto"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-epochs", type=int, default=1, help="epochs per training step")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop before a step that would end later "
                    f"(exit status {scaling.INCOMPLETE}; rerun to continue)")
    ap.add_argument("--no-ship", action="store_true", help="train and score only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()  # as in scaling.py: the YAMLs it writes name absolute paths
    out.mkdir(parents=True, exist_ok=True)
    budget = scaling.Budget(args.max_minutes)
    name = f"seed-{args.size}"
    epochs = dict(zip(("patch", "stitch", "end2end"), args.epochs, strict=True)) if args.epochs \
        else scaling.stage_epochs(args.size, args.n_train)
    try:
        files = scaling.training_files(out, LAYOUT, args.n_train, args.phonons, budget, args.part)
        heldout = scaling.heldout_files(out, LAYOUT, args.n_heldout, args.heldout_phonons, budget)
        model = scaling.train_run(out, args.size, LAYOUT, files, args.n_train, epochs, args.device, args.amp,
                                  args.chunk_epochs, budget)  # the run of scaling.py's point (size, n, epochs)
        runs = model.parent
        budget.check(0.0, "score")
    except scaling.OutOfTime as exc:
        print(f"stopped at --max-minutes ({exc}); rerun the same command to continue", flush=True)
        return scaling.INCOMPLETE
    score = scaling.score_model(model, heldout, files, args.n_train, args.device)
    seconds = json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    root = scaling.data_root(out, LAYOUT, args.phonons, args.part).name
    sim_seconds = sum(v for k, v in seconds.items()
                      if k.startswith(f"simulate_{root}_part") and int(k[-3:]) < len(files))
    info = {"size": args.size, "n_train": args.n_train, "phonons": args.phonons,
            "heldout_phonons": args.heldout_phonons, "epochs": epochs, "train_seconds": scaling.train_seconds(runs),
            "device": args.device, "amp": args.amp,
            "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores"
            if args.device == "cpu" else torch.cuda.get_device_name(0),
            "simulate_seconds": sim_seconds,
            "simulate_config": sim_config(LAYOUT, args.part, scaling.TRAIN_SEED, args.phonons), "part": args.part,
            "command": "python benchmarks/learned/train_shipped.py " + " ".join(
                a if not a.startswith("/") else Path(a).name for a in (argv if argv is not None else sys.argv[1:]))}
    with __import__("h5py").File(files[0]) as f:
        info["angular_sampling"] = float(np.asarray(f.attrs["angular_sampling"])[0])
    summary = {k: v for k, v in score.items() if k not in ("rows", "examples")}
    write_json(out / f"{name}_score.json", {**info, "score": {**summary, "rows": score["rows"]}})
    print(f"{name}: E_φ {score['phase_error']:.3f} ± {score['phase_error_sem']:.3f} on {score['n_heldout']} abTEM "
          f"samples (training-mean image {score['baseline_phase_error']:.3f}), PSNR {score['psnr']:.2f} dB")
    if args.no_ship:
        return 0
    from phasestem.learn.pretrained import register_model

    card = f"docs/models/{name}.md"
    weights = ship(name, model, out, card)
    lay = LAYOUTS[LAYOUT]
    geometry = {"scan_shape": [lay["scan"]] * 2, "scan_step": [2.0, 2.0], "pattern_shape": [lay["pattern"]] * 2,
                "angular_sampling": info["angular_sampling"], "phase_shape": [lay["phase_gpts"]] * 2,
                "energy": OPTICS["energy"], "semiangle": OPTICS["semiangle"], "aberrations": OPTICS["aberrations"]}
    scores = {k: summary[k] for k in ("phase_error", "phase_error_sem", "psnr", "ssim", "residual",
                                      "baseline_phase_error", "n_heldout") if k in summary}
    entry = register_model(name, weights, card, {
        "summary": f"End2End {args.size} ({score['params']:,} parameters) at the seed geometry, trained on "
                   f"{args.n_train} phasestem-simulated crystals ({args.device})",
        "geometry": geometry, "heldout_abtem": scores})
    docs = ROOT / "docs" / "models"
    docs.mkdir(parents=True, exist_ok=True)
    info["figure"] = str(examples_png(score, docs / f"{name}_heldout.png", lay["extent"] / lay["phase_gpts"]))
    info["score"] = score
    card_path = docs / f"{name}.md"
    notes = ""  # a "## Notes" section written by hand into an earlier card is kept
    if card_path.exists() and "\n## Notes\n" in card_path.read_text():
        notes = "\n## Notes" + card_path.read_text().split("\n## Notes", 1)[1].split("\n## Reproduce", 1)[0]
    text = card_text(name, entry, info)
    if notes:
        text = text.replace("\n## Reproduce", notes.rstrip() + "\n\n## Reproduce", 1)
    card_path.write_text(text)
    print(f"shipped {weights} ({entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}…), card {docs / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
