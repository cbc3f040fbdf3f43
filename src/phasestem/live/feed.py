"""The engine callback of a live scan: arrived frames join the fit, and the page sees it.

Before each update (an engine "epoch", :func:`phasestem.recon.engine.optimize`) :class:`StreamFeed` takes the
frames that arrived since the last one, applies the parameter file's detector transforms
(:func:`phasestem.recon.params.data_transforms`), puts them into the engine's patterns
(:meth:`phasestem.recon.prepared.PreparedData.put`) and into the virtual images, and chooses the positions the
update fits, up to the **budget** (what the measured speed fits into :data:`UPDATE_SECONDS`, at least one batch):
the positions not fitted yet first, in the order their frames came, then received ones drawn at random. When the
stream comes faster than AD fits, the newest wait (counted on the page as waiting) and the lag grows, said, never
hidden; all are fitted before the updates end. After each update it
records the lag of each frame it fitted for the first time (from the frame's arrival to the end of that update),
and replaces the page's snapshot (``live.npz``, :func:`phasestem.recon.live.write_snapshot`) at most every
:data:`SNAPSHOT_SECONDS`. The updates end once every frame of a finished stream has been fitted at least once.

**Epochs, counted once.** The updates' positions are counted in whole scans (an epoch's worth: ``n`` positions);
the run's ``run.n_epochs`` is the live epochs and the recording's reconstruction's together. Refits of received
positions stop where they would leave less than one epoch for the recording's reconstruction (each frame still to
come is fitted once when it comes): the live part counts at most ``n_epochs − 1`` whole epochs
(:meth:`StreamFeed.whole_epochs`), each with the mean loss of its updates (:meth:`StreamFeed.epoch_records`), and
the reconstruction of the recording continues from there (:func:`phasestem.live.session.continue_from`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..base.errors import PhasestemError
from ..recon.callbacks import Callback
from ..recon.live import MAX_SIDE, write_snapshot

log = logging.getLogger("phasestem.live")

#: seconds one update should take (its positions are chosen to fit this, from the speed measured so far)
UPDATE_SECONDS = 0.5
#: the page's snapshot is replaced at most this often (s), and after the last update
SNAPSHOT_SECONDS = 0.5


class StreamFeed(Callback):
    """Feeds ``receiver``'s frames into a running :func:`~phasestem.recon.engine.optimize` call; ``transform``:
    raw frames (k, H, W) → a :class:`~phasestem.dataset.FourDSTEM` of scan shape (1, k), as the engine's dataset
    holds its patterns; ``views``: the :class:`~phasestem.live.views.ScanViews`;
    ``snapshot_path``: the page's ``live.npz``."""

    def __init__(self, receiver, transform, views, snapshot_path: str | Path, batch_size: int, n_epochs: int,
                 seed: int = 0, preview=None, preview_note: str = ""):
        self.receiver, self.transform, self.views = receiver, transform, views
        self.preview, self.preview_note = preview, preview_note  # a RestorerPreview (live.preview) or None
        self.snapshot_path = Path(snapshot_path)
        self.batch_size = batch_size
        self.fed = 0  # frames in the engine's patterns (raster order)
        self.fitted = np.zeros(receiver.n, bool)  # positions that entered at least one update
        self.lag = np.full(receiver.n, np.nan)  # s from each frame's arrival to the end of its first update
        self.budget = 4 * batch_size
        self.updates = 0
        self.fit_seconds: list[tuple[int, float]] = []  # (positions, s) of each update
        self.update_losses: list[float] = []  # the mean loss of each update
        self.positions_fitted = 0  # positions the updates fitted, refits counted
        self.rng = np.random.default_rng(seed)
        self.last_snapshot = 0.0
        self.stage = "streaming"  # then "finishing" (the reconstruction of the recording), "done"
        self.n_epochs = int(n_epochs)  # the run's epochs: the live ones and the recording's reconstruction's
        self.message = ""
        self._chosen: np.ndarray | None = None
        self._t0 = 0.0
        self._alarm = False  # the stall alarm is on

    # ---- engine hooks ------------------------------------------------------------------------------------------
    def on_start(self, loop) -> None:
        loop.unit = "live update"  # an update is not an epoch: the log says which

    def on_epoch_start(self, loop) -> None:
        self._put_new(loop)
        self._chosen = self.choose()
        while not len(self._chosen) and not self.receiver.done:  # the refits' epochs spent: wait for frames
            time.sleep(0.02)
            self._put_new(loop)
            self._chosen = self.choose()
        if not len(self._chosen):  # nothing left (the stream ended meanwhile): one batch refitted
            self._chosen = np.arange(min(self.fed, self.batch_size))
        loop.fit_positions = torch.as_tensor(self._chosen, dtype=torch.long)
        self._t0 = time.perf_counter()

    def choose(self) -> np.ndarray:
        """The positions of the next update (sorted flat indices): the received ones not fitted yet, the earliest
        first, up to the budget (the others wait for the next updates: counted on the page, fitted before the
        stream's reconstruction ends); the rest of the budget refits received ones drawn at random, as many as the
        run's epochs leave (:meth:`refits_left`)."""
        n = self.fed
        budget = max(self.budget, self.batch_size)
        new = np.flatnonzero(~self.fitted[:n])[:budget]  # raster order is arrival order
        older = np.flatnonzero(self.fitted[:n])
        extra = min(max(0, budget - len(new)), len(older), self.refits_left())
        pick = self.rng.choice(older, size=extra, replace=False) if extra else np.zeros(0, np.int64)
        return np.unique(np.concatenate([new, pick]))

    def refits_left(self) -> int:
        """Refits of received positions the epochs allow now: ``n_epochs − 1`` scans' worth, less what the updates
        fitted and one fit of each frame not fitted yet (received or still to come)."""
        n = self.receiver.n
        return max(0, (self.n_epochs - 1) * n - self.positions_fitted - int(n - self.fitted.sum()))

    def on_record(self, loop) -> None:
        now = time.perf_counter()
        seconds = now - self._t0
        self.fit_seconds.append((len(self._chosen), seconds))
        self.positions_fitted += len(self._chosen)
        self.update_losses.append(float(loop.mean_loss))
        first = self._chosen[~self.fitted[self._chosen]]
        self.lag[first] = self.receiver.lags_from(first, now)
        self.fitted[self._chosen] = True
        self.updates += 1
        per_position = sum(s for _, s in self.fit_seconds[-5:]) / max(1, sum(k for k, _ in self.fit_seconds[-5:]))
        self.budget = max(self.batch_size, int(UPDATE_SECONDS / max(per_position, 1e-6)))
        if self.finished:
            loop.stop = True
        if self.finished or now - self.last_snapshot >= SNAPSHOT_SECONDS:
            self.write_snapshot(loop.model)

    # ---- state ---------------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The stream is over and every frame it gave has been fitted at least once."""
        r = self.receiver
        return r.done and self.fed == r.received and bool(self.fitted[:self.fed].all())

    def _put_new(self, loop) -> None:
        r = self.receiver
        n = r.received
        if n > self.fed:
            frames = self.transform(r.frames[self.fed:n])
            loop.data.put(torch.arange(self.fed, n), frames.get_patterns())
            self.views.add(self.fed, frames)
            self.fed = n
        self.message = self.stream_message()

    def stream_message(self) -> str:
        """What the page says of the stream: empty while frames flow."""
        r = self.receiver
        if r.error is not None:
            return str(r.error)
        if r.stopped_because == "stalled":
            return f"the detector stalled: the scan was taken as ended after {r.received} of {r.n} frames"
        if r.stopped_because is not None:  # the operator's stop: a partial scan, no alarm
            return ""
        if r.ended:
            return f"the stream ended after {r.received} of {r.n} frames"
        if r.stalled:
            return (f"no frame from the detector for {r.quiet_seconds:.1f} s (stalled? frames came every "
                    f"{1 / r.frame_rate:.3g} s)" if np.isfinite(r.frame_rate) else
                    f"no frame from the detector for {r.quiet_seconds:.1f} s (stalled?)")
        return ""

    def _log_alarm(self, stalled: bool) -> None:
        """The stall alarm's changes into the log (the page shows it while it lasts)."""
        r = self.receiver
        if stalled and not self._alarm:
            log.warning("no frame from the detector for %.2f s, more than %.2f s (three frame intervals and the "
                        "stack bound): stalled?", r.quiet_seconds, r.stall_seconds)
        elif self._alarm and not stalled:
            log.info("frames again (%d received)", r.received)
        self._alarm = stalled

    def epochs_fitted(self) -> float:
        """The positions the updates fitted, in whole scans (epochs' worth)."""
        return self.positions_fitted / self.receiver.n

    def whole_epochs(self) -> int:
        """The live epochs the run counts: whole scans' worth fitted, at most ``n_epochs − 1``."""
        return max(0, min(int(self.epochs_fitted() + 1e-9), self.n_epochs - 1))

    def epoch_records(self) -> list[dict]:
        """One record per counted live epoch (:meth:`whole_epochs`): ``epoch``, the mean ``loss`` of the updates
        that fitted its positions, their ``seconds``."""
        n, whole, records, done, losses, seconds = self.receiver.n, self.whole_epochs(), [], 0, [], 0.0
        for (k, s), loss in zip(self.fit_seconds, self.update_losses, strict=True):
            done, seconds = done + k, seconds + s
            losses.append(loss)
            if done >= (len(records) + 1) * n and len(records) < whole:
                records.append({"epoch": len(records) + 1, "loss": float(np.mean(losses)), "seconds": seconds})
                losses, seconds = [], 0.0
        return records

    def counters(self) -> dict:
        """Frames expected, sent (by the detector's count), received, recorded, in the fit, not yet fitted; rate and
        duration by the frames' clock, the stall alarm's threshold; the lag from a frame's arrival to its first
        update (median, 95th percentile); the live epochs; seconds since the detector was armed."""
        r = self.receiver
        lag = self.lag[np.isfinite(self.lag)]
        return {"frames_expected": r.n, "frames_sent": r.sent, "frames_received": r.received,
                "frames_recorded": 0 if r.recording is None else r.recording.frames_recorded,
                "frames_fitted": int(self.fitted.sum()), "frames_waiting": int(r.received - self.fitted.sum()),
                "updates": self.updates, "frames_per_second": r.frame_rate, "scan_seconds": r.scan_seconds,
                "stall_seconds": r.stall_seconds, "epochs_live": self.epochs_fitted(),
                "lag_median": float(np.median(lag)) if len(lag) else float("nan"),
                "lag_p95": float(np.percentile(lag, 95)) if len(lag) else float("nan"),
                "stream_seconds": time.perf_counter() - r.started}

    def _preview(self, model) -> dict:
        """The restorer's preview for the snapshot (made while streaming when due, and at the end)."""
        p = self.preview
        if p is None:
            return {"preview_note": np.asarray(self.preview_note)} if self.preview_note else {}
        if (self.stage == "streaming" and p.due()) or (self.stage == "done" and p.image is not None):
            try:
                p(model, MAX_SIDE)
            except PhasestemError as exc:
                self.preview, self.preview_note = None, f"restorer preview stopped: {exc}"
                log.warning("%s", self.preview_note)
                return {"preview_note": np.asarray(self.preview_note)}
        out = {"preview_note": np.asarray(self.preview_note)}
        if p.image is not None:
            out["restored_phase"] = p.image
        return out

    def page_arrays(self, model) -> dict:
        """What the page's snapshot adds to ``model``'s: the stream's stage, message, counters and images, and the
        restorer's preview (also every snapshot of the recording's reconstruction: ``snapshot_extra``)."""
        extra = {k: np.asarray(v) for k, v in self.counters().items()}
        extra.update(self._preview(model))
        if self.stage == "streaming":  # the epochs so far: whole scans' worth of the updates (the model's are updates)
            records = self.epoch_records()
            extra.update(epoch=np.asarray(len(records)), n_epochs=np.asarray(self.n_epochs),
                         loss=np.array([h["loss"] for h in records], np.float64),
                         seconds=np.array([h["seconds"] for h in records], np.float64))
        if self.stage == "streaming":
            self._log_alarm(self.receiver.stalled)
            self.message = self.stream_message()
        extra.update(stage=np.asarray(self.stage), message=np.asarray(self.message),
                     scan_shape=np.asarray(self.receiver.scan_shape),
                     scan_step=np.asarray(self.views.dataset.scan_step, dtype=np.float64), virtual_bf=self.views.bf,
                     virtual_adf=self.views.adf, icom_phase=self.views.icom())
        return extra

    def write_snapshot(self, model) -> None:
        """Replace the page's snapshot: ``model``'s phase and probe with :meth:`page_arrays`."""
        try:
            write_snapshot(self.snapshot_path, model, self.n_epochs, extra=self.page_arrays(model))
        except OSError as exc:
            log.warning("live snapshot %s not written (%s)", self.snapshot_path, exc)
        self.last_snapshot = time.perf_counter()
