"""py4DSTEM 0.14 on the Merlin file, the way its tutorials treat experimental data (run with the py4dstem venv):

    python run_py4dstem_mib.py SCAN.mib RESULT.npz --energy 300e3 --semiangle 20 --scan-step 0.45 --iters 10

1. ``py4DSTEM.import_file(mib, mem='RAM')``: py4DSTEM's own Merlin reader (scan shape from ``ScanX``/``ScanY``
   in the .hdr);
2. ``filter_hot_pixels``: hot pixels (threshold: the median bright-field level of the mean pattern) replaced by
   their local median (py4DSTEM has no dead-pixel finder);
3. ``get_probe_size`` on the mean pattern: disk radius → Q pixel size = semi-angle / radius (mrad);
4. ``DPC.preprocess``: centre of mass with a plane fit (descan), rotation and transpose by least curl;
5. ``Parallax``: preprocess (descan plane), reconstruct (bright-field alignment), ``aberration_fit`` with the
   DPC transpose → defocus C10 (and its own rotation);
6. ``SingleslicePtychography`` with that C10; ``preprocess(fit_function='plane')`` with rotation and transpose
   left free (probe overlaps ``--overlap-batch`` probes at a time); ``reconstruct``: gradient descent, step 0.5,
   batch ``--batch``, ``--iters`` iterations, positions fixed (as in ``../recon_peers/run_py4dstem.py``).

Writes the phase, the probe positions in object pixels (to map the phase onto the truth), the pixel size,
every found number, the wall time of each stage and the process's peak memory (VmHWM) after each stage.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def vm_hwm_gib() -> float:
    """This process's peak resident memory (GiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mib")
    ap.add_argument("result")
    ap.add_argument("--energy", type=float, required=True)
    ap.add_argument("--semiangle", type=float, required=True)
    ap.add_argument("--scan-step", type=float, required=True)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlap-batch", type=int, default=256,
                    help="probes at a time for preprocess's probe overlaps (default None: all at once, 16 GiB of "
                         "complex128 per array at 128² × 256²)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import py4DSTEM
    from py4DSTEM.process.phase import DPC, Parallax, SingleslicePtychography

    stages: dict[str, dict] = {}
    found: dict = {"tool": f"py4DSTEM {py4DSTEM.__version__}"}
    t_all = time.perf_counter()
    clock = [time.perf_counter()]

    def stage(name: str) -> None:
        now = time.perf_counter()
        stages[name] = {"s": now - clock[0], "vm_hwm_gib": vm_hwm_gib()}
        clock[0] = now
        print(f"[py4DSTEM] {name}: {stages[name]['s']:.1f} s, peak {stages[name]['vm_hwm_gib']:.2f} GiB", flush=True)

    dc = py4DSTEM.import_file(args.mib, mem="RAM")
    found["read_shape"] = list(dc.data.shape)
    found["read_dtype"] = str(dc.data.dtype)
    stage("read")

    dp_mean = np.asarray(dc.get_dp_mean().data, dtype=np.float64)
    bright = dp_mean > 0.5 * np.percentile(dp_mean, 99)
    thresh = float(np.median(dp_mean[bright]))
    _, mask = dc.filter_hot_pixels(thresh=thresh, return_mask=True)
    found["hot_threshold"] = thresh
    found["hot_pixels"] = [list(map(int, p)) for p in np.argwhere(mask)]
    dp_mean = np.asarray(dc.get_dp_mean().data, dtype=np.float64)
    radius, qx0, qy0 = dc.get_probe_size(dp_mean)
    dk = args.semiangle / radius
    dc.calibration.set_R_pixel_size(args.scan_step)
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(dk)
    dc.calibration.set_Q_pixel_units("mrad")
    found.update(disk_radius_px=float(radius), disk_centre_px=[float(qx0), float(qy0)], angular_sampling=dk)
    stage("hot pixels + probe size")

    dpc = DPC(datacube=dc, energy=args.energy, verbose=False, device="cpu")
    dpc.preprocess(fit_function="plane", plot_center_of_mass=False, plot_rotation=False)
    found["dpc_rotation_deg"] = float(np.rad2deg(dpc._rotation_best_rad))
    found["dpc_transpose"] = bool(dpc._rotation_best_transpose)
    del dpc
    stage("DPC rotation/transpose")

    par = Parallax(energy=args.energy, datacube=dc, verbose=False, device="cpu", object_padding_px=(8, 8))
    par.preprocess(threshold_intensity=0.8, descan_correction_fit_function="plane", plot_average_bf=False,
                   force_transpose=found["dpc_transpose"])
    par.reconstruct(progress_bar=False, plot_aligned_bf=False, plot_convergence=False)
    par.aberration_fit(force_transpose=found["dpc_transpose"], plot_CTF_comparison=False,
                       plot_BF_shifts_comparison=False)
    found["parallax_C10"] = float(par.aberrations_dict_polar["C10"])
    found["parallax_rotation_deg"] = float(np.rad2deg(par.rotation_Q_to_R_rads))
    found["parallax_polar"] = {k: float(v) for k, v in par.aberrations_dict_polar.items()}
    del par
    stage("parallax defocus")

    ptycho = SingleslicePtychography(datacube=dc, energy=args.energy, semiangle_cutoff=args.semiangle,
                                     polar_parameters={"C10": found["parallax_C10"]}, device="cpu", verbose=False,
                                     object_type="complex")
    ptycho.preprocess(fit_function="plane", plot_center_of_mass=False, plot_rotation=False,
                      plot_probe_overlaps=False, max_batch_size=args.overlap_batch)
    found["ptycho_rotation_deg"] = float(np.rad2deg(ptycho._rotation_best_rad))
    found["ptycho_transpose"] = bool(ptycho._rotation_best_transpose)
    stage("ptychography preprocess")

    iter_times = []
    for it in range(args.iters):
        t0 = time.perf_counter()
        ptycho.reconstruct(num_iter=1, reset=(it == 0), reconstruction_method="gradient-descent", step_size=0.5,
                           max_batch_size=args.batch, seed_random=it, progress_bar=False, fix_positions=True)
        iter_times.append(time.perf_counter() - t0)
    stage("ptychography reconstruct")

    phase = np.angle(np.asarray(ptycho.object))
    positions_px = np.asarray(ptycho._positions_px_initial, dtype=np.float64)
    sampling = [float(s) for s in ptycho.sampling]
    total = time.perf_counter() - t_all
    out = {"found": found, "stages": stages, "total_s": total, "iter_times": iter_times,
           "vm_hwm_gib": vm_hwm_gib(), "settings": {"method": "gradient-descent", "step_size": 0.5,
                                                    "batch": args.batch, "iters": args.iters,
                                                    "threads": args.threads}}
    tmp = args.result + ".tmp.npz"
    np.savez(tmp, phase=phase.astype(np.float32), positions_px=positions_px, sampling=np.asarray(sampling),
             info=json.dumps(out))
    os.replace(tmp, args.result)
    print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
