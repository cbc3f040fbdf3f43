"""What the live-run, compare and calibrate pages show of run folders.

* :class:`LiveRuns` — a running job's state for the push channel: its epoch snapshot (``live.npz``, written by the
  reconstruction: :mod:`phasestem.recon.live`), ETA, GPU memory and the tail of its log. One rendering per new
  snapshot, shared by every page watching it.
* :func:`compare_runs` — finished reconstructions side by side on one colour scale, their parameters' differences
  and their metrics against a ground truth when the runs had one.
* :func:`params_form` / :func:`save_params_form` — a parameter file as a form of dotted fields, validated by the
  YAML's own schema before it is written.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..plot.core import CMAPS
from .images import common_range, image
from .jobs import FINAL, Job
from .security import Refused, relative

#: lines of a job's log the live page shows
LOG_LINES = 40
#: bytes read from the end of a log for its tail
LOG_BYTES = 16384
#: seconds between two pushes caused by the log alone
LOG_PERIOD = 1.0
#: points of a loss curve sent to the page (longer histories are thinned)
MAX_POINTS = 2000


#: a progress bar's state (tqdm: "adam epochs:  96%|█▌ | 24/25 [00:37<00:01, …]"), dropped from the log tail
_PROGRESS = re.compile(r"[^|\n]*\d+%\|[^|]*\|[^\]]*\]\s*")


def log_tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    """The last ``lines`` lines of a log, without progress bars."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - LOG_BYTES))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    rows = [_PROGRESS.sub("", row.rsplit("\r", 1)[-1]) for row in text.splitlines()]
    return [row for row in rows if row.strip()][-lines:]


def _thin(values: np.ndarray) -> list[float | None]:
    values = np.asarray(values, dtype=np.float64)
    if values.size > MAX_POINTS:
        values = values[np.linspace(0, values.size - 1, MAX_POINTS).round().astype(int)]
    return [float(v) if np.isfinite(v) else None for v in values]


def eta_seconds(seconds: np.ndarray, epoch: int, n_epochs: int) -> float | None:
    """Seconds left: the mean time of the last (up to 5) epochs × the epochs to go."""
    done = np.asarray(seconds, dtype=np.float64)[-5:]
    done = done[np.isfinite(done)]
    if done.size == 0:
        return None
    return float(done.mean() * max(0, n_epochs - epoch))


def snapshot_view(snap: dict[str, np.ndarray]) -> dict[str, Any]:
    """A live snapshot as the page draws it: numbers, the loss curve and the images (data URLs)."""
    probe = snap["probe"]
    amp = np.abs(probe)
    phase = np.where(amp > 0.05 * amp.max(), np.angle(probe), np.nan)
    epoch, n_epochs = int(snap["epoch"]), int(snap["n_epochs"])
    gpu = int(snap["gpu_memory"])
    return {"epoch": epoch, "n_epochs": n_epochs, "loss": _thin(snap["loss"]),
            "eta_s": eta_seconds(snap["seconds"], epoch, n_epochs), "written": float(snap["time"]),
            "gpu_memory_gb": gpu / 1024**3 if gpu >= 0 else None,
            "images": {"object_phase": image(snap["object_phase"], CMAPS["phase"]),
                       "probe_amplitude": image(amp, CMAPS["intensity"], 0.0, float(amp.max()) or 1.0),
                       "probe_phase": image(phase, CMAPS["cyclic"], -np.pi, np.pi)}}


class LiveRuns:
    """The push channel's payloads, rendered once per new snapshot (shared by every watcher)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._views: dict[int, tuple[tuple, dict]] = {}
        self._logs: dict[int, tuple[int | None, float]] = {}  # per job: log size last pushed, when
        self._lock = threading.Lock()

    def _view(self, job: Job) -> dict | None:
        from ..recon.live import LIVE_FILE, read_snapshot

        path = self.root / job.run_dir / LIVE_FILE
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._views.get(job.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        snap = read_snapshot(path)
        if snap is None:
            return cached[1] if cached else None
        view = snapshot_view(snap)
        with self._lock:
            self._views[job.id] = (key, view)
        return view

    def payload(self, job: Job) -> dict[str, Any]:
        """Everything the live page shows of ``job`` now."""
        log_path = self.root / job.run_dir / "job.log"
        out = {"job": job.id, "state": job.state, "final": job.state in FINAL, "command_line": None,
               "returncode": job.returncode, "note": job.note, "log": log_tail(log_path),
               "elapsed_s": (job.ended or time.time()) - job.started if job.started else None,
               "live": self._view(job)}
        out["command_line"] = job.public(self.root)["command_line"]
        return out

    def signature(self, job: Job) -> tuple:
        """Changes whenever :meth:`payload` should be pushed again: the state, a new snapshot, or a log that grew
        (at most once a second for the log alone: a progress bar rewrites it ten times a second)."""
        from ..recon.live import LIVE_FILE

        run = self.root / job.run_dir
        parts: list = [job.state, job.returncode]
        try:
            st = (run / LIVE_FILE).stat()
            parts.append((st.st_mtime_ns, st.st_size))
        except OSError:
            parts.append(None)
        try:
            size = (run / "job.log").stat().st_size
        except OSError:
            size = None
        now = time.monotonic()
        with self._lock:
            shown, when = self._logs.get(job.id, (None, 0.0))
            if size != shown and now - when >= LOG_PERIOD:
                self._logs[job.id] = shown, when = size, now
        parts.append(shown)
        return tuple(parts)


# ---- compare ----------------------------------------------------------------------------------------------------
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"section.key": value} (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _scanned_phase(res: dict) -> np.ndarray:
    """The summed object phase over the scanned field (:func:`~phasestem.physics.experiment.scanned_field`), mean
    removed."""
    from ..physics.experiment import scanned_field

    phase = np.asarray(res["phase_sum"], dtype=np.float64)
    attrs = res["attrs"]
    positions = np.asarray(res["positions"], dtype=np.float64).reshape(-1, 2) + np.asarray(attrs["origin"])  # Å, object
    crop = phase[scanned_field(positions, attrs["sampling"], phase.shape)]
    crop = crop if crop.size else phase
    return crop - np.nanmean(crop)


def compare_runs(root: Path, jobs: list[Job]) -> dict[str, Any]:
    """Finished reconstructions side by side: phases on one colour scale, differing parameters, metrics."""
    from ..recon.results import load_results

    if len(jobs) < 2:
        raise Refused("compare: choose two or more runs", 400)
    runs, phases, configs = [], [], []
    for job in jobs:
        run = root / job.run_dir
        if not (run / "results.h5").is_file():
            raise Refused(f"job {job.id}: no results.h5 in {job.run_dir} (not a finished reconstruction)", 400)
        res = load_results(run / "results.h5")
        phases.append(_scanned_phase(res))
        try:
            config = flatten(yaml.safe_load((run / "config.yaml").read_text()) or {})
            configs.append({k: os.path.normpath(v) if isinstance(v, str) and "/" in v else v  # one spelling of a path
                            for k, v in config.items()})
        except (OSError, yaml.YAMLError):
            configs.append({})
        loss = res["loss"].get("loss", np.zeros(0))
        metrics = {k: float(np.asarray(v)) for k, v in res.get("metrics", {}).items() if np.asarray(v).size == 1}
        files = [relative(root, p) for p in sorted(run.iterdir())
                 if p.suffix in (".h5", ".emd", ".png", ".yaml", ".log") and p.is_file()]
        runs.append({"job": job.id, "name": job.name, "run_dir": job.run_dir, "epochs": int(res["attrs"]["epoch"]),
                     "final_loss": float(loss[-1]) if len(loss) else None, "metrics": metrics, "files": files,
                     "loss": _thin(loss)})
    vmin, vmax = common_range(phases)
    for run, phase in zip(runs, phases, strict=True):
        run["image"] = image(phase, CMAPS["phase"], vmin, vmax)
    keys = sorted(set().union(*configs))
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    diff = [{"key": k, "values": [c.get(k) for c in configs]} for k in differ if not k.startswith("run.out_dir")]
    return {"runs": runs, "vmin": vmin, "vmax": vmax, "diff": diff}


# ---- the calibrate page's parameter form ------------------------------------------------------------------------
def params_form(path: Path) -> dict[str, str]:
    """A reconstruction parameter file as {"section.key": YAML text of the value} (the form's fields)."""
    from ..recon.params import load_params

    params = load_params(path)  # the file must be valid to be shown; its relative paths stay as written
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    defaults = flatten(params.model_dump(mode="json"))
    written = flatten(data)
    fields = {**{k: v for k, v in defaults.items() if not k.startswith("tune")}, **written}
    return {k: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
            for k, v in fields.items()}


def save_params_form(path: Path, values: dict[str, Any]) -> None:
    """Write the form's ``values`` ({"section.key": YAML text}) over the parameter file at ``path``, after they pass
    the same schema as the YAML (:class:`~phasestem.recon.params.ReconstructParams`); the file's folder is locked
    (:mod:`phasestem.lock`) while it is written, so a running job's folder is refused."""
    from ..configfile import apply_overrides, parse_set_options, read_yaml_mapping
    from ..lock import hold_output
    from ..recon.params import parse_params
    from ..safety import atomic_file

    if not isinstance(values, dict) or not values:
        raise Refused("values: expected the form's fields", 400)
    overrides = parse_set_options([f"{k}={v}" for k, v in values.items()], "field")
    data = apply_overrides(read_yaml_mapping(path, "parameter file"), overrides)
    parse_params(data, path.name, path.parent)  # the YAML's own schema: one line naming each bad field
    with hold_output(path.parent, "phasestem serve (saving a parameter file)"), atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
