"""A busy machine and the CPU threads of a reconstruction (issue 86, item 6): the plan case's 10-epoch
``phasestem reconstruct`` timed with one core kept busy by another process and on a machine without it.

    python benchmarks/threads/busy_machine.py                       # makes its case in runs/threads/plan first
    python benchmarks/threads/busy_machine.py --case runs/threads/plan --repeats 3

The case is ``phasestem plan configs/plan.yaml`` (without its dose sweep): its expected result's parameter file,
``CASE/expected/recon/params.yaml``, reconstructed again with ``run.uncertainty: off``. Variants, run in turn
(``--repeats`` rounds, the order turned by one place each round, so that a change of the machine's other load
meets them all alike):

- ``default``: ``phasestem reconstruct`` as it is (``run.cpu_threads: auto``, idle OpenMP threads sleeping);
- ``1 thread``, ``2 threads``: ``--set run.cpu_threads=N``;
- ``before``: the command as it was before ``run.cpu_threads``: torch loaded before the command starts (so
  OpenMP's default wait policy, spinning) and all of this process's cores (``run.cpu_threads`` = that count).

Part ``busy``: a Python spin loop in another process keeps one core busy throughout; part ``quiet``: no spin loop.
The rest of the machine is as it is: the 1-minute load average at the start of every run is recorded. Writes
``results.md`` (the tables) and ``results.json`` (every run) into ``--out`` (default: beside this script).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phasestem.base.threads import busy_cores, cpu_times

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PHASESTEM = [sys.executable, "-m", "phasestem.cli"]
#: the command as it was: torch (and its OpenMP) loaded before the command can set a wait policy
BEFORE = [sys.executable, "-c", "import sys, torch; from phasestem.cli.main import main; sys.exit(main(sys.argv[1:]))"]
SPIN = [sys.executable, "-c", "while True:\n    pass"]
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_case(case: Path) -> Path:
    """``CASE/expected/recon/params.yaml``, planned first when it is not there."""
    params = case / "expected" / "recon" / "params.yaml"
    if not params.exists():
        print(f"planning the case into {case} (phasestem plan configs/plan.yaml, no sweep) ...", flush=True)
        subprocess.run(PHASESTEM + ["plan", str(ROOT / "configs" / "plan.yaml"), "--out", str(case),
                                    "--set", "expected.sweep={}"], check=True, cwd=ROOT, env=clean_env())
    return params


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["MPLBACKEND"] = "Agg"
    return env


def variants() -> dict[str, list[str]]:
    """name → (command prefix, extra arguments)."""
    n = cores()
    return {"default": PHASESTEM + ["reconstruct"],
            "1 thread": PHASESTEM + ["reconstruct", "--set", "run.cpu_threads=1"],
            "2 threads": PHASESTEM + ["reconstruct", "--set", "run.cpu_threads=2"],
            "before": BEFORE + ["reconstruct", "--set", f"run.cpu_threads={n}"]}


def stat_ticks() -> tuple[float, float]:
    """(busy, total) clock ticks of every CPU since boot."""
    return cpu_times(Path("/proc/stat").read_text(), set(range(os.cpu_count() or 1)))


def run_once(command: list[str], params: Path, work: Path) -> dict:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    ticks0, child0 = stat_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command + [str(params), "--out", str(out), "--set", 'run.uncertainty="off"',
                                     "--set", "run.progress=false"],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    ticks1, child1 = stat_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime) * os.sysconf("SC_CLK_TCK")
    other = busy_cores(ticks0, ticks1, os.cpu_count() or 1, own)  # the spin loop's included: not reaped yet
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    text = (out / "reconstruct.log").read_text()
    line = re.search(r"(run\.cpu_threads.*)", text)
    threads = re.search(r"torch threads:\s+(\d+)", text)
    return {"seconds": round(seconds, 2), "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2),
            "other_cores": round(other, 2), "own_cpu_s": round(own / os.sysconf("SC_CLK_TCK"), 1),
            "threads": int(threads.group(1)) if threads else None, "decision": line.group(1) if line else None}


def part(name: str, params: Path, repeats: int, names: list[str], work: Path) -> list[dict]:
    spin = subprocess.Popen(SPIN) if name == "busy" else None
    rows = []
    try:
        if spin is not None:
            time.sleep(5)  # the spin loop running before the first run starts
        for r in range(repeats):
            for v in names[r % len(names):] + names[:r % len(names)]:  # each variant in each place in turn
                row = {"part": name, "variant": v, "round": r + 1} | run_once(variants()[v], params, work)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
    return rows


def table(rows: list[dict], name: str, reference: str | None) -> list[str]:
    sub = [r for r in rows if r["part"] == name]
    names = list(dict.fromkeys(r["variant"] for r in sub))
    med = {v: statistics.median(r["seconds"] for r in sub if r["variant"] == v) for v in names}
    head = (f"| variant | threads | runs (s) | median (s) | × {reference} | load average at start | other work "
            "during the runs (cores) |")
    out = [head, "|---|---|---|---|---|---|---|"]
    for v in names:
        rs = [r for r in sub if r["variant"] == v]
        loads, other = [r["load_start"] for r in rs], [r["other_cores"] for r in rs]
        threads = sorted({r["threads"] for r in rs})
        ratio = f"{med[v] / med[reference]:.2f}" if reference in med else "–"
        out.append(f"| {v} | {', '.join(map(str, threads))} | {', '.join(format(r['seconds'], '.1f') for r in rs)} | "
                   f"{med[v]:.1f} | {ratio} | {min(loads):.1f}–{max(loads):.1f} | "
                   f"{min(other):.1f}–{max(other):.1f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, default=ROOT / "runs" / "threads" / "plan")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="busy,quiet", help="busy, quiet or both (comma-separated)")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    params = make_case(args.case)
    every = ["default", "1 thread", "2 threads", "before"]
    plan = {"busy": every, "quiet": every}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.parts.split(","):
            rows += part(name, params, args.repeats, plan[name], Path(tmp))
    decisions = sorted({f"{r['part']}: {r['decision']}" for r in rows if r["variant"] == "default"})
    md = ["# A busy machine and the CPU threads of a reconstruction (issue 86, item 6)", "",
          f"`python benchmarks/threads/busy_machine.py` on {platform.node() or 'this machine'}: {cores()} cores "
          f"({platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d %H:%M')}; the plan case's "
          f"10-epoch reconstruction (`phasestem plan configs/plan.yaml`, run.uncertainty off), whole command's wall "
          f"time, {args.repeats} rounds, each variant in another place of the order in each. Load average: the "
          "1-minute load at the start of each run (other jobs on the machine included); other work: the CPU time "
          "other processes (the spin loop included) took during the run, in cores. *before*: torch loaded before "
          "the command (OpenMP's default spinning wait) on every core, as the command ran before "
          "run.cpu_threads.", ""]
    for name, ref in (("busy", "1 thread"), ("quiet", "before")):
        if any(r["part"] == name for r in rows):
            md += [f"## {'One core kept busy by a Python spin loop' if name == 'busy' else 'No spin loop'}", "",
                   *table(rows, name, ref), ""]
    md += ["The default's decisions (run log):", "", *[f"- {d}" for d in decisions], ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(md))
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
