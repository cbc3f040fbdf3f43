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
   pairs files made so far (a GPU lease that stopped the pairs step at its deadline); ``--init RUN`` fine-tunes a
   trained restorer (e.g. one from a GPU) on these pairs;
4. ``heldout`` (``--n-heldout``): abTEM held-out specimens at ``--sim-config``'s geometry (on its cell or on
   ``--heldout-extent``'s), never training data: ASE-built specimens of ``heldout.py``'s kinds (its random
   crystals, wurtzite, amorphous, 2H-MoS2), even indices
   the development half (``OUT/heldout/dev.h5``), odd the validation half (``val.h5``), and their pairs of AD epochs
   (``pairs_dev.h5``, ``pairs_val.h5``; noise-free and ``--heldout-electrons``);
5. ``score`` (``--score-pairs FILE …``, default the held-out pairs when made): E_φ over the scanned field of AD and
   of the restored phase at every stored AD epoch, and AD's wall seconds to it, per file, written to
   ``OUT/score.json`` (``--score-name``);
6. ``ship`` (``--name``): the best weights into the package's model folder with a registry entry and the model
   card ``docs/models/NAME.md`` from ``restorer_card.md`` (fields not measured yet read "to be measured").

The held-out kinds of ``heldout.py`` (wurtzite, MoS2, the benchmark's ASE crystals) never enter training: the
training specimens are phasestem's own generator's. Wall seconds of every step go to ``OUT/seconds.json``, and the
CPU seconds of every invocation (its commands included) are added to its ``cpu_seconds`` (``training``: simulate,
pairs and train; ``other``).
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

STEPS = ("simulate", "pairs", "train", "heldout", "score", "ship")
TRAIN_SEED = 7000
#: held-out specimens (abTEM, ASE-built; the kinds of ``heldout.py``, one of each per half): seeds
HELDOUT_SEED, ABTEM_SEED = 7100, 7101
CARD_TEMPLATE = HERE / "restorer_card.md"


_SECONDS_LOCK = threading.Lock()


def parse_electrons(text: str) -> float | None:
    return None if text.lower() in ("none", "clean") else float(text)


def log_cpu_seconds(out: Path, steps: list[str]) -> float:
    """Add this process's CPU seconds and those of the commands it ran (``resource``: user + system, the waited
    children included) to ``cpu_seconds`` in ``out/seconds.json``, under ``training`` (simulate, pairs, train: what
    a model's training costs) or ``other``; returns the invocation's."""
    import resource

    cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    path = out / "seconds.json"
    with _SECONDS_LOCK:
        d = json.loads(path.read_text()) if path.exists() else {}
        key = "training" if set(steps) <= {"simulate", "pairs", "train"} else "other"
        total = d.setdefault("cpu_seconds", {})
        total[key] = round(total.get(key, 0.0) + cpu, 1)
        write_json(path, d)
    return cpu


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
    """Every part's simulation file, the kinds taking turns (a run cut short still holds every kind), with the
    command that makes it (none when it exists): the part's config is written on ``device``."""
    parts = []
    for k in range(math.ceil(n / part)):
        for kind in kinds:
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
def pairs_steps(target: Path, sim: Path, electrons: list[float | None], ad_epochs: int | None,
                device: str = "cpu", key: str | None = None) -> list[tuple[str, list[str]]]:
    """The command that makes the pairs file ``target`` of AD epochs of the simulation file ``sim`` (none when it
    exists), under the seconds key ``key`` (default ``pairs_<target's stem>``)."""
    if target.exists():
        return []
    target.parent.mkdir(parents=True, exist_ok=True)
    args = ["make-pairs", str(sim), "--inputs-from", "ad", "--out-file", str(target), "--device", device,
            "--ad-electrons", *["none" if e is None else f"{e:g}" for e in electrons]]
    if ad_epochs:
        args += ["--ad-epochs", str(ad_epochs)]
    return [(key or f"pairs_{target.stem}", args)]


# ------------------------------------------------------------------------------------------ 3. train
def restorer_config(out: Path, pairs: list[Path], arch: str, epochs: int, device: str, lr: float,
                    crop: int | None, batch: int, width: int = 16, dim: int = 8, init: Path | None = None,
                    invented_mass: float = 0.0, name: str | None = None) -> dict:
    """The ``phasestem train restorer`` config of the run ``OUT/runs/NAME`` (default ``restorer_<arch>``), the
    invented mass weighted by ``invented_mass`` in its loss. From 8 pairs files on,
    every 8th is the test set (whole specimens held out: a sample's other AD epochs and noise copies would leak
    into an item split); else 10 % of the items."""
    model: dict[str, Any] = {"arch": arch, "init": None if init is None else str(Path(init).resolve())}
    if arch == "unet":
        model["width"] = int(width)
    else:
        model["phaseformer"] = {"dim": int(dim), "blocks": [1, 1, 1, 1], "heads": [1, 1, 2, 2], "refinement_blocks": 1}
    pairs = sorted(pairs)
    test = [p for i, p in enumerate(pairs) if i % 8 == 7] if len(pairs) >= 8 else []
    data = {"train": [str(p) for p in pairs if p not in test], "test": [str(p) for p in test], "val_fraction": 0.1,
            "crop": crop, "batch_size": batch, "num_workers": 4 if device.startswith("cuda") else 0}
    return {"network": "restorer", "out_dir": str(out / "runs" / (name or f"restorer_{arch}")), "data": data,
            "model": model, "loss": {"invented_mass": float(invented_mass)},
            "trainer": {"epochs": int(epochs), "lr": float(lr), "device": device, "progress": False,
                        "tensorboard": False, "monitor": "val/e_phi", "monitor_mode": "min"}}


# ------------------------------------------------------------------------------------------ 4. held-out
def heldout_cell(base: dict, extent: float | None) -> dict:
    """``base`` on a square cell of ``extent`` Å (None: its own) with its pixels, scan step and patterns kept: the
    grids and the scan scaled with the cell (abTEM's CPU time goes with the cell's area). The detector's angular
    sampling (λ/cell × an odd binning) must stay the base's, or AD's pixel and the restorer's geometry change:
    a cell that moves it is refused (at the seed geometry 20, 60 and 100 Å keep it, 50 Å does not)."""
    from abtem_samples import detector_geometry

    from phasestem.simulate.config import SimulationConfig

    cfg = json.loads(json.dumps(base))
    if extent is None:
        return cfg
    g = cfg["grid"]
    ratio = g["sim_gpts"][0] // g["phase_gpts"][0]
    phase_px = g["extent"][0] / g["phase_gpts"][0]
    g["phase_gpts"] = [int(round(extent / phase_px))] * 2
    g["sim_gpts"] = [ratio * g["phase_gpts"][0]] * 2
    g["extent"] = [float(extent)] * 2
    cfg["scan"]["shape"] = [int(round(extent / s)) for s in cfg["scan"]["step"]]
    want, got = (detector_geometry(SimulationConfig.model_validate(c)).angular_sampling for c in (base, cfg))
    if not np.allclose(want, got, rtol=1e-6):
        raise SystemExit(f"--heldout-extent {extent:g}: the detector's angular sampling would be {got[0]:.4f} mrad, "
                         f"not the config's {want[0]:.4f} (choose a cell that keeps it, e.g. 20 or 60 Å at the seed's)")
    return cfg


def heldout_config(base: dict, extent: float | None, phonons: int) -> dict:
    """The config of the abTEM held-out specimens: ``base`` on the cell ``extent`` (:func:`heldout_cell`) with
    ``phonons`` frozen phonons and noise-free patterns (the counted copies are drawn with the pairs)."""
    cfg = heldout_cell(base, extent)
    cfg["specimen"] = {**cfg.get("specimen", {}), "phonons": int(phonons)}
    cfg["detector"] = {**cfg.get("detector", {}), "dose": None}
    return cfg


def heldout_pairs(out: Path, cfg: dict, n: int, electrons: list[float | None], ad_epochs: int | None,
                  device: str, budget: Budget) -> list[Path]:
    """The abTEM held-out halves and their pairs files (module docstring, step 4) of the config ``cfg``
    (:func:`heldout_config`); what exists is kept."""
    from abtem_samples import write_abtem_file, write_structures
    from heldout import KIND_CYCLE

    from phasestem.simulate.config import SimulationConfig

    folder = out / "heldout"
    kinds = [KIND_CYCLE[(k // 2) % len(KIND_CYCLE)] for k in range(n)]
    structures = sorted((folder / "structures").glob("*.xyz"))
    if len(structures) != n:
        structures = write_structures(folder / "structures", n, SimulationConfig.model_validate(cfg), HELDOUT_SEED,
                                      kinds)
    pairs = []
    for half, use in (("dev", structures[0::2]), ("val", structures[1::2])):
        sim = folder / f"{half}.h5"
        if not sim.exists():
            budget.check(0.0, f"abTEM {half}")
            spec = {**cfg["specimen"], "kind": "structures", "files": [str(p) for p in use]}
            t = time.perf_counter()
            write_abtem_file(SimulationConfig.model_validate({**cfg, "specimen": spec}), sim, len(use),
                             seed=ABTEM_SEED, structures=use)
            log_seconds(out, f"abtem_{half}", time.perf_counter() - t)
        target = folder / f"pairs_{half}.h5"
        run_steps(out, [pairs_steps(target, sim, electrons, ad_epochs, device, f"heldout_pairs_{half}")], 1, budget)
        pairs.append(target)
    (folder / "kinds.json").write_text(json.dumps({"dev": kinds[0::2], "val": kinds[1::2]}))
    return pairs


# ------------------------------------------------------------------------------------------ 5. score
def aligned_error(phase: np.ndarray, truth: np.ndarray, field: np.ndarray) -> float:
    """E_φ over the field (offset removed) after moving ``phase`` by its best sub-pixel shift onto ``truth`` (found
    over the field's bounding box): AD's frame may drift by a fraction of a pixel, which E_φ alone would count."""
    import torch

    from phasestem.learn.training.restorer import field_error
    from phasestem.metrics import apply_shift, shift_between

    ys, xs = np.nonzero(field > 0)
    box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    moved = apply_shift(phase, shift_between(phase[box], truth[box]))
    t = [torch.as_tensor(np.asarray(a, np.float32))[None, None] for a in (moved, truth, field)]
    return float(field_error(*t)[0])


def score_pairs(model: str | Path, pairs: list[Path], device: str = "cpu") -> dict:
    """E_φ over the scanned field (offsets removed) of AD's phase and of the restored phase at every stored AD
    epoch of the pairs files ``pairs`` (held-out specimens), as is and aligned (:func:`aligned_error`;
    ``*_aligned``), AD's wall seconds to it, and the guard ``new_peaks_E`` (spectral peaks of the restored phase
    that the truth lacks: an amorphous specimen must get no more than AD's own phase has, ``ad_new_peaks_E``); per
    row, as means over all rows (``mean``) and per file and dose (``groups``: ``pairs_val|1e+04``, ``|none``
    noise-free). A row's specimen kind comes from ``kinds.json`` beside a held-out pairs file."""
    import h5py
    import torch

    from phasestem.learn.ad_pairs import stored_epochs
    from phasestem.learn.apply.restorer import load_restorer
    from phasestem.learn.guards import new_peaks
    from phasestem.learn.training.restorer import field_error

    net, meta = load_restorer(model, device=device)
    channels = ("phase", *net.config.extra_channels)
    rows: list[dict] = []
    for path in pairs:
        path = Path(path)
        epochs = stored_epochs(path)
        kinds_file = path.parent / "kinds.json"
        kinds = json.loads(kinds_file.read_text()).get(path.stem.removeprefix("pairs_")) if kinds_file.exists() \
            else None
        with h5py.File(path, "r") as f:
            electrons = np.asarray(f["electrons"]) if "electrons" in f else np.full(f["gt"].shape[0], np.nan)
            n_doses = len(np.unique(np.nan_to_num(electrons, nan=-1.0)))
            for i in range(f["gt"].shape[0]):
                gt = torch.as_tensor(f["gt"][i])[None, None]
                field = torch.as_tensor(f["field"][i])[None, None]
                e_per = None if np.isnan(electrons[i]) else float(electrons[i])
                row: dict[str, Any] = {"file": path.stem, "row": i, "electrons": e_per,
                                       "kind": kinds[i // n_doses] if kinds else None}
                for e in epochs:
                    x = torch.as_tensor(np.stack([f[f"epoch_{e}/{c}"][i] for c in channels]))[None]
                    t = time.perf_counter()
                    with torch.no_grad():
                        restored = net(x.to(next(net.parameters()).device)).cpu()
                    row["restore_seconds"] = time.perf_counter() - t  # the net's wall seconds on one image
                    row[f"ad_{e}"] = float(field_error(x[:, :1], gt, field)[0])
                    row[f"restored_{e}"] = float(field_error(restored, gt, field)[0])
                    row[f"ad_aligned_{e}"] = aligned_error(x[0, 0].numpy(), gt[0, 0].numpy(), field[0, 0].numpy())
                    row[f"restored_aligned_{e}"] = aligned_error(restored[0, 0].numpy(), gt[0, 0].numpy(),
                                                                 field[0, 0].numpy())
                    g, m = gt[0, 0].numpy(), field[0, 0].numpy()
                    row[f"new_peaks_{e}"] = new_peaks(restored[0, 0].numpy(), g, m)
                    row[f"ad_new_peaks_{e}"] = new_peaks(x[0, 0].numpy(), g, m)  # the same count of AD's phase
                    if f"epoch_{e}/seconds" in f:  # AD's wall seconds to epoch e (the restorer's are apart)
                        row[f"seconds_{e}"] = float(f[f"epoch_{e}/seconds"][i])
                rows.append(row)
    def means(sel: list[dict]) -> dict:  # over the keys every row of ``sel`` has (files may store other epochs)
        keys = [k for k in sel[0] if k.startswith(("ad_", "restored_", "seconds_", "new_peaks_", "restore_"))
                and all(k in r for r in sel)] if sel else []
        return {k: float(np.mean([r[k] for r in sel])) for k in keys}

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['file']}|{'none' if r['electrons'] is None else format(r['electrons'], '.0e')}",
                          []).append(r)
    return {"model": str(model), "pairs": [Path(p).name for p in pairs], "rows": rows, "mean": means(rows),
            "groups": {g: means(sel) for g, sel in groups.items()}}


# ------------------------------------------------------------------------------------------ 6. ship
def score_table(score: dict) -> str:
    """Markdown: mean E_φ (aligned, over the field) of AD and of the restoration at every stored AD epoch, per
    held-out half and dose, then per specimen kind (validation half)."""
    groups = {n: g for n, g in score["groups"].items() if n.startswith("pairs_")} or score["groups"]
    first = next(iter(groups.values()))  # the default recipe's pairs (a long run's stores other epochs)
    epochs = sorted(int(k.rsplit("_", 1)[1]) for k in first if k.startswith("ad_aligned_"))
    groups = {n: g for n, g in groups.items() if all(f"ad_aligned_{e}" in g for e in epochs)}
    head = "| half, e⁻/pattern | " + " | ".join(f"AD {e} → restored" for e in epochs) + " |"
    lines = [head, "|" + "---|" * (len(epochs) + 1)]
    for name, g in groups.items():
        lines.append(f"| {name.replace('pairs_', '').replace('|', ', ')} | " + " | ".join(
            f"{g[f'ad_aligned_{e}']:.3f} → **{g[f'restored_aligned_{e}']:.3f}**" for e in epochs) + " |")
    kinds: dict[tuple, list[dict]] = {}
    for r in score["rows"]:
        if r.get("kind") and r["file"].endswith("val") and f"restored_aligned_{epochs[-1]}" in r:
            kinds.setdefault((r["kind"], r["electrons"]), []).append(r)
    if kinds:
        last = epochs[-1]
        lines += ["", f"Validation half per kind (AD's phase at its end, epoch {last}, and its restoration; new "
                  "spectral peaks the truth lacks, restored vs AD's own):", "",
                  "| kind, e⁻/pattern | AD | restored | ratio | new peaks restored / AD |", "|---|---|---|---|---|"]
        for (kind, e), rows in sorted(kinds.items(), key=str):
            ad = float(np.mean([r[f"ad_aligned_{last}"] for r in rows]))
            re_ = float(np.mean([r[f"restored_aligned_{last}"] for r in rows]))
            peaks = [np.mean([r[f"{k}new_peaks_{last}"] for r in rows]) for k in ("", "ad_")]
            lines.append(f"| {kind}, {'noise-free' if e is None else f'{e:.0e}'} | {ad:.3f} | {re_:.3f} | "
                         f"{re_ / ad:.2f} | {peaks[0]:.0f} / {peaks[1]:.0f} |")
    return "\n".join(lines)


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
    p.add_argument("--init", type=Path, default=None, help="fine-tune: start from this restorer (run folder or file)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--invented-mass", type=float, default=0.0,
                   help="weight of the invented mass in the training loss (phase added where the truth is empty)")
    p.add_argument("--run-name", default=None, help="the training run's folder in OUT/runs (default restorer_ARCH)")
    p.add_argument("--chunk", type=int, default=5, help="training epochs per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu", help="torch device of every step (simulate, AD, training, score)")
    p.add_argument("--jobs", type=int, default=1, help="simulations / pair makers at once")
    p.add_argument("--n-heldout", type=int, default=12, help="abTEM held-out specimens (half development)")
    p.add_argument("--heldout-electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--heldout-extent", type=float, default=None,
                   help="the held-out cell (Å; default the config's), pixels, step and patterns kept")
    p.add_argument("--score-pairs", nargs="+", type=Path, default=[])
    p.add_argument("--score-name", default="score.json", help="the score file in OUT")
    p.add_argument("--run", type=Path, default=None,
                   help="the run folder to score and ship (default OUT/runs/restorer_ARCH; e.g. one trained on a GPU)")
    p.add_argument("--trained-in", type=Path, default=None,
                   help="the folder the run was trained in (its paths are shipped relative to it; default OUT)")
    p.add_argument("--name", default="restore-seed")
    p.add_argument("--provenance", default="trained on this machine's CPU", help="where the model was trained (card)")
    p.add_argument("--report", type=Path, default=None, help="restorer_report.py's report.md, for the card")
    p.add_argument("--guards", type=Path, default=None, help="restorer_guards.py's guards.md, for the card")
    p.add_argument("--card-dir", type=Path, default=ROOT / "docs" / "models", help="where the model card goes")
    p.add_argument("--max-minutes", type=float, default=None)
    args = p.parse_args(argv)
    out, budget = args.out.resolve(), Budget(args.max_minutes)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.sim_config.read_text())
    run = args.run.resolve() if args.run else out / "runs" / (args.run_name or f"restorer_{args.arch}")
    try:
        pairs: list[Path] = []
        if {"simulate", "pairs"} & set(args.steps):  # each part simulated, then its pairs made: one chain
            chains = []
            for sim, chain in simulation_steps(out, base, args.kinds, args.n_train, args.part, args.phonons,
                                               args.device):
                if "pairs" in args.steps:
                    target = out / "pairs" / f"{sim.parent.name}.h5"
                    chain = chain + pairs_steps(target, sim, args.electrons, args.ad_epochs, args.device)
                    pairs = pairs + [target]
                chains.append(chain)
            run_steps(out, chains, args.jobs, budget)
        if "train" in args.steps:
            pairs = pairs or sorted((out / "pairs").glob("*.h5"))  # --steps train alone: the pairs made so far
            if not pairs:
                raise SystemExit(f"{out / 'pairs'}: no pairs files to train on (run the pairs step first)")
            cfg = restorer_config(out, pairs, args.arch, args.epochs, args.device, args.lr, args.crop, args.batch,
                                  args.width, args.dim, args.init, args.invented_mass, args.run_name)
            name = args.run_name or f"restorer_{args.arch}"
            while not train_stage(cfg, out / "configs" / f"{name}.yaml", args.chunk, budget):
                budget.check(0.0, "the next training chunk")
        held = []
        if "heldout" in args.steps:
            held = heldout_pairs(out, heldout_config(base, args.heldout_extent, args.phonons), args.n_heldout,
                                 args.heldout_electrons, args.ad_epochs, args.device, budget)
        if "score" in args.steps:
            score = args.score_pairs or held or sorted((out / "heldout").glob("pairs_*.h5"))
            write_json(out / args.score_name, score_pairs(run, score, args.device))
        if "ship" in args.steps:
            from phasestem.learn.trainer.checkpoint import load_weights

            trained_in = args.trained_in or out
            seconds = next((json.loads(p.read_text()) for p in (run.parent.parent / "seconds.json",  # its training's
                                                                out / "seconds.json") if p.exists()), {})
            info = {"optics": load_weights(run)[1]["data"]["optics"], "arch": args.arch, "seconds": seconds,
                    "provenance": args.provenance,
                    "report": args.report.read_text(encoding="utf-8") if args.report else "to be measured",
                    "guards": args.guards.read_text(encoding="utf-8") if args.guards else "to be measured",
                    "heldout_cell": f"{heldout_cell(base, args.heldout_extent)['grid']['extent'][0]:g}"}
            if (out / args.score_name).exists():
                score = json.loads((out / args.score_name).read_text())
                info["score_table"] = score_table(score)  # the registry keeps the aligned E_φ per half and dose
                info["score"] = {g: {k: round(v, 4) for k, v in m.items() if "aligned" in k}
                                 for g, m in score["groups"].items()}
            print(json.dumps(ship(trained_in, args.name, run, info, args.card_dir), indent=1))
    except OutOfTime as exc:
        print(f"stopped: {exc}; run the same command again to continue", file=sys.stderr)
        return INCOMPLETE
    finally:
        log_cpu_seconds(out, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
