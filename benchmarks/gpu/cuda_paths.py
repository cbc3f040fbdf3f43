"""The reconstruction CLI on a GPU, checked against the same run on the CPU.

    python benchmarks/gpu/cuda_paths.py WORKDIR [--json FILE]

Writes a small synthetic scan (``phasestem.recon.synthetic.write_npz``: plumbing, not an accuracy
claim), then runs ``phasestem reconstruct`` on it three times, each a real subprocess:

* ``cpu``: ``run.device: cpu``, one process;
* ``cuda``: ``run.device: cuda``, one process;
* ``torchrun``: ``torchrun --standalone --nproc_per_node 1 -m phasestem.cli reconstruct`` with
  ``run.device: cuda``, so the CLI joins an NCCL process group and places its rank on
  ``cuda:LOCAL_RANK`` (the multi-GPU code path, on the one GPU there is).

for both solvers (``lsq``, ``adam``), and compares each GPU phase with the CPU phase (Pearson r and
the largest difference) and the final losses. Exits 1 when a GPU run fails or differs from the CPU
run by more than float32 summation order can explain (r < 0.999 or final losses 1 % apart).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "reconstruct_tiny.yaml"


def params_file(work: Path, data: Path, out: Path, device: str, optimizer: str) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg.pop("tune", None)
    cfg["data"]["file"] = str(data.resolve())
    cfg["scan"]["shape"] = [16, 16]
    cfg["run"].update({"out_dir": str(out.resolve()), "n_epochs": 10, "batch_size": 32, "progress": False,
                       "checkpoint_every": 5, "device": device, "optimizer": optimizer})
    path = work / f"params_{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600).returncode
    return rc, time.perf_counter() - t0


def read_result(out: Path) -> tuple[np.ndarray, list[float]]:
    with h5py.File(out / "results.h5", "r") as f:
        phase = np.asarray(f["object/phase_sum"], dtype=np.float64)
        loss = [float(v) for v in f["loss/loss"][()]]
    return phase, loss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from phasestem.recon.synthetic import write_npz

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data = work / "scan16.npz"
    write_npz(data, window=(32, 32), sampling=0.4, scan_shape=(16, 16), scan_step=1.0, energy=300e3,
              semiangle=15.0, c10=50.0, max_phase=0.5, seed=3)
    cli = [sys.executable, "-m", "phasestem.cli", "reconstruct"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                "-m", "phasestem.cli", "reconstruct"]
    rows, ok = [], True
    for optimizer in ("lsq", "adam"):
        ref = None
        for label, cmd, device in (("cpu", cli, "cpu"), ("cuda", cli, "cuda"), ("torchrun", torchrun, "cuda")):
            out = work / f"{optimizer}_{label}"
            rc, wall = run([*cmd, str(params_file(work, data, out, device, optimizer))], work / f"{out.name}.log")
            row = dict(optimizer=optimizer, run=label, rc=rc, wall_s=wall)
            if rc == 0:
                phase, loss = read_result(out)
                row["final_loss"] = loss[-1] if loss else None
                if ref is None:
                    ref = (phase, loss)
                else:
                    r = float(np.corrcoef(phase.ravel(), ref[0].ravel())[0, 1])
                    row.update(r_vs_cpu=r, max_abs_diff_rad=float(np.abs(phase - ref[0]).max()))
                    rel = abs(loss[-1] - ref[1][-1]) / abs(ref[1][-1]) if loss and ref[1] else 0.0
                    row["loss_rel_diff"] = rel
                    ok &= r >= 0.999 and rel <= 0.01
            else:
                ok = False
                row["log_tail"] = (work / f"{out.name}.log").read_text().strip().splitlines()[-5:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("CUDA paths: " + ("same results as on the CPU" if ok else "FAILED (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
