"""How a finished job ended, beyond its state: what the job list and the run page show (:func:`job_outcome`).

A job's state says only whether its command exited 0. The outcome reads its run folder:

* ``done`` — exited 0 and the loss did not rise at the end (or the command keeps no loss history);
* ``partial`` — a live job that exited 0 with the reconstruction of a partial scan (its ``live.json`` says the scan
  was not complete: the operator's first stop ended it, :func:`partial_scan`); a finished run all the same;
* ``rising`` — exited 0, but the loss rose at the end (:func:`rising_epochs`, :data:`RISING_EPOCHS`): the result is
  not the run's best, the learning rate is likely too high for its last epochs;
* ``diverged`` — the divergence check stopped it (the engine's ``… in epoch N; stopped and restored the state after
  epoch M`` line in ``reconstruct.log`` or ``job.log``; it exits 1, leaves the last good state in
  ``checkpoint.pt`` and no ``results.h5``);
* ``killed`` — ended by a signal (the out-of-memory killer, ``kill -9``);
* ``failed`` — exited non-zero otherwise;
* ``stopped`` — cancelled before it wrote its results.

The loss history is read from ``results.h5`` (``loss/loss``), else ``live.npz`` (``loss``), else the
``epoch N loss X`` lines of ``reconstruct.log``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .data import DatasetCache
from .jobstore import FINAL, STREAMED, Job
from .jsontext import load_file
from .runs import log_tail

#: consecutive epoch-on-epoch rises at the end of a loss history that make a finished run "loss rising"
RISING_EPOCHS = 3
#: and the least relative rise over them (plateau noise of a converged run is not a rise)
RISING_TOLERANCE = 1e-3
#: the longest loss history read (epochs) and the most of a run log read for one (bytes, from its end): the server
#: reads these files itself, so a file that declares more is not read
MAX_EPOCHS, MAX_LOG_BYTES = 1_000_000, 8 * 2**20
#: the engine's line when its divergence check stops a run (phasestem.recon.callbacks.DivergenceGuard), as the run
#: log ("ERROR …"), the console ("ERROR phasestem.recon: …") and the command ("…: error: …") write it
DIVERGED = re.compile(r"(?:ERROR(?: [\w.]+:)? |error: )(?P<reason>.*?) in epoch (?P<epoch>\d+); stopped and restored "
                      r"the state after epoch (?P<kept>\d+)")
#: a loss line of reconstruct.log (phasestem.recon.callbacks.EpochLog)
EPOCH_LINE = re.compile(r"\bepoch (\d+) loss (\S+)")
#: the words each outcome adds to the job's state on the page ("done · loss rising"; its colour: ``outcome-KIND``)
NOTES = {"done": "", "rising": "loss rising", "partial": "partial scan", "diverged": "diverged",
         "killed": "killed, no results", "failed": "", "stopped": "no results", "cancelled": ""}
#: outcomes kept (the key holds the job's state and its run files' sizes and times)
_OUTCOMES = DatasetCache(keep=512)
#: the run files an outcome is read from
_SOURCES = ("results.h5", "live.npz", "reconstruct.log", "job.log", "live.json")
#: the most of a live job's account (``live.json``) read (bytes): the server reads it itself
MAX_SUMMARY_BYTES = 1 << 20


def _results_loss(path: Path) -> np.ndarray | None:
    """The loss history of a results.h5 (None where it holds none, is damaged, or its structure is refused:
    :func:`phasestem.io.hdf5.open_file`)."""
    from ..io.hdf5 import check_written, open_file

    try:
        with open_file(path, "phasestem results file") as f:
            if "loss/loss" not in f:
                return None
            loss = f["loss/loss"]
            if loss.ndim != 1 or loss.size > MAX_EPOCHS:  # not a loss history: never read whole into the server
                return None
            check_written(loss, f"{path}:loss/loss")
            return np.asarray(loss[...], dtype=np.float64)
    except (OSError, KeyError):
        return None


def _log_loss(path: Path) -> np.ndarray | None:
    """The loss of each epoch in a run log's last :data:`MAX_LOG_BYTES` (a resumed run's later line for an epoch
    wins)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - MAX_LOG_BYTES))
            text = fh.read(MAX_LOG_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    by_epoch: dict[int, float] = {}
    for epoch, value in EPOCH_LINE.findall(text):
        try:
            by_epoch[int(epoch)] = float(value)
        except ValueError:
            continue
    return np.array([by_epoch[k] for k in sorted(by_epoch)]) if by_epoch else None


def loss_history(run_dir: Path) -> np.ndarray | None:
    """The mean loss of each epoch (E,) of the run in ``run_dir``: results.h5, else live.npz, else reconstruct.log;
    None where none of them holds one."""
    from ..recon.live import LIVE_FILE, read_snapshot

    run_dir = Path(run_dir)
    if (run_dir / "results.h5").is_file():
        loss = _results_loss(run_dir / "results.h5")
        if loss is not None:
            return loss
    snap = read_snapshot(run_dir / LIVE_FILE) if (run_dir / LIVE_FILE).is_file() else None
    if snap is not None and "loss" in snap:
        return np.asarray(snap["loss"], dtype=np.float64)
    return _log_loss(run_dir / "reconstruct.log")


def rising_epochs(loss: np.ndarray) -> int:
    """How many epochs the loss rose at the end of ``loss`` (E,): the trailing epochs each above the one before.
    The rule: a run ends "loss rising" when this is at least :data:`RISING_EPOCHS` and the loss rose over them by
    more than :data:`RISING_TOLERANCE` of its value before them (:func:`loss_trend`). Non-finite epochs are left
    out."""
    values = np.asarray(loss, dtype=np.float64)
    values = values[np.isfinite(values)]
    rises = np.diff(values) > 0
    n = 0
    for rose in rises[::-1]:
        if not rose:
            break
        n += 1
    return n


def loss_trend(loss: np.ndarray | None) -> str | None:
    """Why ``loss`` (E,) ends rising (the detail line), or None where it does not (:func:`rising_epochs`)."""
    if loss is None:
        return None
    values = np.asarray(loss, dtype=np.float64)
    finite = values[np.isfinite(values)]
    n = rising_epochs(finite)
    if n < RISING_EPOCHS:
        return None
    before, last = finite[-1 - n], finite[-1]
    if last - before <= RISING_TOLERANCE * abs(before):
        return None
    best = int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))
    return (f"the loss rose over its last {n} epochs, {before:.4g} → {last:.4g} "
            f"(+{100 * (last - before) / abs(before) if before else float('inf'):.3g} %); its lowest was "
            f"{values[best]:.4g} in epoch {best + 1}: the result is not the run's best (lower the learning rate "
            "or the epochs)")


def divergence(run_dir: Path) -> str | None:
    """The engine's divergence line of the run in ``run_dir`` (``reason in epoch N; stopped and restored the state
    after epoch M``), from the end of reconstruct.log or job.log; None where there is none."""
    run_dir = Path(run_dir)
    kept = " kept in checkpoint.pt" if (run_dir / "checkpoint.pt").is_file() else ""
    for name in ("reconstruct.log", "job.log"):
        for line in reversed(log_tail(run_dir / name)):
            m = DIVERGED.search(line)
            if m:
                return f"{m['reason'].strip()} in epoch {m['epoch']}; stopped, the state after epoch {m['kept']}{kept}"
    return None


def _stopped_detail(run_dir: Path) -> str:
    loss = loss_history(run_dir)
    done = f"after epoch {len(loss)}" if loss is not None and len(loss) else "before its first epoch"
    resume = "; Resume continues from checkpoint.pt" if (run_dir / "checkpoint.pt").is_file() else ""
    kept = _recording(run_dir)
    if kept:  # a live job: the stream does not come again, what was received is its recording
        resume = f"; the frames received are kept in {kept} (reconstruct it with phasestem reconstruct)"
    return f"stopped {done}, no results.h5{resume}"


def _recording(run_dir: Path) -> str | None:
    """The name of a live job's recording in ``run_dir`` (:func:`phasestem.live.recording.find_recording`)."""
    from ..live.recording import find_recording

    found = find_recording(run_dir)
    return None if found is None else found.name


def partial_scan(run_dir: Path) -> str | None:
    """What a live job's account (``live.json``, :mod:`phasestem.live.session`) says of a scan that did not complete:
    ``partial scan: stopped by the operator after N of M frames`` (N the frames recorded); None where the scan was
    complete or the run holds no readable account."""
    from ..live.session import SUMMARY_NAME

    path = Path(run_dir) / SUMMARY_NAME
    try:  # a regular file of a bounded size only (never a FIFO or a device a job put in its place)
        summary = load_file(path) if path.is_file() and path.stat().st_size <= MAX_SUMMARY_BYTES else None
    except OSError:
        summary = None
    if not isinstance(summary, dict) or summary.get("complete", True) is not False:
        return None
    reason = str(summary.get("stop_reason") or "ended early")[:200]
    got = summary.get("frames_recorded", summary.get("frames_received"))
    of = summary.get("frames_expected")
    counts = f" after {got} of {of} frames" if isinstance(got, int) and isinstance(of, int) else ""
    return f"partial scan: {reason}{counts}"


def _read_outcome(run_dir: Path, job: Job) -> dict[str, Any]:
    has_results = (run_dir / "results.h5").is_file()
    if job.state == "done":
        why = loss_trend(loss_history(run_dir))
        partial = partial_scan(run_dir) if job.command in STREAMED else None
        if partial:
            return {"kind": "partial", "detail": "; ".join(filter(None, (partial, why)))}
        return {"kind": "rising" if why else "done", "detail": why or ""}
    if job.state == "cancelled":
        kept = _recording(run_dir)
        detail = f"stopped by the operator: the frames received are kept in {kept} and reconstructed" if kept else ""
        return {"kind": "cancelled", "detail": detail} if has_results else \
            {"kind": "stopped", "detail": _stopped_detail(run_dir)}
    why = divergence(run_dir)
    if why:
        return {"kind": "diverged", "detail": why}
    if job.returncode is not None and job.returncode < 0 and not has_results:
        return {"kind": "killed", "detail": f"ended by signal {-job.returncode}; {_stopped_detail(run_dir)}"}
    return {"kind": "failed", "detail": f"exit {job.returncode}" if job.returncode is not None else ""}


def job_outcome(root: Path, job: Job) -> dict[str, Any] | None:
    """How ``job`` ended ({"kind", "note", "label", "detail"}: one of the module docstring's kinds, the words it
    adds to the state (:data:`NOTES`), the state with them as the page shows it, one line why); None while it has
    not ended."""
    if job.state not in FINAL:
        return None
    run_dir = Path(root) / job.run_dir
    stamps = []
    for name in _SOURCES:
        try:
            st = (run_dir / name).stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    key = (str(run_dir), job.id, job.state, job.returncode, tuple(stamps))
    out = _OUTCOMES.get(key, lambda: _read_outcome(run_dir, job))
    note = NOTES[out["kind"]]
    return {**out, "note": note, "label": f"{job.state} · {note}" if note else job.state}
