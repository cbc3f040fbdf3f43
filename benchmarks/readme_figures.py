"""README numbers that cannot go stale (issue 86): rerun the commands a user can type whose printed numbers the
README shows, read each number from the README itself and from the fresh run, and list what moved beyond its
tolerance. Exit 1 when anything moved (or a number is no longer where the README says it is).

    python benchmarks/readme_figures.py                   # every job but the heavy ones, ~15 min on 2 CPU cores
    python benchmarks/readme_figures.py --jobs plan       # one job
    python benchmarks/readme_figures.py --all             # also the heavy jobs (the live benchmark's offline route)
    python benchmarks/readme_figures.py --stamp           # when nothing moved: the date into README and docs

Run it before a change to ``src/`` is committed to main, beside the regression guard
(``benchmarks/independent/regression.py``). Each figure (:data:`FIGURES`) names the README text that holds it (a
regular expression whose first group is the number), the job that produces it and an absolute tolerance in the
printed unit; the jobs (:data:`JOBS`) run in ``--work`` (default ``runs/readme_figures``), each once, fresh.
Timings are not checked (they depend on the machine's load); accuracy and the printed figures are.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: the documents whose line says when this check last passed (rewritten by --stamp)
STAMPED = (README, ROOT / "docs" / "benchmarks.md")
STAMP = re.compile(r"(README figures checked: )[^\n]*")


@dataclass(frozen=True)
class Figure:
    """One number of a document: where it is (``pattern``'s first group in ``doc``), the job that produces it and
    how to read it from the job's outputs (``fresh``), and how far it may move (``tolerance``, absolute)."""

    name: str
    doc: str
    pattern: str
    job: str
    fresh: Callable[[dict], float]
    tolerance: float


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "phasestem.cli", *args]


def _run(cmd: list[str], log: Path, timeout: int = 3600) -> str:
    """Run ``cmd`` from the repository root; its output (stdout and stderr) in ``log`` and returned."""
    env = dict(os.environ, MPLBACKEND="Agg", OMP_WAIT_POLICY="PASSIVE")
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:5])}: exit {done.returncode}; the end of {log}:\n{text[-1200:]}")
    return text


def job_plan(work: Path) -> dict:
    """``phasestem plan configs/plan.yaml`` as the README runs it."""
    return {"stdout": _run(_cli("plan", "configs/plan.yaml", "--out", str(work / "plan_out")), work / "plan.log")}


def job_demo(work: Path) -> dict:
    """``phasestem demo --out DIR`` (``make demo``'s command): its ``figures_of_merit.yaml``."""
    import yaml

    _run(_cli("demo", "--out", str(work / "demo_output")), work / "demo.log")
    return yaml.safe_load((work / "demo_output" / "figures_of_merit.yaml").read_text())


def job_live_offline(work: Path) -> dict:
    """The live benchmark's offline route on both cases: the scans of ``benchmarks/live/make_scan.py`` (as the
    README's commands make them), each reconstructed by its ``params.yaml`` for 20 epochs, scored by
    ``benchmarks/live/check_scan.py``."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "live"))
    from check_scan import score

    out = {}
    for case, extra in (("dev", []), ("val", ["--seed", "8", "--dose", "2e3", "--c10", "100"])):
        data = work / f"live_{case}"
        if not (data / "params.yaml").exists():
            _run([sys.executable, "benchmarks/live/make_scan.py", str(data), *extra], work / f"live_{case}_make.log")
        recon = work / f"live_{case}_recon"
        _run(_cli("reconstruct", str(data / "params.yaml"), "--out", str(recon), "--epochs", "20"),
             work / f"live_{case}.log")
        out[case] = score(data, recon / "results.h5")["phase_error"]
    return out


#: where the README's first-hour block starts (the ```bash block after it is run as written)
FIRST_HOUR = "The first hour at this geometry"
#: what the README says the first hour does not print (a job that finds one fails)
FIRST_HOUR_ABSENT = ("truncated", "not scaled")


def first_hour_commands(work: Path) -> list[list[str]]:
    """The README's first-hour commands as written, their ``data/`` and ``runs/`` folders moved under ``work``."""
    import shlex

    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(FIRST_HOUR):], re.S)
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line)
        if not words or words[0] != "phasestem":
            raise LookupError(f"README.md: the first hour's block holds {line!r}, not a phasestem command")
        commands.append([str(work / w) if w.startswith(("data/", "runs/")) else w for w in words[1:]])
    return commands


def job_first_hour(work: Path) -> dict:
    """The README's first hour (simulate the seed geometry at 2500 e⁻/Å², ``reconstruct --auto``, ``restore``,
    ``--prior``) as written: the κ its σ was scaled by, from the run's log. Fails where the log holds what the README
    says it does not (a truncation warning, an unscaled σ)."""
    for k, command in enumerate(first_hour_commands(work)):
        _run(_cli(*command), work / f"step{k + 1}_{command[0]}.log")
    log = (work / "runs" / "scan1" / "reconstruct.log").read_text()
    for words in FIRST_HOUR_ABSENT:
        if words in log:
            line = next(s for s in log.splitlines() if words in s)
            raise RuntimeError(f"the first hour's reconstruct.log says {words!r}: {line.strip()[:200]}")
    return {"stdout": log}


def job_guard(work: Path) -> dict:
    """The regression guard's newest line in ``benchmarks/history.jsonl`` (the guard runs the independent benchmark's
    phasestem cases with the defaults: ``benchmarks/independent/regression.py``), not rerun here: valid where it ran
    on a clean checkout whose ``src/`` is this one's."""
    import json

    lines = [json.loads(s) for s in (ROOT / "benchmarks" / "history.jsonl").read_text().splitlines() if s.strip()]
    line = next((line for line in reversed(lines) if line.get("guard") == "regimes-v2"), None)
    if line is None or line["commit"].endswith("-dirty"):
        raise RuntimeError("benchmarks/history.jsonl has no regression-guard line of a clean checkout: run "
                           "python benchmarks/independent/regression.py first")
    changed = subprocess.run(["git", "diff", "--quiet", line["commit"], "HEAD", "--", "src"], cwd=ROOT)
    if changed.returncode:
        raise RuntimeError(f"src/ changed since the regression guard's last line ({line['commit']}): run "
                           "python benchmarks/independent/regression.py again")
    return line["cases"]


#: job → (what produces its outputs, heavy: only with --all)
JOBS: dict[str, tuple[Callable[[Path], dict], bool]] = {
    "guard": (job_guard, False),
    "plan": (job_plan, False),
    "demo": (job_demo, False),
    "first_hour": (job_first_hour, False),
    "live_offline": (job_live_offline, True),
}


def _printed(pattern: str) -> Callable[[dict], float]:
    """The number a job printed where ``pattern`` (the README's own) finds it in its output."""
    def read(out: dict) -> float:
        found = re.search(pattern, out["stdout"])
        if found is None:
            raise LookupError(f"not in the fresh output: {pattern}")
        return float(found.group(1))
    return read


def _route(name: str, key: str) -> Callable[[dict], float]:
    return lambda out: float(out["routes"][name][key])


def _guard(case: str, epochs: int) -> Callable[[dict], float]:
    """r after ``epochs`` epochs of the guard's 20-epoch run of ``case`` (the benchmark's tables report a run's r
    along the way)."""
    def read(out: dict) -> float:
        run = out[case]["20"]
        return float(run["r"] if epochs == 20 else run["r_at"][str(epochs)])
    return read


_INDEPENDENT = r"\| {row} \| {iters} \|(?: [\d./ ]+ \|){{4}} \*\*([\d.]+)\*\*"
_PLAN_E = r"expected \(a 14 × 14 field[^\n]*?E_φ = ([\d.]+)"
_PLAN_FRC = r"expected \(a 14 × 14 field[^\n]*?FRC resolution ([\d.]+) Å"
FIGURES: list[Figure] = [
    *(Figure(f"independent benchmark: phasestem r, {case} at {epochs}", "README.md", pattern, "guard",
             _guard(case, epochs), 0.002)
      for case, epochs, pattern in (
          ("thin", 20, _INDEPENDENT.format(row="1 slice, noise-free", iters="20")),
          ("thick", 5, r"\| 8 × 10 Å, noise-free \| 5 / 20 \|(?: [\d./ ]+ \|){4} \*\*([\d.]+)\*\*"),
          ("thick", 20, r"\| 8 × 10 Å, noise-free \| 5 / 20 \|(?: [\d./ ]+ \|){4} \*\*[\d.]+\*\* / \*\*([\d.]+)"),
          ("noisy", 20, _INDEPENDENT.format(row="8 × 10 Å, 1e6 e⁻/pattern", iters="20")),
          ("coherent", 20, _INDEPENDENT.format(row="partially coherent, 1e6 e⁻", iters="20")),
          ("sto_dev", 20, _INDEPENDENT.format(row="abTEM SrTiO3, phonons, 1e5 e⁻", iters="20")))),
    Figure("plan: expected E_φ", "README.md", _PLAN_E, "plan", _printed(_PLAN_E), 0.006),
    Figure("plan: expected FRC resolution (Å)", "README.md", _PLAN_FRC, "plan", _printed(_PLAN_FRC), 0.02),
    *(Figure(f"plan: sweep {dose} e⁻/Å² E_φ", "README.md", p, "plan", _printed(p), 0.008)
      for dose in (1000, 2000, 5000, 20000)
      for p in (rf"sweep dose\.electrons_per_area {dose}: E_φ = ([\d.]+)",)),
    *(Figure(f"plan: sweep {dose} e⁻/Å² FRC (Å)", "README.md", p, "plan", _printed(p), 0.02)
      for dose in (1000, 2000, 5000, 20000)
      for p in (rf"sweep dose\.electrons_per_area {dose}: E_φ = [\d.]+, FRC resolution ([\d.]+) Å",)),
    *(Figure(f"demo: {route} {label}", "README.md", rf"\| {row}[^|\n]*\|{cells}", "demo", _route(route, key), tol)
      for route, row in (("AD ptychography", r"AD ptychography \(`lsq`"), ("learned (end2end)", r"learned \(tiny"),
                         ("learned + Phaseformer", r"learned \+ Phaseformer"),
                         ("hybrid (AD from learned)", r"hybrid: AD from"))
      for label, key, cells, tol in (
          ("PSNR (dB)", "psnr", r" ([\d.]+) \|", 0.2),
          ("SSIM", "ssim", r" [\d.]+ \| ([\d.]+) \|", 0.003),
          ("E_φ", "phase_error", r" [\d.]+ \| [\d.]+ \| ([\d.]+) \|", 0.003))),
    Figure("first hour: σ scaled by κ", "README.md", r"on the first hour below\s*\(κ ([\d.]+)\)", "first_hour",
           _printed(r"scaled by κ = ([\d.]+)"), 0.1),
    Figure("live: offline final E_φ, development", "README.md",
           r"\| development \(seed 7[^\n]*\n\| \| offline[^\n]*?\| ([\d.]+) \| [\d.]+ / [\d.]+ \|", "live_offline",
           lambda out: out["dev"], 0.005),
    Figure("live: offline final E_φ, validation", "README.md",
           r"\| validation \(seed 8[^\n]*\n\| \| offline[^\n]*?\| ([\d.]+) \| [\d.]+ / [\d.]+ \|", "live_offline",
           lambda out: out["val"], 0.005),
]


def documented(figure: Figure) -> float:
    """The number as ``figure.doc`` prints it."""
    found = re.search(figure.pattern, (ROOT / figure.doc).read_text())
    if found is None:
        raise LookupError(f"{figure.doc}: no longer holds {figure.name!r} ({figure.pattern})")
    return float(found.group(1))


def check(jobs: list[str], work: Path) -> list[dict]:
    """Every figure of ``jobs``: its documented and fresh value and whether it moved beyond its tolerance."""
    rows = []
    for job in jobs:
        folder = work / job
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            outputs, failed = JOBS[job][0](folder), None
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            outputs, failed = None, str(exc).splitlines()[0]
        print(f"{job}: {time.perf_counter() - t0:.0f} s" + (f" — FAILED: {failed}" if failed else ""), flush=True)
        for figure in (f for f in FIGURES if f.job == job):
            row = {"figure": figure.name, "doc": figure.doc, "tolerance": figure.tolerance}
            try:
                row["documented"] = documented(figure)
                row["fresh"] = figure.fresh(outputs) if outputs is not None else None
                row["moved"] = row["fresh"] is None or abs(row["fresh"] - row["documented"]) > figure.tolerance
                row["why"] = failed or ""
            except (LookupError, KeyError) as exc:
                row.update(documented=None, fresh=None, moved=True, why=str(exc))
            rows.append(row)
    return rows


def report(rows: list[dict]) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:g}"

    lines = ["| figure | where | documented | fresh | tolerance | |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = f"**moved** {r['why']}".strip() if r["moved"] else "ok"
        lines.append(f"| {r['figure']} | {r['doc']} | {fmt(r['documented'])} | {fmt(r['fresh'])} | "
                     f"±{r['tolerance']:g} | {mark} |")
    return "\n".join(lines)


def stamp(text: str, when: str) -> str:
    """``text`` (a document of :data:`STAMPED`) with its check line saying ``when``."""
    if not STAMP.search(text):
        raise LookupError("no 'README figures checked: …' line to stamp")
    return STAMP.sub(lambda m: m.group(1) + when, text, count=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=None)
    ap.add_argument("--all", action="store_true", help="also the heavy jobs")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "readme_figures")
    ap.add_argument("--stamp", action="store_true", help="when nothing moved, write today's date and the commit into "
                    "the README's 'README figures checked:' line")
    args = ap.parse_args()
    jobs = args.jobs or [j for j, (_, heavy) in JOBS.items() if args.all or not heavy]
    rows = check(jobs, args.work)
    print(report(rows))
    moved = [r for r in rows if r["moved"]]
    print(f"{len(rows)} figures of {len(jobs)} jobs: " + (f"{len(moved)} moved" if moved else "none moved")
          + f" (load average {os.getloadavg()[0]:.1f})")
    if args.stamp and not moved:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        from phasestem.base.safety import atomic_file

        when = (f"{time.strftime('%Y-%m-%d')} on {head.stdout.strip()} "
                f"(`python benchmarks/readme_figures.py`: {len(rows)} figures of {', '.join(jobs)})")
        for doc in STAMPED:
            text = stamp(doc.read_text(), when)
            with atomic_file(doc, doc.name) as tmp:
                tmp.write_text(text)
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
