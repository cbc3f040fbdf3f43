"""Throughput of the learned route at the seed's full size (50×50 scan of 64² patterns → 256² phase).

Prints, per model size and device: PatchRecoveryNet training (blocks/s) and inference (blocks/s),
PhaseStitchingNet training (samples/s), End2End training (samples/s) and the time to predict one
256² phase from 2500 patterns (25 blocks of 14×14). CPU uses 2 threads (as this project's reference
machine); a GPU is used too when present. Random weights and inputs: speed does not depend on them.

    python benchmarks/bench_learned.py                 # tiny, small, base on CPU (+ GPU)
    python benchmarks/bench_learned.py --sizes base --repeats 2
    python benchmarks/bench_learned.py --sizes tiny --ad 3   # + seconds per epoch of the AD engine
    python benchmarks/bench_learned.py --devices cuda --amp bf16 --json out.json   # GPU, bf16 autocast

On a GPU each step's peak memory is recorded too (``peak_GiB_*``: the largest
``torch.cuda.max_memory_allocated`` over the step, weights and optimiser state included).

``--ad N`` times N epochs of phasestem's AD ptychography (1 slice, 1 probe mode, Adam, batch 32, 15 mrad —
the band limit of 0.39 Å pixels at 300 keV) on a simulated scan of the same size (50×50 positions at
2 Å, 64² patterns, 0.39 Å pixels) and prints how many AD epochs fit in the time of one learned
prediction. (Matching the *phase error* of a trained full-size model needs a trained model, which
this CPU-only benchmark does not have.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from phasestem.learn.data import BlockGeometry
from phasestem.learn.nets.end2end import End2End, end2end_loss_fn
from phasestem.learn.nets.patch import PatchRecoveryNet
from phasestem.learn.nets.stitch import PhaseStitchingNet


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, slow: float = 5.0) -> float:
    """Mean seconds per call after one warm-up call; a call slower than ``slow`` s is timed once (the warm-up)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if first > slow:
        return first
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def bench(size: str, device: torch.device, repeats: int, pattern: int = 64, amp: str = "off") -> dict[str, float]:
    g = BlockGeometry()
    torch.manual_seed(0)
    pn = PatchRecoveryNet({"size": size}).to(device)
    sn = PhaseStitchingNet({"size": size}).to(device)
    model = End2End(pn, sn, patch_chunk=5 if device.type == "cpu" else 25)
    n_par = sum(p.numel() for p in model.parameters()) / 1e6
    frames = torch.from_numpy(g.frame_coords()).to(device)  # (25, 196, 2): each block in its target's frame
    coords1 = frames[:1]  # one block's coordinates for the patch-net steps
    centres = torch.from_numpy(g.exact_centres()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bp = 2 if device.type == "cpu" else 32  # blocks per patch-net training step
    x = torch.rand(bp, 196, pattern, pattern, device=device)
    tgt = torch.randn(bp, 76, 76, device=device)

    def patch_step():
        loss = (pn(x, coords1.expand(bp, -1, -1)) - tgt).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    bs = 2 if device.type == "cpu" else 16
    phase = torch.randn(bs, 256, 256, device=device)
    patches = torch.randn(bs, 25, 76, 76, device=device)

    def stitch_step():
        loss = (sn(patches, centres.expand(bs, -1, -1)) - phase).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one = {"patterns": torch.rand(1, 25, 196, pattern, pattern, device=device),
           "coords": frames[None], "centres": centres[None], "phase": phase[:1],
           "patches": patches[:1]}
    loss_fn = end2end_loss_fn()

    def e2e_step():
        loss_fn(model, one)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def predict():
        model.eval()
        model(one["patterns"], one["coords"], one["centres"])
        model.train()

    @torch.no_grad()
    def patch_infer():
        pn(x, coords1.expand(bp, -1, -1))

    def autocast():
        if amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    out = {"params_M": n_par}
    steps = [("patch_train_blocks_s", patch_step, bp), ("patch_infer_blocks_s", patch_infer, bp),
             ("stitch_train_samples_s", stitch_step, bs), ("e2e_train_samples_s", e2e_step, 1),
             ("predict_one_s", predict, None)]
    for key, fn, n in steps:
        if key == "e2e_train_samples_s" and device.type == "cpu" and size in ("medium", "base"):
            out[key] = float("nan")  # backprop through 4900 patterns of ResNet34 needs > 24 GB of host memory
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def under_amp(fn=fn):
            with autocast():
                fn()

        t = timed(under_amp, device, repeats)
        out[key] = t if n is None else n / t
        if device.type == "cuda":
            out["peak_GiB_" + key] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"  {size} {device.type} {key}: {out[key]:.3g}", file=sys.stderr, flush=True)
    return out


def ad_seconds_per_epoch(epochs: int) -> float:
    """Minimum seconds of one AD-ptychography epoch over the seed-sized scan (2500 patterns of 64²)."""
    from phasestem.recon import Ptychography
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(window=(64, 64), sampling=100 / 256, scan_shape=(50, 50), scan_step=2.0, energy=300e3,
                          semiangle=15.0, c10=50.0, max_phase=0.5, seed=0)
    model = Ptychography.from_dataset(ds)
    model.positions.requires_grad_(False)
    gen = model.Adam_optimize(epochs + 1, ds, batch_size=32, progress=False)
    next(gen)  # warm-up epoch
    best, t = float("inf"), time.perf_counter()
    for _ in gen:
        best = min(best, time.perf_counter() - t)
        t = time.perf_counter()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ad", type=int, default=0, help="also time N epochs of the AD engine (CPU)")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when there is one")
    ap.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast of every timed step")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.devices:
        devices = [torch.device(d) for d in args.devices]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    cols = ["params_M", "patch_train_blocks_s", "patch_infer_blocks_s", "stitch_train_samples_s",
            "e2e_train_samples_s", "predict_one_s"]
    print("| device | size | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    predict_cpu = {}
    for dev in devices:
        for size in args.sizes:
            r = bench(size, dev, args.repeats, amp=args.amp)
            name = f"cpu×{args.threads}" if dev.type == "cpu" else torch.cuda.get_device_name()
            rows.append(dict(device=name, size=size, amp=args.amp, **r))
            if dev.type == "cpu":
                predict_cpu[size] = r["predict_one_s"]
            print(f"| {name} | {size} | " + " | ".join(f"{r[c]:.3g}" for c in cols) + " |", flush=True)
    print("\npredict_one_s: 2500 patterns (64²) → one 256² phase, End2End forward incl. stitching.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if args.ad:
        ad = ad_seconds_per_epoch(args.ad)
        print(f"\nAD ptychography (CPU×{args.threads}, 1 slice, 1 mode, batch 32): {ad:.3g} s per epoch")
        for size, t in predict_cpu.items():
            print(f"  {size}: one learned prediction = {t / ad:.2g} AD epochs")


if __name__ == "__main__":
    main()
