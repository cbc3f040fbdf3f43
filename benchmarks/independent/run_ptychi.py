"""pty-chi 2.2 (PyPI ``ptychi``) LSQML on one benchmark case (run with the ptychi venv's python):
``python run_ptychi.py CASE.npz RESULT.npz [--threads 2] [--device cuda]``.

Engine: LSQML (least-squares maximum likelihood with per-batch optimal step sizes, Odstrčil 2018)
with its defaults (Gaussian noise model, object and probe updated from the first epoch, optimal
step-size scalers 0.9, probe intensity rescaled in the first epoch, random batching) except:

* batch 32 (the case's batch; pty-chi's default is 100), CPU (or ``--device cuda``), float32, random seed 0;
* noise-free data (normalised to 1 per pattern in the case files) are given in counts, scaled to
  ``--counts`` (1e6) per pattern: LSQML's Gaussian noise model is not scale-invariant (thin case: r
  0.838 after 20 epochs on the normalised data vs 0.986 after 6 in counts); noisy data are counts;
* the initial probe is the NOMINAL probe: hard aperture at the semi-angle, χ = πλ·C10·k² with
  C10 = +Δf (the benchmark's convention), ψ = exp(−iχ) (checked below), built here, centred in its
  window (fftshift) and scaled to the data with ``ptychi.utils.rescale_probe``;
* positions exact and not refined (pty-chi's default: not optimisable); they are probe-window
  centres in pixels relative to ``position_origin_coords``, which is SPECIFIED so that every window
  lands on whole pixels (patch top-left = position + origin − (N − 1)/2; the probe's centre pixel
  N/2 then sits at object pixel position + origin + 0.5);
* ``fft_shift=True`` (pty-chi's default): the data are given with k = 0 at (N/2, N/2), as written;
* multislice: ``slice_spacings_m`` = dz for the S − 1 gaps.

The propagator's sign and the pattern orientation are checked at start-up (``--check``, on by
default): the nominal probe is pushed through a thin test object along the benchmark's conventions
and pty-chi's forward model, and the run stops if they disagree (a transposed pattern or a flipped
defocus sign shows as a 7e-2–1e-1 relative forward error against the data; we require < 1e-3).
One epoch per ``task.run(1)`` call, so that the wall time and the phase after each epoch are
recorded (``phase_history``).
"""
from __future__ import annotations

import argparse
import time

from common import load_case, save_result, set_threads


def wavelength(energy: float) -> float:
    """Relativistic electron wavelength (Å)."""
    import math

    h, me, qe, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    e = energy * qe
    return h / math.sqrt(2 * me * e * (1 + e / (2 * me * c**2))) * 1e10


def nominal_probe(n: int, sampling: float, energy: float, semiangle: float, c10: float):
    """Probe (n, n) complex64 centred at pixel (n/2, n/2): hard aperture, ψ(k) = A(k) exp(−iπλ·C10·k²)."""
    import numpy as np

    lam = wavelength(energy)
    k = np.fft.fftfreq(n, sampling)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    amp = (np.sqrt(k2) * lam * 1e3 <= semiangle).astype(float)
    psi_k = amp * np.exp(-1j * np.pi * lam * c10 * k2)
    return np.fft.fftshift(np.fft.ifft2(psi_k)).astype(np.complex64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("case")
    ap.add_argument("result")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (pty-chi's GPU device)")
    ap.add_argument("--no-check", action="store_true", help="skip the forward-model convention check")
    ap.add_argument("--counts", type=float, default=1e6,
                    help="noise-free data are scaled to this many counts per pattern (LSQML assumes counts)")
    ap.add_argument("--batch", type=int, default=None, help="mini-batch size (default: the case's, 32)")
    ap.add_argument("--noise-model", choices=["gaussian", "poisson"], default="gaussian",
                    help="LSQML's noise model (default: pty-chi's, gaussian)")
    ap.add_argument("--momentum", type=float, default=0.0,
                    help="LSQML's momentum_acceleration_gain (default: pty-chi's, 0 = off)")
    args = ap.parse_args()
    set_threads(args.threads)
    import logging

    import numpy as np
    import ptychi
    import ptychi.api as api
    import torch
    from ptychi.api.task import PtychographyTask
    from ptychi.utils import rescale_probe

    logging.getLogger("ptychi").setLevel(logging.WARNING)
    c = load_case(args.case)
    setup0 = time.perf_counter()  # the tool's set-up from here to its first iteration's clock
    sy, sx, H, W = c["patterns"].shape
    S, M = c["n_slices"], c["n_modes"]
    if H != W:
        raise SystemExit("square patterns only")
    lam_m = wavelength(c["energy"]) * 1e-10
    step_px = c["scan_step"] / c["sampling"]
    iy, ix = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
    pos_y = (iy.ravel() * step_px).astype(np.float32)
    pos_x = (ix.ravel() * step_px).astype(np.float32)
    origin = np.array([(H - 1) / 2.0, (W - 1) / 2.0])  # first window's top-left corner at object pixel (0, 0)
    obj_shape = (int(np.ceil(pos_y.max())) + H + 2, int(np.ceil(pos_x.max())) + W + 2)  # +2: its Fourier-shift pad
    patterns = c["patterns"].reshape(sy * sx, H, W).astype(np.float32)
    # LSQML's Gaussian noise model (σ = 0.5, in the data's units) assumes counts: on noise-free patterns
    # normalised to 1 it barely moves (thin case: r 0.838 after 20 epochs, vs 0.986 after 6 with the
    # same data × 1e6). Noise-free data are therefore given in counts, scaled to --counts per pattern
    # (default 1e6, the noisy cases' dose); Poisson-noisy data are already counts and are left as they are.
    dose = float(c.get("dose", 0.0))
    scale = 1.0 if dose > 0 else args.counts / float(patterns.sum((-2, -1)).mean())
    patterns = patterns * np.float32(scale)

    probe = nominal_probe(H, c["sampling"], c["energy"], c["semiangle"], c["c10"])[None, None]
    if M > 1:  # extra incoherent modes: Hermite-like modes from pty-chi's helper, 2 % of the power each
        from ptychi.utils import orthogonalize_initial_probe

        extra = [probe[0, 0] * 0.1 * np.exp(2j * np.pi * m * np.arange(W)[None, :] / W) for m in range(1, M)]
        probe = np.concatenate([probe, np.stack(extra)[None]], 1)
        probe = orthogonalize_initial_probe(torch.as_tensor(probe)).numpy()
    probe = rescale_probe(probe, patterns).astype(np.complex64)

    if not args.no_check:  # the benchmark's own check, not pty-chi's set-up: kept out of setup_s
        t_check = time.perf_counter()
        check_conventions(c, probe[0, 0], lam_m)
        setup0 += time.perf_counter() - t_check

    opts = api.LSQMLOptions()
    opts.data_options.wavelength_m = lam_m
    opts.data_options.fft_shift = True
    opts.object_options.pixel_size_m = c["sampling"] * 1e-10
    if S > 1:
        opts.object_options.slice_spacings_m = np.full(S - 1, c["dz"] * 1e-10)
    opts.object_options.determine_position_origin_coords_by = api.enums.ObjectPosOriginCoordsMethods.SPECIFIED
    opts.object_options.position_origin_coords = origin
    opts.probe_position_options.optimizable = False
    batch = args.batch or c["batch"]
    opts.reconstructor_options.batch_size = batch
    opts.reconstructor_options.noise_model = api.enums.NoiseModels(args.noise_model)
    opts.reconstructor_options.momentum_acceleration_gain = args.momentum
    opts.reconstructor_options.num_epochs = c["iters"]
    opts.reconstructor_options.default_device = api.enums.Devices.GPU if args.device.startswith("cuda") \
        else api.enums.Devices.CPU
    opts.reconstructor_options.random_seed = 0

    task = PtychographyTask(opts, diffraction_data=patterns, object_data=np.ones((S, *obj_shape), dtype=np.complex64),
                            probe_data=probe, probe_position_y_px=pos_y, probe_position_x_px=pos_x)
    times, cpu_times, history = [], [], []

    def phase_now() -> np.ndarray:
        obj = task.get_data_to_cpu("object", as_numpy=True)  # (S, h, w)
        return np.angle(obj).sum(0)

    # probe centre (pixel N/2 of the window) of the first position, in object pixels
    origin_px = np.array([pos_y[0], pos_x[0]]) + origin - (np.array([H, W]) - 1) / 2 + np.array([H, W]) // 2
    settings = {"tool": f"pty-chi {getattr(ptychi, '__version__', '2.2')}", "engine": "LSQML",
                "noise_model": args.noise_model, "momentum": args.momentum, "batch": batch,
                "batching": "random (default)",
                "probe_modes": M, "slices": S, "initial_probe": "nominal, hard aperture, rescale_probe",
                "positions": "exact, not optimisable", "position_origin": "SPECIFIED", "fft_shift": True,
                "data_scale": scale, "data_note": "noise-free data scaled to counts" if dose <= 0 else "counts",
                "torch": torch.__version__, "device": args.device, "iter_cpu": cpu_times, "iters_planned": c["iters"]}
    setup_s = None
    for _ in range(c["iters"]):
        t0, c0 = time.perf_counter(), time.process_time()
        setup_s = t0 - setup0 if setup_s is None else setup_s
        task.run(1)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        history.append(phase_now())  # not timed
        # saved after every iteration (not timed): a run stopped at a wall-time budget keeps its r so far
        settings.update(setup_s=setup_s, iters_done=len(times), cpu_s_per_iter=float(np.mean(cpu_times)))
        save_result(args.result, history[-1], origin_px, times, settings, phase_history=history)
    losses = getattr(task.reconstructor, "loss_tracker", None)
    loss_list = None
    if losses is not None and hasattr(losses, "table"):
        try:
            loss_list = [float(v) for v in losses.table["loss"]]
        except Exception:  # noqa: BLE001 - a display nicety only
            loss_list = None
    settings["loss_per_epoch"] = loss_list
    save_result(args.result, history[-1], origin_px, times, settings, phase_history=history)


def check_conventions(c: dict, probe, lam_m: float) -> None:
    """pty-chi's forward model vs the benchmark's conventions on a thin test object (stops on mismatch).

    A weak, asymmetric test object (S slices dz apart) is illuminated by the nominal probe; the
    far-field intensity by pty-chi's own classes (patch extraction at a known position, its
    multislice propagator, its far-field propagator, its fft_shift handling of the data) is
    compared with the same computed here in the benchmark's convention (exp(−iπλk²dz) Fresnel
    propagator, |FFT|² with k = 0 at (N/2, N/2)). Prints the relative difference, and that of the
    wrong variants (transposed pattern, flipped propagator sign) for scale.
    """
    import numpy as np
    import torch
    from ptychi.propagate import AngularSpectrumPropagator, WavefieldPropagatorParameters

    n = probe.shape[-1]
    S = c["n_slices"]
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:n, 0:n]
    obj = np.zeros((max(S, 2), n, n))
    for s in range(obj.shape[0]):
        for _ in range(6):
            cy, cx = rng.uniform(n * 0.3, n * 0.7, 2)
            obj[s] += 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2 / 3.0) / 8.0)
    trans = np.exp(1j * obj)
    dz = c["dz"]
    samp = c["sampling"]
    lam = lam_m * 1e10
    k = np.fft.fftfreq(n, samp)
    k2 = k[:, None] ** 2 + k[None, :] ** 2

    def ours(sign: float = 1.0, transpose: bool = False) -> np.ndarray:
        w = probe.astype(np.complex128)
        for s in range(trans.shape[0]):
            w = w * trans[s]
            if s < trans.shape[0] - 1:
                w = np.fft.ifft2(np.fft.fft2(w) * np.exp(-1j * sign * np.pi * lam * k2 * dz))
        p = np.fft.fftshift(np.abs(np.fft.fft2(w)) ** 2)
        return p.T if transpose else p

    params = WavefieldPropagatorParameters.create_simple(
        wavelength_m=lam_m, width_px=n, height_px=n, pixel_width_m=samp * 1e-10, pixel_height_m=samp * 1e-10,
        propagation_distance_m=dz * 1e-10)
    prop = AngularSpectrumPropagator(params)
    w = torch.as_tensor(probe, dtype=torch.complex64)[None]
    for s in range(trans.shape[0]):
        w = w * torch.as_tensor(trans[s], dtype=torch.complex64)
        if s < trans.shape[0] - 1:
            w = prop.propagate_forward(w)
    # pty-chi compares |fft2(exit)|² with ifftshift(data): shift its model back to k = 0 at N/2
    theirs = torch.fft.fftshift(torch.abs(torch.fft.fft2(w[0])) ** 2).numpy()
    ref = ours()
    scale = np.abs(ref).max()
    err = np.abs(theirs - ref).max() / scale
    err_flip = np.abs(theirs - ours(-1.0)).max() / scale
    err_t = np.abs(theirs - ours(transpose=True)).max() / scale
    print(f"pty-chi convention check: rel. forward difference {err:.2e} (flipped propagator sign {err_flip:.2e}, "
          f"transposed pattern {err_t:.2e})", flush=True)
    if not err < 1e-3:
        raise SystemExit(f"pty-chi's forward model disagrees with the benchmark's conventions ({err:.2e})")


if __name__ == "__main__":
    main()
