"""``phasestem live``: a ``.mib`` replayed over Merlin's TCP protocol by LiberTEM-live's own simulator is
reconstructed while it streams, every frame accounted for, the recording equal to the replayed file, a broken-off
stream reported with what was received kept; and the engine hooks the live run stands on."""
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


def _run(tmp_path, dwell_us: int, interrupt=None):
    """``phasestem live`` of the scan replayed at one frame per ``dwell_us`` µs; ``interrupt(sim)`` is called
    once the recording holds two whole rows (its file is that large: the frames arrive in stacks of at most 16, so
    its mere existence may mean one row), e.g. to kill the simulator or signal the run."""
    import threading
    import time

    mib, params, frames = write_scan(tmp_path, SCAN)
    out = tmp_path / "out"
    sim = ReplayedScan(mib, SCAN, dwell_us, tmp_path / "sim.log")

    def recorded_bytes() -> int:
        partial = out / "stream.partial.h5"
        return partial.stat().st_size if partial.exists() else 0

    def watch():
        deadline = time.monotonic() + 120
        while recorded_bytes() < 2 * frames[0].nbytes and time.monotonic() < deadline:
            time.sleep(0.02)
        interrupt(sim)

    try:
        if interrupt is not None:
            threading.Thread(target=watch, daemon=True).start()
        code = main(["live", str(params), "--data-port", str(sim.data_port), "--arm-timeout", "30", "--out",
                     str(out)])
    finally:
        sim.stop()
    return code, frames, out


def test_a_replayed_mib_is_reconstructed_live_with_every_frame_accounted(tmp_path, capsys):
    code, frames, out = _run(tmp_path, dwell_us=8000)  # 144 frames of 128² in ≈ 1.2 s, stacks of 64 frames
    assert code == 0
    summary = json.loads((out / "live.json").read_text())
    n = SCAN[0] * SCAN[1]
    assert summary["frames_expected"] == summary["frames_received"] == summary["frames_fitted"] == n
    assert summary["frames_waiting"] == 0 and summary["stop_reason"] == "complete"
    assert summary["updates"] >= 2  # the fit ran while frames were still coming
    assert 0 < summary["lag_median"] <= summary["lag_p95"] < 30
    # the recording is the replayed scan, through phasestem's readers (orientation included)
    replayed = io.load(tmp_path / "mib" / "scan.mib", scan_shape=SCAN, energy=300e3, scan_step=0.8)
    recorded = io.load(out / "stream.h5")
    np.testing.assert_array_equal(np.asarray(recorded.patterns[...]), np.asarray(replayed.patterns[...]))
    np.testing.assert_array_equal(np.asarray(recorded.patterns[...]), frames)
    with h5py.File(out / "stream.h5") as f:
        assert f.attrs["complete"] and f.attrs["frames_received"] == n and f["patterns"].dtype == np.uint16
    # the page's snapshot: counters and the images of the whole scan
    snap = read_snapshot(out / "live.npz")
    assert int(snap["frames_received"]) == n and str(snap["stage"]) == "done"
    assert "phase_sigma" in snap
    for key in ("virtual_bf", "virtual_adf", "icom_phase"):
        assert snap[key].shape == SCAN and np.isfinite(snap[key]).all(), key
    # bright field: the disk's counts (≈ 16 × 2000 on the upsampled detector) in every position
    assert 0.5 * 16 * 2000 < float(np.median(snap["virtual_bf"])) < 1.05 * 16 * 2000
    # then the offline route's files, σ included, from the recording
    with h5py.File(out / "results.h5") as f:
        assert "uncertainty" in f or any("sigma" in k for k in f.keys())
    assert "stream.h5" in (out / "config.yaml").read_text()
    log = (out / "live.log").read_text()
    assert "armed: 144 frames of 128 × 128 pixels" in log and "144 of 144 frames received (complete)" in log
    assert "started from the live run's object, probe and positions" in (out / "reconstruct.log").read_text()


def test_a_connection_broken_mid_scan_is_reported_and_the_received_part_kept(tmp_path, capsys):
    # 144 frames in 4.3 s: the simulator killed once two rows are recorded
    code, frames, out = _run(tmp_path, dwell_us=30000, interrupt=lambda sim: sim.stop())
    err = capsys.readouterr().err
    assert code != 0
    assert "broke off" in err or "ended" in err, err
    with h5py.File(out / "stream.h5") as f:
        received, rows = int(f.attrs["frames_received"]), f["patterns"].shape[0]
        assert not f.attrs["complete"] and 0 < received < 144
        kept = np.asarray(f["patterns"][...]).reshape(-1, *frames.shape[2:])
        tail = np.asarray(f["incomplete_row"][...]) if "incomplete_row" in f else np.zeros((0,) + kept.shape[1:])
    flat = frames.reshape(-1, *frames.shape[2:])
    np.testing.assert_array_equal(np.concatenate([kept, tail]), flat[:received])  # every received frame, in order
    assert rows >= 2  # reconstructed
    summary = json.loads((out / "live.json").read_text())
    assert summary["frames_received"] == received and "broke off" in summary["stop_reason"]
    assert summary["rows_recorded"] == rows and (out / "results.h5").exists()


def test_stopping_mid_scan_keeps_and_reconstructs_what_was_received(tmp_path, capsys):
    import os
    import signal

    code, frames, out = _run(tmp_path, dwell_us=30000, interrupt=lambda sim: os.kill(os.getpid(), signal.SIGTERM))
    assert code != 0 and "stopped by the operator" in capsys.readouterr().err
    with h5py.File(out / "stream.h5") as f:
        received = int(f.attrs["frames_received"])
        assert f.attrs["stop_reason"] == "stopped by the operator" and 0 < received < 144
        kept = np.asarray(f["patterns"][...]).reshape(-1, *frames.shape[2:])
        tail = np.asarray(f["incomplete_row"][...]) if "incomplete_row" in f else np.zeros((0,) + kept.shape[1:])
    np.testing.assert_array_equal(np.concatenate([kept, tail]), frames.reshape(-1, *frames.shape[2:])[:received])
    assert "SIGTERM received: the scan ends here" in (out / "live.log").read_text()
    assert len(kept) >= 2 * SCAN[1] and (out / "results.h5").exists()  # the rows received, reconstructed


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
