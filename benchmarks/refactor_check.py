"""Same numbers before and after a structural refactor (issue 26: the physics/ package and the Experiment).

``record DIR`` computes, on the code on the path, the figures the refactor must not change and writes them to DIR;
``compare DIR`` computes them again and compares:

* the independent-data accuracy cases of ``tests/test_independent_accuracy.py`` (NumPy multislice data, phase
  Pearson r per epoch: 1 slice and 3 slices with the defaults, Adam, the flipped defocus, the descan in the model);
* the calibration of the abTEM scan of ``tests/abtem_scan.py`` (rotation, angular sampling, C10, descan plane)
  and of two scans made by phasestem's own forward model (C10, C12, φ12);
* ``phasestem reconstruct --auto`` on that abTEM scan (phase r over the central field, C10, rotation;
  ``tests/test_auto.py``);
* a tiny ``phasestem reconstruct`` (``configs/reconstruct_tiny.yaml``, 10 epochs): every array of its results.h5;
* the simulator (one sample of ``configs/simulate_tiny.yaml``), the learned route's synthetic training file and the
  measurement residual of a phase (``learn.consistency``).

r and scalar figures must agree to 1e-4 (absolute), arrays within float32 tolerance (rtol 1e-4 of the array's
largest value). Takes about a minute on 2 CPU cores::

    PYTHONPATH=src python benchmarks/refactor_check.py record runs/refactor_before
    PYTHONPATH=src python benchmarks/refactor_check.py compare runs/refactor_before
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "independent"))
sys.path.insert(0, str(ROOT / "tests"))

SCALAR_TOL = 1e-4
ARRAY_RTOL = 1e-4


def independent_accuracy() -> dict[str, list[float]]:
    """Phase r per epoch of the cases of tests/test_independent_accuracy.py."""
    import test_independent_accuracy as t

    from phasestem.calibrate.correct import shift_images, whole_pixel_shifts
    from phasestem.recon import Ptychography

    thin, three = t._case(1), t._case(3)
    out = {"thin_lsq_15": t._reconstruct(*thin, 1, t.DEFOCUS, 15),
           "three_slices_lsq_15": t._reconstruct(*three, 3, t.DEFOCUS, 15),
           "thin_adam_6": t._reconstruct(*thin, 1, t.DEFOCUS, 6, optimizer="adam"),
           "thin_flipped_15": t._reconstruct(*thin, 1, -t.DEFOCUS, 15)}
    pats, truth, shifts = t._descanned_case()
    centre = np.array([t.WINDOW // 2, t.WINDOW // 2])
    whole, rest = whole_pixel_shifts(shifts + centre, (t.WINDOW, t.WINDOW))
    rolled = shift_images(pats, whole)
    ds = t._dataset(rolled, t.DEFOCUS)
    model = Ptychography.from_dataset(ds, n_slices=1, detector_shifts=rest.reshape(-1, 2))
    out["descan_in_model_15"] = [t._pearson(model.phase_in_dataset_frame(t.FOV), truth)
                                 for _ in model.LSQ_optimize(15, ds, batch_size=16, progress=False)]
    return out


def calibration(work: Path) -> dict[str, float]:
    import abtem_scan
    import test_calibrate as t

    from phasestem.calibrate import calibrate, load_for_calibration
    from phasestem.recon.synthetic import synthetic_scan

    data = abtem_scan.make(work / "abtem_scan")
    cal = calibrate(load_for_calibration(data["file"], abtem_scan.ENERGY, abtem_scan.STEP),
                    semiangle=abtem_scan.SEMIANGLE)
    out = {"abtem_rotation": cal.rotation, "abtem_angular_sampling": cal.angular_sampling,
           "abtem_C10": cal.aberrations["C10"], "abtem_transpose": float(cal.transpose)}
    out.update({f"abtem_plane_{i}": float(v) for i, v in enumerate(np.asarray(cal.disk.plane).ravel())})
    ast = calibrate(t._phasestem_scan({"C10": 60.0, "C12": 20.0, "phi12": 0.6}), semiangle=20.0)
    out.update({f"astigmatism_{k}": float(v) for k, v in ast.aberrations.items()})
    ds = synthetic_scan(window=(48, 48), sampling=0.3, scan_shape=(16, 16), scan_step=0.4, semiangle=20.0,
                          c10=60.0, max_phase=0.5, dose=2e4, seed=1)
    sign = calibrate(ds._replace(angular_sampling=None), semiangle=20.0)
    out["synthetic_C10"] = sign.aberrations["C10"]
    out["synthetic_rotation"] = sign.rotation
    return out


def auto(work: Path) -> dict[str, float]:
    """Phase r, C10 and rotation of ``reconstruct --auto`` on the abTEM scan (as tests/test_auto.py)."""
    import abtem_scan
    from test_auto import _central_r, grid_positions

    from phasestem.cli import main
    from phasestem.recon.params import load_params

    data = abtem_scan.make(work / "abtem_scan")
    out = work / "auto"
    if main(["reconstruct", str(data["file"]), "--auto", "--energy", "300e3", "--semiangle", "21.4",
             "--scan-step", "0.45", "--out", str(out), "--device", "cpu"]) != 0:
        raise SystemExit("reconstruct --auto failed")
    params = load_params(out / "params.yaml")
    r = _central_r(out / "results.h5", grid_positions(params.scan, params.scan.shape), data["truth"])
    return {"r_auto": r, "C10": params.optics.aberrations.get("C10"), "rotation": params.scan.rotation}


def reconstruction(work: Path) -> Path:
    """results.h5 of configs/reconstruct_tiny.yaml (10 epochs of Adam on recon.synthetic data)."""
    import yaml

    from phasestem.cli import main
    from phasestem.recon.synthetic import write_npz

    write_npz(work / "recon_tiny.npz")
    cfg = yaml.safe_load((ROOT / "configs" / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(work / "recon_tiny.npz")
    cfg["run"]["out_dir"] = str(work / "recon_run")
    cfg.pop("tune", None)
    (work / "recon.yaml").write_text(yaml.safe_dump(cfg))
    if main(["reconstruct", str(work / "recon.yaml")]) != 0:
        raise SystemExit("reconstruct failed")
    return work / "recon_run" / "results.h5"


def arrays(work: Path) -> dict[str, np.ndarray]:
    """Simulator patterns, the learned route's synthetic file and the measurement residual map."""
    from phasestem.learn.consistency import measurement_residual
    from phasestem.learn.data.synthetic import write_synthetic_file
    from phasestem.recon.synthetic import synthetic_scan
    from phasestem.simulate.config import load_config
    from phasestem.simulate.scan import simulate_sample

    cfg = load_config(ROOT / "configs" / "simulate_tiny.yaml")
    sample = simulate_sample(cfg, 0)
    path = write_synthetic_file(work / "synthetic.h5", 2, scan=8, window=16, phase_px=32, extent=16.0, dose=None)
    ds = synthetic_scan(window=(32, 32), sampling=0.4, scan_shape=(6, 6), scan_step=1.0, seed=3)
    res = measurement_residual(ds.truth["phase"], ds, phase_sampling=ds.truth["sampling"])
    out = {"simulator_patterns": sample["patterns"], "simulator_phase": sample["phase"],
           "recon_synthetic_patterns": np.asarray(ds.patterns), "residual_map": res["map"],
           "residual": np.array([res["residual"]])}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[f"learn_synthetic/{name}"] = obj[()]
        f.visititems(visit)
    return out


def results_arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fciub" and not name.endswith("seconds"):
                out[f"results/{name}"] = obj[()]
        f.visititems(visit)
    return out


def compute(work: Path) -> tuple[dict, dict[str, np.ndarray]]:
    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    numbers = {"independent": independent_accuracy(), "calibration": calibration(work), "auto": auto(work)}
    arr = arrays(work)
    arr.update(results_arrays(reconstruction(work)))
    return numbers, arr


def compare(before: dict, after: dict, before_arr: dict, after_arr: dict) -> list[str]:
    bad = []
    for group, values in before.items():
        for k, v in values.items():
            a, b = np.atleast_1d(np.asarray(v, float)), np.atleast_1d(np.asarray(after[group][k], float))
            diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
            print(f"{group}/{k}: before {a[-1]:.6f} after {b[-1]:.6f}  max |Δ| {diff:.2e}")
            if diff > SCALAR_TOL:
                bad.append(f"{group}/{k}: max |Δ| {diff:.2e} > {SCALAR_TOL}")
    for k, a in before_arr.items():
        if k not in after_arr:
            bad.append(f"{k}: missing after")
            continue
        b = after_arr[k]
        if a.shape != b.shape:
            bad.append(f"{k}: shape {a.shape} → {b.shape}")
            continue
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        diff = float(np.max(np.abs(a.astype(np.complex128) - b.astype(np.complex128)))) if a.size else 0.0
        print(f"{k}: {a.shape} max |Δ| {diff:.2e} (max |value| {scale:.3g})")
        if diff > ARRAY_RTOL * max(scale, 1e-12):
            bad.append(f"{k}: max |Δ| {diff:.2e} > {ARRAY_RTOL} × {scale:.3g}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["record", "compare"])
    ap.add_argument("dir", type=lambda p: Path(p).resolve())  # the reconstruct step runs in a subfolder
    args = ap.parse_args()
    if args.action == "record":
        numbers, arr = compute(args.dir / "work")
        (args.dir / "numbers.json").write_text(json.dumps(numbers, indent=1))
        np.savez(args.dir / "arrays.npz", **arr)
        print(json.dumps(numbers, indent=1))
        return 0
    before = json.loads((args.dir / "numbers.json").read_text())
    with np.load(args.dir / "arrays.npz") as z:
        before_arr = {k: z[k] for k in z.files}
    with tempfile.TemporaryDirectory() as tmp:
        numbers, arr = compute(Path(tmp))
    bad = compare(before, numbers, before_arr, arr)
    print("\n".join(["DIFFERENT:", *bad]) if bad else "same numbers")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
