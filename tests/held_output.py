"""Helpers of the output-lock tests: run a command, freeze it while it holds its output, run a second writer.

Imported by the test modules (pytest puts ``tests/`` on ``sys.path``); not a test module itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: a ``phasestem`` command line in a fresh interpreter (the CLI exactly as a user runs it)
PHASESTEM = [sys.executable, "-m", "phasestem.cli"]


def wait_for_lock_holder(lock: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The JSON record ``proc`` writes into ``lock`` once it holds it (AssertionError if it never does)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            record = json.loads(lock.read_text())
            if record.get("pid") == proc.pid:
                return record
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the first run never held {lock} (exit {proc.poll()})")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative name → (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def second_while_held(first: list[str], second: list[str], lock: Path, cwd: Path | None = None,
                      timeout: float = 300) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, dict]:
    """Start ``first``; once it holds ``lock``, freeze it (SIGSTOP: the overlap is certain, not timed), run
    ``second`` to its end, let ``first`` go on and finish. Returns (first, second, holder record).

    Asserts that ``second`` neither wrote nor deleted anything in the lock's folder.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(first, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    try:
        holder = wait_for_lock_holder(lock, proc)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            before = snapshot(lock.parent)
            refused = subprocess.run(second, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
            after = snapshot(lock.parent)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert after == before, f"the refused run changed the folder: {before} -> {after}"
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(first, proc.returncode, stdout, stderr), refused, holder


def assert_refused_naming(refused: subprocess.CompletedProcess, holder: dict, command: str) -> None:
    """Exit 1 and one line on stderr naming the holder's command, pid, host and start time."""
    err = refused.stderr.strip()
    assert refused.returncode == 1, (refused.returncode, err[-3000:])
    assert len(err.splitlines()) == 1, err
    for part in (f"'{command}'", f"pid {holder['pid']}", holder["host"], holder["started"]):
        assert part in err, (part, err)
