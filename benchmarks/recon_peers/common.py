"""Helpers shared by the runners (NumPy only: imported from the peer tools' own venvs too).

Case file (``case_X.npz``, written by ``bench.py``):
  patterns (Sy, Sx, H, W) float32, fftshift-ed, noise-free, each summing to ≈ 1;
  truth_phase (Ny, Nx) float32 rad, summed over slices, dataset frame (pixel (0, 0) at the
  first probe position, 0 Å); scalars energy (eV), semiangle (mrad), c10 (Å, phasestem/PtyRAD
  convention: + = crossover before the entrance surface), sampling (Å), scan_step (Å),
  n_slices, dz (Å), n_modes, iters, batch.
Result file (written by each runner): phase (Ny', Nx') summed over slices (and modes), the
  object-pixel coordinate origin_px (y, x) of the dataset-frame origin (the first probe centre),
  iter_times (s, one per iteration), settings (JSON text; ``setup_s``: the wall seconds from the case
  in memory, every import done, to the start of the first iteration's clock: the tool's own set-up of
  its model and data, which ``bench.py`` counts in the time to a target), and optionally phase_history
  (n_iter, Ny', Nx') float32: the phase after each iteration in the frame of ``phase`` (same
  origin_px), for time-to-accuracy curves (``benchmarks/independent/bench.py``).
"""
from __future__ import annotations

import json
import os

import numpy as np


def load_case(path: str) -> dict:
    with np.load(path) as z:
        case = {k: z[k] for k in z.files}
    for k in ("energy", "semiangle", "c10", "sampling", "scan_step", "dz"):
        case[k] = float(case[k])
    for k in ("n_slices", "n_modes", "iters", "batch"):
        case[k] = int(case[k])
    return case


def save_result(path: str, phase, origin_px, iter_times, settings: dict, phase_history=None) -> None:
    """Write a result file atomically; ``phase_history`` (list or array of per-iteration phases) is optional."""
    tmp = path + ".tmp.npz"
    extra = {}
    if phase_history is not None and len(phase_history):
        extra["phase_history"] = np.stack([np.asarray(p, dtype=np.float32) for p in phase_history])
    np.savez(tmp, phase=np.asarray(phase, dtype=np.float32), origin_px=np.asarray(origin_px, dtype=np.float64),
             iter_times=np.asarray(iter_times, dtype=np.float64), settings=json.dumps(settings), **extra)
    os.replace(tmp, path)


def set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def run_logged(cmd: list[str], env: dict, log, timeout: int) -> str | None:
    """Run a runner with its output in ``log``; None on success, else one line saying what went wrong."""
    import subprocess
    from pathlib import Path

    log = Path(log)
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout} s (log {log})"
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        return f"failed (rc {proc.returncode}, log {log}): {' | '.join(tail)}"
    return None
