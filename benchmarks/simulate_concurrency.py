"""Two ``phasestem simulate`` runs into one folder, N times (issue 12, item 1): how often is exactly one refused
and are the files of the other complete and equal to an independent simulation?

    python benchmarks/simulate_concurrency.py --trials 10 --stagger 0
    python benchmarks/simulate_concurrency.py --trials 10 --stagger 2.5

Prints one line per trial and a summary. Uses configs/simulate_tiny.yaml (2 files × 2 samples).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "simulate_tiny.yaml"


def files_ok(out: Path, reference: dict) -> bool:
    """Every shard readable and every sample equal to the reference."""
    try:
        for k, indices in ((1, (0, 1)), (2, (2, 3))):
            with h5py.File(out / f"simulation_data{k}.h5", "r") as f:
                for i in indices:
                    if not np.array_equal(f[f"dp_set_{i}"][...], reference[i]["patterns"]):
                        return False
                    if not np.array_equal(f[f"phase_{i}"][...], reference[i]["phase"]):
                        return False
    except (OSError, KeyError):
        return False
    return True


def trial(stagger: float, reference: dict) -> tuple[list[int], bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "phasestem.cli", "simulate", str(CONFIG), "--out", str(out)]
        a = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(stagger)
        b = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        errs = [p.communicate()[1] for p in (a, b)]
        codes = [a.returncode, b.returncode]
        refused = next((e.strip().splitlines()[-1] for e, c in zip(errs, codes, strict=True) if c), "")
        return codes, files_ok(out, reference), refused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--stagger", type=float, default=0.0, help="seconds between the two starts")
    args = ap.parse_args()
    from phasestem.simulate import load_config, simulate_sample

    cfg = load_config(CONFIG)
    reference = {i: simulate_sample(cfg, i) for i in range(4)}
    correct = refused_one = both_ok = 0
    for t in range(args.trials):
        codes, ok, refused = trial(args.stagger, reference)
        correct += ok
        refused_one += sorted(codes) == [0, 1]
        both_ok += codes == [0, 0]
        print(f"trial {t + 1}: exit codes {codes}, files complete and correct: {ok}; {refused}")
    print(f"{correct}/{args.trials} trials left complete, correct files; one run refused in {refused_one}, both "
          f"exited 0 in {both_ok} (the runs did not overlap: the second found the work done)")


if __name__ == "__main__":
    main()
