"""Check that each hard case file (issue 29, ``cases_hard.py``) is what it says.

    python benchmarks/independent/check_cases.py [DIR]          # the case_*.npz of DIR (default runs/independent/full)
    python benchmarks/independent/check_cases.py --quick        # build every case test-sized, then check (~1 min)

Per case: the stated kind's claim (strong: 8–16 slices with ≥ 2 rad per slice; thick: 20–40 nm in
≥ 20 slices; dose1e3/1e4: that dose at a 0.5 Å step, Poisson counts; tilt: 2–5 mrad at every
position, constant / varying by ≥ 1 mrad; distort: random errors of 0.2–0.5 Å per axis after the
linear drift is removed, and the reconstruction's raster is the nominal one; coherence: a source
size and > 1 probe mode), the normalisation (noise-free: each pattern sums to 1; counted: integer
counts, mean total = dose), and, for the NumPy cases, a re-simulation of three patterns from the
file's own specimen slices and parameters with ``numpy_multislice``: noise-free patterns must match
to 1e-4, counted ones must be Poisson-consistent (χ² per pixel ≈ 1); and the stated effect must be
in the data (the same re-simulation without the tilt, at the nominal positions, or with a point
source differs clearly: relative difference ≥ 1e-2, or χ² per pixel ≥ 0.2 above the true
model's). Each half must hold every kind. Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases_hard import HALVES, HARD, KINDS, make_hard_case  # noqa: E402
from numpy_multislice import raster, simulate_patterns  # noqa: E402


def _resimulate(c: dict, idx: list[int], *, tilt: bool = True, true_pos: bool = True, source: bool = True):
    """Expected patterns (K, n, n), normalised to 1, for scan indices ``idx`` from the file's slices."""
    sy, sx, n, _ = c["patterns"].shape
    m = int(c["margin_px"])
    samp = float(c["sampling"])
    origin = np.array([m * samp, m * samp])
    pos = raster((sy, sx), float(c["scan_step"]), tuple(origin))
    if true_pos and "true_positions" in c:
        pos = c["true_positions"] + origin
    t = c["tilt_mrad"][idx] if (tilt and "tilt_mrad" in c) else None
    return simulate_patterns(c["slice_phases"].astype(np.float64), samp, pos[idx], n, float(c["energy"]),
                             float(c["semiangle"]), float(c["c10"]), dz=float(c["dz"]), tilt=t,
                             source_size=float(c["source_size"]) if source else 0.0)


def _mismatch(data: np.ndarray, expect: np.ndarray, dose: float) -> float:
    """Noise-free: relative L2 difference; counted: mean Pearson χ² per pixel over pixels with ≥ 0.5 expected counts."""
    if not dose:
        return float(np.linalg.norm(data - expect) / np.linalg.norm(expect))
    mu = expect * dose
    keep = mu >= 0.5
    return float((((data - mu) ** 2)[keep] / mu[keep]).mean())


def check_case(name: str, c: dict) -> tuple[list[str], str]:
    """(failures, one line of measured figures) for the case file ``c`` of hard case ``name``."""
    bad: list[str] = []
    info: list[str] = []
    half, kind = name.split("_", 1)
    if str(c.get("half")) != half or str(c.get("kind")) != kind:
        bad.append(f"recorded half/kind {c.get('half')}/{c.get('kind')}, expected {half}/{kind}")
    p = c["patterns"]
    sy, sx, n, _ = p.shape
    if not (np.isfinite(p).all() and (p >= 0).all()):
        bad.append("patterns not finite and non-negative")
    step_px = float(c["scan_step"]) / float(c["sampling"])
    fov = (int(round((sy - 1) * step_px)) + 1, int(round((sx - 1) * step_px)) + 1)
    if c["truth_phase"].shape[0] < fov[0] or c["truth_phase"].shape[1] < fov[1]:
        bad.append(f"truth {c['truth_phase'].shape} smaller than the field of view {fov}")
    dose = float(c["dose"])
    totals = p.reshape(-1, n, n).sum((-2, -1), dtype=np.float64)
    if dose:
        if not np.array_equal(p, np.round(p)):
            bad.append("counted data are not integer counts")
        tol = 5 / np.sqrt(dose * totals.size) + 2e-3
        if abs(totals.mean() / dose - 1) > tol:
            bad.append(f"mean counts {totals.mean():.1f} per pattern, stated dose {dose:g}")
        info.append(f"counts/pattern {totals.mean():.4g}")
        if str(c["loss"]) != "poisson":
            bad.append("counted data without loss 'poisson'")
    else:
        tol = 5e-2 if "abtem_version" in c else 1e-4  # abTEM: the central band of a larger pattern
        info.append(f"pattern sums {totals.min():.4f}–{totals.max():.4f}")
        if np.abs(totals - 1).max() > tol:
            bad.append(f"noise-free patterns sum to {totals.min():.4f}–{totals.max():.4f}, not 1")
    sim_slices = int(c.get("sim_slices", c["n_slices"]))
    thick = float(c.get("thickness", c["n_slices"] * c["dz"]))
    info.append(f"{sim_slices} slices, {thick / 10:.1f} nm")
    if kind == "strong":
        peak = c["slice_phases"].max((-2, -1))
        info.append(f"slice peak {peak.min():.2f}–{peak.max():.2f} rad")
        if not (8 <= sim_slices <= 16 and peak.min() >= 2.0):
            bad.append("strong: needs 8–16 slices with ≥ 2 rad each")
    elif kind.startswith("strongthick"):
        peak = float(c["truth_phase"].max())
        info.append(f"summed peak {peak:.2f} rad")
        if not (6 <= sim_slices <= 12 and 2.0 <= peak <= 3.2):
            bad.append("strongthick: needs 6–12 slices with a summed peak of 2–3.2 rad")
    elif kind.startswith("thick"):
        if not (200 <= thick <= 400 and sim_slices >= 20):
            bad.append("thick: needs 20–40 nm in ≥ 20 slices")
    elif kind.startswith("dose"):
        want = float(kind[4:])
        if dose != want or abs(float(c["scan_step"]) - 0.5) > 1e-9:
            bad.append(f"{kind}: dose {dose:g} step {c['scan_step']} Å, expected {want:g} at 0.5 Å")
    elif kind in ("tilt", "tiltvar") or kind.startswith("tilt_crystal"):
        mag = np.hypot(*c["tilt_mrad"].T)
        info.append(f"|tilt| {mag.min():.2f}–{mag.max():.2f} mrad")
        if mag.min() < 2 - 1e-9 or mag.max() > 5 + 1e-9:
            bad.append("tilt outside 2–5 mrad")
        spread = float(np.ptp(c["tilt_mrad"], 0).max())
        constant = kind == "tilt" or kind.startswith("tilt_crystal")
        if (constant and spread > 1e-9) or (kind == "tiltvar" and np.ptp(mag) < 1.0 and spread < 1.0):
            bad.append(f"{kind}: tilt spread {spread:.2f} mrad")
    elif kind == "distort":
        err = c["true_positions"] - raster((sy, sx), float(c["scan_step"]), (0.0, 0.0))
        t = np.arange(len(err))[:, None] / (len(err) - 1)
        resid = err - t * c["drift"][None]
        sd = resid.std(0)
        info.append(f"random σ {sd[0]:.3f}/{sd[1]:.3f} Å, drift {np.round(c['drift'], 2).tolist()} Å")
        if not (0.2 <= sd.min() and sd.max() <= 0.5) or not np.abs(c["drift"]).max() > 0:
            bad.append("distort: random errors not 0.2–0.5 Å per axis, or no drift")
    elif kind == "coherence":
        info.append(f"source {float(c['source_size'])} Å, {int(c['n_modes'])} modes")
        if not (float(c["source_size"]) > 0 and int(c["n_modes"]) > 1):
            bad.append("coherence: needs a source size and > 1 probe mode")
    if "slice_phases" in c:  # NumPy case: re-simulate three patterns from the file
        idx = [0, (sy * sx) // 2, sy * sx - 1]
        data = p.reshape(-1, n, n)[idx].astype(np.float64)
        fit = _mismatch(data, _resimulate(c, idx), dose)
        info.append(f"re-simulated {'rel. diff' if not dose else 'χ²/px'} {fit:.2g}")
        if (not dose and fit > 1e-4) or (dose and not 0.7 <= fit <= 1.4):
            bad.append(f"re-simulation from the file does not match the data ({fit:.3g})")
        control = {"tilt": dict(tilt=False), "tiltvar": dict(tilt=False), "distort": dict(true_pos=False),
                   "coherence": dict(source=False)}.get(kind)
        if control:
            off = _mismatch(data, _resimulate(c, idx, **control), dose)
            info.append(f"without the effect {off:.2g}")
            if (not dose and off < 1e-2) or (dose and off < fit + 0.2):
                bad.append(f"{kind}: the data barely differ from a simulation without the effect ({off:.3g})")
    elif "abtem_version" not in c:
        bad.append("neither NumPy slices nor an abTEM version recorded")
    return bad, ", ".join(info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default="runs/independent/full", type=Path)
    ap.add_argument("--quick", action="store_true", help="build every hard case test-sized (in a temporary folder)")
    args = ap.parse_args()
    failed = 0
    seen: dict[str, set[str]] = {h: set() for h in HALVES}
    with tempfile.TemporaryDirectory() as tmp:
        for name in HARD:
            path = args.dir / f"case_{name}.npz"
            if args.quick:
                case = make_hard_case(name, quick=True)
                path = Path(tmp) / f"case_{name}.npz"
                np.savez(path, **case)
            if not path.exists():
                print(f"{name}: MISSING {path}")
                failed += 1
                continue
            with np.load(path) as z:
                c = {k: z[k] for k in z.files}
            bad, info = check_case(name, c)
            seen[name.split("_", 1)[0]].add(name.split("_", 1)[1])
            print(f"{name}: {'ok' if not bad else 'FAIL: ' + '; '.join(bad)} ({info})", flush=True)
            failed += bool(bad)
    for half, kinds in seen.items():
        if set(KINDS) - kinds:
            print(f"{half}: missing kinds {sorted(set(KINDS) - kinds)}")
            failed += 1
    print("all cases are what they say" if not failed else f"{failed} problem(s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
