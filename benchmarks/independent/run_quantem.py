"""quantem 0.1.10 on one benchmark case (run with the quantem venv's python, see setup_envs.sh):
``python run_quantem.py CASE.npz RESULT.npz [--threads 2]``.

Engine: ``PtychoLite`` (quantem's gradient-descent ptychography: autograd, AdamW on the object,
lr 5e-3, and on the probe, lr 1e-3, loss ``l2_amplitude``, complex pixelated object, shuffled
mini-batches), all its defaults except what the comparison fixes (PEERS.md):

* the models are built with ``PtychoLite.from_models`` so that the probe is the NOMINAL probe with a
  hard aperture edge (``soft_edges=False``; quantem's default is soft) and C10 = +Δf (quantem's
  ``defocus`` is −C10);
* the data are not re-centred: ``com_fit_function='no_shift'`` (zero frequency at (N/2, N/2), as
  written), detector rotation forced to 0 and no transpose (quantem fits both otherwise);
* positions exact and frozen (no position or descan learning);
* the object is padded by N/2 px on each side (``obj_padding_px``; quantem's default 0 wraps the
  probe windows round a periodic object the size of the scanned field), as py4DSTEM does;
* batch 32 (the case's batch); one ``reconstruct(num_iters=n)`` call; the wall time and the phase
  after each iteration are taken at quantem's per-iteration ``_record_iter`` (``phase_history``).
"""
from __future__ import annotations

import argparse
import time

from common import load_case, save_result, set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("case")
    ap.add_argument("result")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--soft-edge", action="store_true", help="quantem's default soft aperture edge instead")
    args = ap.parse_args()
    set_threads(args.threads)
    import numpy as np
    import quantem
    import torch
    from quantem.core.datastructures import Dataset4dstem
    from quantem.diffractive_imaging.dataset_models import PtychographyDatasetRaster
    from quantem.diffractive_imaging.detector_models import DetectorPixelated
    from quantem.diffractive_imaging.object_models import ObjectPixelated
    from quantem.diffractive_imaging.probe_models import ProbePixelated
    from quantem.diffractive_imaging.ptychography_lite import PtychoLite

    c = load_case(args.case)
    setup0 = time.perf_counter()  # the tool's set-up from here to its first iteration's clock
    sy, sx, H, W = c["patterns"].shape
    S, M = c["n_slices"], c["n_modes"]
    dk = 1.0 / (H * c["sampling"])  # Å⁻¹ per detector pixel
    d4 = Dataset4dstem.from_array(array=c["patterns"].astype(np.float32), name="case",
                                  origin=np.zeros(4), sampling=[c["scan_step"], c["scan_step"], dk, dk],
                                  units=["A", "A", "A^-1", "A^-1"])
    dm = PtychographyDatasetRaster.from_dataset4dstem(d4, verbose=0, learn_descan=False, learn_scan_positions=False)
    pad = (H // 2, W // 2)
    dm.preprocess(com_fit_function="no_shift", force_com_rotation=0.0, force_com_transpose=False,
                  obj_padding_px=pad, plot_rotation=False, plot_com=False, probe_energy=c["energy"])
    dm.scan_positions_px.requires_grad_(False)
    dm.descan_shifts.requires_grad_(False)
    obj = ObjectPixelated.from_uniform(num_slices=S, slice_thicknesses=c["dz"] if S > 1 else None,
                                       obj_type="complex", device="cpu", rng=0)
    probe = ProbePixelated.from_params(
        probe_params={"energy": c["energy"], "semiangle_cutoff": c["semiangle"], "soft_edges": args.soft_edge,
                      "C10": c["c10"]},
        num_probes=M, device="cpu", rng=0)
    ptycho = PtychoLite.from_models(dset=dm, obj_model=obj, probe_model=probe, detector_model=DetectorPixelated(),
                                    device="cpu", verbose=0, rng=0)
    ptycho.preprocess(obj_padding_px=pad, plot_rotation=False, plot_com=False)

    def phase_now() -> np.ndarray:
        o = np.asarray(ptycho.obj)
        ph = np.angle(o)
        return ph.reshape(-1, *ph.shape[-2:]).sum(0)

    # One reconstruct() call for all iterations (as a user would run it). Per-iteration wall/CPU time
    # and phase come from a wrapper round _record_iter, which quantem calls once at the end of each
    # iteration's mini-batches; the phase snapshot's own time is excluded from the next iteration.
    times, cpu_times, history = [], [], []
    mark = [0.0, 0.0]
    orig_record = ptycho._record_iter

    def record_iter(*a, **kw):
        t1, c1 = time.perf_counter(), time.process_time()
        times.append(t1 - mark[0])
        cpu_times.append(c1 - mark[1])
        out = orig_record(*a, **kw)
        history.append(phase_now())
        mark[0], mark[1] = time.perf_counter(), time.process_time()
        return out

    ptycho._record_iter = record_iter
    mark[0], mark[1] = time.perf_counter(), time.process_time()
    setup_s = mark[0] - setup0
    ptycho.reconstruct(num_iters=c["iters"], batch_size=c["batch"], verbose=0)
    if len(history) != c["iters"]:
        raise SystemExit(f"expected {c['iters']} iterations, recorded {len(history)}")
    origin = dm.scan_positions_px[0].detach().cpu().numpy().astype(np.float64)  # probe centre, object px
    settings = {"tool": f"quantem {quantem.__version__}", "engine": "PtychoLite (autograd)",
                "optimizer": "AdamW", "obj_lr": 5e-3, "probe_lr": 1e-3, "loss": "l2_amplitude",
                "batch": c["batch"], "probe_modes": M, "slices": S, "aperture": "soft" if args.soft_edge else "hard",
                "com_fit_function": "no_shift", "rotation": 0, "transpose": False, "obj_padding_px": list(pad),
                "positions": "exact, frozen", "torch": torch.__version__, "iter_cpu": cpu_times,
                "cpu_s_per_iter": float(np.mean(cpu_times)), "setup_s": setup_s}
    save_result(args.result, history[-1], origin, times, settings, phase_history=history)


if __name__ == "__main__":
    main()
