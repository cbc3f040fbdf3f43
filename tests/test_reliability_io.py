"""Inputs and outputs never lose or silently spoil data (issue 12, items 2, 5, 10, 13, 14, 15).

* an output that resolves to an input (same path, relative path, symlink) is refused;
* NaN/Inf in the data are refused naming file, dataset and first bad index, or masked on request;
* complex patterns are refused by every reader;
* HDF5 files are read whole only when memory allows, straight into one float32 buffer;
* empty, truncated or folder inputs give one line naming the file;
* no ``*.tmp`` is left behind when an output cannot be written.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from phasestem import io
from phasestem.base.errors import ConfigError, InputFileError
from phasestem.base.safety import atomic_file, mask_nonfinite, refuse_output_over_inputs
from phasestem.cli import main

GEO = dict(extent=24.0, phase_px=48, scan=12, window=16, n_blobs=8)
BAD = (1, 2, 3, 4)  # the one bad pattern value: scan (1, 2), detector pixel (3, 4)


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small simulation file and untrained end2end / autoencoder / Phaseformer model files."""
    from phasestem.learn.data import Preprocess, SampleIndex, write_synthetic_file
    from phasestem.learn.nets.end2end import End2End
    from phasestem.learn.nets.patch import PatchRecoveryConfig, PatchRecoveryNet
    from phasestem.learn.nets.phaseformer import Phaseformer, PhaseformerConfig
    from phasestem.learn.nets.stitch import PhaseStitchingConfig, PhaseStitchingNet
    from phasestem.learn.trainer import save_weights
    from phasestem.learn.training.autoencoder import build_autoencoder

    tmp = tmp_path_factory.mktemp("rel")
    sim = write_synthetic_file(tmp / "simulation_data1.h5", 2, **GEO)
    sim32 = write_synthetic_file(tmp / "sim32.h5", 1, extent=16.0, phase_px=32, scan=4, window=32)  # autoencoder
    torch.manual_seed(0)
    g = SampleIndex.from_paths([sim], block=6, stride=3, patch=24).geometry
    e2e = End2End(PatchRecoveryNet(PatchRecoveryConfig(size="tiny", block=6, patch=24)),
                  PhaseStitchingNet(PhaseStitchingConfig(size="tiny", vit_patch=8, image_size=48, patch=24)))
    meta = {"model": {"kind": "end2end", "config": e2e.config},
            "data": {"geometry": g.to_dict(), "preprocess": Preprocess().model_dump(), "target": "phase",
                     "target_description": "phase (rad)", "pattern_shape": [16, 16], "files": [str(sim)],
                     "split_seed": 0, "val_fraction": 0.0, "test_fraction": 0.5, "max_samples": None}}
    save_weights(e2e.state_dict(), tmp / "e2e" / "best" / "model.safetensors", meta)
    ae_cfg = {"latent_dim": 4, "channels": 4, "decoder_blocks": 1}
    save_weights(build_autoencoder(ae_cfg).state_dict(), tmp / "ae.safetensors",
                 {"network": "autoencoder", "model": ae_cfg, "preprocess": {"scaling": "log"}})
    pf_cfg = PhaseformerConfig(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), refinement_blocks=1)
    save_weights(Phaseformer(pf_cfg).state_dict(), tmp / "pf.safetensors",
                 {"network": "phaseformer", "model": pf_cfg.model_dump(mode="json")})
    return {"dir": tmp, "sim": sim, "sim32": sim32, "e2e": tmp / "e2e", "ae": tmp / "ae.safetensors",
            "pf": tmp / "pf.safetensors"}


def _with_nan(source: Path, path: Path) -> Path:
    """A copy of a simulation file with one NaN pattern value in sample 0."""
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        f["dp_set_0"][BAD] = np.nan
    return path


@pytest.fixture
def nan_sim(models, tmp_path) -> Path:
    return _with_nan(models["sim"], tmp_path / "nan_sim.h5")


# --------------------------------------------------------------------------------- 2: never overwrite an input
def test_refuse_output_over_inputs_same_relative_symlink_hardlink(tmp_path, monkeypatch):
    inp = tmp_path / "scan.h5"
    inp.write_bytes(b"data")
    (tmp_path / "sub").mkdir()
    os.symlink(inp, tmp_path / "link.h5")
    os.link(inp, tmp_path / "hard.h5")
    monkeypatch.chdir(tmp_path)
    for out in (inp, "sub/../scan.h5", tmp_path / "link.h5", "hard.h5"):
        with pytest.raises(ConfigError, match="would overwrite the input file"):
            refuse_output_over_inputs(out, [inp])
    refuse_output_over_inputs(tmp_path / "other.h5", [inp, None])  # a new file is fine
    # an output folder: refused only where a file it writes is an input
    with pytest.raises(ConfigError, match="metrics.csv"):
        refuse_output_over_inputs(tmp_path / "eval", [tmp_path / "eval" / "metrics.csv"], written=["metrics.csv"])
    refuse_output_over_inputs(tmp_path, [inp], written=["metrics.csv"])
    # a model run folder: its weight files are inputs
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(ConfigError, match="model.safetensors"):
        refuse_output_over_inputs(tmp_path / "run" / "best" / "model.safetensors", [tmp_path / "run"])
    refuse_output_over_inputs(tmp_path / "run", [tmp_path / "run"], written=["metrics.csv"])  # eval into the run


def _command(name: str, models, inp: Path, out: str) -> list[str]:
    if name == "predict":
        return ["predict", str(inp), "--sample", "0", "--model", str(models["e2e"]), "--out-file", out, "--no-png"]
    if name == "embed":
        return ["embed", str(inp), "--sample", "0", "--model", str(models["ae"]), "--out-file", out, "--no-png"]
    if name == "refine":
        return ["refine", str(inp), "--model", str(models["pf"]), "--size", "32", "--out-file", out, "--no-png"]
    return ["make-pairs", str(inp), "--out-file", out]


@pytest.mark.parametrize("how", ["same", "relative", "symlink"])
@pytest.mark.parametrize("command", ["predict", "embed", "refine", "make-pairs"])
def test_out_equal_to_input_is_refused(command, how, models, tmp_path, monkeypatch, capsys):
    if command == "refine":
        inp = tmp_path / "coarse.h5"
        with h5py.File(inp, "w") as f:
            f["phase"] = np.zeros((32, 32), np.float32)
    else:
        inp = tmp_path / "scan.h5"
        shutil.copy(models["sim"], inp)
    before = _digest(inp)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    out = {"same": str(inp), "relative": f"sub/../{inp.name}", "symlink": "link.h5"}[how]
    if how == "symlink":
        os.symlink(inp, tmp_path / "link.h5")
    assert main(_command(command, models, inp, out)) == 1
    _one_error_line(capsys, "would overwrite the input file", inp.name)
    assert _digest(inp) == before


def test_png_next_to_the_output_may_not_overwrite_the_input(models, tmp_path, capsys):
    coarse = tmp_path / "phase.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(coarse)
    before = _digest(coarse)
    assert main(["refine", str(coarse), "--model", str(models["pf"]), "--out-file", str(tmp_path / "phase.h5")]) == 1
    _one_error_line(capsys, "would overwrite the input file", "phase.png")
    assert _digest(coarse) == before


# --------------------------------------------------------------------------------- 5: NaN / Inf
def test_load_refuses_nan_and_inf_naming_file_dataset_and_index(tmp_path):
    arr = np.ones((4, 4, 8, 8), np.float32)
    arr[BAD] = np.inf
    np.save(tmp_path / "inf.npy", arr)
    with pytest.raises(InputFileError, match=r"inf\.npy:array: pattern value at index \(1, 2, 3, 4\) is inf"):
        io.load(tmp_path / "inf.npy", energy=3e5, scan_step=1.0)
    arr[BAD] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["entry/data"] = arr
    for lazy in (False, True):
        with pytest.raises(InputFileError, match=r"nan\.h5:entry/data: pattern value at index \(1, 2, 3, 4\) is nan"):
            io.load(tmp_path / "nan.h5", energy=3e5, scan_step=1.0, lazy=lazy)


def test_load_masks_bad_pixels_on_request(tmp_path):
    arr = np.arange(4 * 4 * 8 * 8, dtype=np.float32).reshape(4, 4, 8, 8)
    want = np.median([arr[1, 2, y, x] for y in (2, 3, 4) for x in (3, 4, 5) if (y, x) != (3, 4)])
    arr[BAD] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    ds = io.load(tmp_path / "nan.npy", energy=3e5, scan_step=1.0, bad_pixels="mask")
    pats = np.asarray(ds.patterns)
    assert np.isfinite(pats).all() and ds.metadata["bad_pixels_masked"] == 1
    assert pats[BAD] == pytest.approx(want)
    np.testing.assert_array_equal(np.delete(pats.ravel(), np.ravel_multi_index(BAD, arr.shape)),
                                  np.delete(arr.ravel(), np.ravel_multi_index(BAD, arr.shape)))


def test_mask_nonfinite_without_finite_neighbours_uses_zero():
    a = np.full((1, 3, 3), np.nan, np.float32)
    assert mask_nonfinite(a) == 9 and (a == 0).all()


def test_predict_refuses_or_masks_one_nan(models, nan_sim, tmp_path, capsys):
    out = tmp_path / "phase.h5"
    args = ["predict", str(nan_sim), "--sample", "0", "--model", str(models["e2e"]), "--out-file", str(out), "--no-png"]
    assert main(args) == 1
    _one_error_line(capsys, "nan_sim.h5:dp_set_0", str(BAD), "--bad-pixels mask")
    assert not out.exists()
    assert main([*args, "--bad-pixels", "mask"]) == 0
    with h5py.File(out) as f:
        assert np.isfinite(f["phase"][()]).all()


def test_embed_refuses_or_masks_one_nan(models, tmp_path, capsys):
    nan_sim = _with_nan(models["sim32"], tmp_path / "nan_sim.h5")
    out = tmp_path / "latent.h5"
    args = ["embed", str(nan_sim), "--sample", "0", "--model", str(models["ae"]), "--out-file", str(out), "--no-png",
            "--device", "cpu"]
    assert main(args) == 1
    _one_error_line(capsys, "nan_sim.h5:dp_set_0", str(BAD))
    assert main([*args, "--bad-pixels", "mask"]) == 0
    assert "replaced 1 non-finite" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert np.isfinite(f["latent_maps"][()]).all()


def test_refine_refuses_or_masks_one_nan(models, tmp_path, capsys):
    img = np.zeros((32, 32), np.float32)
    img[5, 7] = np.nan
    np.save(tmp_path / "coarse.npy", img)
    out = tmp_path / "refined.h5"
    args = ["refine", str(tmp_path / "coarse.npy"), "--model", str(models["pf"]), "--size", "32", "--out-file",
            str(out), "--no-png", "--device", "cpu"]
    assert main(args) == 1
    _one_error_line(capsys, "coarse.npy", "(5, 7)")
    assert main([*args, "--bad-pixels", "mask"]) == 0
    with h5py.File(out) as f:
        assert np.isfinite(f["phase"][()]).all() and np.isfinite(f["phase_x2"][()]).all()


def test_evaluate_refuses_or_masks_one_nan(models, nan_sim, tmp_path, capsys):
    args = ["evaluate", "--model", str(models["e2e"]), "--files", str(nan_sim), "--out", str(tmp_path / "eval")]
    assert main(args) == 1
    _one_error_line(capsys, "nan_sim.h5:dp_set_0", str(BAD))
    assert main([*args, "--bad-pixels", "mask"]) == 0
    printed = capsys.readouterr().out
    assert "replaced 1 non-finite" in printed and "nan" not in printed.split("replaced")[0].lower()
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "nan" not in "".join(rows[1:]).lower()


def test_reconstruct_refuses_nan_data(tmp_path, capsys):
    arr = np.ones((4, 4, 16, 16), np.float32)
    arr[BAD] = np.nan
    np.save(tmp_path / "scan.npy", arr)
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "data": {"file": "scan.npy"}, "optics": {"energy": 3e5, "semiangle": 20.0, "angular_sampling": 2.0},
        "scan": {"step": 1.0}, "run": {"out_dir": str(tmp_path / "run"), "n_epochs": 1, "device": "cpu"}}))
    assert main(["reconstruct", str(tmp_path / "p.yaml")]) == 1
    _one_error_line(capsys, "scan.npy", str(BAD), "is nan")
    assert not (tmp_path / "run" / "results.h5").exists()
    from phasestem.recon.params import build_dataset, load_params

    params = load_params(tmp_path / "p.yaml")
    params.data.reader_options = {"bad_pixels": "mask"}
    assert np.isfinite(np.asarray(build_dataset(params).patterns)).all()


def test_training_pairs_refuse_nan_naming_file_dataset_and_index(tmp_path):
    from phasestem.learn.pairs import H5Pairs, write_pairs

    gt = np.zeros((3, 16, 16), np.float32)
    gt[2, 5, 6] = np.nan
    write_pairs(tmp_path / "pairs.h5", np.zeros_like(gt), gt)
    pairs = H5Pairs(tmp_path / "pairs.h5")
    assert np.isfinite(pairs[1]["target"].numpy()).all()
    with pytest.raises(InputFileError, match=r"pairs\.h5:gt: pixel at index \(2, 5, 6\) is nan"):
        pairs[2]


class _Payload:
    """Pickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_arrays_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    for name in ("evil.npy", "evil.npz"):
        payload = np.array([_Payload(marker)], dtype=object)
        if name.endswith(".npy"):
            np.save(tmp_path / name, payload, allow_pickle=True)
        else:
            np.savez(tmp_path / name, patterns=payload)
        with pytest.raises(InputFileError, match=name):
            io.load(tmp_path / name, energy=3e5, scan_step=1.0)
    assert not marker.exists()


# --------------------------------------------------------------------------------- 10: complex data refused
def _complex_file(tmp_path: Path, kind: str) -> tuple[Path, dict]:
    c = (np.ones((4, 4, 8, 8)) + 1j).astype(np.complex64)
    opts: dict = {"energy": 3e5, "scan_step": 1.0}
    if kind == "npy":
        np.save(tmp_path / "c.npy", c)
        return tmp_path / "c.npy", opts
    if kind == "npz":
        np.savez(tmp_path / "c.npz", patterns=c)
        return tmp_path / "c.npz", opts
    if kind in ("h5", "emd"):
        with h5py.File(tmp_path / f"c.{kind}", "w") as f:
            f["data/patterns"] = c
        return tmp_path / f"c.{kind}", opts
    if kind == "cxi":
        with h5py.File(tmp_path / "c.cxi", "w") as f:
            f["entry_1/data_1/data"] = c.reshape(16, 8, 8)
        return tmp_path / "c.cxi", opts
    if kind == "mat":
        import scipy.io

        scipy.io.savemat(tmp_path / "c.mat", {"dp": np.moveaxis(c.reshape(16, 8, 8), 0, -1)})
        return tmp_path / "c.mat", opts
    c.tofile(tmp_path / "c.raw")
    return tmp_path / "c.raw", {**opts, "shape": (4, 4, 8, 8), "dtype": "complex64"}


@pytest.mark.parametrize("kind", ["npy", "npz", "h5", "emd", "cxi", "mat", "raw"])
def test_every_reader_refuses_complex_patterns(kind, tmp_path, recwarn):
    path, opts = _complex_file(tmp_path, kind)
    with pytest.raises(InputFileError, match=r"complex patterns \(complex64\)") as err:
        io.load(path, **opts)
    assert path.name in str(err.value)
    assert not [w for w in recwarn if "Complex" in type(w.message).__name__]


def test_learned_route_refuses_complex_training_file(tmp_path):
    from phasestem.learn.data import SampleIndex

    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["dp_set_0"] = np.ones((12, 12, 16, 16), np.complex64)
        f["phase_0"] = np.zeros((48, 48), np.float32)
    with pytest.raises(InputFileError, match=r"c\.h5: 'dp_set_0' holds complex64"):
        SampleIndex.from_paths([tmp_path / "c.h5"], block=6, stride=3, patch=24)


# --------------------------------------------------------------------------------- 13: HDF5 read by memory
def test_hdf5_read_whole_only_when_memory_allows(tmp_path, monkeypatch):
    import phasestem.io.hdf5 as h5mod

    arr = np.random.default_rng(0).poisson(5.0, (6, 6, 16, 16)).astype(np.uint16)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["data"] = arr
    monkeypatch.setattr(h5mod, "available_memory", lambda: 1 << 40)
    eager = io.load(tmp_path / "scan.h5", energy=3e5, scan_step=1.0)
    assert isinstance(eager.patterns, np.ndarray) and eager.patterns.dtype == np.float32
    monkeypatch.setattr(h5mod, "available_memory", lambda: 4 * arr.size * 4 - 1)  # float32 copy > a quarter
    lazy = io.load(tmp_path / "scan.h5", energy=3e5, scan_step=1.0)
    assert isinstance(lazy.patterns, h5py.Dataset)
    np.testing.assert_array_equal(np.asarray(lazy.patterns[...], np.float32), eager.patterns)
    np.testing.assert_array_equal(eager.patterns, arr.astype(np.float32))


def test_hdf5_eager_read_holds_one_float32_copy(tmp_path):
    arr = np.ones((8, 8, 64, 64), np.float64)  # 2 MiB as float64, 1 MiB as float32
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["data"] = arr
    tracemalloc.start()
    try:
        ds = io.load(tmp_path / "scan.h5", energy=3e5, scan_step=1.0, lazy=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(ds.patterns, np.ndarray) and ds.patterns.dtype == np.float32
    assert peak < 0.8 * arr.nbytes, peak  # reading as float64 and then converting would peak at 1.5x


def test_predict_from_a_lazy_file_equals_the_eager_read(models):
    from phasestem.learn.apply.phase import load_predictor, predict_phase

    model, meta = load_predictor(models["e2e"])
    lazy = io.load(models["sim"], sample=1, lazy=True)
    assert isinstance(lazy.patterns, h5py.Dataset)
    eager = io.load(models["sim"], sample=1, lazy=False)
    np.testing.assert_array_equal(predict_phase(model, meta, lazy), predict_phase(model, meta, eager))


# --------------------------------------------------------------------------------- 14: one line naming the file
def _broken_inputs(tmp_path: Path) -> list[Path]:
    np.save(tmp_path / "ok.npy", np.ones((4, 4, 8, 8), np.float32))
    np.savez(tmp_path / "ok.npz", patterns=np.ones((4, 4, 8, 8), np.float32))
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f["data"] = np.ones((4, 4, 8, 8), np.float32)
    out = []
    for name in ("ok.npy", "ok.npz", "ok.h5"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"trunc_{name}").write_bytes(data[: len(data) // 3])
        (tmp_path / f"empty_{name}").write_bytes(b"")
        out += [tmp_path / f"trunc_{name}", tmp_path / f"empty_{name}"]
    (tmp_path / "folder.h5").mkdir()
    return [*out, tmp_path / "folder.h5"]


def test_broken_inputs_give_one_line_naming_the_file(tmp_path, capsys):
    for path in _broken_inputs(tmp_path):
        with pytest.raises(InputFileError, match=path.name):
            io.load(path, energy=3e5, scan_step=1.0)
        assert main(["inspect", str(path), "--energy", "3e5", "--scan-step", "1", "--out",
                     str(tmp_path / "x.png")]) == 1
        err = _one_error_line(capsys, path.name)
        if path.is_dir():
            assert "is a folder" in err and "extension" not in err
        elif path.stat().st_size == 0:
            assert "is empty" in err


def test_refine_broken_image_gives_one_line(models, tmp_path, capsys):
    (tmp_path / "empty.npy").write_bytes(b"")
    assert main(["refine", str(tmp_path / "empty.npy"), "--model", str(models["pf"]), "--out-file",
                 str(tmp_path / "r.h5")]) == 1
    _one_error_line(capsys, "empty.npy")


# --------------------------------------------------------------------------------- 15: no stray temporary files
def test_predict_out_folder_is_refused_without_leftovers(models, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    assert main(["predict", str(models["sim"]), "--sample", "0", "--model", str(models["e2e"]), "--out-file", str(out),
                 "--no-png"]) == 1
    _one_error_line(capsys, "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not any(out.iterdir())


def test_atomic_file_removes_the_temporary_file_on_failure(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"] and target.read_bytes() == b"whole"


def test_evaluate_of_another_scan_shape_is_refused_up_front_like_predict(models, tmp_path, capsys):
    """Issue 24, item 9: evaluate on files of another scan shape failed only at the metric step with a bare shape
    message; like predict it now refuses before reading any sample, in one line naming the file."""
    from phasestem.learn.data import write_synthetic_file

    other = write_synthetic_file(tmp_path / "sim10.h5", 1, **{**GEO, "scan": 10})
    assert main(["predict", str(other), "--model", str(models["e2e"]), "--out-file", str(tmp_path / "p.h5")]) == 1
    predicted = _one_error_line(capsys, "differs from the training scan")
    assert main(["evaluate", "--model", str(models["e2e"]), "--files", str(other), "--out",
                 str(tmp_path / "eval")]) == 1
    line = _one_error_line(capsys, "sim10.h5", "scan (10, 10) differs from the training scan (12, 12)")
    assert predicted.split("differs")[1] == line.split("differs")[1]  # the same sentence
    assert not (tmp_path / "eval").exists()
