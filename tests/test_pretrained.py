"""Shipped pretrained models (``--model seed-tiny``): resolved by name before any path, checksum verified at every
load (a corrupted or truncated copy stops with one line naming the file and both checksums), refused on data of
another geometry, and usable offline on a fresh checkout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from phasestem.cli import main
from phasestem.learn import pretrained
from phasestem.learn.trainer.checkpoint import read_meta, resolve_weights_path, save_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHIPPED = pretrained.registry(pretrained.package_dir())
# the End2End models (their geometry records a scan shape); restorers (restore-seed) are tested in test_restore_seed
NAME = next((n for n, e in SHIPPED.items() if "scan_shape" in (e.get("geometry") or {})), None)
needs_model = pytest.mark.skipif(NAME is None, reason="no pretrained model registered in this checkout")


def _seed_file(path: Path, scan: int = 50, semiangle: float = 15.0) -> Path:
    """A seed-layout file of ``scan``² positions of 64² patterns (a bright disk of the probe's size, scaled per
    position) with the shipped model's optics recorded, and a random 256² phase as the truth."""
    entry = SHIPPED[NAME]["geometry"]
    ky, kx = np.mgrid[-32:32, -32:32] * entry["angular_sampling"]
    disk = (np.hypot(ky, kx) <= entry["semiangle"]).astype(np.float32)
    rng = np.random.default_rng(0)
    pats = disk[None, None] * rng.uniform(0.9, 1.1, (scan, scan, 1, 1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("dp_set_0", data=pats)
        f.create_dataset("phase_0", data=rng.normal(0, 0.1, (256, 256)).astype(np.float32))
        a = f.attrs
        a["format"], a["version"], a["phase_convention"] = "phasestem-seed000", 1, "phase_rad"
        a["energy"], a["semiangle"] = entry["energy"], semiangle
        a["aberrations"] = json.dumps(entry["aberrations"])
        a["scan_shape"], a["scan_step"], a["scan_origin"] = [scan, scan], [2.0, 2.0], [0.0, 0.0]
        a["extent"], a["sim_gpts"], a["phase_shape"] = [100.0, 100.0], [512, 512], [256, 256]
        a["phase_sampling"], a["pattern_shape"] = [100 / 256] * 2, [64, 64]
        a["angular_sampling"] = [entry["angular_sampling"]] * 2
        a["samples_per_file"], a["first_sample"], a["dose"] = 1, 0, -1.0
    return path


@pytest.fixture
def model_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the package's model folder, in use through PHASESTEM_MODEL_DIR."""
    folder = tmp_path / "models"
    shutil.copytree(pretrained.package_dir(), folder)
    monkeypatch.setenv(pretrained.MODEL_DIR_ENV, str(folder))
    return folder


@needs_model
def test_shipped_model_is_registered_small_and_intact():
    entry = SHIPPED[NAME]
    path = pretrained.package_dir() / entry["file"]
    assert path.suffix == ".safetensors" and path.stat().st_size == entry["bytes"] <= pretrained.MAX_SHIPPED_BYTES
    assert pretrained.sha256_file(path) == entry["sha256"]
    assert resolve_weights_path(NAME) == path
    root = Path(__file__).resolve().parents[1]
    assert (root / entry["card"]).is_file(), "the model card the registry names is missing"
    meta = read_meta(NAME)
    assert meta["pretrained"]["name"] == NAME and meta["data"]["optics"]["semiangle"] == entry["geometry"]["semiangle"]
    assert "/work/" not in json.dumps(meta) and "/tmp/" not in json.dumps(meta)  # no path of the training machine


@needs_model
def test_predict_by_name_on_a_seed_layout_file(tmp_path, capsys):
    scan = _seed_file(tmp_path / "scan.h5")
    out = tmp_path / "phase.h5"
    assert main(["predict", str(scan), "--model", NAME, "--out-file", str(out), "--no-png", "--device", "cpu"]) == 0
    with h5py.File(out) as f:
        phase = f["phase"][...]
        assert f.attrs["model_kind"] == "end2end"
    assert phase.shape == (256, 256) and np.isfinite(phase).all()


def test_choosing_the_placeholder_model_says_what_it_is(caplog):
    """seed-tiny resolves no atoms and is not for configs/simulate_seed.yaml's geometry: whoever picks it is told."""
    with caplog.at_level("WARNING", logger="phasestem.learn"):
        resolve_weights_path(NAME)
    assert "placeholder, not a useful model" in caplog.text and "30 mrad, Cs 0.1 mm" in caplog.text


@needs_model
def test_other_geometry_is_refused_up_front(tmp_path, capsys):
    for name, kw, words in (("small_scan.h5", {"scan": 40}, "differs from the training scan"),
                            ("wide_probe.h5", {"semiangle": 30.0}, "semiangle 30 mrad (trained on 15 mrad)")):
        scan = _seed_file(tmp_path / name, **kw)
        capsys.readouterr()
        assert main(["predict", str(scan), "--model", NAME, "--out-file", str(tmp_path / "x.h5"), "--no-png"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
        assert not (tmp_path / "x.h5").exists()


@needs_model
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_copy_gets_one_line(model_copy, tmp_path, capsys, monkeypatch, damage):
    path = model_copy / SHIPPED[NAME]["file"]
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))
    got = pretrained.sha256_file(path)
    scan = _seed_file(tmp_path / "scan.h5", scan=20)
    assert main(["predict", str(scan), "--model", NAME, "--out-file", str(tmp_path / "p.h5"), "--no-png"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and got in err and SHIPPED[NAME]["sha256"] in err
    word = "truncated" if damage == "truncate" else "corrupted"
    assert word in err and "copy it again" in err and "Traceback" not in err
    assert main(["evaluate", "--model", NAME, "--files", str(scan), "--out", str(tmp_path / "ev")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err and got in err, err
    monkeypatch.delenv(pretrained.MODEL_DIR_ENV)  # the package's own copy: restored from git or by reinstalling
    with pytest.raises(pretrained.PretrainedModelError, match=r"git checkout -- src/phasestem/data/models/.*reinstall"):
        pretrained.verify(NAME, SHIPPED[NAME], path)


def test_unshipped_size_and_paths(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv(pretrained.MODEL_DIR_ENV, str(folder))
    with pytest.raises(pretrained.PretrainedModelError, match="seed-base: pretrained model not shipped in this "
                                                              r"install \(shipped: none\); `python benchmarks"):
        resolve_weights_path("seed-base")
    scan = _seed_file(tmp_path / "x.h5", scan=20) if NAME else tmp_path / "x.h5"
    assert main(["predict", str(scan), "--model", "seed-small", "--out-file", str(tmp_path / "p.h5")]) == 1
    assert "not shipped" in capsys.readouterr().err
    # names are resolved before paths, and only names: a path of any other form is a path
    assert pretrained.resolve("runs/seed-tiny") is None and pretrained.resolve("model.safetensors") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed-small").mkdir()
    assert pretrained.resolve("seed-small") is None  # not shipped, but a folder of that name exists: a path


def test_register_model_and_resolve_by_name(tmp_path, monkeypatch):
    """register_model writes size and sha256; a registered name resolves in PHASESTEM_MODEL_DIR; >20 MiB refused."""
    folder = tmp_path / "models"
    folder.mkdir()
    weights = folder / "seed-x.safetensors"
    save_weights({"w": torch.arange(6.0)}, weights, {"note": "test"})
    entry = pretrained.register_model("seed-x", weights, "docs/models/seed-x.md", {"summary": "s"}, folder)
    assert entry["bytes"] == weights.stat().st_size and entry["sha256"] == pretrained.sha256_file(weights)
    monkeypatch.setenv(pretrained.MODEL_DIR_ENV, str(folder))
    assert resolve_weights_path("seed-x") == weights
    big = folder / "seed-big.safetensors"
    with open(big, "wb") as fh:
        fh.truncate(pretrained.MAX_SHIPPED_BYTES + 1)
    with pytest.raises(pretrained.PretrainedModelError, match="MiB a model shipped"):
        pretrained.register_model("seed-big", big, "c", {}, folder)


@needs_model
def test_evaluate_by_name_needs_files(capsys):
    assert main(["evaluate", "--model", NAME, "--out", "unused"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{NAME}: a pretrained model, shipped without its training files" in err


def test_training_optics_check(caplog):
    """Models that record their training optics refuse other optics or another scan step in one line, name what
    the data do not record, and models without the record are not checked."""
    from phasestem.base.errors import ShapeError
    from phasestem.learn.apply.phase import check_training_optics

    trained = {"energy": 300e3, "semiangle": 15.0, "aberrations": {"C10": 100.0}, "angular_sampling": [0.984, 0.984],
               "scan_step": [2.0, 2.0]}
    meta = {"data": {"optics": trained}}
    check_training_optics(meta, dict(trained, semiangle=15.1, aberrations={"C10": 100.5, "C30": 0.0}), "ok.h5")
    for change, words in (({"aberrations": {"C10": -100.0}}, "C10 -100 Å (trained on 100 Å)"),
                          ({"scan_step": (1.0, 1.0)}, "scan_step 1×1 Å (trained on 2×2 Å)"),
                          ({"energy": 200e3}, "energy 200000 eV"),
                          ({"angular_sampling": (1.2, 1.2)}, "angular_sampling 1.2×1.2 mrad")):
        with pytest.raises(ShapeError, match="^scan.h5: the data differ from the model's training data: ") as err:
            check_training_optics(meta, dict(trained, **change), "scan.h5")
        assert words in str(err.value) and "\n" not in str(err.value)
    with caplog.at_level("WARNING", logger="phasestem.learn"):
        check_training_optics(meta, dict(trained, semiangle=None, aberrations={}), "raw.npy")
    assert "do not record semiangle, aberrations" in caplog.text
    check_training_optics({"data": {}}, {"energy": 1.0})  # an older model: nothing recorded, nothing checked
