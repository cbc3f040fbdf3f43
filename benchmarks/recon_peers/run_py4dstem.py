"""py4DSTEM 0.14.18 on one benchmark case (run with the py4dstem venv's python, see setup_envs.sh):
``python run_py4dstem.py CASE.npz RESULT.npz [--threads 2] [--step-size 0.5]``.

Class by case: 1 slice 1 mode → SingleslicePtychography; several slices → MultislicePtychography;
several slices and probe modes → MixedstateMultislicePtychography. Fairness settings (PEERS.md):
geometry forced (``force_com_rotation=0``, ``force_com_transpose=False``, ``force_com_shifts`` =
pattern centre), aberrations as ``polar_parameters={'C10': c10}`` (its ``defocus`` is −C10),
gradient descent with ``step_size`` 0.5, batch 32, positions fixed, no filters or denoising.
py4DSTEM pads the object and re-centres the positions: the phase is mapped back to the dataset
frame through its initial pixel positions (probe centres).
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
    ap.add_argument("--step-size", type=float, default=0.5)
    ap.add_argument("--one-call", action="store_true",
                    help="run all iterations in one reconstruct() call (no per-iteration phase history)")
    args = ap.parse_args()
    set_threads(args.threads)
    import numpy as np
    import py4DSTEM
    from py4DSTEM.process.phase import (
        MixedstateMultislicePtychography,
        MixedstatePtychography,
        MultislicePtychography,
        SingleslicePtychography,
    )

    c = load_case(args.case)
    setup0 = time.perf_counter()  # the tool's set-up from here to its first iteration's clock
    sy, sx, H, W = c["patterns"].shape
    lam = 12.2643 / np.sqrt(c["energy"] * (1 + 0.978476e-6 * c["energy"]))  # Å
    dk_mrad = lam / (H * c["sampling"]) * 1e3
    dc = py4DSTEM.DataCube(data=c["patterns"].astype(np.float32))
    dc.calibration.set_R_pixel_size(c["scan_step"])
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(dk_mrad)
    dc.calibration.set_Q_pixel_units("mrad")
    S, M = c["n_slices"], c["n_modes"]
    common = dict(datacube=dc, energy=c["energy"], semiangle_cutoff=c["semiangle"],
                  polar_parameters={"C10": c["c10"]}, device="cpu", verbose=False, object_type="complex")
    if S > 1 and M > 1:
        cls, extra = MixedstateMultislicePtychography, dict(num_slices=S, slice_thicknesses=c["dz"], num_probes=M)
    elif S > 1:
        cls, extra = MultislicePtychography, dict(num_slices=S, slice_thicknesses=c["dz"])
    elif M > 1:
        cls, extra = MixedstatePtychography, dict(num_probes=M)
    else:
        cls, extra = SingleslicePtychography, {}
    ptycho = cls(**common, **extra)
    ptycho.preprocess(plot_center_of_mass=False, plot_rotation=False, plot_probe_overlaps=False,
                      force_com_rotation=0, force_com_transpose=False, force_com_shifts=(H / 2, W / 2))
    kw = dict(num_iter=c["iters"], reconstruction_method="gradient-descent", step_size=args.step_size,
              max_batch_size=c["batch"], seed_random=0, progress_bar=False, reset=True, fix_positions=True)
    if M > 1:
        kw["orthogonalize_probe"] = True
    def phase_now() -> np.ndarray:
        ph = np.angle(np.asarray(ptycho.object))
        return ph.sum(0) if ph.ndim == 3 else ph

    times, history = [], []
    cpu0 = time.process_time()
    if args.one_call:  # the whole run in one reconstruct() call: no per-iteration phase
        t0 = time.perf_counter()
        setup_s = t0 - setup0
        ptycho.reconstruct(**kw)
        times = [(time.perf_counter() - t0) / c["iters"]] * c["iters"]
    else:  # one iteration per call, continuing (reset=False), a fresh batch order each iteration
        for it in range(c["iters"]):
            kw.update(num_iter=1, reset=(it == 0), seed_random=it)
            t0 = time.perf_counter()
            if it == 0:
                setup_s = t0 - setup0
            ptycho.reconstruct(**kw)
            times.append(time.perf_counter() - t0)
            history.append(phase_now())  # not timed
    cpu = time.process_time() - cpu0
    phase = phase_now()
    origin = np.asarray(ptycho._positions_px_initial[0], dtype=np.float64)
    settings = {"tool": f"py4DSTEM {py4DSTEM.__version__}", "class": cls.__name__,
                "method": "gradient-descent", "step_size": args.step_size, "batch": c["batch"],
                "probe_modes": M, "slices": S,
                "time_note": ("whole reconstruct() call / iterations" if args.one_call else
                              "one reconstruct(num_iter=1, reset=False) call per iteration, wall time of each"),
                "cpu_s_per_iter": cpu / c["iters"], "setup_s": setup_s}
    save_result(args.result, phase, origin, times, settings, phase_history=history or None)


if __name__ == "__main__":
    main()
