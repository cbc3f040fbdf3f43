"""Hallucination guards of a restorer on abTEM held-out data (issue 48, item 6): does the restoration add what the
data do not hold?

    python benchmarks/learned/restorer_guards.py --heldout OUT/heldout --sim-config CFG [--heldout-extent 60] \
        --model RUN_OR_NAME --out OUT/guards

1. ``build``: two guard specimens made from the first crystal of the validation half's structures
   (``OUT/heldout/structures``, ``train_restorer.py --steps heldout``): **vacancy**, the atomic column nearest the
   cell's centre removed (every atom within :data:`VACANCY_RADIUS` of it in projection; the column is a local
   maximum of the abTEM true phase), and **vacuum**, every atom in a strip of :data:`STRIP` of the cell's width
   removed. Both simulated by abTEM at the held-out geometry (``guards.h5``), with their AD pairs
   (``pairs_guards.h5``, noise-free and ``--electrons``), as the held-out halves are.
2. ``score`` (``guards.json``, ``guards.md``), at every stored AD epoch, for the truth, AD's phase and the restored
   phase:

   * vacancy: :func:`phasestem.learn.guards.site_fraction` at the removed column ÷ its six nearest columns
     (≈ 0: the column stays absent; ≈ 1: the network put it back); the rule: restored < 0.5;
   * vacuum: the RMS (rad, about its mean) inside the strip at least :data:`MARGIN` from the nearest atom; the rule:
     restored ≤ AD's;
   * data residual ratio (:func:`phasestem.learn.guards.residual_ratio`, nominal probe, against the very patterns
     AD saw: the counted copies redrawn with the pairs' seeds) of the restored phase ÷ AD's, for every row of the
     guard file and of the held-out halves' pairs files; issue 48's rule: ≤ 1.2.

(The amorphous-in, no-peaks-out guard is scored with every E_φ: ``train_restorer.score_pairs``' ``new_peaks_*``.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import log_seconds, write_json  # noqa: E402
from restorer_prior import samples  # noqa: E402
from scaling import Budget  # noqa: E402
from train_restorer import ABTEM_SEED, heldout_config, pairs_steps, parse_electrons, run_steps  # noqa: E402

#: Å: atoms this close to the removed column (in projection) go; tilted columns (≤ 3°) spread ≈ 1 Å over 20 Å
VACANCY_RADIUS = 1.0
#: the vacuum strip's width, a fraction of the cell; the vacuum mask keeps MARGIN Å from the strip's edges
STRIP, MARGIN = 0.3, 2.5
#: Å: the disks of site_fraction
SITE_DISK = 0.5


# ------------------------------------------------------------------------------------------ 1. build
def column_peaks(phase: np.ndarray, sampling: tuple[float, float], spacing: float = 1.2) -> np.ndarray:
    """Atomic columns (M, 2) (y, x) Å: local maxima of ``phase`` over ``spacing`` Å above its median + 30 % of its
    range."""
    from scipy import ndimage

    size = max(3, int(round(spacing / min(sampling))) | 1)
    level = np.median(phase) + 0.3 * (phase.max() - np.median(phase))
    peaks = (phase == ndimage.maximum_filter(phase, size=size, mode="wrap")) & (phase > level)
    return np.argwhere(peaks) * np.asarray(sampling, float)


def guard_specimens(structure: Path, truth: np.ndarray, truth_sampling: tuple[float, float],
                    folder: Path) -> dict:
    """The vacancy and vacuum specimens of ``structure`` (extended XYZ, ``truth`` its true phase) as files in
    ``folder``, and where their guards look (Å, (y, x))."""
    from ase.io import read, write

    from phasestem.physics.specimen import column_mask

    atoms = read(structure)
    extent = atoms.cell.lengths()[[1, 0]]  # (y, x): phasestem's rows are the atoms' y
    yx = atoms.positions[:, [1, 0]]
    cols = column_peaks(truth, truth_sampling)
    centre = extent / 2
    site = cols[np.argmin(np.hypot(*(cols - centre).T))]
    others = cols[np.hypot(*(cols - site).T) > 1.5]
    neighbours = others[np.argsort(np.hypot(*(others - site).T))[:6]]
    vacancy = atoms[~column_mask(atoms, tuple(site), VACANCY_RADIUS)]
    x0, x1 = centre[1] - STRIP * extent[1] / 2, centre[1] + STRIP * extent[1] / 2
    vacuum = atoms[(yx[:, 1] < x0) | (yx[:, 1] >= x1)]
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "vacancy.xyz", folder / "vacuum.xyz"]
    for path, a in zip(files, (vacancy, vacuum), strict=True):
        write(path, a, format="extxyz")
    return {"source": structure.name, "files": [str(f) for f in files], "site": site.tolist(),
            "neighbours": neighbours.tolist(), "removed_atoms": int(len(atoms) - len(vacancy)),
            "strip_x": [float(x0), float(x1)], "margin": MARGIN}


def build(heldout: Path, cfg: dict, electrons: list[float | None], out: Path) -> dict:
    """``out/guards.h5`` (abTEM), ``out/pairs_guards.h5`` and ``out/guards_layout.json``; what exists is kept."""
    from abtem_samples import write_abtem_file

    from phasestem import io
    from phasestem.simulate.config import SimulationConfig

    layout_file = out / "guards_layout.json"
    if layout_file.exists():
        layout = json.loads(layout_file.read_text())
    else:
        kinds = json.loads((heldout / "kinds.json").read_text())["val"]
        structures = sorted((heldout / "structures").glob("*.xyz"))[1::2]
        k = kinds.index("crystal")
        ds = io.load(heldout / "val.h5", sample=k)
        ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
        layout = guard_specimens(structures[k], np.asarray(ds.truth["phase"], np.float64), ts, out / "structures")
        write_json(layout_file, layout)
    sim = out / "guards.h5"
    if not sim.exists():
        spec = {**cfg["specimen"], "kind": "structures", "files": layout["files"]}
        t = time.perf_counter()
        write_abtem_file(SimulationConfig.model_validate({**cfg, "specimen": spec}), sim, 2, seed=ABTEM_SEED,
                         structures=[Path(f) for f in layout["files"]])
        log_seconds(out, "abtem_guards", time.perf_counter() - t)
    run_steps(out, [pairs_steps(out / "pairs_guards.h5", sim, electrons, None, "cpu", "pairs_guards")], 1,
              Budget(None))
    return layout


# ------------------------------------------------------------------------------------------ 2. score
def strip_mask(shape: tuple[int, int], sampling: tuple[float, float], x0: float, x1: float) -> np.ndarray:
    """Pixels (H, W) of AD's grid (pixel (0, 0) at 0 Å) with x in [x0, x1) Å."""
    x = np.arange(shape[1]) * sampling[1]
    return np.broadcast_to((x >= x0) & (x < x1), shape).copy()


def residual_rows(pairs: Path, sim: Path, electrons: list[float | None], net) -> list[dict]:
    """Data residual of the restored phase ÷ AD's at every stored epoch of every row of ``pairs`` (made from the
    simulation file ``sim`` with the doses ``electrons``, in order)."""
    import h5py

    from phasestem.learn.ad_pairs import stored_epochs
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.guards import residual_ratio

    epochs = stored_epochs(pairs)
    rows = []
    with h5py.File(pairs, "r") as f:
        for r, (name, ds, _, _) in enumerate(samples(sim, electrons)):
            sampling = tuple(float(s) for s in f["sampling"][r])
            row = {"file": pairs.stem, "row": name}
            for e in epochs:
                ch = {c: f[f"epoch_{e}/{c}"][r] for c in ("phase", *net.config.extra_channels)}
                restored = restore_channels(net, ch)
                row[f"residual_ratio_{e}"] = residual_ratio(restored, ch["phase"], ds, sampling)
                row[f"truth_residual_ratio_{e}"] = residual_ratio(f["gt"][r], ch["phase"], ds, sampling)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def guard_rows(out: Path, layout: dict, net) -> list[dict]:
    """The vacancy and vacuum guards of every row of ``out/pairs_guards.h5`` (rows: vacancy, vacuum × doses)."""
    import h5py

    from phasestem.learn.ad_pairs import stored_epochs
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.guards import site_fraction

    path = out / "pairs_guards.h5"
    epochs = stored_epochs(path)
    rows = []
    with h5py.File(path, "r") as f:
        n = f["gt"].shape[0]
        for r in range(n):
            specimen = "vacancy" if r < n // 2 else "vacuum"
            s = tuple(float(v) for v in f["sampling"][r])
            dose = float(f["electrons"][r])
            row = {"specimen": specimen, "electrons": None if np.isnan(dose) else dose}
            images = {"truth": np.asarray(f["gt"][r], np.float64)}
            field = np.asarray(f["field"][r]) > 0
            for e in epochs:
                ch = {c: f[f"epoch_{e}/{c}"][r] for c in ("phase", *net.config.extra_channels)}
                images[f"ad_{e}"] = np.asarray(ch["phase"], np.float64)
                images[f"restored_{e}"] = restore_channels(net, ch).astype(np.float64)
            if specimen == "vacancy":
                px = np.asarray(s)
                site = np.asarray(layout["site"])[None] / px
                cols = np.asarray(layout["neighbours"]) / px
                for k, img in images.items():
                    row[k] = site_fraction(img, site, cols, SITE_DISK / min(s))
            else:
                x0, x1 = layout["strip_x"]
                mask = strip_mask(images["truth"].shape, s, x0 + MARGIN, x1 - MARGIN) & field
                for k, img in images.items():
                    inside = img[mask]
                    row[k] = float(np.sqrt(((inside - inside.mean()) ** 2).mean()))
            rows.append(row)
    return rows


def table(result: dict) -> str:
    """Markdown of the guards (module docstring)."""
    lines = []
    g = result["guards"]
    epochs = sorted({int(k.split("_")[1]) for r in g for k in r if k.startswith("ad_")})
    head = "| guard, e⁻/pattern | truth | " + " | ".join(f"AD {e} → restored" for e in epochs) + " | rule |"
    lines += [head, "|" + "---|" * (len(epochs) + 3)]
    for r in g:
        what = "vacancy: site ÷ columns" if r["specimen"] == "vacancy" else "vacuum: RMS (rad)"
        dose = "none" if r["electrons"] is None else f"{r['electrons']:.0e}"
        if r["specimen"] == "vacancy":
            ok = all(r[f"restored_{e}"] < 0.5 for e in epochs)
        else:
            ok = all(r[f"restored_{e}"] <= r[f"ad_{e}"] for e in epochs)
        lines.append(f"| {what}, {dose} | {r['truth']:.3f} | " + " | ".join(
            f"{r[f'ad_{e}']:.3f} → **{r[f'restored_{e}']:.3f}**" for e in epochs)
            + f" | {'met' if ok else 'NOT met'} |")
    lines += ["", "| data residual ÷ AD's | " + " | ".join(f"epoch {e}: restored (truth)" for e in epochs) + " |",
              "|" + "---|" * (len(epochs) + 1)]
    groups: dict[str, list[dict]] = {}
    for r in result["residuals"]:
        groups.setdefault(f"{r['file']}, {r['row'].split('|')[1]}", []).append(r)
    for name, rows in groups.items():
        cells = []
        for e in epochs:
            ratio = [r[f"residual_ratio_{e}"] for r in rows]
            truth = np.mean([r[f"truth_residual_ratio_{e}"] for r in rows])
            cells.append(f"{np.mean(ratio):.2f}, max {np.max(ratio):.2f} ({truth:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def guard_arguments(p: argparse.ArgumentParser, steps: bool = True) -> None:
    """The arguments of the guard benchmarks on abTEM specimens made from the held-out halves' structures (this one,
    ``vacancy_sites.py``, ``wrong_geometry_guard.py``); ``steps``: with ``--steps build score``."""
    p.add_argument("--heldout", type=Path, required=True, help="train_restorer.py's OUT/heldout")
    p.add_argument("--sim-config", type=Path, required=True)
    p.add_argument("--heldout-extent", type=float, default=None)
    p.add_argument("--model", required=True, help="restorer: a run folder, a model file or a shipped name")
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--phonons", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    if steps:
        p.add_argument("--steps", nargs="+", choices=("build", "score"), default=["build", "score"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    guard_arguments(p)
    args = p.parse_args(argv)
    from phasestem.learn.apply.restorer import load_restorer

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = heldout_config(yaml.safe_load(args.sim_config.read_text()), args.heldout_extent, args.phonons)
    layout = build(args.heldout, cfg, args.electrons, out)
    if "score" not in args.steps:
        return 0
    net, _ = load_restorer(args.model)
    result = {"model": str(args.model), "layout": layout, "guards": guard_rows(out, layout, net), "residuals": []}
    for half in ("dev", "val"):
        pairs = args.heldout / f"pairs_{half}.h5"
        if pairs.exists():
            result["residuals"] += residual_rows(pairs, args.heldout / f"{half}.h5", args.electrons, net)
    result["residuals"] += residual_rows(out / "pairs_guards.h5", out / "guards.h5", args.electrons, net)
    write_json(out / "guards.json", result)
    (out / "guards.md").write_text(table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
