"""Same numbers before and after a structural refactor (issue 26).

Records, on the code it runs with, a small set of figures that a refactor must not change:

* the independent-data accuracy cases of ``tests/test_independent_accuracy.py`` (phase Pearson r per epoch: one
  slice, three slices, Adam, the descan given to the model);
* the calibration of the abTEM scan of ``tests/abtem_scan.py`` (rotation, C10, angular sampling, semi-angle,
  transpose) and the phase r of ``phasestem reconstruct --auto`` on it (``tests/test_auto.py``);
* the ``results.h5`` of a small reconstruction (``configs/reconstruct_tiny.yaml``'s settings on the synthetic
  data of :mod:`phasestem.recon.synthetic`, 6 epochs, CPU, fixed seed).

Usage::

    python benchmarks/refactor_check.py record BASELINE_DIR     # on the code before the refactor
    python benchmarks/refactor_check.py compare BASELINE_DIR    # after: r to 1e-4, results.h5 to float tolerance

The input data (synthetic .npz, abTEM scan) are written into BASELINE_DIR by ``record`` and reused by
``compare``, so a change of a simulator does not show as a change of the reconstruction. ``--only`` picks
sections (independent, calibration, auto, recon).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "independent"))

SECTIONS = ("independent", "calibration", "auto", "recon")
R_TOLERANCE = 1e-4


def independent() -> dict:
    import torch
    from test_independent_accuracy import DEFOCUS, FOV, WINDOW, _case, _dataset, _descanned_case, _pearson, _reconstruct

    from phasestem.calibrate.correct import whole_pixel_shifts
    from phasestem.recon import Ptychography

    torch.set_num_threads(1)
    thin, three = _case(1), _case(3)
    out = {"single_slice_lsq": _reconstruct(*thin, 1, DEFOCUS, 15),
           "three_slices_lsq": _reconstruct(*three, 3, DEFOCUS, 15),
           "single_slice_adam": _reconstruct(*thin, 1, DEFOCUS, 6, optimizer="adam")}
    pats, truth, shifts = _descanned_case()
    centre = np.array([WINDOW // 2, WINDOW // 2])
    whole, rest = whole_pixel_shifts(shifts + centre, (WINDOW, WINDOW))
    from phasestem.calibrate.correct import shift_images

    ds = _dataset(shift_images(pats, whole), DEFOCUS)
    model = Ptychography.from_dataset(ds, n_slices=1, detector_shifts=rest.reshape(-1, 2))
    out["descan_in_model"] = []
    for _ in model.LSQ_optimize(15, ds, batch_size=16, progress=False):
        out["descan_in_model"].append(_pearson(model.phase_in_dataset_frame(FOV), truth))
    return out


def _abtem(base: Path) -> dict:
    import abtem_scan

    return abtem_scan.make(base / "abtem_scan")


def calibration(base: Path) -> dict:
    import abtem_scan

    from phasestem.calibrate import calibrate, load_for_calibration

    data = _abtem(base)
    cal = calibrate(load_for_calibration(data["file"], abtem_scan.ENERGY, abtem_scan.STEP),
                    semiangle=abtem_scan.SEMIANGLE)
    return {"rotation": cal.rotation, "transpose": cal.transpose, "angular_sampling": cal.angular_sampling,
            "semiangle": cal.semiangle, **{k: float(v) for k, v in cal.aberrations.items()},
            "com_rotation": cal.com.rotation, "descan_plane": np.asarray(cal.disk.plane).ravel().tolist()}


def auto(base: Path, work: Path) -> dict:
    from test_auto import _central_r

    from phasestem.cli import main
    from phasestem.recon.params import load_params, scan_positions

    data = _abtem(base)
    out = work / "auto"
    rc = main(["reconstruct", str(data["file"]), "--auto", "--energy", "300e3", "--semiangle", "21.4",
               "--scan-step", "0.45", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    params = load_params(out / "params.yaml")
    r = _central_r(out / "results.h5", scan_positions(params.scan, params.scan.shape), data["truth"])
    return {"r_auto": r, "C10": params.optics.aberrations.get("C10"), "rotation": params.scan.rotation}


def recon(base: Path, work: Path) -> Path:
    """results.h5 of the tiny reconstruction (6 Adam epochs, probe from epoch 3, checkpoint every 2)."""
    import yaml

    from phasestem.recon.commands import run_reconstruction
    from phasestem.recon.params import load_params

    data = base / "recon_tiny.npz"
    if not data.exists():
        from phasestem.recon.synthetic import write_npz

        write_npz(data)
    cfg = yaml.safe_load((ROOT / "configs" / "reconstruct_tiny.yaml").read_text())
    cfg.pop("tune")
    cfg["data"]["file"] = str(data)
    cfg["run"].update({"out_dir": str(work / "recon"), "n_epochs": 6, "device": "cpu", "progress": False})
    path = work / "recon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_reconstruction(load_params(path))
    return work / "recon" / "results.h5"


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("loss/seconds"):
                out[name] = np.asarray(obj[()])
        f.visititems(visit)
    return out


def run(base: Path, work: Path, only) -> dict:
    import torch

    torch.manual_seed(0)
    figures: dict = {}
    if "independent" in only:
        figures["independent"] = independent()
    if "calibration" in only:
        figures["calibration"] = calibration(base)
    if "auto" in only:
        figures["auto"] = auto(base, work)
    if "recon" in only:
        figures["recon_results"] = str(recon(base, work))
    return figures


def _compare_numbers(a, b, where: str, problems: list[str]) -> None:
    if isinstance(a, dict):
        for k in a:
            _compare_numbers(a[k], b.get(k), f"{where}.{k}", problems)
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            problems.append(f"{where}: {a} vs {b}")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare_numbers(x, y, f"{where}[{i}]", problems)
    elif isinstance(a, bool) or a is None or isinstance(a, str):
        if a != b:
            problems.append(f"{where}: {a!r} vs {b!r}")
    elif b is None or abs(float(a) - float(b)) > R_TOLERANCE:
        problems.append(f"{where}: {a} vs {b}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "compare"])
    ap.add_argument("baseline", type=Path, help="folder of the baseline (inputs, figures.json, results.h5)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = ap.parse_args(argv)
    base = args.baseline.resolve()
    base.mkdir(parents=True, exist_ok=True)
    work = base / ("record" if args.mode == "record" else "compare")
    import shutil

    for section in args.only:
        shutil.rmtree(work / section, ignore_errors=True)
    work.mkdir(exist_ok=True)
    figures = run(base, work, args.only)
    if args.mode == "record":
        if "recon_results" in figures:  # kept beside figures.json (the work folder is emptied by every call)
            shutil.copy(figures["recon_results"], base / "results.h5")
            figures["recon_results"] = str(base / "results.h5")
        old = json.loads((base / "figures.json").read_text()) if (base / "figures.json").exists() else {}
        old.update(figures)
        (base / "figures.json").write_text(json.dumps(old, indent=1))
        print(json.dumps(figures, indent=1))
        return 0
    recorded = json.loads((base / "figures.json").read_text())
    problems: list[str] = []
    for key, value in figures.items():
        if key == "recon_results":
            a, b = _h5_arrays(Path(recorded[key])), _h5_arrays(Path(value))
            if sorted(a) != sorted(b):
                problems.append(f"results.h5 datasets differ: {sorted(set(a) ^ set(b))}")
            worst = 0.0
            for name in sorted(set(a) & set(b)):
                x, y = a[name], b[name]
                if x.dtype.kind in "OSU":
                    if not np.array_equal(x, y):
                        problems.append(f"results.h5 {name}: differs")
                    continue
                if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-6):
                    problems.append(f"results.h5 {name}: max |Δ| "
                                    f"{np.abs(x - y).max() if x.shape == y.shape else 'shape'}")
                elif x.size:
                    worst = max(worst, float(np.abs(x.astype(np.complex128) - y).max()))
            print(f"results.h5: {len(a)} datasets, largest |Δ| {worst:.3g}")
        else:
            _compare_numbers(recorded.get(key, {}), value, key, problems)
            print(key, json.dumps(value))
    for p in problems:
        print("DIFFERS:", p)
    print("same numbers" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
