"""Regression guard of phasestem's defaults (issues 52, 86): every regime a user meets, each at 5, 10 and 20 epochs
of the defaults, r and E_φ recorded in ``benchmarks/history.jsonl``; a case that loses more than :data:`R_TOLERANCE`
in r or more than :data:`E_TOLERANCE` (relative) in E_φ against the last recorded line of the same guard is named,
and the command exits 1, whatever the other cases won.

    python benchmarks/independent/regression.py [--out runs/regression] [--no-record] [--cases ...] [--epochs 5 10 20]
    python benchmarks/independent/regression.py --tree ../old_checkout --no-record --json before.json
    python benchmarks/independent/regression.py --table before.json after.json     # the before/after table

Cases (:data:`CASES`; ``dev``: a default was chosen on it, ``val``: reported only). The data are independent of
phasestem's simulator except ``plan`` (the plan's own field, the number ``phasestem plan`` prints): the NumPy
multislice of ``cases.py`` / ``cases_hard.py`` / ``counted_default.py`` and ``numpy_multislice.py``, abTEM
(``cases_abtem.py``, ``../plan/accuracy.py``'s SrTiO3) and the live benchmark's scan (``../live/make_scan.py``,
NumPy). Each run is a fresh process; the runner's cases through ``recon_peers/run_phasestem.py`` with no loss named
(lsq, the engine's defaults, the nominal probe, exact positions, 2 threads), the --auto cases through ``phasestem
reconstruct FILE --auto`` (calibration included) with ``run.uncertainty: off``, the live scan through its
``params.yaml``, the plan through :func:`phasestem.plan.expected.expected_result`. r and E_φ of the phase summed over
slices over the scanned field, after alignment, at the run's end. ``--tree`` runs another checkout's ``src`` (its
phasestem) with this script's cases and scorers, for a before/after table in one run. About 45 minutes on the
2-core development machine for the three epoch counts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS = HERE.parent / "recon_peers"
sys.path.insert(0, str(HERE))

from bench import build_case, case_fov, score  # noqa: E402

EPOCHS = (5, 10, 20)
#: a fall of r by more than this, or a rise of E_φ by more than this fraction, is a regression
R_TOLERANCE = 0.002
E_TOLERANCE = 0.02
HISTORY = ROOT / "benchmarks" / "history.jsonl"
GUARD = "regimes-v2"  # lines of this guard; earlier lines ({case: [r at 5, r at 20]}) are kept, not compared

#: name → (half, kind, what it covers). kind: runner (a case file through run_phasestem.py), auto (a data file
#: through --auto), params (a parameter file), plan (the plan's expected field)
CASES = {
    "thin": ("dev", "runner", "noise-free, 1 slice of independent atoms, 0.2 Å pixels, C10 +100 Å"),
    "thick": ("dev", "runner", "noise-free, 8 × 10 Å slices"),
    "noisy": ("val", "runner", "8 slices, 1e6 e⁻/Å² counted"),
    "coherent": ("val", "runner", "1 slice, partially coherent source, 1e6 e⁻/Å²"),
    "dev_strong": ("dev", "runner", "noise-free, strong multislice scatterer"),
    "dev_dose1e3": ("dev", "runner", "4 slices at 4e3 e⁻/Å² (0.5 Å step)"),
    "val_dose1e4": ("val", "runner", "4 slices at 4e4 e⁻/Å²"),
    "val_distort": ("val", "runner", "noise-free, distorted scan"),
    "dev_s4_1e3": ("dev", "runner", "4 slices at 1e3 e⁻/Å² (counted_default)"),
    "val_w6_1e5": ("val", "runner", "counted thick: a weak 6-slice film at 1e5 e⁻/Å² (issue 69)"),
    "sto_dev": ("dev", "runner", "abTEM SrTiO3 crystal, 5 slices, 8.8e4 e⁻/Å², 0.21 Å pixels, defects"),
    "sto_val": ("val", "runner", "abTEM SrTiO3 crystal, 5 slices, 6.9e4 e⁻/Å², 0.30 Å pixels (issue 86's evaluator)"),
    "seed_focus": ("val", "runner", "the seed geometry: 30 mrad focused probe, 2 Å step, 0.3125 Å pixels, 2.5e3 e⁻/Å²"),
    "coarse": ("val", "runner", "coarse 0.4 Å pixels, 1 slice at 1e4 e⁻/Å²"),
    "live_scan": ("val", "params", "the live benchmark's scan (--quick, NumPy), 4.9e4 e⁻/Å², C10 +150 Å"),
    "plan": ("dev", "plan", "configs/plan.yaml's expected field (phasestem's simulator), 4.9e3 e⁻/Å², --auto"),
    "auto_c4_1e4": ("dev", "auto", "abTEM SrTiO3 15.6 Å at 1e4 e⁻/Å² through --auto (C10 and rotation given)"),
}

#: the seed geometry (configs/simulate_seed.yaml: 300 keV, 30 mrad, focused, 2 Å step, 0.3125 Å detector pixel)
SEED_GEOM = dict(scan=(20, 20), step=2.0, window=64, sampling=0.3125, energy=300e3, semiangle=30.0, defocus=0.0,
                 batch=32)
COARSE_GEOM = dict(scan=(24, 24), step=1.0, window=64, sampling=0.4, energy=300e3, semiangle=20.0, defocus=100.0,
                   batch=32)


def commit(tree: Path) -> str:
    """The checked-out commit of ``tree``, with ``-dirty`` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True,
                           text=True)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _save(path: Path, case: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **case)
    os.replace(tmp, path)


def case_file(data: Path, name: str) -> Path:
    """The case's data under ``data`` (simulated once, shared by every tree and epoch count): a case .npz, or for
    the ``params`` / ``auto`` kinds a folder."""
    from cases import simulate_case
    from counted_default import CASES as COUNTED
    from counted_default import case_file as counted_case_file

    path = data / f"case_{name}.npz"
    if name == "live_scan":
        path = data / "live_scan"
        if not (path / "params.yaml").exists():
            subprocess.run([sys.executable, str(HERE.parent / "live" / "make_scan.py"), str(path), "--quick"],
                           check=True, capture_output=True)
        return path
    if name == "auto_c4_1e4":
        path = data / "auto_c4_1e4"
        if not (path / "scan.npy").exists():
            path.mkdir(parents=True, exist_ok=True)
            sim = _abtem_crystal(4, 1e4)
            np.save(path / "scan.npy", sim["patterns"])
        return path
    if name == "plan" or path.exists():
        return path
    if name in COUNTED:
        return counted_case_file(data, name, 20)
    if name == "sto_dev":
        from cases_abtem import make_abtem_case

        _save(path, make_abtem_case())
    elif name == "sto_val":
        from cases_abtem import make_abtem_case

        _save(path, make_abtem_case(layout=dict(
            reps=(8, 8, 5), grid=208, n_pat=104, scan=(24, 24), step_px=4, vacancies=[((2, 6), 1), ((6, 2), 3)],
            c10=100.0, n_configs=4, dose=1e5, recon_slices=5, seed=1,
            specimen="SrTiO3 [001] 8x8x5, Ba column, 2 Sr vacancies, 0.30 Å pixels")))
    elif name == "seed_focus":  # e⁻ per pattern = 2.5e3 e⁻/Å² × (2 Å)²; atom columns through 2 slices
        _save(path, simulate_case(dict(n_slices=2, dz=10.0, max_phase=0.5, density=0.3, dose=1e4, source=0.0,
                                       iters=20, columns=True, width=0.3), SEED_GEOM, seed=11))
    elif name == "coarse":
        _save(path, simulate_case(dict(n_slices=1, dz=10.0, max_phase=0.5, density=0.4, dose=1e4, source=0.0,
                                       iters=20), COARSE_GEOM, seed=12))
    else:
        build_case(name, False, path, 20)
    return path


def _abtem_crystal(cells: int, dose: float) -> dict:
    sys.path.insert(0, str(HERE.parent / "plan"))
    import accuracy

    return accuracy.simulate_abtem(cells, dose, 32)


def _env(tree: Path, threads: int) -> dict:
    path = [str(tree / "src"), str(PEERS), str(HERE)]
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg",
                OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=os.pathsep.join(path))


def _run(cmd: list[str], env: dict, log: Path, timeout: int = 3600) -> None:
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        tail = log.read_text()[-1500:]
        raise SystemExit(f"{' '.join(cmd[:4])}…: exit {done.returncode}; the end of {log}:\n{tail}")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def run_case(name: str, epochs: int, data: Path, work: Path, tree: Path, threads: int,
             runner_args: tuple[str, ...] = ()) -> dict:
    """{"r", "E"} of one fresh run of ``name`` for ``epochs`` epochs in ``work``, phasestem from ``tree``;
    ``runner_args``: more options of ``run_phasestem.py`` (runner cases only, e.g. ``--holdout-counts 0.1``)."""
    kind = CASES[name][1]
    source = case_file(data, name)
    out = work / f"{name}_{epochs}"
    out.mkdir(parents=True, exist_ok=True)
    env = _env(tree, threads)
    cli = [sys.executable, "-m", "phasestem.cli"]
    off = ["--set", 'run.uncertainty="off"', "--set", "run.progress=false"]
    if kind == "runner":
        result = out / "result.npz"
        result.unlink(missing_ok=True)
        _run([sys.executable, str(PEERS / "run_phasestem.py"), str(source), str(result), "--threads", str(threads),
              "--loss", "none", "--iters", str(epochs), *runner_args], env, out / "run.log")
        with np.load(source) as c, np.load(result) as z:
            s = score({k: z[k] for k in z.files}, c["truth_phase"], case_fov(c))
        r = [float(v) for v in s["r"]]  # r after every epoch of this run: r at 5 of a 20-epoch run is the README's
        return {"r": round(r[-1], 5), "E": round(float(s["nrmse"][-1]), 5),
                "r_at": {str(m): round(r[m - 1], 5) for m in EPOCHS if m < len(r)}}
    if kind == "params":
        _run([*cli, "reconstruct", str(source / "params.yaml"), "--out", str(out), "--epochs", str(epochs), *off],
             env, out / "run.log")
        sys.path.insert(0, str(HERE.parent / "live"))
        from check_scan import score as live_score

        s = live_score(source, out / "results.h5")
        return {"r": round(s["pearson_r"], 5), "E": round(float(s["phase_error"]), 5)}
    if kind == "auto":
        sys.path.insert(0, str(HERE.parent / "plan"))
        import accuracy

        folder = out / "auto"
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        _run([*cli, "reconstruct", str(source / "scan.npy"), "--auto", "--out", str(folder), "--epochs", str(epochs),
              "--energy", "300e3", "--semiangle", "20", "--scan-step", "0.5", "--c10", "60", "--edge-threshold",
              str(accuracy.ABTEM_EDGE), "--rotation", "0", *off], env, out / "run.log")
        sim = _abtem_crystal(4, 1e4)
        from phasestem.plan.expected import score as plan_score

        truth = accuracy.pixel_averaged(sim["truth"], sim["truth_sampling"], accuracy.PIXEL)
        s = plan_score(folder / "results.h5", truth, sim["truth_sampling"], sim["positions"], periodic=True)
        return {"r": round(_pearson(s["reconstruction"], s["truth"]), 5), "E": round(s["phase_error"], 5)}
    # plan: the expected field of configs/plan.yaml at this many epochs, in a process of the tree's phasestem
    code = ("import sys, json, yaml; from phasestem.plan.config import plan_config; "
            "from phasestem.plan.expected import expected_result; "
            "c = yaml.safe_load(open(sys.argv[1])); c.pop('expected', None); "
            "c.setdefault('reconstruction', {})['epochs'] = int(sys.argv[3]); "
            "e = expected_result(plan_config(c), sys.argv[2], figure=False); print('E', e.phase_error)")
    folder = out / "expected"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    _run([sys.executable, "-c", code, str(ROOT / "configs" / "plan.yaml"), str(folder), str(epochs)], env,
         out / "run.log")
    import yaml

    from phasestem.plan.config import plan_config
    from phasestem.plan.expected import score as plan_score
    from phasestem.plan.expected import simulate_field

    cfg = yaml.safe_load((ROOT / "configs" / "plan.yaml").read_text())
    cfg.pop("expected", None)
    sim = simulate_field(plan_config(cfg), out / "truth")
    s = plan_score(folder / "recon" / "results.h5", sim["truth"], sim["truth_sampling"], sim["truth_positions"])
    return {"r": round(_pearson(s["reconstruction"], s["truth"]), 5), "E": round(s["phase_error"], 5)}


def drops(previous: dict, current: dict) -> list[str]:
    """Each case and epoch count whose r fell by more than :data:`R_TOLERANCE` or whose E_φ rose by more than
    :data:`E_TOLERANCE` of itself from ``previous``'s to ``current``'s."""
    found = []
    for name, runs in current["cases"].items():
        for epochs, now in runs.items():
            old = previous.get("cases", {}).get(name, {}).get(epochs)
            if old is None:
                continue
            if old["r"] - now["r"] > R_TOLERANCE or now["E"] > old["E"] * (1 + E_TOLERANCE):
                found.append(f"{name} at {epochs} epochs: r {old['r']:.4f} → {now['r']:.4f}, E_φ {old['E']:.4f} → "
                             f"{now['E']:.4f} ({previous['commit']} → {current['commit']})")
    return found


def table(before: dict, after: dict) -> str:
    """The before/after markdown table of two guard lines (every case × epoch count)."""
    rows = [f"| case | half | what | epochs | r {before['commit']} | r {after['commit']} | E_φ {before['commit']} | "
            f"E_φ {after['commit']} | |", "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in after["cases"].items():
        half, _, what = CASES.get(name, ("?", "?", ""))
        for epochs, now in runs.items():
            old = before["cases"].get(name, {}).get(epochs)
            if old is None:
                rows.append(f"| {name} | {half} | {what} | {epochs} | – | {now['r']:.4f} | – | {now['E']:.4f} | |")
                continue
            worse = old["r"] - now["r"] > R_TOLERANCE or now["E"] > old["E"] * (1 + E_TOLERANCE)
            better = now["r"] - old["r"] > R_TOLERANCE or now["E"] < old["E"] * (1 - E_TOLERANCE)
            mark = "**worse**" if worse else "better" if better else "same"
            rows.append(f"| {name} | {half} | {what} | {epochs} | {old['r']:.4f} | {now['r']:.4f} | {old['E']:.4f} | "
                        f"{now['E']:.4f} | {mark} |")
    return "\n".join(rows)


def append(path: Path, entry: dict) -> None:
    """``entry`` as one more line of ``path``, written whole or not at all."""
    from phasestem.base.safety import atomic_file

    text = path.read_text() if path.exists() else ""
    with atomic_file(path, "regression history") as tmp:
        tmp.write_text(text + json.dumps(entry, ensure_ascii=False) + "\n")


def last_line(history: Path) -> dict | None:
    """The last line of this guard in ``history`` (None: none yet)."""
    if not history.exists():
        return None
    lines = [json.loads(s) for s in history.read_text().splitlines() if s.strip()]
    return next((line for line in reversed(lines) if line.get("guard") == GUARD), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/regression", help="work folder (the case data under OUT/data)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--epochs", nargs="+", type=int, default=list(EPOCHS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose src/ runs (default: this one)")
    ap.add_argument("--history", default=str(HISTORY))
    ap.add_argument("--json", type=Path, default=None, help="also write the line to this file")
    ap.add_argument("--no-record", action="store_true", help="compare, but do not append the line")
    ap.add_argument("--runner-arg", action="append", default=[], metavar="ARG",
                    help="one more option of run_phasestem.py for the runner cases (repeat it: --runner-arg=--holdout-"
                    "counts --runner-arg=0.1); with it no line is recorded")
    ap.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="print the before/after table of two --json files and exit")
    args = ap.parse_args()
    if args.table:
        print(table(*(json.loads(p.read_text()) for p in args.table)))
        return 0
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    tree = args.tree.resolve()
    label = commit(tree)
    work = out / label
    t0 = time.perf_counter()
    entry = {"guard": GUARD, "commit": label, "date": time.strftime("%Y-%m-%d %H:%M"),
             "load_average": round(os.getloadavg()[0], 2), "cases": {}}
    if args.runner_arg:  # another recipe than the defaults: compared, never the guard's record
        entry["runner_args"] = list(args.runner_arg)
    for name in args.cases:
        entry["cases"][name] = {}
        for epochs in args.epochs:
            got = run_case(name, epochs, data, work, tree, args.threads, tuple(args.runner_arg))
            entry["cases"][name][str(epochs)] = got
            print(f"{name} ({CASES[name][0]}) at {epochs} epochs: r {got['r']:.4f}, E_φ {got['E']:.4f}", flush=True)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    entry["load_average_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(entry, ensure_ascii=False, indent=1))
    history = Path(args.history)
    previous = last_line(history)
    found = drops(previous, entry) if previous else []
    if not args.no_record and not args.runner_arg:
        append(history, entry)
    print(f"{len(entry['cases'])} cases × {len(args.epochs)} epoch counts in {entry['seconds']:.0f} s; " + (
        f"no case worse than {previous['commit']} (r −{R_TOLERANCE}, E_φ +{E_TOLERANCE:.0%})"
        if previous and not found else "first line of this guard" if not previous else
        "WORSE:\n  " + "\n  ".join(found)))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
