"""Seconds per iteration of phasestem's AD ptychography vs the FFT bound (the FFTs alone).

Data: 32×32 scan (1024 patterns) of 128² patterns, 1 Å step, 0.2 Å pixels, 300 keV, 20 mrad,
100 Å defocus (C10 = −100, abTEM defocus +100), simulated with phasestem's forward model.
Cases: a 1 slice / 1 mode; b 8 slices of 10 Å / 1 mode; c 8 slices / 4 modes; d 1 slice / 4 modes. Batch 32,
Adam on object (amplitude + phase) and probe, 2 CPU threads. ``--compile none,compile,cuda_graph`` times each case
with each mini-batch step of ``run.compile`` (:mod:`phasestem.recon.step`; cuda_graph on CUDA only): the first
epoch, which compiles or captures, is the untimed warm-up.

The FFT bound per iteration is the time of the 2-D FFTs a mixed-state multislice forward
+ backward pass needs, run alone on the same batch tensors: per batch of B patterns with M
probe modes and S slices, 4·S batched FFTs of (B·M, 128, 128) (forward: probe shift,
2(S−1) propagations, far field; the backward pass as many again).

Times are the minimum over iterations (robust to other load on a shared machine). On a GPU
(``--device cuda``) every timing is closed by a device synchronisation, and the peak GPU memory of
each case is printed.

Usage: python benchmarks/recon_speed.py [--iterations 3] [--cases a,b,c] [--threads 2] [--device cuda]
                                        [--scan 32] [--batch 32] [--repeats 10] [--compile none]
                                        [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from phasestem.recon import Ptychography
from phasestem.recon.synthetic import synthetic_scan

CASES = {"a": (1, 1), "b": (8, 1), "c": (8, 4), "d": (1, 4)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def case_dataset(case: str, scan: int = 32):
    """The simulated scan of ``case`` (CASES): scan × scan positions of 128² patterns."""
    S, _ = CASES[case]
    return synthetic_scan(window=(128, 128), sampling=0.2, scan_shape=(scan, scan), scan_step=1.0, energy=300e3,
                            semiangle=20.0, c10=-100.0, n_slices=S, slice_thickness=10.0,
                            max_phase=0.5 if S == 1 else 0.3, seed=0)


def case_model(case: str, dataset, device: torch.device):
    """The model of ``case`` (CASES) for ``dataset`` on ``device``, positions frozen."""
    S, M = CASES[case]
    model = Ptychography.from_dataset(dataset, n_slices=S, slice_thickness=10.0, n_probe_modes=M).to(device)
    model.positions.requires_grad_(False)
    return model


def engine_step(model, dataset, batch: int, mode: str = "none"):
    """One engine batch step of the first ``batch`` positions (forward, loss, backward, Adam; ``mode``:
    ``run.compile``) as a callable, with its data prepared once."""
    from phasestem.recon.engine import prepared_data
    from phasestem.recon.optimizers import build_optimizer
    from phasestem.recon.settings.losses import LossConfig
    from phasestem.recon.step import BatchStep

    cfg = LossConfig()
    data = prepared_data(model, dataset, cfg.power)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    step = BatchStep(model, cfg, "adam", 0.1, 1, mode)
    step.begin_epoch(build_optimizer("adam", model, names, 1e-4, 0.9, {}), None)
    idx = torch.arange(batch, device=model.device)
    meas, meas_p = data.batch(idx, need_meas=False)
    return lambda: step(data, idx, idx, batch, meas, meas_p)


def batch_times(model, dataset, batch: int, n_fft: int, n_modes: int, repeats: int = 10,
                mode: str = "none") -> tuple[float, float]:
    """Minimum seconds of one engine batch step (:func:`engine_step`) and of its FFTs alone, measured back to back
    ``repeats`` times (robust on a loaded machine)."""
    batch = min(batch, dataset.n_patterns)
    dev = model.device
    x = torch.randn(batch * n_modes, *model.window, dtype=torch.complex64, device=dev)
    run_step = engine_step(model, dataset, batch, mode)

    def step():
        run_step()
        sync(dev)

    def ffts():
        y = x
        for j in range(n_fft):
            y = torch.fft.fft2(y, norm="ortho") if j % 2 == 0 else torch.fft.ifft2(y, norm="ortho")
        sync(dev)

    torch.set_flush_denormal(True)
    best_step = best_fft = float("inf")
    for _ in range(3 if mode != "none" else 1):  # compile / capture, then reduce-overhead's own warm-up
        step()
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        best_step = min(best_step, time.perf_counter() - t)
        t = time.perf_counter()
        ffts()
        best_fft = min(best_fft, time.perf_counter() - t)
    return best_step, best_fft


def fft_bound(n_patterns: int, batch: int, window: int, n_slices: int, n_modes: int, repeats: int = 2,
              device: torch.device = torch.device("cpu")) -> float:
    """Seconds of the FFTs alone for one iteration (epoch)."""
    batch = min(batch, n_patterns)
    x = torch.randn(batch * n_modes, window, window, dtype=torch.complex64, device=device)
    n_fft = 4 * n_slices
    n_batches = -(-n_patterns // batch)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n_batches):
            y = x
            for j in range(n_fft):
                y = torch.fft.fft2(y, norm="ortho") if j % 2 == 0 else torch.fft.ifft2(y, norm="ortho")
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scan", type=int, default=32, help="scan of N × N positions")
    ap.add_argument("--batch", type=int, default=32, help="patterns per optimiser step")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--repeats", type=int, default=10, help="batch steps timed back to back (the minimum counts)")
    ap.add_argument("--compile", default="none", help="comma-separated run.compile modes to time: none, compile, "
                    "cuda_graph")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    print(f"{'case':>4} {'slices':>6} {'modes':>5} {'compile':>10} {'s/iter':>8} {'FFT s/iter':>10} {'ratio':>6} "
          f"{'batch ms':>9} {'FFT ms':>7} {'batch ratio':>11} {'peak GiB':>8}")
    for case in args.cases.split(","):
        S, M = CASES[case]
        ds = case_dataset(case, args.scan)
        bound = fft_bound(ds.n_patterns, args.batch, 128, S, M, repeats=3, device=device)
        for mode in args.compile.split(","):
            model = case_model(case, ds, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            gen = model.Adam_optimize(args.iterations + 1, ds, batch_size=args.batch, progress=False, compile=mode)
            next(gen)  # warm-up epoch (data preparation, allocator, compilation or capture)
            per_iter = float("inf")
            t = time.perf_counter()
            for _ in gen:
                sync(device)
                per_iter = min(per_iter, time.perf_counter() - t)
                t = time.perf_counter()
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            b_step, b_fft = batch_times(model, ds, args.batch, 4 * S, M, args.repeats, mode)
            print(f"{case:>4} {S:>6} {M:>5} {mode:>10} {per_iter:8.3f} {bound:10.3f} {per_iter / bound:6.2f} "
                  f"{b_step * 1e3:9.1f} {b_fft * 1e3:7.1f} {b_step / b_fft:11.2f} {peak:8.2f}", flush=True)
            rows.append(dict(case=case, slices=S, modes=M, compile=mode, patterns=ds.n_patterns, batch=args.batch,
                             device=str(device), s_per_iter=per_iter, fft_bound_s=bound, batch_ms=b_step * 1e3,
                             fft_ms=b_fft * 1e3, peak_gib=peak))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
