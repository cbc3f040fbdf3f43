"""Regression guard of the AD engine's accuracy (issue 52): a few independent cases of each kind, r at 5 and 20
iterations, one line per run appended to ``benchmarks/history.jsonl``; a fall of more than :data:`TOLERANCE` in r
against the last recorded line is named and the command exits 1.

    python benchmarks/independent/regression.py [--out runs/regression] [--no-record] [--cases ...]

Cases (:data:`CASES`, NumPy multislice of ``cases.py`` / ``cases_hard.py``, no abTEM so it runs anywhere): the four
base cases (thin, thick, noisy, coherent), one hard case of each NumPy kind (strong, low dose at 1e3 and 1e4,
distortion) and issue 69's counted regime (``counted_default.py``'s val_w6_1e5: a weak 6-slice film at 1e5 e⁻, where
the dose's blur must be on), phasestem as ``bench.py`` runs it (lsq, batch 32, nominal probe, the case's data term, 2
threads). About eleven minutes on the 2-core development machine. The line holds the commit (``-dirty`` when the tree
has changes), the date, the load average, the seconds and {case: [r at 5, r at 20]}: r depends on the arithmetic, not
on the load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from bench import build_case, case_fov, run_tool, score  # noqa: E402
from counted_default import CASES as COUNTED_CASES  # noqa: E402
from counted_default import case_file as counted_case_file  # noqa: E402

CASES = ("thin", "thick", "noisy", "coherent", "dev_strong", "dev_dose1e3", "val_dose1e4", "val_distort", "val_w6_1e5")
ITERS = 20
TOLERANCE = 0.005
HISTORY = ROOT / "benchmarks" / "history.jsonl"


def commit() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def case_r(out: Path, name: str, threads: int) -> list[float]:
    """[r at 5, r at :data:`ITERS`] of phasestem on case ``name`` (the case simulated once under ``out``)."""
    case_path = out / f"case_{name}.npz"
    if not case_path.exists():
        if name in COUNTED_CASES:  # counted_default.py's cases: the same file name under ``out``
            counted_case_file(out, name, ITERS)
        else:
            build_case(name, False, case_path, ITERS)
    result = out / f"result_{name}.npz"
    result.unlink(missing_ok=True)  # always a fresh run: the guard measures this tree
    err = run_tool("phasestem", case_path, result, Path(".bench_envs"), threads, 1800)
    if err:
        raise SystemExit(f"{name}: {err}")
    with np.load(case_path) as c, np.load(result) as z:
        r = score({k: z[k] for k in z.files}, c["truth_phase"], case_fov(c))["r"]
    return [round(float(r[4]), 5), round(float(r[-1]), 5)]


def drops(previous: dict, current: dict, tolerance: float = TOLERANCE) -> list[str]:
    """Each case and iteration whose r fell by more than ``tolerance`` from ``previous``'s to ``current``'s."""
    found = []
    for name, (r5, r20) in current["r"].items():
        if name not in previous.get("r", {}):
            continue
        for label, old, new in (("5", previous["r"][name][0], r5), (str(ITERS), previous["r"][name][1], r20)):
            if old - new > tolerance:
                found.append(f"{name}: r at {label} iterations {old:.4f} → {new:.4f} ({new - old:+.4f}; "
                             f"{previous['commit']} → {current['commit']})")
    return found


def append(path: Path, entry: dict) -> None:
    """``entry`` as one more line of ``path``, written whole or not at all."""
    from phasestem.base.safety import atomic_file

    text = path.read_text() if path.exists() else ""
    with atomic_file(path, "regression history") as tmp:
        tmp.write_text(text + json.dumps(entry, ensure_ascii=False) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/regression")
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--history", default=str(HISTORY))
    ap.add_argument("--no-record", action="store_true", help="compare, but do not append the line")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    entry = {"commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg()[0],
             "iters": ITERS, "r": {}}
    for name in args.cases:
        entry["r"][name] = case_r(out, name, args.threads)
        print(f"{name}: r {entry['r'][name][0]:.4f} at 5, {entry['r'][name][1]:.4f} at {ITERS}", flush=True)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    history = Path(args.history)
    lines = [json.loads(s) for s in history.read_text().splitlines() if s.strip()] if history.exists() else []
    found = drops(lines[-1], entry) if lines else []
    if not args.no_record:
        append(history, entry)
    print(f"{len(entry['r'])} cases in {entry['seconds']:.0f} s; " + (
        "no fall over {:.3f} against {}".format(TOLERANCE, lines[-1]["commit"]) if lines and not found else
        "first line of the history" if not lines else "FALLS:\n  " + "\n  ".join(found)))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
