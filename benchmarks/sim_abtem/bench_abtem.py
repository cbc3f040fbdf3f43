"""Issue 2 benchmark: one seed-spec 4D-STEM sample simulated by phasestem and by abTEM 1.0.11, same run.

    python benchmarks/sim_abtem/bench_abtem.py [--scan 50 50] [--phonons 10] [--gpts 512] [--slices 1]
                                               [--threads 2] [--quick] [--device cuda] [--json FILE]

Both codes get the SAME projected potential and the same probe:

* specimen: a random crystal from ``phasestem.physics.specimen.random_crystal`` (100 Å cell, 15 Å thick),
  ``phonons`` frozen-phonon configurations (σ = 0.1 Å); projected potential per configuration and
  slice computed once by ``phasestem.physics.specimen.projected_potential`` (Kirkland), handed to abTEM
  as a ``PotentialArray`` with a frozen-phonon ensemble axis (abTEM's own potential builder is not
  timed, nor is ours);
* probe: 300 keV, 30 mrad, C10 = 0, C30 = 10⁶ Å (the seed defaults) — abTEM ``aberrations``
  take the same ``C10``/``C30`` keys; note abTEM's ``defocus`` is −C10;
* grid: 512² over 100 Å (0.195 Å/px); both codes keep 2/3 of Nyquist (abTEM's anti-aliasing
  aperture; phasestem ``antialias_mask``): 33.6 mrad here, so the 30 mrad probe is not truncated;
* scan: 50 × 50 positions at 2 Å (probe centres, Å, from the cell origin);
* detector: abTEM's full-grid patterns (``PixelatedDetector(max_angle='full')``) go through the
  same ``phasestem.simulate.scan.DetectorGeometry`` crop/bin as phasestem's (64² within 33.6 mrad).

abTEM axis order is (x, y); the potential array is given as ours (y, x) and positions as (y, x),
i.e. abTEM's "x" is our y throughout — a relabelling that changes nothing for C10/C30-only probes.

``--device cuda`` runs both codes on the GPU (phasestem's tensors on cuda; abTEM with
``device: gpu``, i.e. CuPy), each timing closed by a device synchronisation; the FFT bound is then
the GPU's. The phasestem run is repeated once and the second time reported (the first includes
CUDA's start-up: cuFFT plans, kernel loading); abTEM's likewise.

Reported: wall time of each (potential given), the ratio, time ÷ FFT bound (the FFTs alone for the
same work: per position one inverse FFT for the shifted probe, then per configuration 2(S−1)+1
FFTs, all of the grid size, timed in this run with the same threads at the batch size where one FFT is
fastest — with the allocator setting of ``phasestem.base.runtime``, so page faults do not inflate it), and the
largest difference
between the pattern sets relative to the largest pattern value, plus the relative L2 difference.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", nargs=2, type=int, default=[50, 50])
    ap.add_argument("--step", type=float, default=2.0)
    ap.add_argument("--phonons", type=int, default=10)
    ap.add_argument("--gpts", type=int, default=512)
    ap.add_argument("--extent", type=float, default=100.0)
    ap.add_argument("--slices", type=int, default=1, help="slices over the 15 Å specimen (1 = infinite projection)")
    ap.add_argument("--energy", type=float, default=300e3)
    ap.add_argument("--semiangle", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="8 × 8 scan, 2 phonons (smoke test)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both codes)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.scan, args.phonons = [8, 8], 2
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import abtem
    import dask
    import torch

    from phasestem.physics import specimen
    from phasestem.physics.optics import band_limit_mrad, make_probe
    from phasestem.simulate.scan import DetectorGeometry, scan_positions, simulate_patterns, transmission_slices

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"

    def sync():
        if gpu:
            torch.cuda.synchronize(device)
            import cupy

            cupy.cuda.Device().synchronize()

    if gpu:
        abtem.config.set({"device": "gpu", "precision": "float32"})
    else:
        abtem.config.set({"device": "cpu", "fft": "fftw", "fftw.threads": 1, "precision": "float32"})
    rng = np.random.default_rng(args.seed)
    N = args.gpts
    extent = (args.extent, args.extent)
    sampling = (args.extent / N, args.extent / N)
    depth = 15.0
    aberrations = {"C10": 0.0, "C30": 1e6}

    atoms = specimen.random_crystal(rng, extent, depth)
    edges = None
    dz = depth
    if args.slices > 1:
        edges = np.linspace(0, depth, args.slices + 1)
        edges[0], edges[-1] = -np.inf, np.inf
        dz = depth / args.slices
    t0 = time.perf_counter()
    pots = torch.stack([specimen.projected_potential(specimen.frozen_phonon_positions(atoms.positions, 0.1, rng),
                                                     atoms.numbers, extent, (N, N), edges)
                        for _ in range(args.phonons)])  # (P, S, N, N) V·Å
    t_pot = time.perf_counter() - t0
    positions = scan_positions(tuple(args.scan), (args.step, args.step))
    det = DetectorGeometry.make((N, N), sampling, args.energy, (64, 64))
    print(f"specimen {atoms.info.get('name')} ({len(atoms)} atoms), {args.phonons} phonons × {args.slices} slice(s), "
          f"{N}² grid, {len(positions)} positions; potentials built in {t_pot:.1f} s (not timed below)", flush=True)

    # ---- phasestem ------------------------------------------------------------------------
    probe = make_probe((N, N), sampling, args.energy, args.semiangle, aberrations).to(device)
    pots_dev = pots.to(device)
    for _ in range(2 if gpu else 1):  # on a GPU the first run pays CUDA's start-up; the second is timed
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        trans = transmission_slices(pots_dev, args.energy, sampling)
        ours = simulate_patterns(trans, probe, positions, sampling, args.energy, dz, det, args.batch).cpu().numpy()
        t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    peak_ours = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else float("nan")
    print(f"phasestem: {t_ours:.1f} s ({c_ours:.1f} CPU s)", flush=True)

    # ---- abTEM ----------------------------------------------------------------------------
    from abtem.core.axes import FrozenPhononsAxis

    pot_array = pots.numpy()
    if gpu:  # abTEM computes where its arrays live: a NumPy potential keeps the whole scan on the CPU
        import cupy

        pot_array = cupy.asarray(pot_array)
    pot_ab = abtem.PotentialArray(pot_array, slice_thickness=dz, extent=extent,
                                  ensemble_axes_metadata=[FrozenPhononsAxis(_ensemble_mean=True)])
    probe_ab = abtem.Probe(semiangle_cutoff=args.semiangle, energy=args.energy, gpts=(N, N), extent=extent,
                           aberrations=aberrations)
    scan_ab = abtem.CustomScan(positions)
    for _ in range(2 if gpu else 1):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        meas = probe_ab.scan(pot_ab, scan=scan_ab, detectors=abtem.PixelatedDetector(max_angle="full"))
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            meas = meas.compute()
        arr = meas.array
        if gpu:
            import cupy

            arr = cupy.asnumpy(arr)
        arr = np.asarray(arr)
        t_ab, c_ab = time.perf_counter() - t0, time.process_time() - c0
    while arr.ndim > 3:  # frozen-phonon axis first, if abTEM kept it
        arr = arr.mean(0)
    theirs = det.apply(torch.as_tensor(arr.reshape(len(positions), *arr.shape[-2:]))).numpy()
    print(f"abTEM: {t_ab:.1f} s ({c_ab:.1f} CPU s; patterns {arr.shape})", flush=True)

    # ---- FFT bound: the fastest 512² FFT this machine does, over batch sizes ----------------------
    best = best_cpu = float("inf")
    for fft_batch in (1, 2, 4, 8, 16, 32, 64) + ((128, 256) if gpu else ()):
        x = torch.randn(fft_batch, N, N, dtype=torch.complex64, device=device)
        for _ in range(3):
            torch.fft.fft2(x)
        for _ in range(10):
            sync()
            t1, c1 = time.perf_counter(), time.process_time()
            torch.fft.fft2(x)
            sync()
            best = min(best, (time.perf_counter() - t1) / fft_batch)
            best_cpu = min(best_cpu, (time.process_time() - c1) / fft_batch)
    per_fft, per_fft_cpu = best, best_cpu
    n_fft = len(positions) * (1 + args.phonons * (2 * (args.slices - 1) + 1))
    bound, cpu_bound = n_fft * per_fft, n_fft * per_fft_cpu

    diff = np.abs(ours - theirs)
    rel_max = float(diff.max() / np.abs(theirs).max())
    rel_l2 = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    H, W = ours.shape[-2:]
    ky = (np.arange(H) - H // 2) * det.angular_sampling[0]
    kx = (np.arange(W) - W // 2) * det.angular_sampling[1]
    ang = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    inner = ang < 0.9 * band_limit_mrad(sampling, args.energy)
    rel_inner = float((diff * inner).max() / np.abs(theirs).max())
    print()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| code | time (s) | ÷ abTEM | ÷ FFT bound | CPU s | ÷ abTEM (CPU) | ÷ FFT bound (CPU) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| phasestem | {t_ours:.1f} | {t_ours / t_ab:.2f} | {t_ours / bound:.2f} | {c_ours:.1f} | "
          f"{c_ours / c_ab:.2f} | {c_ours / cpu_bound:.2f} |")
    print(f"| abTEM {abtem.__version__} | {t_ab:.1f} | 1.00 | {t_ab / bound:.2f} | {c_ab:.1f} | 1.00 | "
          f"{c_ab / cpu_bound:.2f} |")
    print(f"| FFT bound ({n_fft} FFTs of {N}², {per_fft * 1e3:.2f} ms each) | {bound:.1f} | | | {cpu_bound:.1f} | | |")
    print()
    print(f"largest |Δ| / max pattern value: {rel_max:.2e}; relative L2 difference: {rel_l2:.2e}; "
          f"pattern sums: phasestem {ours.sum(axis=(1, 2)).mean():.4f}, abTEM {theirs.sum(axis=(1, 2)).mean():.4f}")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump(dict(device=torch.cuda.get_device_name(device) if gpu else f"cpu×{args.threads}",
                           abtem=abtem.__version__, scan=args.scan, phonons=args.phonons, gpts=N, slices=args.slices,
                           phasestem_s=t_ours, abtem_s=t_ab, abtem_cpu_s=c_ab, ratio=t_ab / t_ours, fft_bound_s=bound,
                           abtem_potential="cupy" if gpu else "numpy",
                           phasestem_peak_gib=peak_ours, rel_max=rel_max, rel_l2=rel_l2), fh, indent=1)
    print(f"worst pixel at {ang[worst[1], worst[2]]:.1f} mrad; within 90 % of the band limit the largest |Δ| / max "
          f"is {rel_inner:.2e}")


if __name__ == "__main__":
    main()
