"""Train the restorer for one geometry, resumably in chunks (issue 48): the skeleton of ``restore-seed``.

    python benchmarks/learned/train_restorer.py --out restore_seed_output --n-train 64 --max-minutes 50  # rerun
    python benchmarks/learned/train_restorer.py --out restore_seed_output --steps score --score-pairs held.h5
    python benchmarks/learned/train_restorer.py --out restore_seed_output --steps ship --name restore-seed

Every step skips what exists, so an invocation stopped by ``--max-minutes`` (exit status 3 while steps remain) or
killed is continued by running the same command again:

1. ``simulate``: ``--n-train`` samples per specimen kind (``--kinds``: phasestem's random crystals and amorphous
   specimens) in parts of ``--part`` samples, each part one ``phasestem simulate`` of ``--sim-config`` (default
   ``configs/simulate_seed.yaml``: the user's seed-000 geometry, 300 keV, 30 mrad, Cs 0.1 mm, C10 0, 50 × 50 at
   2 Å, 64² patterns, 256² phase over 100 Å) with ``--phonons`` frozen phonons;
2. ``pairs``: ``phasestem make-pairs PART --inputs-from ad`` of every part (AD with ``reconstruct``'s defaults,
   probe refined, on AD's grid; epochs 2, 4, 8 and the end; ``--electrons`` noise-free and counted copies);
3. ``train``: ``phasestem train restorer`` on every pairs file (``--arch`` unet or phaseformer, ``--epochs``),
   ``--chunk`` epochs per step from the run's last checkpoint;
4. ``score`` (``--score-pairs FILE …``: pairs files of held-out specimens, e.g. ``make-pairs --inputs-from ad`` of
   the abTEM files of ``heldout.py``; they must never be training data): E_φ over the scanned field of AD and of
   the restored phase at every stored AD epoch, and AD's wall seconds to it, written to ``OUT/score.json``;
5. ``ship`` (``--name``): the best weights into the package's model folder with a registry entry and the model
   card ``docs/models/NAME.md`` from ``restorer_card.md`` (fields not measured yet read "to be measured").

The held-out kinds of ``heldout.py`` (wurtzite, MoS2, the benchmark's ASE crystals) never enter training: the
training specimens are phasestem's own generator's. Seconds of every step go to ``OUT/seconds.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from layouts import log_seconds, write_json  # noqa: E402
from scaling import INCOMPLETE, Budget, OutOfTime, run_cli, train_stage  # noqa: E402

STEPS = ("simulate", "pairs", "train", "score", "ship")
TRAIN_SEED = 7000
CARD_TEMPLATE = HERE / "restorer_card.md"


def parse_electrons(text: str) -> float | None:
    return None if text.lower() in ("none", "clean") else float(text)


# ------------------------------------------------------------------------------------------ 1. simulate
def sim_config(base: dict, kind: str, n: int, seed: int, phonons: int) -> dict:
    """``base`` (a ``phasestem simulate`` config) for ``n`` noise-free samples of specimen ``kind`` in one file."""
    cfg = json.loads(json.dumps(base))
    cfg["specimen"] = {**cfg.get("specimen", {}), "kind": kind, "phonons": int(phonons)}
    cfg["detector"] = {**cfg.get("detector", {}), "dose": None}
    cfg["output"] = {**cfg.get("output", {}), "n_files": 1, "samples_per_file": int(n)}
    cfg["compute"] = {**cfg.get("compute", {}), "seed": int(seed)}
    return cfg


def simulate(out: Path, base: dict, kinds: list[str], n: int, part: int, phonons: int, budget: Budget) -> list[Path]:
    """The simulation files of every part (missing ones simulated), in a fixed order."""
    files = []
    for kind in kinds:
        for k in range(math.ceil(n / part)):
            folder = out / "data" / f"{kind}_part_{k:03d}"
            target = folder / "simulation_data1.h5"
            if not target.exists():
                cfg_path = out / "data" / f"{kind}_part_{k:03d}.yaml"
                cfg_path.parent.mkdir(parents=True, exist_ok=True)
                seed = TRAIN_SEED + 1000 * kinds.index(kind) + k
                cfg_path.write_text(yaml.safe_dump(sim_config(base, kind, min(part, n - k * part), seed, phonons),
                                                   sort_keys=False))
                budget.check(0.0, f"simulate {folder.name}")
                t = time.perf_counter()
                if not run_cli(["simulate", str(cfg_path), "--out", str(folder)], timeout=budget.left()):
                    raise OutOfTime(f"simulation of {folder} stopped at the time limit")
                log_seconds(out, f"simulate_{folder.name}", time.perf_counter() - t)
            files.append(target)
    return files


# ------------------------------------------------------------------------------------------ 2. pairs
def pairs_for(out: Path, files: list[Path], electrons: list[float | None], ad_epochs: int | None,
              budget: Budget) -> list[Path]:
    """One pairs file of AD epochs per simulation file (missing ones made)."""
    made = []
    for sim in files:
        target = out / "pairs" / f"{sim.parent.name}.h5"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            budget.check(0.0, f"pairs of {sim.parent.name}")
            args = ["make-pairs", str(sim), "--inputs-from", "ad", "--out-file", str(target), "--ad-electrons",
                    *["none" if e is None else f"{e:g}" for e in electrons]]
            if ad_epochs:
                args += ["--ad-epochs", str(ad_epochs)]
            t = time.perf_counter()
            if not run_cli(args, timeout=budget.left()):
                raise OutOfTime(f"pairs of {sim} stopped at the time limit")
            log_seconds(out, f"pairs_{sim.parent.name}", time.perf_counter() - t)
        made.append(target)
    return made


# ------------------------------------------------------------------------------------------ 3. train
def restorer_config(out: Path, pairs: list[Path], arch: str, epochs: int, device: str, lr: float,
                    crop: int | None, batch: int) -> dict:
    """The ``phasestem train restorer`` config of the run ``OUT/runs/restorer_<arch>``."""
    model: dict[str, Any] = {"arch": arch}
    if arch == "unet":
        model["width"] = 16
    return {"network": "restorer", "out_dir": str(out / "runs" / f"restorer_{arch}"),
            "data": {"train": [str(p) for p in pairs], "val_fraction": 0.1, "crop": crop, "batch_size": batch},
            "model": model,
            "trainer": {"epochs": int(epochs), "lr": float(lr), "device": device, "progress": False,
                        "tensorboard": False, "monitor": "val/e_phi", "monitor_mode": "min"}}


# ------------------------------------------------------------------------------------------ 4. score
def score_pairs(model: str | Path, pairs: list[Path], device: str = "cpu") -> dict:
    """E_φ over the scanned field (offsets removed) of AD's phase and of the restored phase at every stored AD
    epoch of the pairs files ``pairs`` (held-out specimens), per row and as means."""
    import h5py
    import torch

    from phasestem.learn.ad_pairs import stored_epochs
    from phasestem.learn.restore import load_restorer
    from phasestem.learn.training.restorer import field_error

    net, meta = load_restorer(model, device=device)
    channels = ("phase", *net.config.extra_channels)
    rows: list[dict] = []
    for path in pairs:
        epochs = stored_epochs(path)
        with h5py.File(path, "r") as f:
            for i in range(f["gt"].shape[0]):
                gt = torch.as_tensor(f["gt"][i])[None, None]
                field = torch.as_tensor(f["field"][i])[None, None]
                row: dict[str, Any] = {"file": Path(path).name, "row": i,
                                       "electrons": float(f["electrons"][i]) if "electrons" in f else None}
                for e in epochs:
                    x = torch.as_tensor(np.stack([f[f"epoch_{e}/{c}"][i] for c in channels]))[None]
                    with torch.no_grad():
                        restored = net(x.to(next(net.parameters()).device)).cpu()
                    row[f"ad_{e}"] = float(field_error(x[:, :1], gt, field)[0])
                    row[f"restored_{e}"] = float(field_error(restored, gt, field)[0])
                    if f"epoch_{e}/seconds" in f:  # AD's wall seconds to epoch e (the restorer's are apart)
                        row[f"seconds_{e}"] = float(f[f"epoch_{e}/seconds"][i])
                rows.append(row)
    keys = [k for k in rows[0] if k.startswith(("ad_", "restored_", "seconds_"))] if rows else []
    return {"model": str(model), "pairs": [str(p) for p in pairs], "rows": rows,
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


# ------------------------------------------------------------------------------------------ 5. ship
def card_text(name: str, info: dict) -> str:
    """The model card from :data:`CARD_TEMPLATE`; a field not measured yet reads 'to be measured'."""
    class Missing(dict):
        def __missing__(self, key: str) -> str:
            return "to be measured"

    shown = {k: f"`{json.dumps(v)}`" if isinstance(v, dict | list) else v for k, v in info.items()}
    return CARD_TEMPLATE.read_text(encoding="utf-8").format_map(Missing(name=name, **shown))


def ship(out: Path, name: str, run: Path, info: dict, card_dir: Path = ROOT / "docs" / "models") -> dict:
    """The best weights of ``run`` as ``NAME.safetensors`` in the model folder (``PHASESTEM_MODEL_DIR`` or the
    package's), registered with its card, written to ``card_dir/NAME.md``."""
    from train_shipped import ship as ship_weights

    from phasestem.learn.pretrained import register_model

    card = f"docs/models/{name}.md"
    weights = ship_weights(name, run, out, card)
    entry = register_model(name, weights, card, {"summary": "restorer: AD's phase → restored phase (issue 48)",
                                                 "geometry": info.get("optics"), "scores": info.get("score")})
    card_dir.mkdir(parents=True, exist_ok=True)
    (card_dir / f"{name}.md").write_text(card_text(name, {**info, **entry}), encoding="utf-8")
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", nargs="+", choices=STEPS, default=["simulate", "pairs", "train"])
    p.add_argument("--sim-config", type=Path, default=ROOT / "configs" / "simulate_seed.yaml")
    p.add_argument("--kinds", nargs="+", default=["crystal", "amorphous"])
    p.add_argument("--n-train", type=int, default=64, help="samples per specimen kind")
    p.add_argument("--part", type=int, default=16, help="samples per simulation file (one resumable step)")
    p.add_argument("--phonons", type=int, default=4)
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e3, 1e4],
                   help="copies: 'none' noise-free, else e⁻ per pattern")
    p.add_argument("--ad-epochs", type=int, default=None, help="the AD recipe's epochs (default reconstruct's)")
    p.add_argument("--arch", choices=["unet", "phaseformer"], default="unet")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--chunk", type=int, default=5, help="training epochs per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-pairs", nargs="+", type=Path, default=[])
    p.add_argument("--name", default="restore-seed")
    p.add_argument("--card-dir", type=Path, default=ROOT / "docs" / "models", help="where the model card goes")
    p.add_argument("--max-minutes", type=float, default=None)
    args = p.parse_args(argv)
    out, budget = args.out, Budget(args.max_minutes)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.sim_config.read_text())
    run = out / "runs" / f"restorer_{args.arch}"
    try:
        files = pairs = []
        if {"simulate", "pairs", "train"} & set(args.steps):
            files = simulate(out, base, args.kinds, args.n_train, args.part, args.phonons, budget)
        if {"pairs", "train"} & set(args.steps):
            pairs = pairs_for(out, files, args.electrons, args.ad_epochs, budget)
        if "train" in args.steps:
            cfg = restorer_config(out, pairs, args.arch, args.epochs, args.device, args.lr, args.crop, args.batch)
            while not train_stage(cfg, out / "configs" / f"restorer_{args.arch}.yaml", args.chunk, budget):
                budget.check(0.0, "the next training chunk")
        if "score" in args.steps:
            write_json(out / "score.json", score_pairs(run, args.score_pairs, args.device))
        if "ship" in args.steps:
            from phasestem.learn.restore_data import pairs_optics

            info = {"optics": pairs_optics(sorted((out / "pairs").glob("*.h5"))[0]), "arch": args.arch,
                    "seconds": json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists()
                    else {}}
            if (out / "score.json").exists():
                info["score"] = json.loads((out / "score.json").read_text())["mean"]
            print(json.dumps(ship(out, args.name, run, info, args.card_dir), indent=1))
    except OutOfTime as exc:
        print(f"stopped: {exc}; run the same command again to continue", file=sys.stderr)
        return INCOMPLETE
    return 0


if __name__ == "__main__":
    sys.exit(main())
