"""Where one mini-batch step's time goes on a GPU: kernels launched per step, their summed device time, and the
wall time of the step, eager (``run.compile none``) against the CUDA-graph step, for recon_speed.py's cases.

A step whose wall time is far above its kernels' summed device time is launch-bound (the CUDA graph's gain); one
whose kernels' time is far above its FFTs' is bound by the element-wise passes around them (fusion's gain). The
top kernels by device time are listed per case.

Usage: python benchmarks/gpu/profile_step.py [--cases a,b] [--batch 32] [--steps 5] [--modes none,cuda_graph]
                                             [--device cuda] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recon_speed import case_dataset, case_model, engine_step  # noqa: E402  (benchmarks/recon_speed.py)


def _step_of(case: str, batch: int, mode: str, device: torch.device):
    ds = case_dataset(case)
    return engine_step(case_model(case, ds, device), ds, batch, mode)


def profile_case(case: str, batch: int, mode: str, steps: int, device: torch.device) -> dict:
    run = _step_of(case, batch, mode, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(4):  # cuFFT plans, allocator, capture
        run()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    wall_ms = (time.perf_counter() - t) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        sync()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        by_name[e.name][0] += 1
        by_name[e.name][1] += e.device_time_total / 1e3
    device_ms = sum(v[1] for v in by_name.values()) / steps
    fft_ms = sum(v[1] for k, v in by_name.items() if "fft" in k.lower()) / steps
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]
    row = dict(case=case, batch=batch, mode=mode, wall_ms=wall_ms, kernels_per_step=len(kernels) / steps,
               device_ms=device_ms, fft_kernel_ms=fft_ms,
               top=[dict(name=k[:90], per_step=v[0] / steps, ms_per_step=v[1] / steps) for k, v in top])
    print(f"case {case} batch {batch} {mode:>10}: wall {wall_ms:7.2f} ms/step, {row['kernels_per_step']:6.0f} kernels, "
          f"device {device_ms:6.2f} ms (FFT kernels {fft_ms:5.2f} ms)", flush=True)
    for t_ in row["top"]:
        print(f"    {t_['ms_per_step']:7.3f} ms  {t_['per_step']:5.0f}x  {t_['name']}")
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="a,b")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--modes", default="none,cuda_graph")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for case in args.cases.split(","):
        for mode in args.modes.split(","):
            try:
                rows.append(profile_case(case, args.batch, mode, args.steps, device))
            except Exception as exc:  # one mode's failure must not lose the others' figures
                print(f"case {case} {mode}: failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append(dict(case=case, batch=args.batch, mode=mode, error=f"{type(exc).__name__}: {exc}"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
