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
4. when the stream ends (whole, broken off, stalled past ``stall_timeout`` or stopped: :class:`OperatorStop`),
   waits for the receiver's drain, closes the recording as ``stream.h5`` and continues to convergence as
   ``phasestem reconstruct`` of that file (:func:`phasestem.recon.run.run_reconstruction`) from the live state
   (:func:`continue_from`: the live epochs counted in ``run.n_epochs``), writing the same ``results.h5``,
   ``results.emd`` (σ included), figures and ``reconstruct.log``; ``live.json`` holds the stream's account
   (frames expected, sent by the detector, received, recorded; rate, lag, epochs).

Every frame received is kept whatever ended the stream (the whole rows reconstructed, the last row's frames in the
recording). An operator's stop returns like a whole scan (a finished run with a partial scan); a broken or stalled
stream raises :class:`~phasestem.live.merlin.StreamError` after the results are written, and fewer than two rows
raise it with the recording alone.
"""
from __future__ import annotations

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
from .receiver import DRAIN_SECONDS, Receiver
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


def _wait_first_row(receiver: Receiver, stall_timeout: float) -> bool:
    """Wait for a whole scan row: True once it is in, False when the stream ended, broke off or was stopped before
    (the frames received are kept all the same); a stream quiet for ``stall_timeout`` s is stopped as stalled."""
    while receiver.received < receiver.scan_shape[1]:
        if receiver.done:
            return False
        if receiver.quiet_seconds > stall_timeout and receiver.stopped_because is None:
            log.warning("%s: no frame for %g s before a whole scan row: the scan is taken as ended (stalled "
                        "detector)", receiver.stream.address, stall_timeout)
            receiver.stop("stalled")
        time.sleep(0.01)
    return True


def _import_the_fit() -> None:
    """Import what the first live update needs (SciPy's ndimage among it: ≈ 0.5 s) before the detector is armed,
    not while its frames queue."""
    from ..calibrate import disk  # noqa: F401
    from ..recon import data_losses, engine, params  # noqa: F401
    from . import feed, preview, views  # noqa: F401


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

    feed = StreamFeed(receiver, transform, views, out / "live.npz", params.run.batch_size, params.run.n_epochs,
                      params.run.seed, *make_preview(preview, dataset, model))
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


def continue_from(live_model, feed):
    """A ``callback_hooks`` entry of :func:`~phasestem.recon.run.run_reconstruction`: the new model starts from the
    live model's object, probe and positions where they fit it (the same scan and grid,
    :func:`~phasestem.base.torch_files.state_dict_mismatch`), its history holding the live epochs the run counts
    (:meth:`~phasestem.live.feed.StreamFeed.epoch_records`): the reconstruction runs the epochs ``run.n_epochs``
    leaves, and its loss curve, log and figures span the live updates and after."""
    from ..base.torch_files import state_dict_mismatch

    def hook(model, dataset, twin):
        state = live_model.state_dict()
        if not state_dict_mismatch(model.state_dict(), state):
            model.load_state_dict(state)
            records = feed.epoch_records()
            for record in records:
                model.history.record(record, model.slice_thickness, model.tilt)
            return _Note(f"the reconstruction of the recording started from the live run's object, probe and "
                         f"positions after its {len(records)} live epochs")
        return _Note("the reconstruction of the recording started afresh: the received scan differs from the live one")

    return hook


def finishing_params(params, scan_shape: tuple[int, int], live_epochs: int, epochs_fitted: float):
    """The parameter file of the reconstruction of the recording: the scan received (``scan_shape``), no optics
    check (the live state carries the C10 it fitted; the check would start from nothing). ``run.n_epochs`` is the
    run's: the reconstruction runs what the ``live_epochs`` it continues leave (logged)."""
    final = params.model_copy(deep=True)
    final.scan.shape = scan_shape
    final.run.check_optics = False
    if live_epochs:
        log.info("the live updates fitted %.2f scans' worth of positions; run.n_epochs %d counts %d live epochs, and "
                 "the reconstruction of the recording runs epochs %d–%d from the live state", epochs_fitted,
                 params.run.n_epochs, live_epochs, live_epochs + 1, params.run.n_epochs)
    else:
        log.info("the reconstruction of the recording runs run.n_epochs %d (%s)", params.run.n_epochs,
                 "a partial scan: started afresh" if epochs_fitted else "no live epoch to continue")
    return final


def check_new_folder(out: Path) -> None:
    """A live run writes a new folder: one holding an earlier run's results is refused in one line (before any
    simulator or connection starts)."""
    for stale in ("results.h5", "results.emd", "live.npz", SUMMARY_NAME, "stream.h5"):
        if (out / stale).exists():
            raise ConfigError(f"run.out_dir: {out} holds {stale} of an earlier run: choose a new folder")


def run_live(params, stream, arm_timeout: float = 60.0, stall_timeout: float = 30.0,
             sources: dict[str, str] | None = None, preview: str | None = None, rehearsal=None):
    """Run a live reconstruction of ``stream`` (a :class:`~phasestem.live.merlin.MerlinStream`, not yet open) with
    ``params`` (:class:`~phasestem.recon.params.ReconstructParams`; ``data.file`` the recording,
    ``run.out_dir`` the run folder). ``preview``: a restorer whose restoration of the growing phase the page shows
    where it fits the stream's optics (:mod:`phasestem.live.preview`). ``rehearsal``: a
    :class:`~phasestem.live.replay.MibReplay` serving the stream (armed once connected, stopped before a stop
    drains the connection). Returns the final model (None when fewer than two rows came: StreamError); see the
    module for the steps."""
    from ..recon.report import logging_to
    from ..recon.run import run_reconstruction

    out = Path(params.run.out_dir)
    if Path(params.data.file).resolve() != (out / "stream.h5").resolve():
        raise ConfigError(f"data.file: a live run records into {out / 'stream.h5'}, got {params.data.file}")
    if params.data.scan_subset is not None:
        raise ConfigError("data.scan_subset: a live run fits the whole scan (leave it out)")
    with hold_output(out, LIVE_COMMAND):
        out.mkdir(parents=True, exist_ok=True)
        check_new_folder(out)
        log_path = out / LOG_NAME
        with logging_to(log_path), _live_logging(log_path):
            _import_the_fit()
            log.info("waiting up to %g s for the detector at %s to be armed", arm_timeout, stream.address)
            model = feed = receiver = None
            try:
                with OperatorStop() as operator:
                    acquisition = stream.open(arm_timeout, None if rehearsal is None else rehearsal.start_scan)
                    shape = scan_shape_for(params, acquisition)
                    log.info("%s armed: %d frames of %d × %d pixels (%s), scan %d × %d", stream.address,
                             acquisition.n_frames, *acquisition.frame_shape, acquisition.pixel_type, *shape)
                    raw = _raw_dataset(params, np.zeros((1, 1, *acquisition.frame_shape), np.uint16))
                    receiver = operator.receiver = Receiver(
                        stream, shape, acquisition.frame_shape, lambda dtype: Recording(
                            out, raw, shape, acquisition.frame_shape, dtype, stream.address),
                        None if rehearsal is None else rehearsal.stop_sending)
                    receiver.start()
                    if _wait_first_row(receiver, stall_timeout):
                        model, feed = _live_engine(params, receiver, out, sources, stall_timeout, preview)
            except BaseException as exc:
                if isinstance(exc, StreamError):
                    log.error("%s", exc)
                stream.close()
                if receiver is not None:
                    receiver.stop()
                    receiver.join(timeout=DRAIN_SECONDS + 5)
                    if receiver.recording is not None:
                        receiver.recording.close()
                raise
            path, reason = _end_stream(receiver, feed)
        recording = receiver.recording
        rows = 0 if recording is None else recording.rows_written
        summary = {"source": stream.address, "frames_expected": receiver.n, "frames_sent": receiver.sent,
                   "frames_received": receiver.received,
                   "frames_recorded": 0 if recording is None else recording.frames_recorded,
                   "incomplete_row_frames": receiver.received - rows * shape[1], "complete": reason == "complete",
                   "stop_reason": reason, "rows_recorded": rows, "recording": None if path is None else path.name,
                   "scan_seconds": receiver.scan_seconds, "frames_per_second": receiver.frame_rate,
                   "n_epochs": params.run.n_epochs,
                   **({} if feed is None else feed.counters())}
        account = (f"{receiver.sent} frames sent by the detector, {receiver.received} received, "
                   f"{summary['frames_recorded']} recorded" + ("" if path is None else f" in {path}"))
        if rows < 2:
            _write_summary(out, summary)
            raise StreamError(f"{stream.address}: {reason} after {receiver.received} of {receiver.n} frames "
                              f"({account}): fewer than two scan rows, nothing to reconstruct")
        whole = rows == shape[0]  # a whole scan continues the live state; a part of one starts afresh
        live_epochs = feed.whole_epochs() if whole else 0
        summary["epochs_live"] = live_epochs
        with _live_logging(log_path):
            final = finishing_params(params, (rows, shape[1]), live_epochs, feed.epochs_fitted())
        t_final = time.perf_counter()
        feed.stage = "finishing"
        hooks = [continue_from(model, feed)] if whole else []
        model = run_reconstruction(final, sources=sources, callback_hooks=hooks,
                                   snapshot_extra=feed.page_arrays)  # the page keeps the stream's account
        summary["final_seconds"] = time.perf_counter() - t_final
        feed.stage = "done"
        feed.write_snapshot(model)  # with σ (results.h5's) and the stream's account
        summary.update({k: v for k, v in feed.counters().items() if k.startswith("lag")})
        _write_summary(out, summary)
        if reason == "complete":
            print(f"live: the whole scan, {account}")
        elif reason == "stopped by the operator":
            print(f"live: stopped by the operator: {account}; {rows} whole rows"
                  f"{' and a partial one' if summary['incomplete_row_frames'] else ''} reconstructed in {out}")
        else:
            raise StreamError(f"{stream.address}: {reason} after {receiver.received} of {receiver.n} frames "
                              f"({account}); the received rows are reconstructed in {out}")
        return model


def _write_summary(out: Path, summary: dict) -> None:
    with atomic_file(out / SUMMARY_NAME, field="live summary") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, allow_nan=True))


def _end_stream(receiver: Receiver, feed) -> tuple[Path | None, str]:
    """Wait for the receiver's drain, close the recording (``stream.h5``); log and return (its path, None when no
    frame came; why the stream ended)."""
    receiver.stop()
    receiver.join(timeout=DRAIN_SECONDS + 5)
    reason = receiver.end_reason() or "the stream ended early"
    recording = receiver.recording
    path = None if recording is None else recording.finish(receiver.incomplete_row(), reason, receiver.sent,
                                                           receiver.received)
    log.info("stream: %d frames sent by the detector, %d of %d received (%s) in %.3g s (%.4g frames/s by the "
             "frames' clock), %s%s", receiver.sent, receiver.received, receiver.n, reason, receiver.scan_seconds,
             receiver.frame_rate, f"recorded in {path}" if path else "nothing recorded",
             f"; {receiver.drained} of them drained after the stop" if receiver.drained else "")
    if feed is not None:
        counters = feed.counters()
        log.info("%d live updates; lag from a frame's arrival to its first update: median %.3g s, 95th percentile "
                 "%.3g s", feed.updates, counters["lag_median"], counters["lag_p95"])
    return path, reason


class OperatorStop:
    """SIGINT (Ctrl-C) and SIGTERM (``serve``'s first Stop) end the scan where it is, as a stall would: the
    receiver (:attr:`receiver`, once there is one) drains and records everything sent, and it is reconstructed.
    Before the detector was armed, the wait ends (StreamError: nothing was received). A second signal acts as usual.
    A context manager; in the main thread only (signal handlers live there)."""

    REASON = "stopped by the operator"

    def __init__(self):
        self.receiver: Receiver | None = None
        self._previous: dict = {}

    def _stop(self, signum, frame) -> None:
        log.warning("%s received: the scan ends here; every frame the detector sent is kept and reconstructed (send "
                    "it again to stop at once)", signal.Signals(signum).name)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.receiver is None:
            raise StreamError(f"{self.REASON} before the detector was armed: nothing was received")
        self.receiver.stop(self.REASON)

    def __enter__(self) -> OperatorStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            for sig in self._previous:
                signal.signal(sig, self._stop)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _live_logging(path: Path):
    """The ``phasestem.live`` log into ``path`` too (the engine's ``phasestem.recon`` goes there by logging_to)."""
    from ..base.runtime import log_to_file

    return log_to_file(log, path)
