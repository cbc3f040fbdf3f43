"""The CPU threads of torch's work: the one place that decides how many (issue 86, item 6).

Torch takes every core, and its OpenMP threads spin while they wait for each other: on a busy machine a cliff (the
plan case's 10 epochs: 12-14 s on one thread, 81-143 s on two while other work kept both cores busy). Hence
(benchmarks/threads/results.md, the shared 2-core machine):

- :func:`prefer_passive_wait` (the ``phasestem`` command, before torch loads): on a busy machine idle OpenMP threads
  sleep (``OMP_WAIT_POLICY=PASSIVE``); one core kept busy, two threads: a median 31 s, not 97 s spinning;
- :func:`cpu_threads` (a reconstruction's ``run.cpu_threads``): ``auto`` takes the cores of this process's affinity
  that other work leaves free, measured over :data:`PROBE_SECONDS` from ``/proc/stat`` (the 1-minute load average
  lags: it still counts a run just ended, not yet one just started), at least one, at most torch's count now; an
  ``OMP_NUM_THREADS`` in the environment wins; a number is taken as it is; logged with the reason. Where torch was
  loaded before the policy could be asked for (a program calling ``run_reconstruction``), fewer threads are what
  keeps a busy machine's run off the cliff. :func:`decide_cpu_threads` is the rule as a pure function.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

#: seconds over which the other work on this process's cores is measured (once per :data:`MEASURE_TTL`)
PROBE_SECONDS = 0.2
#: seconds a measurement is reused by the next run in the same process (a run's thread count then stays put)
MEASURE_TTL = 300.0
#: the OpenMP wait policy the ``phasestem`` command asks for when the environment names none
WAIT_POLICY = "PASSIVE"


class Load(NamedTuple):
    """Other work on this process's cores at the start: ``busy`` cores' worth of it (None: unknown), and in words."""
    busy: float | None
    text: str


class Decision(NamedTuple):
    """The thread count of a run and the log line that says why."""
    threads: int
    line: str


def decide_cpu_threads(cores: int, busy: float | None, env: str | None = None, setting: int | str = "auto",
                       current: int | None = None, load_text: str | None = None,
                       field: str = "run.cpu_threads") -> Decision:
    """The thread count of a run from ``cores`` usable, ``busy`` of them taken by other work (None: unknown), ``env``
    (``OMP_NUM_THREADS``, None: not set), ``setting`` (``auto`` or a number), ``current`` (torch's count now, None: no
    cap) and ``load_text`` (the load in words). An ``OMP_NUM_THREADS`` count (a nested list's first) wins; a number is
    taken as it is; ``auto`` takes the free cores, rounded (more than half busy: taken), at least 1, at most
    ``current``."""
    cores = max(1, int(cores))
    text = load_text or ("load unknown" if busy is None else f"load average {busy:.1f} at start")
    env_threads = _env_count(env)
    if env_threads is not None:
        over = "" if setting == "auto" else f"; {field} {setting} not applied"
        return Decision(env_threads, f"{field}: {env_threads} thread{'s' * (env_threads > 1)} from OMP_NUM_THREADS="
                                     f"{env.strip()} in the environment{over}")
    note = "" if env is None or not env.strip() else f"; OMP_NUM_THREADS={env.strip()!r} is not a count, ignored"
    if setting != "auto":
        return Decision(int(setting), f"{field} {int(setting)}: {int(setting)} of {cores} cores{note}")
    free = cores if busy is None else int(cores - max(0.0, busy) + 0.5)
    threads = max(1, min(cores, free))
    cap = f"; torch was set to {current} before the run" if current is not None and 1 <= current < threads else ""
    threads = min(threads, current) if cap else threads
    return Decision(threads, f"{field} auto: {threads} of {cores} cores ({text}{cap}){note}")


def _env_count(env: str | None) -> int | None:
    """The thread count of an ``OMP_NUM_THREADS`` value (the first of a nested list), None when it is not one."""
    first = (env or "").strip().split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) >= 1 else None


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity; all of them where the system cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cpu_times(stat: str, cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) clock ticks of ``cpus`` since boot in ``stat`` (``/proc/stat``'s text; None: none of them there).
    Niced work counts: with the scheduler's autogroups (the desktop default) another session's niced process takes
    its session's fair share all the same (the niced jobs measured beside ours cost two spinning threads 5x)."""
    busy = total = 0.0
    seen = False
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = ([float(x) for x in rest.split()[:8]] + [0.0] * 8)[:8]
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
        seen = True
    return (busy, total) if seen else None


def busy_cores(before: tuple[float, float], after: tuple[float, float], n_cpus: int, own_ticks: float = 0.0) -> float:
    """Cores' worth of other work between two :func:`cpu_times` readings of ``n_cpus`` CPUs, ``own_ticks`` (this
    process's own time meanwhile) left out."""
    if after[1] <= before[1]:
        return 0.0
    return max(0.0, (after[0] - before[0] - own_ticks) / (after[1] - before[1]) * n_cpus)


def measure_load(cpus: list[int] | None = None, seconds: float = PROBE_SECONDS) -> Load:
    """Other work on ``cpus`` (default :func:`usable_cpus`): what other processes took of them over ``seconds``, else
    (no ``/proc/stat``) the 1-minute load average in proportion to the share of the machine's CPUs they are."""
    cpus = usable_cpus() if cpus is None else cpus
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):
        average = None
    avg_text = "" if average is None else f"load average {average:.1f}"
    stat = Path("/proc/stat")
    before, own = (cpu_times(stat.read_text(), set(cpus)) if stat.exists() else None), time.process_time()
    if before is not None:  # this process's own CPU time (all its threads) left out
        time.sleep(seconds)
        busy = busy_cores(before, cpu_times(stat.read_text(), set(cpus)), len(cpus),
                          (time.process_time() - own) * os.sysconf("SC_CLK_TCK"))
        return Load(busy, f"other work on {busy:.1f} of them over {seconds:g} s"
                          + (f"; {avg_text} at start" if avg_text else ""))
    if average is None:
        return Load(None, "load unknown")
    return Load(average * len(cpus) / max(os.cpu_count() or 1, len(cpus)), f"{avg_text} at start")


_measured: tuple[float, Load] | None = None  # (when, what) of the last measurement in this process


def current_load() -> Load:
    """:func:`measure_load`, measured again when the last measurement is older than :data:`MEASURE_TTL`."""
    global _measured
    now = time.monotonic()
    if _measured is None or now - _measured[0] > MEASURE_TTL:
        _measured = (now, measure_load())
    return _measured[1]


@contextmanager
def cpu_threads(setting: int | str = "auto", device: str = "cpu",
                field: str = "run.cpu_threads") -> Iterator[Decision | None]:
    """torch's CPU threads for the block as :func:`decide_cpu_threads` decides from the machine as it is (restored
    after); yields the :class:`Decision` (its ``line`` for the run log), None off the CPU (nothing changed)."""
    if str(device).split(":")[0] != "cpu":
        yield None
        return
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    load = current_load() if setting == "auto" and _env_count(env) is None else Load(None, "")
    decision = decide_cpu_threads(len(usable_cpus()), load.busy, env, setting, before, load.text or None, field)
    if policy := os.environ.get("OMP_WAIT_POLICY"):
        decision = Decision(decision.threads, f"{decision.line}; OMP_WAIT_POLICY={policy}")
    if decision.threads != before:
        torch.set_num_threads(decision.threads)
    try:
        yield decision
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def prefer_passive_wait(environ: dict | None = None, busy: float | None = None) -> bool:
    """Ask OpenMP to let idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``) where other work takes at least half a core
    (``busy`` cores, None: unknown, taken as busy) and the environment names no policy; True when set. On a machine
    that is idle at start OpenMP's own wait (a short spin) is kept: passive threads cost the plan case 5-8 % there,
    spinning ones 2-7 x where another process shares the cores (benchmarks/threads). Only before torch is imported:
    OpenMP reads it once, when torch loads it."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ or "torch" in sys.modules or (busy is not None and busy < 0.5):
        return False
    environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True
