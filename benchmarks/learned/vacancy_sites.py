"""Does a restorer put removed atomic columns back? Vacancies inserted into the abTEM validation crystals (issue 68's
acceptance: at every site, at both doses, the removed column reads ≤ 0.15 of a column).

    python benchmarks/learned/vacancy_sites.py --heldout OUT/heldout --sim-config configs/simulate_seed.yaml \
        --heldout-extent 60 --model restore-seed-fine --out OUT/vacancies

1. ``build``: from each validation crystal of ``--samples`` (``OUT/heldout/structures``, made by
   ``train_restorer.py --steps heldout``; one of each kind: a random crystal, wurtzite, 2H-MoS₂ …) ``--sites``
   atomic columns are removed (every atom within :data:`~restorer_guards.VACANCY_RADIUS` of the column in
   projection). The columns are local maxima of the crystal's abTEM true phase, at least :data:`INSIDE` of the cell
   from its edges (inside the scanned field) and :data:`APART` Å from each other, the first the one nearest the
   centre and each next the farthest-first choice among the rest. Simulated by abTEM at the held-out geometry
   (``vacancies.h5``, the held-out seed) and paired by ``make-pairs --inputs-from ad`` (``reconstruct``'s defaults,
   noise-free and the counted copies of ``--electrons``): ``pairs_vacancies.h5``.
2. ``score`` (``vacancies.json``, ``vacancies.md``): at every stored AD epoch, for the truth, AD's phase and the
   restored phase, each site's :func:`phasestem.learn.guards.site_fraction` (the disk of
   :data:`~restorer_guards.SITE_DISK` at the removed column ÷ the same at its six nearest intact columns, both above
   the image's median): ≈ 0 the column stays absent, ≈ 1 the network put it back.
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
from restorer_guards import SITE_DISK, VACANCY_RADIUS, column_peaks, guard_arguments  # noqa: E402
from scaling import Budget  # noqa: E402
from train_restorer import ABTEM_SEED, heldout_config, pairs_steps, run_steps  # noqa: E402

#: the sites keep this fraction of the cell from its edges (the scanned field covers its middle)
INSIDE = 0.25
#: Å between two removed columns (their restorations must not share a receptive field's centre)
APART = 8.0
#: the acceptance level: a removed column reads at most this fraction of a column
LEVEL = 0.15


def choose_sites(columns: np.ndarray, extent: np.ndarray, n: int) -> np.ndarray:
    """``n`` sites (n, 2) Å among ``columns`` (M, 2) Å inside the cell's middle (:data:`INSIDE`), at least
    :data:`APART` apart: the column nearest the centre, then farthest-first."""
    inside = columns[np.all((columns > INSIDE * extent) & (columns < (1 - INSIDE) * extent), axis=1)]
    chosen = [inside[np.argmin(np.hypot(*(inside - extent / 2).T))]]
    while len(chosen) < n:
        d = np.min([np.hypot(*(inside - c).T) for c in chosen], axis=0)
        if d.max() < APART:
            raise SystemExit(f"only {len(chosen)} columns {APART} Å apart inside the cell's middle")
        chosen.append(inside[np.argmax(d)])
    return np.asarray(chosen)


def vacancy_specimen(structure: Path, truth: np.ndarray, truth_sampling: tuple[float, float], n: int,
                     folder: Path) -> dict:
    """``structure`` (extended XYZ; ``truth`` its true phase) with ``n`` columns removed, written to ``folder``; the
    sites and each one's six nearest intact columns (Å, (y, x))."""
    from ase.io import read, write

    from phasestem.physics.specimen import column_mask

    atoms = read(structure)
    extent = atoms.cell.lengths()[[1, 0]]  # (y, x): phasestem's rows are the atoms' y
    cols = column_peaks(truth, truth_sampling)
    sites = choose_sites(cols, extent, n)
    keep = np.ones(len(atoms), bool)
    for site in sites:
        keep &= ~column_mask(atoms, tuple(site), VACANCY_RADIUS)
    intact = cols[np.min([np.hypot(*(cols - s).T) for s in sites], axis=0) > 1.5]
    neighbours = [intact[np.argsort(np.hypot(*(intact - s).T))[:6]].tolist() for s in sites]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vacancies_{structure.stem}.xyz"
    write(path, atoms[keep], format="extxyz")
    return {"source": structure.name, "file": str(path), "sites": sites.tolist(), "neighbours": neighbours,
            "removed_atoms": int((~keep).sum())}


def build(heldout: Path, cfg: dict, samples: list[int], n_sites: int, electrons: list[float | None],
          out: Path) -> dict:
    """``out/vacancies.h5`` (abTEM), ``out/pairs_vacancies.h5`` and ``out/layout.json``; what exists is kept."""
    from abtem_samples import write_abtem_file

    from phasestem import io
    from phasestem.simulate.config import SimulationConfig

    layout_file = out / "layout.json"
    if layout_file.exists():
        layout = json.loads(layout_file.read_text())
    else:
        kinds = json.loads((heldout / "kinds.json").read_text())["val"]
        structures = sorted((heldout / "structures").glob("*.xyz"))[1::2]  # the validation half's
        layout = {"specimens": []}
        for k in samples:
            ds = io.load(heldout / "val.h5", sample=k)
            ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
            spec = vacancy_specimen(structures[k], np.asarray(ds.truth["phase"], np.float64), ts, n_sites,
                                    out / "structures")
            layout["specimens"].append({**spec, "sample": k, "kind": kinds[k]})
        write_json(layout_file, layout)
    sim = out / "vacancies.h5"
    files = [Path(s["file"]) for s in layout["specimens"]]
    if not sim.exists():
        spec = {**cfg["specimen"], "kind": "structures", "files": [str(f) for f in files]}
        t = time.perf_counter()
        write_abtem_file(SimulationConfig.model_validate({**cfg, "specimen": spec}), sim, len(files),
                         seed=ABTEM_SEED, structures=files)
        log_seconds(out, "abtem_vacancies", time.perf_counter() - t)
    run_steps(out, [pairs_steps(out / "pairs_vacancies.h5", sim, electrons, None, "cpu", "pairs_vacancies")], 1,
              Budget(None))
    return layout


def score(out: Path, layout: dict, net) -> list[dict]:
    """One row per (specimen, dose, site): the site fraction of the truth, AD's and the restored phase at every
    stored epoch (rows of ``pairs_vacancies.h5``: each specimen's doses in order)."""
    import h5py

    from phasestem.learn.ad_pairs import stored_epochs
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.guards import site_fraction

    path = out / "pairs_vacancies.h5"
    epochs = stored_epochs(path)
    rows = []
    with h5py.File(path, "r") as f:
        n = f["gt"].shape[0]
        per = n // len(layout["specimens"])
        for r in range(n):
            spec = layout["specimens"][r // per]
            px = np.asarray(f["sampling"][r], float)
            dose = float(f["electrons"][r])
            images = {"truth": np.asarray(f["gt"][r], np.float64)}
            for e in epochs:
                ch = {c: f[f"epoch_{e}/{c}"][r] for c in ("phase", *net.config.extra_channels)}
                images[f"ad_{e}"] = np.asarray(ch["phase"], np.float64)
                images[f"restored_{e}"] = restore_channels(net, ch).astype(np.float64)
            for j, (site, cols) in enumerate(zip(spec["sites"], spec["neighbours"], strict=True)):
                row = {"specimen": spec["source"], "kind": spec["kind"], "site": j,
                       "electrons": None if np.isnan(dose) else dose}
                for k, img in images.items():
                    row[k] = site_fraction(img, np.asarray(site)[None] / px, np.asarray(cols) / px,
                                           SITE_DISK / px.min())
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one row per site and dose, the readings at every stored epoch, and whether the last meets
    :data:`LEVEL`."""
    epochs = sorted({int(k.split("_")[1]) for r in rows for k in r if k.startswith("ad_")})
    lines = ["| specimen (kind), site, e⁻/pattern | truth | " + " | ".join(f"AD {e} → restored" for e in epochs)
             + f" | ≤ {LEVEL:g} at AD {epochs[-1]} |", "|" + "---|" * (len(epochs) + 3)]
    for r in rows:
        dose = "none" if r["electrons"] is None else f"{r['electrons']:.0e}"
        ok = r[f"restored_{epochs[-1]}"] <= LEVEL
        lines.append(f"| {Path(r['specimen']).stem} ({r['kind']}), {r['site']}, {dose} | {r['truth']:.3f} | "
                     + " | ".join(f"{r[f'ad_{e}']:.3f} → **{r[f'restored_{e}']:.3f}**" for e in epochs)
                     + f" | {'yes' if ok else 'NO'} |")
    last = epochs[-1]
    for dose in sorted({r["electrons"] is None for r in rows}):
        sel = [r for r in rows if (r["electrons"] is None) == dose]
        met = sum(r[f"restored_{last}"] <= LEVEL for r in sel)
        lines.append(f"\n{'noise-free' if dose else 'counted'}: {met} of {len(sel)} sites ≤ {LEVEL:g} restored at AD "
                     f"{last} (max {max(r[f'restored_{last}'] for r in sel):.3f}; AD's own max "
                     f"{max(r[f'ad_{last}'] for r in sel):.3f}, the truth's {max(r['truth'] for r in sel):.3f})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    guard_arguments(p)
    p.add_argument("--samples", nargs="+", type=int, default=[0, 2, 5],
                   help="validation samples to hold the vacancies (default: a crystal, wurtzite, 2H-MoS2)")
    p.add_argument("--sites", type=int, default=3, help="columns removed per specimen")
    args = p.parse_args(argv)
    from phasestem.learn.apply.restorer import load_restorer

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = heldout_config(yaml.safe_load(args.sim_config.read_text()), args.heldout_extent, args.phonons)
    layout = build(args.heldout, cfg, args.samples, args.sites, args.electrons, out)
    if "score" not in args.steps:
        return 0
    net, _ = load_restorer(args.model)
    rows = score(out, layout, net)
    write_json(out / "vacancies.json", {"model": str(args.model), "layout": layout, "rows": rows})
    (out / "vacancies.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
