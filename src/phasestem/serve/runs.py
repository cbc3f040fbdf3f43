"""What the live-run, compare and calibrate pages show of run folders.

* :class:`LiveRuns` — a running job's state for the push channel: its epoch snapshot (``live.npz``, written by the
  reconstruction: :mod:`phasestem.recon.live`), ETA, GPU memory and the tail of its log; for a live job
  (``phasestem live``) also the stream's account and images (:func:`stream_view`) and its recording. One rendering
  per new snapshot, shared by every page watching it.
* :func:`compare_runs` — finished reconstructions side by side on one colour scale, their parameters' differences
  and their metrics against a ground truth when the runs had one; the difference map and the line profiles of
  the runs aligned onto the first (:func:`aligned_grid`, :mod:`.align`).

The calibrate page's parameter form: :mod:`.params_form`.
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
from .data import DatasetCache
from .images import common_range, image, picture, pixel, scale_of
from .jobstore import FINAL, STREAMED, Job, parse_job_id
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
    """A live snapshot as the page draws it: numbers, the loss curve and the images (data URLs) with their colour
    and scale bars (``scales``: :func:`~phasestem.serve.images.picture`)."""
    probe = snap["probe"]
    amp = np.abs(probe)
    phase = np.where(amp > 0.05 * amp.max(), np.angle(probe), np.nan)
    epoch, n_epochs = int(snap["epoch"]), int(snap["n_epochs"])
    gpu = int(snap["gpu_memory"])
    obj_px, probe_px = live_pixels(snap)
    pictures = {"object_phase": picture(snap["object_phase"], CMAPS["phase"], unit="rad", label="object phase",
                                        px=obj_px),
                "probe_amplitude": picture(amp, CMAPS["intensity"], 0.0, float(amp.max()) or 1.0, unit="a.u.",
                                           label="probe amplitude", px=probe_px),
                "probe_phase": picture(phase, CMAPS["cyclic"], -np.pi, np.pi, unit="rad", label="probe phase",
                                       px=probe_px)}
    if "phase_sigma" in snap:  # the run's error bars (run.uncertainty), in its last snapshot
        sigma = snap["phase_sigma"]
        finite = sigma[np.isfinite(sigma)]
        top = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        pictures["phase_sigma"] = picture(sigma, CMAPS["intensity"], 0.0, top or 1.0, unit="rad",
                                          label="phase σ (blank: not constrained)", px=obj_px)
    stream = stream_view(snap, pictures) if "frames_expected" in snap else None
    eta = eta_seconds(snap["seconds"], epoch, n_epochs) if stream is None or stream["stage"] == "finishing" else None
    return {"epoch": epoch, "n_epochs": n_epochs, "loss": _thin(snap["loss"]), "eta_s": eta,
            "written": float(snap["time"]), "gpu_memory_gb": gpu / 1024**3 if gpu >= 0 else None,
            "images": {k: v.pop("src") for k, v in pictures.items()}, "scales": pictures, "stream": stream}


#: the counters of a live job's snapshot the page shows (:mod:`phasestem.live.feed`): frames expected, sent by the
#: detector, received, recorded, fitted, waiting for the fit; the live updates
STREAM_COUNTS = ("frames_expected", "frames_sent", "frames_received", "frames_recorded", "frames_fitted",
                 "frames_waiting", "updates")
#: and its measures: rate (frames/s) and duration (s) by the frames' own clock, the stall alarm's threshold (s), the
#: epochs' worth fitted while streaming, the lag from a frame's arrival to its first update (s)
STREAM_MEASURES = ("frames_per_second", "scan_seconds", "stall_seconds", "epochs_live", "lag_median", "lag_p95")


def stream_view(snap: dict[str, np.ndarray], pictures: dict[str, dict]) -> dict[str, Any]:
    """A live job's snapshot (``phasestem live``): the stream's stage, message, counters and measures (None where
    the snapshot has none: written before it had them, or not known yet), and its virtual bright and dark field
    and iCoM phase over the scan added to ``pictures`` (blank where no frame came yet; in Å where the snapshot has
    the scan step, else in scan positions)."""
    def scalar(key):
        value = np.asarray(snap.get(key, np.nan), dtype=np.float64).reshape(-1)
        return float(value[0]) if value.size and np.isfinite(value[0]) else None

    step = np.asarray(snap.get("scan_step", [np.nan]), dtype=np.float64)
    px = pixel(float(step.mean()) if step.size and np.all(np.isfinite(step)) else None, "Å",
               "scan positions: in pixels")
    for key, label, cmap, unit in (("virtual_bf", "virtual bright field", "gray", "counts"),
                                   ("virtual_adf", "virtual annular dark field", "gray", "counts"),
                                   ("icom_phase", "iCoM phase", CMAPS["phase"], "rad")):
        if key in snap:
            pictures[key] = picture(snap[key], cmap, unit=unit, label=f"{label} (blank: no frame yet)", px=px)
    counts = {k: None if (v := scalar(k)) is None else int(v) for k in STREAM_COUNTS}
    return {"stage": str(snap.get("stage", "")), "message": str(snap.get("message", "")), **counts,
            **{k: scalar(k) for k in STREAM_MEASURES},
            "scan_shape": [int(v) for v in np.asarray(snap.get("scan_shape", [])).reshape(-1)]}


def recording_of(run_dir: Path) -> dict[str, Any] | None:
    """A live job's recording in ``run_dir`` (:func:`phasestem.live.recording.find_recording`: ``stream.h5`` once
    the stream ended, ``stream.partial.h5`` while it runs or when it was stopped) and its size, or None before the
    first frames."""
    from ..live.recording import find_recording

    found = find_recording(run_dir)
    try:
        return None if found is None else {"name": found.name, "bytes": found.stat().st_size}
    except OSError:  # renamed between the look and the size
        return None


def live_pixels(snap: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The pixels (Å) of a snapshot's object phase (its ``sampling``) and of its probe (its ``probe_sampling``;
    a snapshot written before it had one: the model's pixel where neither image was block-averaged, both at most
    half of :data:`~phasestem.recon.live.MAX_SIDE` a side, else in pixels)."""
    from ..recon.live import MAX_SIDE

    def size_of(key: str) -> float | None:
        sampling = np.asarray(snap.get(key, [np.nan]), dtype=np.float64)
        return float(sampling.mean()) if sampling.size and np.all(np.isfinite(sampling)) else None

    size = size_of("sampling")
    obj_px = pixel(size, "Å", "object pixel unknown: in pixels")
    probe_size = size_of("probe_sampling")
    if probe_size is None and max(snap["object_phase"].shape) <= MAX_SIDE // 2 \
            and max(snap["probe"].shape) <= MAX_SIDE // 2:
        probe_size = size
    probe_px = pixel(probe_size, "Å", "probe reduced for the live view: in its pixels")
    return obj_px, probe_px


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
        if job.command in STREAMED:
            out["recording"] = recording_of(self.root / job.run_dir)
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


#: finished runs' results kept read (their phase over the scanned field, pixel, loss, metrics)
_RESULTS = DatasetCache(keep=8)
#: sets of runs kept aligned (a line profile drawn again does not align them again)
_ALIGNED = DatasetCache(keep=4)
#: most points of a line profile
MAX_PROFILE = 2000


def compare_ids(text: str | None) -> list[int]:
    """The job ids of ``?jobs=3,4``: at most 8 of them, each a job id (:func:`~.jobstore.parse_job_id`)."""
    items = [v for v in (text or "").split(",") if v.strip()]
    if len(items) > 8:
        raise Refused("compare: at most 8 runs at once", 400)
    try:
        return [parse_job_id(v) for v in items]
    except Refused as exc:
        raise Refused(f"jobs: {exc}", exc.status) from None


def _run_results(root: Path, job: Job) -> dict[str, Any]:
    """What the compare page uses of ``job``'s results.h5 (read once per version of the file)."""
    from ..recon.results import load_results

    path = root / job.run_dir / "results.h5"
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise Refused(f"job {job.id}: no results.h5 in {job.run_dir} (not a finished reconstruction)", 400)

    def read():
        res = load_results(path)
        loss = np.asarray(res["loss"].get("loss", np.zeros(0)), dtype=np.float64)
        sampling = np.asarray(res["attrs"].get("sampling", [np.nan]), dtype=np.float64)
        return {"phase": _scanned_phase(res), "sampling": float(sampling.mean()), "loss": loss,
                "epochs": int(res["attrs"]["epoch"]),
                "metrics": {k: float(np.asarray(v)) for k, v in res.get("metrics", {}).items()
                            if np.asarray(v).size == 1}}

    key = (str(path), st.st_mtime_ns, st.st_size)
    return {**_RESULTS.get(key, read), "key": key}


def common_grid(phases: list[np.ndarray], samplings: list[float]) -> tuple[list[np.ndarray], float]:
    """The phases on one grid: each resampled (:func:`phasestem.physics.resample.resample_image`, bilinear) to the first
    one's pixel where its own differs, then all cropped about their centres to the largest field they share;
    returns (phases, pixel Å)."""
    import torch

    from ..physics.resample import resample_image

    ref = samplings[0]
    out = []
    for phase, s in zip(phases, samplings, strict=True):
        if np.isfinite(ref) and np.isfinite(s) and abs(s / ref - 1) > 1e-3:
            phase = resample_image(torch.as_tensor(np.nan_to_num(phase), dtype=torch.float32), (s, s),
                                   (ref, ref)).numpy()
        out.append(phase)
    h, w = min(p.shape[0] for p in out), min(p.shape[1] for p in out)
    crops = []
    for phase in out:
        y0, x0 = (phase.shape[0] - h) // 2, (phase.shape[1] - w) // 2
        crop = phase[y0:y0 + h, x0:x0 + w]
        crops.append(crop - np.nanmean(crop))
    return crops, ref


def aligned_grid(results: list[dict]) -> tuple[list[np.ndarray], float, list[list[float] | None]]:
    """The runs' phases on their common grid (:func:`common_grid`), each moved onto the first's
    (:func:`~.align.align_onto_first`: the pixels moved in from outside a field NaN); returns (phases, pixel Å,
    the shift (dy, dx) px applied to each run, None where no match was found). ``results``: :func:`_run_results`'
    (their ``key`` names the version of each file: a set is aligned once)."""
    from .align import align_onto_first

    def align():
        grid, size = common_grid([r["phase"] for r in results], [r["sampling"] for r in results])
        return (*align_onto_first(grid), size)

    aligned, shifts, size = _ALIGNED.get(tuple(r["key"] for r in results), align)
    return aligned, size, shifts


def shift_record(shift: list[float] | None, size: float) -> dict[str, Any]:
    """A shift Compare applied, as the page reports it: ``shift_px`` (dy, dx), ``shift_angstrom`` (None where the
    pixel is unknown), ``aligned`` (False where no match was found and the run was left where it was)."""
    known = np.isfinite(size) and size > 0
    return {"aligned": shift is not None, "shift_px": shift,
            "shift_angstrom": [v * size for v in shift] if shift is not None and known else None}


def compare_runs(root: Path, jobs: list[Job]) -> dict[str, Any]:
    """Finished reconstructions side by side: phases on one colour scale (each with its ``scale`` for the colour and
    scale bars), differing parameters, metrics, and the ``difference`` of the second run's phase minus the first's
    on the common grid of all the runs, the second moved onto the first first (:func:`aligned_grid`; the shift
    applied: :func:`shift_record`, also each run's own), in a diverging colour map about 0."""
    if len(jobs) < 2:
        raise Refused("compare: choose two or more runs", 400)
    runs, phases, configs, results = [], [], [], []
    for job in jobs:
        run = root / job.run_dir
        res = _run_results(root, job)
        results.append(res)
        phases.append(res["phase"])
        try:
            config = flatten(yaml.safe_load((run / "config.yaml").read_text()) or {})
            configs.append({k: os.path.normpath(v) if isinstance(v, str) and "/" in v else v  # one spelling of a path
                            for k, v in config.items()})
        except (OSError, yaml.YAMLError):
            configs.append({})
        loss = res["loss"]
        files = [relative(root, p) for p in sorted(run.iterdir())
                 if p.suffix in (".h5", ".emd", ".png", ".yaml", ".log") and p.is_file()]
        runs.append({"job": job.id, "name": job.name, "run_dir": job.run_dir, "epochs": res["epochs"],
                     "final_loss": float(loss[-1]) if len(loss) else None, "metrics": res["metrics"],
                     "files": files, "loss": _thin(loss)})
    vmin, vmax = common_range(phases)
    for run, phase, res in zip(runs, phases, results, strict=True):
        run["image"] = image(phase, CMAPS["phase"], vmin, vmax)
        run["scale"] = scale_of(phase.shape, CMAPS["phase"], vmin, vmax, unit="rad",
                                label=f"phase of job {run['job']} (mean removed)",
                                px=pixel(res["sampling"], "Å", "pixel unknown: in pixels"))
    keys = sorted(set().union(*configs))
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    diff = [{"key": k, "values": [c.get(k) for c in configs]} for k in differ if not k.startswith("run.out_dir")]
    grid, size, shifts = aligned_grid(results)
    for run, shift in zip(runs, shifts, strict=True):
        run.update(shift_record(shift, size))
    delta = grid[1] - grid[0]
    delta -= np.nanmean(delta) if np.isfinite(delta).any() else 0.0
    lim = float(np.nanpercentile(np.abs(delta), 99.5)) if np.isfinite(delta).any() else 1.0
    lim = lim if lim > 0 else 1.0
    difference = {"jobs": [runs[0]["job"], runs[1]["job"]], "image": image(delta, CMAPS["signed"], -lim, lim),
                  "rms": float(np.sqrt(np.nanmean(delta ** 2))) if np.isfinite(delta).any() else None,
                  **shift_record(shifts[1], size),
                  "scale": scale_of(delta.shape, CMAPS["signed"], -lim, lim, unit="rad",
                                    label=f"job {runs[1]['job']} − job {runs[0]['job']}",
                                    px=pixel(size, "Å", "pixel unknown: in pixels"))}
    return {"runs": runs, "vmin": vmin, "vmax": vmax, "diff": diff, "difference": difference}


def line_profile(root: Path, jobs: list[Job], line: str | None) -> dict[str, Any]:
    """The phase of each run along ``line`` ("y0,x0,y1,x1", fractions 0–1 of the runs' common grid, that of
    :func:`compare_runs`' difference image: :func:`aligned_grid`, the runs moved onto the first): distances (Å, or
    pixels where the pixel is unknown) and values (rad, each run's mean removed; None outside a moved run's field),
    linear interpolation."""
    from scipy.ndimage import map_coordinates

    if len(jobs) < 2:
        raise Refused("compare: choose two or more runs", 400)
    try:
        ends = [float(v) for v in (line or "").split(",")]
    except ValueError:
        ends = []
    if len(ends) != 4 or not all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in ends):
        raise Refused("line: expected y0,x0,y1,x1 as fractions of the image from 0 to 1", 400)
    results = [_run_results(root, job) for job in jobs]
    grid, size, _ = aligned_grid(results)
    h, w = grid[0].shape
    y0, x0, y1, x1 = ends[0] * (h - 1), ends[1] * (w - 1), ends[2] * (h - 1), ends[3] * (w - 1)
    length = float(np.hypot(y1 - y0, x1 - x0))
    n = int(min(MAX_PROFILE, max(2, np.ceil(2 * length) + 1)))
    coords = np.stack([np.linspace(y0, y1, n), np.linspace(x0, x1, n)])
    known = np.isfinite(size) and size > 0
    distance = np.linspace(0.0, length, n) * (size if known else 1.0)
    runs = [{"job": job.id, "values": _thin(map_coordinates(phase, coords, order=1, cval=np.nan))}
            for job, phase in zip(jobs, grid, strict=True)]
    return {"line": ends, "unit": "Å" if known else "px", "distance": _thin(distance), "runs": runs,
            "shape": [h, w]}
