"""``phasestem restore --out-file`` never replaces a file it must not (issue 63, reproduction 8): one of its inputs
(the results file, the files of its run, the model or a file of its run folder, links resolved), a file of a suffix
it does not write, or an existing file that is not a previous restoration (one is replaced with ``--replace`` only);
its companions OUT.png and OUT.log no more. Each refusal is one line naming --out-file and leaves every file as it
was. Also one line: a results file with a zero pixel, a device that is not there (restore, reconstruct, predict)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_restore_output import _identity_restorer, _tiny_run

from phasestem.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished run (``run/``, its data and parameters beside it), an identity restorer file and a restorer
    run folder (``mrun/``: its weights and a training log)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("restore_refusals")
    results = Path(_tiny_run(folder))
    model = Path(_identity_restorer(folder / "restorer.safetensors", results))
    (folder / "mrun").mkdir()
    shutil.copy(model, folder / "mrun" / "best.safetensors")
    (folder / "mrun" / "train.log").write_text("2026-01-01 00:00:00,000 INFO epoch 1: loss 0.1\n")
    return folder


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (links followed), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, args: list[str]) -> str:
    """Run ``phasestem restore ARGS``; assert exit 1 and one line on stderr naming --out-file; return it."""
    capsys.readouterr()
    assert main(["restore", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out-file" in err and "Traceback" not in err, err
    return err


def _restore(run: Path, out: str, model: str = "restorer.safetensors", *extra: str) -> list[str]:
    return [str(run / "run" / "results.h5"), "--model", str(run / model), "--out-file", str(run / out), *extra]


@pytest.mark.parametrize("out", ["restorer.safetensors", "tiny.npz", "params.yaml", "run/checkpoint.pt",
                                 "run/results.emd", "x.png", "mrun/best.safetensors"])
def test_an_out_file_of_a_suffix_restore_does_not_write_is_refused_and_the_file_kept(run, out, capsys):
    before = _digests(run)
    err = _refused(capsys, _restore(run, out))
    assert "expected a name ending in .h5 or .hdf5" in err
    assert _digests(run) == before  # the model, the data, the parameters, the run's files: nothing written


@pytest.mark.parametrize("out, model, names", [
    ("run/results.h5", "restorer.safetensors", "run/results.h5"),  # the results file it reads
    ("run/reconstruction.h5", "restorer.safetensors", "run/reconstruction.png"),  # OUT.png: the run's figure
    ("run/reconstruct.h5", "restorer.safetensors", "run/reconstruct.log"),  # OUT.log: the run's own log
    ("mrun/train.h5", "mrun", "mrun/train.log"),  # OUT.log: a file of the model's run folder
    ("weights.h5", "restorer.safetensors", "restorer.safetensors"),  # a link to the model
    ("point.h5", "restorer.safetensors", "run/checkpoint.pt"),  # a link to the run's checkpoint
])
def test_an_out_file_that_is_one_of_the_inputs_is_refused_links_resolved(run, out, model, names, capsys):
    links = {"weights.h5": run / "restorer.safetensors", "point.h5": run / "run" / "checkpoint.pt"}
    if out in links:
        (run / out).symlink_to(links[out])
    try:
        before = _digests(run)
        err = _refused(capsys, _restore(run, out, model))
        assert f"would overwrite the input file {run / names}" in err
        assert _digests(run) == before
    finally:
        if out in links:
            (run / out).unlink()


@pytest.mark.parametrize("replace", [False, True])
def test_an_existing_file_that_is_not_a_restoration_is_never_replaced(run, replace, capsys, tmp_path):
    other = tmp_path / "other.h5"  # another run's results: HDF5, but not a restoration
    shutil.copy(run / "run" / "results.h5", other)
    raw = tmp_path / "data.h5"
    with h5py.File(raw, "w") as f:
        f["patterns"] = np.ones((4, 4, 8, 8), np.float32)
    before = _digests(tmp_path)
    for target in (other, raw):
        err = _refused(capsys, _restore(run, str(target), "restorer.safetensors", *(["--replace"] * replace)))
        assert "exists and is not a restoration" in err
    assert _digests(tmp_path) == before
    assert not (tmp_path / "other.png").exists() and not (tmp_path / "data.log").exists()


def test_a_previous_restoration_is_replaced_with_replace_only(run, capsys, tmp_path):
    out = tmp_path / "restored.h5"
    assert main(["restore", *_restore(run, str(out))]) == 0
    first = _digests(tmp_path)
    err = _refused(capsys, _restore(run, str(out)))
    assert "holds a previous restoration" in err and "--replace" in err
    assert _digests(tmp_path) == first
    out.with_suffix(".png").unlink()  # what --replace writes is written again
    assert main(["restore", *_restore(run, str(out), "restorer.safetensors", "--replace")]) == 0
    with h5py.File(out) as f:
        assert f.attrs["format"] == "phasestem-restored"
    assert out.with_suffix(".png").is_file()
    assert out.with_suffix(".log").read_text().count("INFO phasestem restore ") == 2  # the log is appended to


def test_a_companion_never_replaces_a_file_that_is_not_a_restorations(run, capsys, tmp_path):
    (tmp_path / "figure.png").write_bytes(b"a figure of someone else's")
    (tmp_path / "notes.log").write_text("my notes\n")
    before = _digests(tmp_path)
    assert "its figure" in _refused(capsys, _restore(run, str(tmp_path / "figure.h5")))
    assert "its log" in _refused(capsys, _restore(run, str(tmp_path / "notes.h5")))
    assert _digests(tmp_path) == before and not (tmp_path / "figure.h5").exists()


def test_a_zero_pixel_in_the_results_file_is_one_line(run, capsys, tmp_path):
    results = tmp_path / "results.h5"
    shutil.copy(run / "run" / "results.h5", results)
    with h5py.File(results, "r+") as f:
        f.attrs["sampling"] = np.array([0.0, 0.0])
    capsys.readouterr()
    assert main(["restore", str(results), "--model", str(run / "restorer.safetensors"), "--out-file",
                 str(tmp_path / "r.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "attrs sampling" in err and "> 0" in err, err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("device", ["cuda:7", "banana"])
def test_a_device_that_is_not_there_is_one_line_before_anything_is_written(run, device, capsys, tmp_path):
    capsys.readouterr()
    assert main(["restore", *_restore(run, str(tmp_path / "r.h5"), "restorer.safetensors", "--device", device)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--device: '{device}'" in err, err
    assert list(tmp_path.iterdir()) == []  # no output, no log
    assert main(["reconstruct", str(run / "params.yaml"), "--out", str(tmp_path / "run"), "--device", device]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"run.device: '{device}'" in err, err
    assert not (tmp_path / "run").exists()  # the device is checked before the run folder is made


def test_predict_checks_the_device_as_restore_does_before_reading_the_data(capsys, tmp_path):
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "no_data.h5"), "--model", str(tmp_path / "no_model"), "--out-file",
                 str(tmp_path / "p.h5"), "--device", "banana"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device: 'banana' is not a device" in err, err
