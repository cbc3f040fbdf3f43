"""Throughput and peak memory of the SPEC-size autoencoder and Phaseformer (CPU; GPU when available).

    python benchmarks/bench_autoencoder_phaseformer.py                 # CPU (2 threads) [+ GPU]
    python benchmarks/bench_autoencoder_phaseformer.py --quick         # fewer repeats

Rows:
* autoencoder embed — ``model.embed`` (encoder only) on P×P patterns: patterns/s.
* autoencoder forward — encode + decode (the decoder always runs up to 256²): patterns/s.
* phaseformer refine 256² — inference, out_L 256² + out_H 512²: images/s.
* phaseformer train step 256² — forward + full four-component loss + backward: steps/s.
Peak memory: on the CPU each row runs in a fresh subprocess and reports its peak resident set size
(``ru_maxrss``) minus that of the same process right before the row (model and data included); on
a GPU ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _timeit(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def run_row(row: str, device: str, size: int, batch: int, repeats: int) -> dict:
    from phasestem.learn.nets.autoencoder import Autoencoder
    from phasestem.learn.nets.phaseformer import Phaseformer, PhaseformerLoss

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    if row.startswith("autoencoder"):
        model = Autoencoder(out_shape=None).to(dev).eval()
        x = torch.rand(batch, 1, size, size, device=dev)
        f = model.embed if row == "autoencoder embed" else model

        def step():
            with torch.no_grad():
                f(x)
            sync()
    elif row == "phaseformer refine":
        model = Phaseformer().to(dev).eval()
        x = torch.randn(batch, 1, size, size, device=dev)

        def step():
            with torch.no_grad():
                model(x)
            sync()
    else:
        model = Phaseformer().to(dev).train()
        crit = PhaseformerLoss().to(dev)
        opt = torch.optim.AdamW([*model.parameters(), *crit.parameters()], lr=1e-4)
        x, y = torch.randn(batch, 1, size, size, device=dev), torch.randn(batch, 1, size, size, device=dev)

        def step():
            loss = crit(*model(x), y)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dt = _timeit(step, repeats)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024)
    return {"row": row, "device": device, "size": size, "batch": batch, "seconds_per_call": dt,
            "items_per_s": batch / dt, "peak_MiB": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one timed repeat per row")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_row(**json.loads(args.worker))))
        return
    reps = 1 if args.quick else 3
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        gpu = device == "cuda"
        plan = [
            ("autoencoder embed", 64, 256 if gpu else 16), ("autoencoder embed", 256, 64 if gpu else 2),
            ("autoencoder forward", 64, 64 if gpu else 2),
            ("phaseformer refine", 256, 8 if gpu else 1), ("phaseformer train step", 256, 4 if gpu else 1),
        ]
        for row, size, batch in plan:
            spec = {"row": row, "device": device, "size": size, "batch": batch, "repeats": reps}
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--worker",
                                  json.dumps(spec)], capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(res)
            print(f"{res['row']:<24} {device:<5} {size:>4}² batch {batch:>3}: {res['items_per_s']:9.2f} /s "
                  f"({res['seconds_per_call'] * 1e3:8.1f} ms/call), peak {res['peak_MiB']:8.1f} MiB", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
