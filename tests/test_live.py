"""``phasestem live``: a ``.mib`` replayed over Merlin's TCP protocol by LiberTEM-live's own simulator is
reconstructed while it streams, every frame accounted for, the recording equal to the replayed file; a stop at
any time (a signal, the detector's end) keeps every frame the simulator sent; the stream's reader and receiver on
scripted streams (a frame cut off, raw frames, the stall alarm); and the engine hooks the live run stands on."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("libertem_live", reason="phasestem[live] is not installed")

from live_stream import ReplayedScan, write_scan  # noqa: E402

from phasestem import io  # noqa: E402
from phasestem.cli import main  # noqa: E402
from phasestem.recon.live import read_snapshot  # noqa: E402

SCAN = (12, 12)


def _recorded(out) -> np.ndarray:
    """Every frame of ``out/stream.h5`` in raster order: its whole rows, then its partial last row."""
    with h5py.File(out / "stream.h5") as f:
        rows = np.asarray(f["patterns"][...])
        kept = rows.reshape(-1, *rows.shape[2:])
        if "incomplete_row" in f:
            assert f.attrs["incomplete_row_frames"] == len(f["incomplete_row"])
            kept = np.concatenate([kept, np.asarray(f["incomplete_row"][...])])
        assert f.attrs["frames_recorded"] == len(kept)
    return kept


def _stop_when_armed(out, delay: float, stop) -> None:
    """``stop()`` ``delay`` s after ``out/live.log`` says the detector was armed (in a thread of its own)."""
    import threading
    import time

    def watch():
        deadline = time.monotonic() + 180
        log = out / "live.log"
        while time.monotonic() < deadline and not (log.exists() and " armed: " in log.read_text()):
            time.sleep(0.01)
        time.sleep(delay)
        stop()

    threading.Thread(target=watch, daemon=True).start()


def test_a_replayed_mib_is_reconstructed_live_with_every_frame_accounted(tmp_path, capsys):
    """A steady stream at 50 frames/s (a detector armed for the client, ``--data-port``): every frame sent is
    received and recorded (the simulator's own count), the rate and duration by the frames' clock within 5 % of
    the simulator's dwell time (not its log's figure: that counts from its trigger, here before phasestem
    connected, so it includes phasestem's start), no stall alarm, and ``--epochs 4`` counts the live epochs and
    the recording's together."""
    from live_stream import sent_by_simulator

    mib, params, frames = write_scan(tmp_path, SCAN)
    n = SCAN[0] * SCAN[1]
    out = tmp_path / "out"
    dwell_us = 20000
    sim = ReplayedScan(mib, SCAN, dwell_us, tmp_path / "sim.log")
    try:
        code = main(["live", str(params), "--data-port", str(sim.data_port), "--arm-timeout", "60", "--epochs", "4",
                     "--out", str(out)])
    finally:
        sim.stop()
    assert code == 0
    printed = capsys.readouterr().out
    assert f"live: the whole scan, {n} frames sent by the detector, {n} received, {n} recorded" in printed
    summary = json.loads((out / "live.json").read_text())
    assert sent_by_simulator(tmp_path / "sim.log") == summary["frames_sent"] == n
    assert summary["frames_expected"] == summary["frames_received"] == summary["frames_recorded"] == n
    assert summary["frames_fitted"] == n and summary["frames_waiting"] == 0 and summary["complete"]
    assert summary["updates"] >= 2  # the fit ran while frames were still coming
    rate = 1e6 / dwell_us
    assert abs(summary["frames_per_second"] / rate - 1) < 0.05, (summary["frames_per_second"], rate)
    assert abs(summary["scan_seconds"] / (n / rate) - 1) < 0.05, (summary["scan_seconds"], n / rate)
    assert 0 < summary["lag_median"] <= summary["lag_p95"] < 30
    # the recording is the replayed scan, through phasestem's readers (orientation included)
    replayed = io.load(tmp_path / "mib" / "scan.mib", scan_shape=SCAN, energy=300e3, scan_step=0.8)
    recorded = io.load(out / "stream.h5")
    np.testing.assert_array_equal(np.asarray(recorded.patterns[...]), np.asarray(replayed.patterns[...]))
    np.testing.assert_array_equal(np.asarray(recorded.patterns[...]), frames)
    with h5py.File(out / "stream.h5") as f:
        assert f.attrs["complete"] and f.attrs["frames_sent"] == n and f["patterns"].dtype == np.uint16
        assert "incomplete_row" not in f and f.attrs["incomplete_row_frames"] == 0
    # epochs counted once: the live epochs and the recording's reconstruction's are run.n_epochs, in the page,
    # the results and the log alike, the loss one value per epoch from the first live one
    live_epochs = summary["epochs_live"]
    assert 1 <= live_epochs <= 3
    snap = read_snapshot(out / "live.npz")
    assert int(snap["epoch"]) == int(snap["n_epochs"]) == 4 and len(snap["loss"]) == 4
    assert int(snap["frames_received"]) == n and str(snap["stage"]) == "done" and "phase_sigma" in snap
    with h5py.File(out / "results.h5") as f:
        loss = np.asarray(f["loss/loss"][...])
        assert list(f["loss/epoch"][...]) == [1, 2, 3, 4]
    np.testing.assert_allclose(snap["loss"], loss)
    assert np.all(np.abs(np.diff(np.log(loss))) < 0.5)  # one curve: the reconstruction goes on where the live one was
    log = (out / "live.log").read_text()
    assert f"run.n_epochs 4 counts {live_epochs} live epochs" in log and "stalled" not in log
    assert f"armed: {n} frames of 128 × 128 pixels (U16)" in log and f"{n} of {n} received (complete)" in log
    run_log = (out / "reconstruct.log").read_text()
    assert f"started from the live run's object, probe and positions after its {live_epochs} live epochs" in run_log
    assert "reconstruction: 4 epochs" in printed
    for key in ("virtual_bf", "virtual_adf", "icom_phase"):
        assert snap[key].shape == SCAN and np.isfinite(snap[key]).all(), key
    # bright field: the disk's counts (≈ 16 × 2000 on the upsampled detector) in every position
    assert 0.5 * 16 * 2000 < float(np.median(snap["virtual_bf"])) < 1.05 * 16 * 2000
    assert "stream.h5" in (out / "config.yaml").read_text()


#: (how the scan is stopped, frames/s, scan, seconds after arming when it is stopped: a seeded random draw in
#: [low, high)); a stop in the first second, before the first whole row, at 20 frames/s among them
STOPS = [("signal", 20, (12, 12), (0.1, 0.5)), ("signal", 50, (12, 12), (1.0, 2.5)),
         ("signal", 500, (24, 24), (0.1, 0.9)), ("cut", 20, (12, 12), (1.5, 6.0)), ("cut", 500, (24, 24), (0.2, 0.9))]


@pytest.mark.parametrize("how, fps, scan, window", STOPS, ids=[f"{h}-{f}fps" for h, f, _, _ in STOPS])
def test_a_stop_at_any_time_keeps_every_frame_the_detector_sent(tmp_path, capsys, how, fps, scan, window):
    """Stopped at a random time — by a signal (Ctrl-C, serve's Stop: a rehearsal, ``--replay``, whose simulator
    is stopped first) or by the detector's end closing the connection (``cut``) — the run records every frame the
    simulator says it sent, the number the command prints, partial last row included."""
    import os
    import random
    import signal

    from live_stream import sent_by_simulator

    delay = random.Random(f"{how}{fps}").uniform(*window)
    mib, params, frames = write_scan(tmp_path, scan)
    flat = frames.reshape(-1, *frames.shape[2:])
    out = tmp_path / "out"
    if how == "signal":
        sim_log = out / "replay.log"
        _stop_when_armed(out, delay, lambda: os.kill(os.getpid(), signal.SIGTERM))
        code = main(["live", str(params), "--replay", str(mib), "--fps", str(fps), "--epochs", "2", "--out",
                     str(out)])
    else:
        sim_log = tmp_path / "sim.log"
        sim = ReplayedScan(mib, scan, int(1e6 / fps), sim_log)
        _stop_when_armed(out, delay, sim.stop_sending)
        try:
            code = main(["live", str(params), "--data-port", str(sim.data_port), "--epochs", "2", "--out", str(out)])
        finally:
            sim.stop()
    captured = capsys.readouterr()
    sent = sent_by_simulator(sim_log)
    kept = _recorded(out)
    summary = json.loads((out / "live.json").read_text())
    context = f"stopped {delay:.2f} s after arming: sent {sent}, {summary}"
    assert 0 < sent < scan[0] * scan[1], context
    assert len(kept) == summary["frames_recorded"] == summary["frames_received"] == summary["frames_sent"] == sent, \
        context
    np.testing.assert_array_equal(kept, flat[:sent])  # every frame sent, in order, as replayed
    assert summary["incomplete_row_frames"] == sent % scan[1]
    said = f"{sent} frames sent by the detector, {sent} received, {sent} recorded"
    rows = sent // scan[1]
    if how == "signal":
        assert summary["stop_reason"] == "stopped by the operator", context
        assert "SIGTERM received: the scan ends here" in (out / "live.log").read_text()
        if rows >= 2:  # a finished run with a partial scan
            assert code == 0 and f"live: stopped by the operator: {said}" in captured.out, captured
    else:
        assert summary["stop_reason"] == "the stream ended early", context
        assert code == 1 and said in captured.err
    assert (out / "results.h5").exists() == (rows >= 2), context
    if rows < 2:
        assert code == 1 and said in captured.err and "nothing to reconstruct" in captured.err, captured.err


def test_no_detector_at_the_address_is_one_line_naming_it(tmp_path, capsys):
    from phasestem.live.replay import free_ports as ports

    _, params, _ = write_scan(tmp_path, SCAN)
    port = ports(1)[0]
    assert main(["live", str(params), "--data-port", str(port), "--arm-timeout", "1", "--out",
                 str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert f"merlin://127.0.0.1:{port}: nothing accepted a connection" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "stream.h5").exists()


def test_prepared_data_put_matches_construction():
    """A frame put into the engine's patterns equals the same frame prepared at construction."""
    from phasestem.recon.prepared import PreparedData
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(4, 4), dose=1000, seed=2)
    full = PreparedData(ds, torch.device("cpu"), power=0.5)
    other = PreparedData(ds, torch.device("cpu"), power=0.5)
    other.meas.zero_()
    other.meas_p.zero_()
    other.put(torch.arange(16), ds.get_patterns())
    torch.testing.assert_close(other.meas, full.meas)
    torch.testing.assert_close(other.meas_p, full.meas_p)


def test_an_epoch_fits_only_the_positions_a_callback_chooses():
    """``loop.fit_positions`` set in ``on_epoch_start``: only those positions are modelled, and the object changes
    under their probes, not where only the later scan rows reach."""
    from phasestem.recon.callbacks import Callback
    from phasestem.recon.engine import optimize
    from phasestem.recon.model import Ptychography
    from phasestem.recon.settings.run import RunConfig
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(8, 8), scan_step=1.5, seed=3)

    def change(first_row_only: bool):
        model = Ptychography.from_dataset(ds)
        seen, epochs = set(), []
        forward = model.forward

        def recorded(index):
            seen.update(index.tolist())
            return forward(index)

        model.forward = recorded

        class FirstRow(Callback):
            def on_epoch_start(self, loop):
                epochs.append(loop.epoch)
                if first_row_only:
                    loop.fit_positions = torch.arange(8)

        before = model.obj_phase.detach().clone()
        for _ in optimize(model, ds, 2, RunConfig(progress=False, batch_size=4, lr_decay="none"),
                          callbacks=[FirstRow()]):
            pass
        assert epochs == [1, 2]
        top = (model.positions.detach()[:, 0] / model.sampling[0]).numpy()  # scan rows, object px
        return seen, (model.obj_phase.detach() - before).abs().sum((0, 1)).amax(1).numpy(), top

    seen, rows_sub, top = change(True)
    assert seen == set(range(8))
    _, rows_all, _ = change(False)
    # the rows under the last scan row's probes: those under the first row's (the peak of its change) moved by
    # the scan's extent
    last = int(np.argmax(rows_sub)) + int(round(top[-1] - top[0]))
    assert rows_all[last - 3:last + 4].max() > 0.2 * rows_all.max()
    assert rows_sub[last - 3:last + 4].max() < 0.01 * rows_sub.max()


def _restorer_for(tmp_path, params_file, name: str, **change):
    """An untrained restorer (the identity) whose card holds the live scan's optics (``change``: others)."""
    import yaml

    from phasestem.learn.apply.phase import dataset_optics
    from phasestem.learn.meta import make_meta
    from phasestem.learn.nets.restorer import Restorer, RestorerConfig
    from phasestem.learn.trainer.checkpoint import save_weights
    from phasestem.recon.params import build_dataset, build_model, load_params

    offline = yaml.safe_load(params_file.read_text())
    offline["data"]["file"] = str(tmp_path / "mib" / "scan.mib")
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump(offline))
    params = load_params(tmp_path / "offline.yaml")
    data = build_dataset(params, warn=False)
    optics = {**dataset_optics(data), "sampling": list(build_model(params, data).sampling)}
    optics = {k: list(v) if isinstance(v, tuple) else v for k, v in {**optics, **change}.items()}
    net = Restorer(RestorerConfig(width=4))
    return save_weights(net.state_dict(), tmp_path / name, make_meta("restorer", net.config,
                                                                      {"optics": optics}))


def test_a_restorer_preview_where_its_card_fits_and_a_line_where_it_does_not(tmp_path, capsys):
    mib, params, frames = write_scan(tmp_path / "a", SCAN)
    fits = _restorer_for(tmp_path / "a", params, "fits.safetensors")
    other = _restorer_for(tmp_path / "a", params, "other.safetensors", energy=200e3)
    sim = ReplayedScan(mib, SCAN, 8000, tmp_path / "sim.log")
    try:
        assert main(["live", str(params), "--data-port", str(sim.data_port), "--out", str(tmp_path / "out"),
                     "--preview", str(fits)]) == 0
    finally:
        sim.stop()
    snap = read_snapshot(tmp_path / "out" / "live.npz")
    assert "restorer preview" in str(snap["preview_note"])
    restored = snap["restored_phase"]
    assert restored.ndim == 2 and np.isfinite(restored).mean() > 0.5  # NaN only outside the scanned field
    # an untrained restorer is the identity: its preview is the AD phase of the dataset frame over the field
    assert np.nanstd(restored) > 0
    # another energy on the card: no preview, the scan goes on, the page and the log say why; rehearsed with
    # --replay (the .mib served by LiberTEM-live's simulator, started and stopped by phasestem live itself)
    assert main(["live", str(params), "--replay", str(mib), "--fps", "125", "--out", str(tmp_path / "out2"),
                 "--preview", str(other)]) == 0
    assert "simulator" not in capsys.readouterr().err
    snap = read_snapshot(tmp_path / "out2" / "live.npz")
    assert "restored_phase" not in snap
    note = str(snap["preview_note"])
    assert note.startswith("no restorer preview") and "energy" in note, note
    assert "no restorer preview" in (tmp_path / "out2" / "live.log").read_text()


def test_a_rehearsal_refused_on_a_held_folder_leaves_its_files_alone(tmp_path):
    """``--replay`` starts the simulator, whose log goes into the run folder, only once the folder is held: a
    second rehearsal into a folder another run holds is refused in one line and the first run's log stays."""
    import subprocess
    import sys

    from phasestem.base.lock import OutputLock

    mib, params, _ = write_scan(tmp_path, SCAN)
    out = tmp_path / "out"
    out.mkdir()
    (out / "replay.log").write_text("the first rehearsal's simulator log\n")
    with OutputLock(out, "phasestem live (the first rehearsal)"):
        refused = subprocess.run([sys.executable, "-m", "phasestem.cli", "live", str(params), "--replay", str(mib),
                                  "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "another run is writing this folder" in refused.stderr, refused.stderr
    assert "phasestem live (the first rehearsal)" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert (out / "replay.log").read_text() == "the first rehearsal's simulator log\n"


def test_a_rehearsal_appends_to_the_simulators_log(tmp_path):
    from phasestem.live.replay import MibReplay

    mib, _, _ = write_scan(tmp_path, SCAN)
    log = tmp_path / "replay.log"
    log.write_text("an earlier rehearsal\n")
    with MibReplay(mib, SCAN, 125.0, log):
        pass
    assert log.read_text().startswith("an earlier rehearsal\n")
