"""One live run, from an armed detector to the reconstruction ``phasestem reconstruct`` writes.

:func:`run_live`:

1. waits for the detector to be armed (:mod:`.merlin`), checks its scan against the parameter file's, and starts
   the recording (:mod:`.recording`) and the receiver thread (:mod:`.receiver`);
2. once the first scan row is in, builds the dataset of the whole scan the engine fits (the parameter file's
   calibrations, checks and transforms, :func:`phasestem.recon.params.configured_dataset`; the rows not yet
   received hold copies of the first, outside the fit) and the model (:func:`phasestem.recon.params.build_model`);
3. runs the engine while the frames arrive (:func:`phasestem.recon.engine.optimize` with
   :class:`~phasestem.live.feed.StreamFeed`: updates over the positions received so far, the object growing with
   the scan), the page's ``live.npz`` replaced as it goes; the run log is ``live.log``;
4. when the stream ends (whole, broken off, stalled past ``stall_timeout`` or stopped), closes the recording as
   ``stream.h5`` and continues to convergence as ``phasestem reconstruct`` of that file
   (:func:`phasestem.recon.run.run_reconstruction`) from the live state, writing the same ``results.h5``,
   ``results.emd`` (σ included), figures and ``reconstruct.log``; ``live.json`` holds the stream's account
   (frames expected, received, fitted live, lag).

A stream that broke off keeps every frame received (the whole rows reconstructed, the last row's frames in the
recording) and raises :class:`~phasestem.live.merlin.StreamError` after the results are written.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np

from ..base.errors import ConfigError
from ..base.lock import hold_output
from ..base.safety import atomic_file
from ..recon.callbacks import Callback
from .merlin import StreamError
from .receiver import Receiver
from .recording import Recording

log = logging.getLogger("phasestem.live")
run_log = logging.getLogger("phasestem.recon")  # the run log of the finishing reconstruction (reconstruct.log)

#: how the live run names itself in its output folder's lock
LIVE_COMMAND = "phasestem live"
#: the stream's account, beside the reconstruction's files
SUMMARY_NAME = "live.json"
#: the run log of the streaming part
LOG_NAME = "live.log"


def live_params(path: str | Path, overrides: dict | None = None, out: str | Path | None = None):
    """The :class:`~phasestem.recon.params.ReconstructParams` of a live run from the parameter file ``path``
    (``overrides``: ``--set``; ``out``: the run folder instead of ``run.out_dir``), ``data.file`` the recording in
    the run folder. A file or an override naming ``data.file`` is refused in one line (the stream is the data)."""
    from ..base.configfile import apply_overrides, read_yaml_mapping
    from ..recon.params import parse_params
    from .recording import RECORDING_NAME

    path, overrides = Path(path), dict(overrides or {})
    data = read_yaml_mapping(path, "parameter file")
    section = apply_overrides(copy.deepcopy(data), overrides).get("data")
    if "data.file" in overrides or (isinstance(section, dict) and section.get("file")):
        raise ConfigError(f"{path}: data.file: a live run records the detector's stream into its run folder "
                          f"({RECORDING_NAME}); leave data.file out")
    params = parse_params(data, str(path), path.parent, {**overrides, "data.file": RECORDING_NAME})
    if out is not None:
        params.run.out_dir = Path(out)
    params.data.file = Path(params.run.out_dir) / RECORDING_NAME
    return params


def _stream_calibrations(params) -> dict:
    """The parameter file's calibrations as reader options for frames without a file (no scan shape: rows come
    alone)."""
    from ..recon.params import given_calibrations

    options = given_calibrations(params)
    options.pop("scan_shape", None)
    return options


def _raw_dataset(params, frames: np.ndarray):
    """A :class:`~phasestem.dataset.FourDSTEM` of ``frames`` (Sy, Sx, H, W) as a reader returns a file's, the
    calibrations the parameter file's (:func:`phasestem.io._common.dataset_from_reader`)."""
    from ..base.errors import MissingCalibrationError
    from ..io._common import dataset_from_reader

    try:
        return dataset_from_reader(frames, "detector stream", **_stream_calibrations(params))
    except MissingCalibrationError as exc:
        raise ConfigError(f"a detector stream carries no calibration: give {exc.name} in the parameter file "
                          "(optics.energy, optics.semiangle, optics.angular_sampling or optics.sampling, scan.step)"
                          ) from None


def scan_shape_for(params, acquisition) -> tuple[int, int]:
    """The scan's (rows, cols): the parameter file's ``scan.shape``, checked against what the detector announced."""
    given = None if params.scan.shape is None else tuple(params.scan.shape)
    announced = acquisition.nav_shape
    shape = given or announced
    per_row = acquisition.frames_per_trigger
    if shape is None and per_row > 1 and acquisition.n_frames % per_row == 0:
        shape = (acquisition.n_frames // per_row, per_row)
    if shape is None:
        raise ConfigError(f"scan.shape: not given, and the detector announced {acquisition.n_frames} frames without a "
                          "scan shape; give scan.shape")
    if acquisition.n_frames and shape[0] * shape[1] != acquisition.n_frames:
        raise ConfigError(f"scan.shape: {shape[0]}×{shape[1]} = {shape[0] * shape[1]} positions, but the detector "
                          f"was armed for {acquisition.n_frames} frames")
    return (int(shape[0]), int(shape[1]))


def _wait_first_row(receiver: Receiver, stall_timeout: float) -> None:
    while receiver.received < receiver.scan_shape[1]:
        if receiver.error is not None:
            raise receiver.error
        if receiver.ended or not receiver.is_alive():
            raise StreamError(f"{receiver.stream.address}: the stream ended after {receiver.received} frames, before "
                              "a whole scan row")
        if receiver.quiet_seconds > stall_timeout:
            raise StreamError(f"{receiver.stream.address}: no frame for {stall_timeout:g} s before a whole scan row "
                              "(stalled detector)")
        time.sleep(0.01)


def _live_engine(params, receiver: Receiver, out: Path, sources, stall_timeout: float, preview: str | None):
    """Steps 2–3 of the module: the model fitted while the frames arrive; returns (model, feed)."""
    from ..io.counts import counts_decision
    from ..recon.data_losses import losses_for_data
    from ..recon.distributed import rank_device
    from ..recon.engine import optimize
    from ..recon.params import build_model, configured_dataset, data_transforms
    from .feed import StreamFeed
    from .preview import make_preview
    from .views import ScanViews

    sy, sx = receiver.scan_shape
    first = receiver.frames[:sx]
    placeholder = np.broadcast_to(first[None], (sy, sx, *first.shape[1:]))  # integer counts: the data decide
    raw = _raw_dataset(params, placeholder)
    dataset = configured_dataset(params, raw, sources, warn=True)
    decision = counts_decision(dataset).remember(dataset)
    losses = losses_for_data(params.losses, dataset, decision)[0]
    model = build_model(params, dataset).to(rank_device(params.run.device))
    views = ScanViews(dataset)

    def transform(frames: np.ndarray):
        return data_transforms(_raw_dataset(params, frames[None]), params.data)

    feed = StreamFeed(receiver, transform, views, out / "live.npz", params.run.batch_size, params.run.seed,
                      *make_preview(preview, dataset, model))
    run = params.run.model_copy(update={"progress": False, "lr_decay": "none", "holdout": 0.0, "coarse_start": 0,
                                        "divergence_factor": 0.0, "data_in_memory": True, "check_optics": False})
    log.info("live: fitting the scan's positions as they arrive (%d × %d, %s)", sy, sx, losses.describe())
    for _ in optimize(model, dataset, 10**9, run, losses, params.constraints, [feed, StallStop(receiver,
                                                                                                 stall_timeout)]):
        pass
    return model, feed


class StallStop(Callback):
    """Ends the stream when no frame came for ``stall_timeout`` s (the scan counts as ended there, logged)."""

    def __init__(self, receiver: Receiver, stall_timeout: float):
        self.receiver, self.stall_timeout = receiver, stall_timeout

    def on_epoch_end(self, loop) -> None:
        r = self.receiver
        if not r.done and r.quiet_seconds > self.stall_timeout:
            log.warning("%s: no frame for %g s: the scan is taken as ended (stalled detector)", r.stream.address,
                        self.stall_timeout)
            r.stop("stalled")


class _Note(Callback):
    """One line into the run log of the recording's reconstruction (``reconstruct.log``), once its file handler is
    on (after the first epoch)."""

    def __init__(self, note: str):
        self.note = note

    def on_epoch_end(self, loop) -> None:
        if self.note:
            run_log.info("%s", self.note)
            self.note = ""


def _continue_from(live_model):
    """A ``callback_hooks`` entry of :func:`~phasestem.recon.run.run_reconstruction`: the new model starts from the
    live model's object, probe and positions where they fit it (the same scan and grid,
    :func:`~phasestem.base.torch_files.state_dict_mismatch`), then runs as a reconstruction."""
    from ..base.torch_files import state_dict_mismatch

    def hook(model, dataset, twin):
        state = live_model.state_dict()
        if not state_dict_mismatch(model.state_dict(), state):
            model.load_state_dict(state)
            return _Note("the reconstruction of the recording started from the live run's object, probe and "
                         "positions")
        return _Note("the reconstruction of the recording started afresh: the received scan differs from the live one")

    return hook


def finishing_params(params, scan_shape: tuple[int, int], epochs_done: float):
    """The parameter file of the reconstruction of the recording: the scan received (``scan_shape``), the epochs
    ``run.n_epochs`` leaves after the live updates' ``epochs_done`` (a continuation, logged), no optics check (the
    live state carries the C10 it fitted; the check would start from nothing)."""
    final = params.model_copy(deep=True)
    final.scan.shape = scan_shape
    final.run.n_epochs = max(1, params.run.n_epochs - round(epochs_done))
    final.run.check_optics = False
    log.info("the live updates fitted %.2f epochs' worth of positions; the reconstruction of the recording runs the "
             "remaining %d of run.n_epochs %d, from the live state", epochs_done, final.run.n_epochs,
             params.run.n_epochs)
    return final


def run_live(params, stream, arm_timeout: float = 60.0, stall_timeout: float = 30.0,
             sources: dict[str, str] | None = None, preview: str | None = None):
    """Run a live reconstruction of ``stream`` (a :class:`~phasestem.live.merlin.MerlinStream`, not yet open) with
    ``params`` (:class:`~phasestem.recon.params.ReconstructParams`; ``data.file`` the recording,
    ``run.out_dir`` the run folder). ``preview``: a restorer whose restoration of the growing phase the page shows
    where it fits the stream's optics (:mod:`phasestem.live.preview`). Returns the final model; see the module for
    the steps."""
    from ..recon.report import logging_to
    from ..recon.run import run_reconstruction

    out = Path(params.run.out_dir)
    if Path(params.data.file).resolve() != (out / "stream.h5").resolve():
        raise ConfigError(f"data.file: a live run records into {out / 'stream.h5'}, got {params.data.file}")
    if params.data.scan_subset is not None:
        raise ConfigError("data.scan_subset: a live run fits the whole scan (leave it out)")
    with hold_output(out, LIVE_COMMAND):
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("results.h5", "results.emd", "live.npz", SUMMARY_NAME):
            if (out / stale).exists():
                raise ConfigError(f"run.out_dir: {out} holds {stale} of an earlier run: choose a new folder")
        log_path = out / LOG_NAME
        with logging_to(log_path), _live_logging(log_path):
            acquisition = stream.open(arm_timeout)
            shape = scan_shape_for(params, acquisition)
            log.info("%s armed: %d frames of %d × %d pixels, scan %d × %d", stream.address, acquisition.n_frames,
                     *acquisition.frame_shape, *shape)
            raw = _raw_dataset(params, np.zeros((1, 1, *acquisition.frame_shape), np.uint16))
            receiver = Receiver(stream, shape, acquisition.frame_shape, lambda dtype: Recording(
                out, raw, shape, acquisition.frame_shape, dtype, stream.address))
            try:
                receiver.start()
                with _operator_stop(receiver):
                    _wait_first_row(receiver, stall_timeout)
                    model, feed = _live_engine(params, receiver, out, sources, stall_timeout, preview)
            except BaseException:
                receiver.stop()
                receiver.join(timeout=5)
                if receiver.recording is not None:
                    receiver.recording.close()
                raise
            path, reason, counters = _end_stream(receiver, feed)
        rows, rate = receiver.recording.rows_written, receiver.frame_rate
        if rows < 2:
            raise StreamError(f"{stream.address}: {reason} after {receiver.received} frames, fewer than two scan rows: "
                              f"the frames are kept in {path}, nothing to reconstruct")
        with _live_logging(log_path):
            # a whole scan continues the live state; a part of one starts afresh (another object), nothing done
            final = finishing_params(params, (rows, shape[1]), feed.epochs_fitted() if rows == shape[0] else 0.0)
        summary = {"source": stream.address, "frames_expected": receiver.n, "frames_received": receiver.received,
                   "stop_reason": reason, "rows_recorded": rows, "recording": path.name,
                   "scan_seconds": receiver.scan_seconds, "frames_per_second": rate,
                   **counters}
        t_final = time.perf_counter()
        feed.stage, feed.n_epochs = "finishing", final.run.n_epochs
        model = run_reconstruction(final, sources=sources, callback_hooks=[_continue_from(model)],
                                   snapshot_extra=feed.page_arrays)  # the page keeps the stream's account
        summary["final_seconds"] = time.perf_counter() - t_final
        feed.stage = "done"
        feed.write_snapshot(model)  # with σ (results.h5's) and the stream's account
        with atomic_file(out / SUMMARY_NAME, field="live summary") as tmp:
            tmp.write_text(json.dumps(summary, indent=1, allow_nan=True))
        if reason != "complete":
            raise StreamError(f"{stream.address}: {reason} after {receiver.received} of {receiver.n} frames; the "
                              f"received rows are recorded in {path} and reconstructed in {out}")
        return model


def _end_stream(receiver: Receiver, feed) -> tuple[Path, str, dict]:
    """Close the stream and the recording (``stream.h5``); log and return (its path, why the stream ended, the
    feed's counters)."""
    receiver.stop()
    receiver.join(timeout=5)
    reason = receiver.end_reason() or "the stream ended early"
    path = receiver.recording.finish(receiver.incomplete_row(), reason)
    counters = feed.counters()
    log.info("stream: %d of %d frames received (%s) in %.3g s (%.4g frames/s), recorded in %s; %d live updates, "
             "lag median %.3g s, 95th percentile %.3g s", receiver.received, receiver.n, reason,
             receiver.scan_seconds, receiver.frame_rate, path, feed.updates, counters["lag_median"],
             counters["lag_p95"])
    return path, reason, counters


@contextlib.contextmanager
def _operator_stop(receiver: Receiver):
    """While the stream runs, SIGINT (Ctrl-C) and SIGTERM (``serve``'s cancel) end the scan where it is, as a
    stall would: everything received is recorded and reconstructed. A second signal acts as usual. In the main
    thread only (signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum, frame):
        log.warning("%s received: the scan ends here; the frames received are kept and reconstructed (send it "
                    "again to stop at once)", signal.Signals(signum).name)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        receiver.stop("stopped by the operator")

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _live_logging(path: Path):
    """The ``phasestem.live`` log into ``path`` too (the engine's ``phasestem.recon`` goes there by logging_to)."""
    from ..base.runtime import log_to_file

    return log_to_file(log, path)
