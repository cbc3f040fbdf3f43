"""Train the restorer for one geometry, resumably in chunks (issue 48): the skeleton of ``restore-seed``.

    python benchmarks/learned/train_restorer.py --out restore_seed_output --n-train 64 --max-minutes 50  # rerun
    python benchmarks/learned/train_restorer.py --out restore_seed_output --steps score --score-pairs held.h5
    python benchmarks/learned/train_restorer.py --out restore_seed_output --steps ship --name restore-seed

Every step skips what exists, so an invocation stopped by ``--max-minutes`` (exit status 3 while steps remain) or
killed is continued by running the same command again. ``--device cuda`` runs the simulation, AD and training on a
GPU, ``--jobs N`` runs N simulations / pair makers at once (a GPU is launch-bound on one seed-sized scan):

1. ``simulate``: ``--n-train`` samples per specimen kind (``--kinds``: phasestem's random crystals and amorphous
   specimens) in parts of ``--part`` samples, each part one ``phasestem simulate`` of ``--sim-config`` (default
   ``configs/simulate_seed.yaml``: the user's seed-000 geometry, 300 keV, 30 mrad, Cs 0.1 mm, C10 0, 50 × 50 at
   2 Å, 64² patterns, 256² phase over 100 Å) with ``--phonons`` frozen phonons;
2. ``pairs``: ``phasestem make-pairs PART --inputs-from ad`` of every part (AD with ``reconstruct``'s defaults,
   probe refined, on AD's grid; epochs 2, 4, 8 and the end; ``--electrons`` noise-free and counted copies);
3. ``train``: ``phasestem train restorer`` on every pairs file (``--arch`` unet or phaseformer, ``--width``,
   ``--epochs``), ``--chunk`` epochs per step from the run's last checkpoint; ``--steps train`` alone trains on the
   pairs files made so far (a GPU lease that stopped the pairs step at its deadline);
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
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


_SECONDS_LOCK = threading.Lock()


def parse_electrons(text: str) -> float | None:
    return None if text.lower() in ("none", "clean") else float(text)


def run_steps(out: Path, chains: list[list[tuple[str, list[str]]]], jobs: int, budget: Budget) -> None:
    """Run chains of ``phasestem`` commands (each a list of (seconds key, argv) run in order), ``jobs`` chains at a
    time, every command stopped at the budget's end and none started after it. Wall seconds go to
    ``seconds.json``. After all chains ended: :class:`OutOfTime` when one was cut short, ``SystemExit`` naming the
    commands that failed (a failed chain does not stop the others)."""
    failed: list[str] = []

    def one(chain: list[tuple[str, list[str]]]) -> bool:
        for key, args in chain:
            if budget.left() <= 0:
                return False
            t = time.perf_counter()
            try:  # concurrent chains: always a subprocess
                ok = run_cli(args, timeout=budget.left() if jobs == 1 else min(budget.left(), 1e9))
            except subprocess.CalledProcessError:
                failed.append(key)
                return True
            if not ok:
                return False
            with _SECONDS_LOCK:
                log_seconds(out, key, time.perf_counter() - t)
        return True

    chains = [c for c in chains if c]
    if not chains:
        return
    budget.check(0.0, chains[0][0][0])
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        finished = list(pool.map(one, chains))
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their logs above)")
    if not all(finished):
        raise OutOfTime(f"{finished.count(False)} of {len(finished)} parts stopped at the time limit")


# ------------------------------------------------------------------------------------------ 1. simulate
def sim_config(base: dict, kind: str, n: int, seed: int, phonons: int) -> dict:
    """``base`` (a ``phasestem simulate`` config) for ``n`` noise-free samples of specimen ``kind`` in one file."""
    cfg = json.loads(json.dumps(base))
    cfg["specimen"] = {**cfg.get("specimen", {}), "kind": kind, "phonons": int(phonons)}
    cfg["detector"] = {**cfg.get("detector", {}), "dose": None}
    cfg["output"] = {**cfg.get("output", {}), "n_files": 1, "samples_per_file": int(n)}
    cfg["compute"] = {**cfg.get("compute", {}), "seed": int(seed)}
    return cfg


def simulation_steps(out: Path, base: dict, kinds: list[str], n: int, part: int, phonons: int,
                     device: str = "cpu") -> list[tuple[Path, list[tuple[str, list[str]]]]]:
    """Every part's simulation file, in a fixed order, with the command that makes it (none when it exists): the
    part's config is written on ``device``."""
    parts = []
    for kind in kinds:
        for k in range(math.ceil(n / part)):
            folder = out / "data" / f"{kind}_part_{k:03d}"
            target = folder / "simulation_data1.h5"
            steps = []
            if not target.exists():
                cfg_path = out / "data" / f"{kind}_part_{k:03d}.yaml"
                cfg_path.parent.mkdir(parents=True, exist_ok=True)
                seed = TRAIN_SEED + 1000 * kinds.index(kind) + k
                cfg = sim_config(base, kind, min(part, n - k * part), seed, phonons)
                cfg["compute"]["device"] = device
                cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                steps.append((f"simulate_{folder.name}", ["simulate", str(cfg_path), "--out", str(folder)]))
            parts.append((target, steps))
    return parts


# ------------------------------------------------------------------------------------------ 2. pairs
def pairs_steps(out: Path, sim: Path, electrons: list[float | None], ad_epochs: int | None,
                device: str = "cpu") -> tuple[Path, list[tuple[str, list[str]]]]:
    """The pairs file of AD epochs of the simulation file ``sim`` with the command that makes it (none when it
    exists)."""
    target = out / "pairs" / f"{sim.parent.name}.h5"
    if target.exists():
        return target, []
    target.parent.mkdir(parents=True, exist_ok=True)
    args = ["make-pairs", str(sim), "--inputs-from", "ad", "--out-file", str(target), "--device", device,
            "--ad-electrons", *["none" if e is None else f"{e:g}" for e in electrons]]
    if ad_epochs:
        args += ["--ad-epochs", str(ad_epochs)]
    return target, [(f"pairs_{sim.parent.name}", args)]


# ------------------------------------------------------------------------------------------ 3. train
def restorer_config(out: Path, pairs: list[Path], arch: str, epochs: int, device: str, lr: float,
                    crop: int | None, batch: int, width: int = 16, dim: int = 8) -> dict:
    """The ``phasestem train restorer`` config of the run ``OUT/runs/restorer_<arch>``. From 8 pairs files on,
    every 8th is the test set (whole specimens held out: a sample's other AD epochs and noise copies would leak
    into an item split); else 10 % of the items."""
    model: dict[str, Any] = {"arch": arch}
    if arch == "unet":
        model["width"] = int(width)
    else:
        model["phaseformer"] = {"dim": int(dim), "blocks": [1, 1, 1, 1], "heads": [1, 1, 2, 2], "refinement_blocks": 1}
    pairs = sorted(pairs)
    test = [p for i, p in enumerate(pairs) if i % 8 == 7] if len(pairs) >= 8 else []
    data = {"train": [str(p) for p in pairs if p not in test], "test": [str(p) for p in test], "val_fraction": 0.1,
            "crop": crop, "batch_size": batch, "num_workers": 4 if device.startswith("cuda") else 0}
    return {"network": "restorer", "out_dir": str(out / "runs" / f"restorer_{arch}"), "data": data,
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
    p.add_argument("--width", type=int, default=16, help="the U-Net's first width")
    p.add_argument("--dim", type=int, default=8, help="Phaseformer's first width")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--chunk", type=int, default=5, help="training epochs per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu", help="torch device of every step (simulate, AD, training, score)")
    p.add_argument("--jobs", type=int, default=1, help="simulations / pair makers at once")
    p.add_argument("--score-pairs", nargs="+", type=Path, default=[])
    p.add_argument("--name", default="restore-seed")
    p.add_argument("--card-dir", type=Path, default=ROOT / "docs" / "models", help="where the model card goes")
    p.add_argument("--max-minutes", type=float, default=None)
    args = p.parse_args(argv)
    out, budget = args.out.resolve(), Budget(args.max_minutes)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.sim_config.read_text())
    run = out / "runs" / f"restorer_{args.arch}"
    try:
        pairs: list[Path] = []
        if {"simulate", "pairs"} & set(args.steps):  # each part simulated, then its pairs made: one chain
            chains = []
            for sim, chain in simulation_steps(out, base, args.kinds, args.n_train, args.part, args.phonons,
                                               args.device):
                if "pairs" in args.steps:
                    target, more = pairs_steps(out, sim, args.electrons, args.ad_epochs, args.device)
                    chain, pairs = chain + more, pairs + [target]
                chains.append(chain)
            run_steps(out, chains, args.jobs, budget)
        if "train" in args.steps:
            pairs = pairs or sorted((out / "pairs").glob("*.h5"))  # --steps train alone: the pairs made so far
            if not pairs:
                raise SystemExit(f"{out / 'pairs'}: no pairs files to train on (run the pairs step first)")
            cfg = restorer_config(out, pairs, args.arch, args.epochs, args.device, args.lr, args.crop, args.batch,
                                  args.width, args.dim)
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
