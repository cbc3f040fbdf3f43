"""A write that finds no room is one line, and nothing is lost (issue 63, reproduction 9): ``restore`` over a previous
restoration, ``reconstruct`` over a previous run, ``reconstruct --resume``: the command exits 1 with one line naming
the file that could not be written, and the previous restoration / results / checkpoint are as they were, no
temporary left (HDF5 2.0 crashed the process on a full disk; torch said ``unexpected pos``).

The disk fills in two ways: ``tmpfs``, a 2 MiB tmpfs mounted for the test (root only; ENOSPC, the real thing) and
filled to a few kB, and ``fsize``, the command's file-size limit (``RLIMIT_FSIZE``: EFBIG; any user). Also at load:
a parameter file's ``.inf`` / ``.nan`` (``run.noise_sigma`` and its friends) is one line before anything runs."""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_restore_output import _identity_restorer, _tiny_run

from phasestem.cli import main

DISK_BYTES = 2 << 20


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A tiny finished run (``run/``: results, checkpoint; its data and parameters beside it), an identity restorer
    and a restoration of the run (``restored.h5`` and its figure and log)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("disk_full")
    results = _tiny_run(folder, noise_sigma=1e-3)
    model = _identity_restorer(folder / "restorer.safetensors", results)
    assert main(["restore", results, "--model", model, "--out-file", str(folder / "restored.h5")]) == 0
    return folder


class NoRoom:
    """A folder whose writes find no room beyond ``room`` bytes: ``tmpfs`` (the free space of a small tmpfs) or
    ``fsize`` (the largest file the command may write)."""

    def __init__(self, how: str, folder: Path):
        self.how, self.folder = how, folder

    def run(self, args: list[str], room: int) -> subprocess.CompletedProcess:
        """``phasestem ARGS`` in a fresh process with ``room`` bytes of room."""
        filler = self.folder / "filler"
        if self.how == "tmpfs":
            with open(filler, "wb") as fh:
                fh.write(b"\0" * max(shutil.disk_usage(self.folder).free - room, 0))

        def limit_file_size() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG, not a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        try:
            return subprocess.run([sys.executable, "-m", "phasestem.cli", *args], capture_output=True, text=True,
                                  timeout=300, preexec_fn=limit_file_size if self.how == "fsize" else None,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        finally:
            filler.unlink(missing_ok=True)


@pytest.fixture(params=["tmpfs", "fsize"])
def no_room(request, tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "tmpfs":
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (the fsize case covers this user)")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"no tmpfs here: {mounted.stderr.strip()}")
    yield NoRoom(request.param, folder)
    if request.param == "tmpfs":
        subprocess.run(["umount", str(folder)], check=True)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line(proc: subprocess.CompletedProcess, names: str) -> str:
    """The one error line of a failed command (log lines aside), which must name ``names``."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert names in lines[0] and "is kept as it was" in lines[0], lines[0]
    return lines[0]


def test_restore_on_a_full_disk_is_one_line_and_keeps_the_previous_restoration(previous, no_room):
    for name in ("restored.h5", "restored.png", "restored.log"):
        shutil.copy(previous / name, no_room.folder / name)
    before = _digests(no_room.folder)
    out = no_room.folder / "restored.h5"
    proc = no_room.run(["restore", str(previous / "run" / "results.h5"), "--model",
                        str(previous / "restorer.safetensors"), "--out-file", str(out), "--replace"],
                       room=out.stat().st_size // 2)
    _one_line(proc, f"--out-file {out}")
    after = _digests(no_room.folder)
    assert {k: after[k] for k in ("restored.h5", "restored.png")} == {k: before[k] for k in ("restored.h5",
                                                                                               "restored.png")}
    assert set(after) == set(before)  # no temporary left


def test_restore_with_no_room_at_all_says_once_that_its_log_is_lost(previous, no_room):
    """Not a byte of room: the log beside the output cannot be written either; that is one line (not logging's
    traceback per record), the error another, and nothing is left but the empty log."""
    out = no_room.folder / "new.h5"
    proc = no_room.run(["restore", str(previous / "run" / "results.h5"), "--model",
                        str(previous / "restorer.safetensors"), "--out-file", str(out)], room=0)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    why = "No space left on device" if no_room.how == "tmpfs" else "File too large"
    assert len(lines) == 2 and lines[0] == f"phasestem: run log {out.with_suffix('.log')}: not written from here on " \
        f"({why})", lines
    assert lines[1].startswith(f"phasestem restore: error: --out-file {out}: ") and "nothing was written" in lines[1]
    assert sorted(p.name for p in no_room.folder.iterdir()) == ["new.log"]
    assert out.with_suffix(".log").stat().st_size == 0


def _run_copy(previous: Path, no_room: NoRoom) -> Path:
    run = no_room.folder / "run"
    shutil.copytree(previous / "run", run)
    return run


def test_reconstruct_on_a_full_disk_is_one_line_and_keeps_the_previous_results(previous, no_room):
    run = _run_copy(previous, no_room)
    before = _digests(run)
    room = ((run / "checkpoint.pt").stat().st_size + (run / "results.h5").stat().st_size) // 2  # not the results'
    proc = no_room.run(["reconstruct", str(previous / "params.yaml"), "--out", str(run)], room=room)
    _one_line(proc, f"results {run / 'results.h5'}")
    after = _digests(run)
    assert after["results.h5"] == before["results.h5"] and after["results.emd"] == before["results.emd"]
    assert sorted(after) == sorted(before)  # no temporary left


def test_resume_on_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(previous, no_room):
    run = _run_copy(previous, no_room)
    before = _digests(run)
    largest_before = max((run / name).stat().st_size for name in ("config.yaml", "live.npz"))
    checkpoint = (run / "checkpoint.pt").stat().st_size
    assert largest_before + 8192 < checkpoint  # the room below lets the run start and stops its checkpoint
    proc = no_room.run(["reconstruct", str(previous / "params.yaml"), "--out", str(run), "--resume", "--set",
                        "run.n_epochs=6"], room=(largest_before + checkpoint) // 2)
    _one_line(proc, f"checkpoint {run / 'checkpoint.pt'}")
    after = _digests(run)
    assert after["checkpoint.pt"] == before["checkpoint.pt"] and after["results.h5"] == before["results.h5"]
    assert sorted(after) == sorted(before)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("key, value", [("run", {"noise_sigma": INF}), ("run", {"noise_sigma": NAN}),
                                        ("run", {"lr_scale": INF}), ("model", {"slice_thickness": INF}),
                                        ("losses", {"gaussian": INF}), ("model", {"learning_rates": {"object": INF}})])
def test_an_infinite_or_nan_setting_is_one_line_at_load_not_after_the_run(previous, key, value, tmp_path, capsys):
    params = yaml.safe_load((previous / "params.yaml").read_text())
    params[key] = {**params.get(key, {}), **value}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))  # .inf / .nan, as a user writes them
    capsys.readouterr()
    assert main(["reconstruct", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    field = f"{key}.{next(iter(value))}"
    assert len(err.splitlines()) == 1 and field in err and "finite" in err, err
    assert not (tmp_path / "run").exists()  # refused before the run, not after it
