"""phasestem serve: how a finished run ended (loss falling, rising at the end, diverged, stopped, killed) and Compare
aligning the runs before it subtracts them (real reconstructions of the serve workspace, a real server)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from scipy import ndimage  # noqa: E402
from serve_workspace import Server, make_workspace  # noqa: E402

from phasestem.physics.experiment import scanned_field  # noqa: E402
from phasestem.serve.align import phase_shift, shifted  # noqa: E402
from phasestem.serve.jobs import SERVE_DIR, Job, JobStore  # noqa: E402
from phasestem.serve.outcome import RISING_EPOCHS, loss_trend, rising_epochs  # noqa: E402

#: the content shift (dy, dx) px given to the copy of a run that Compare must align
SHIFT = (1.3, -0.6)


def reconstruct(root: Path, out: str, *sets: str) -> subprocess.Popen:
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "phasestem.cli", "reconstruct", "configs/tiny.yaml", "--out", out,
                             *args], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rewrite(path: Path, key: str, values: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        dtype = f[key].dtype
        del f[key]
        f.create_dataset(key, data=np.asarray(values, dtype=dtype))


def copy_run(root: Path, src: str, dst: str, keep: tuple[str, ...] | None = None) -> None:
    shutil.copytree(root / src, root / dst, ignore=None if keep is None else
                    (lambda d, names: [n for n in names if n not in keep]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The workspace's runs as jobs of a real server: falling (a finished reconstruction), rising (its copy whose
    loss rose for its last 8 epochs), diverged (a real run stopped by the divergence check), stopped (cancelled
    after 12 epochs: live.npz and checkpoint, no results), killed (the same, ended by SIGKILL), shifted (the
    finished run with its phase moved by :data:`SHIFT`)."""
    root = make_workspace(tmp_path_factory.mktemp("serve_runs") / "ws", n_epochs=12)
    falling, diverged = reconstruct(root, "runs/falling"), reconstruct(root, "runs/diverged", "run.lr_scale=1e5")
    assert falling.wait(300) == 0, falling.stderr.read()
    assert diverged.wait(300) == 1, diverged.stderr.read()
    (root / "runs" / "diverged" / "job.log").write_text(diverged.stderr.read())
    falling.stderr.close()
    diverged.stderr.close()

    copy_run(root, "runs/falling", "runs/rising")
    with h5py.File(root / "runs/rising/results.h5", "r") as f:
        loss = np.asarray(f["loss/loss"][...], dtype=np.float64)
    loss[-8:] = loss[-9] * (1 + 0.05 * np.arange(1, 9))  # the last 8 epochs rise
    rewrite(root / "runs/rising/results.h5", "loss/loss", loss)
    for name in ("stopped", "killed"):
        copy_run(root, "runs/falling", f"runs/{name}", keep=("live.npz", "checkpoint.pt", "reconstruct.log",
                                                           "config.yaml"))
    copy_run(root, "runs/falling", "runs/shifted")
    with h5py.File(root / "runs/falling/results.h5", "r") as f:
        phase = f["object/phase_sum"][...].astype(np.float64)
    rewrite(root / "runs/shifted/results.h5", "object/phase_sum", ndimage.shift(phase, SHIFT, order=3, mode="nearest"))

    store = JobStore(root / SERVE_DIR / "jobs.sqlite")
    states = {"falling": ("done", 0), "rising": ("done", 0), "diverged": ("failed", 1), "stopped": ("cancelled", -15),
              "killed": ("failed", -9), "shifted": ("done", 0)}
    ids = {}
    for name, (state, code) in states.items():
        job = store.add(Job(id=0, command="reconstruct", argv=["phasestem", "reconstruct", "configs/tiny.yaml"],
                            run_dir=f"runs/{name}", state=state, name=name, returncode=code, created=time.time(),
                            started=time.time(), ended=time.time()))
        ids[name] = job.id
    server = Server(root)
    yield server, ids
    server.stop()


def test_a_run_says_how_it_ended(runs):
    server, ids = runs
    status, listing = server.request("/api/jobs")
    assert status == 200
    outcome = {j["name"]: j["outcome"] for j in listing["jobs"]}
    assert outcome["falling"]["kind"] == "done" and outcome["falling"]["label"] == "done"
    assert outcome["rising"]["kind"] == "rising" and outcome["rising"]["label"] == "done · loss rising"
    assert "last 8 epochs" in outcome["rising"]["detail"]
    assert outcome["diverged"]["kind"] == "diverged" and outcome["diverged"]["label"] == "failed · diverged"
    assert "in epoch 1" in outcome["diverged"]["detail"] and "checkpoint.pt" in outcome["diverged"]["detail"]
    assert outcome["stopped"]["kind"] == "stopped" and outcome["stopped"]["label"] == "cancelled · no results"
    assert "after epoch 12" in outcome["stopped"]["detail"] and "Resume" in outcome["stopped"]["detail"]
    assert outcome["killed"]["kind"] == "killed" and "signal 9" in outcome["killed"]["detail"]
    # the job and its live page say the same
    status, job = server.request(f"/api/jobs/{ids['rising']}")
    assert status == 200 and job["outcome"]["kind"] == "rising"


def test_the_rising_rule():
    falling = np.geomspace(1.0, 0.01, 20)
    assert rising_epochs(falling) == 0 and loss_trend(falling) is None
    two = np.concatenate([falling, falling[-1] * np.array([1.1, 1.2])])
    assert rising_epochs(two) == 2 and loss_trend(two) is None  # fewer than RISING_EPOCHS
    three = np.concatenate([falling, falling[-1] * np.array([1.1, 1.2, 1.3])])
    assert rising_epochs(three) == RISING_EPOCHS and "last 3 epochs" in loss_trend(three)
    plateau = np.concatenate([falling, falling[-1] * (1 + 1e-5 * np.arange(1, 6))])  # noise of a converged run
    assert rising_epochs(plateau) == 5 and loss_trend(plateau) is None
    dip = np.concatenate([three, [falling[-1]], falling[-1] * np.array([1.01, 1.02])])  # fell again, rose twice
    assert rising_epochs(dip) == 2 and loss_trend(dip) is None


def test_compare_aligns_before_it_subtracts(runs):
    server, ids = runs
    status, data = server.request(f"/api/compare?jobs={ids['falling']},{ids['shifted']}")
    assert status == 200, data
    dd = data["difference"]
    assert dd["aligned"] and dd["jobs"] == [ids["falling"], ids["shifted"]]
    np.testing.assert_allclose(dd["shift_px"], [-SHIFT[0], -SHIFT[1]], atol=0.05)  # moved back onto the first
    np.testing.assert_allclose(dd["shift_angstrom"], np.asarray(dd["shift_px"]) * 0.4, rtol=1e-6)  # 0.4 Å pixels
    assert data["runs"][0]["shift_px"] == [0.0, 0.0] and data["runs"][1]["shift_px"] == dd["shift_px"]
    with h5py.File(server.root / "runs/falling/results.h5", "r") as f:
        phase = f["object/phase_sum"][...].astype(np.float64)
        scanned = scanned_field(f["positions"][...] + f.attrs["origin"], f.attrs["sampling"], phase.shape)
    field = phase[scanned]
    assert dd["rms"] < 0.05 * field.std()  # what is left is the edges' interpolation, not the shift
    unaligned = field - ndimage.shift(phase, SHIFT, order=3, mode="nearest")[scanned]
    assert unaligned.std() > 10 * dd["rms"]
    # the profile runs over the aligned phases: both runs agree along it
    status, prof = server.request(f"/api/compare/profile?jobs={ids['falling']},{ids['shifted']}&line=0.5,0.2,0.5,0.8")
    assert status == 200, prof
    a, b = (np.array([np.nan if v is None else v for v in r["values"]]) for r in prof["runs"])
    both = np.isfinite(a) & np.isfinite(b)
    assert both.mean() > 0.8 and np.abs(a - b)[both].max() < 0.1 * np.ptp(field)


def test_shift_found_between_fields_that_are_not_periodic():
    rng = np.random.default_rng(4)
    big = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 2.0)
    ref = big[24:72, 24:72]
    for shift in ((0.37, -1.62), (-2.5, 0.0), (0.0, 0.0)):
        moving = ndimage.shift(big, shift, order=3, mode="nearest")[24:72, 24:72]
        found = phase_shift(moving, ref)
        np.testing.assert_allclose(found, [-shift[0], -shift[1]], atol=0.02)
        back = shifted(moving, found)
        keep = np.isfinite(back)
        assert keep.mean() > 0.8
        assert np.abs(back - ref)[keep].max() < 0.05 * np.ptp(ref)
    assert phase_shift(ref[:6, :6], ref[:6, :6]) is None  # too small a field to align
    other = ndimage.gaussian_filter(rng.normal(size=(48, 48)), 2.0)
    found = phase_shift(other, ref)  # unrelated fields: no match, or a shift; never an error
    assert found is None or np.all(np.abs(found) <= 12)


def test_the_server_reads_no_oversized_run_file_whole(tmp_path):
    """The run files the server reads itself are bounded before they are unpacked: a live.npz declaring 64 MB
    (a few kB compressed) and a results.h5 whose loss history is 2·10⁶ epochs are not read; real ones are."""
    from phasestem.recon.live import read_snapshot
    from phasestem.serve.outcome import loss_history

    bomb = tmp_path / "bomb" / "live.npz"
    bomb.parent.mkdir()
    np.savez_compressed(bomb, loss=np.zeros(8 * 2**20))  # 64 MB of zeros, ~65 kB on disk
    assert bomb.stat().st_size < 2**20 and read_snapshot(bomb) is None
    np.savez_compressed(tmp_path / "live.npz", loss=np.array([3.0, 2.0, 1.0]))
    assert read_snapshot(tmp_path / "live.npz")["loss"].tolist() == [3.0, 2.0, 1.0]
    with h5py.File(bomb.parent / "results.h5", "w") as f:
        f.create_dataset("loss/loss", data=np.ones(2_000_000), compression="gzip")
    assert loss_history(bomb.parent) is None  # neither results.h5 (too long) nor live.npz (too large) is read
    with h5py.File(tmp_path / "results.h5", "w") as f:
        f["loss/loss"] = np.array([2.0, 1.5, 1.0])
    assert loss_history(tmp_path).tolist() == [2.0, 1.5, 1.0]
