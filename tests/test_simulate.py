"""Simulation: seed layout round trip, resume after SIGKILL, Dask sharding, bad input, band limit."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from phasestem import io
from phasestem.base.errors import ConfigError, InputFileError, ShapeError
from phasestem.physics.optics import interaction_constant
from phasestem.simulate import load_config, simulate_dataset, simulate_sample

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "simulate_tiny.yaml"


def tiny_config(tmp_path: Path, **sections) -> Path:
    data = yaml.safe_load(TINY.read_text())
    for key, value in sections.items():
        sec, _, field = key.partition("__")
        data.setdefault(sec, {})[field] = value
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _contents(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
        for k in f:
            out[k] = (f[k][...], {a: (v.tolist() if hasattr(v, "tolist") else v) for a, v in f[k].attrs.items()})
    return out


def _assert_same_files(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys()
    for k in ca:
        if k == "attrs":
            assert ca[k] == cb[k]
        else:
            np.testing.assert_array_equal(ca[k][0], cb[k][0])
            assert ca[k][1] == cb[k][1]


def test_tiny_config_writes_seed_layout_and_reader_returns_same_arrays(tmp_path):
    cfg = load_config(tiny_config(tmp_path))
    files = simulate_dataset(cfg, tmp_path / "out", progress=False)
    assert [p.name for p in files] == ["simulation_data1.h5", "simulation_data2.h5"]
    assert not (tmp_path / "out" / ".work").exists()
    with h5py.File(files[1], "r") as f:
        assert sorted(f.keys()) == ["dp_set_2", "dp_set_3", "phase_2", "phase_3", "potential_2", "potential_3"]
        assert f["dp_set_2"].shape == (8, 8, 32, 32) and f["dp_set_2"].chunks == (5, 5, 32, 32)
        assert f["dp_set_2"].compression == "gzip"
        assert f.attrs["format"] == "phasestem-seed000" and f.attrs["first_sample"] == 2
        np.testing.assert_allclose(f["phase_3"][...], f["potential_3"][...] * interaction_constant(300e3), rtol=1e-6)
    again = simulate_sample(cfg, 3)
    ds = io.load(files[1], sample=3)
    np.testing.assert_array_equal(np.asarray(ds.patterns), again["patterns"])
    np.testing.assert_array_equal(ds.truth["phase"], again["phase"])
    assert ds.scan_shape == (8, 8) and ds.energy == 300e3 and ds.scan_step == (3.2, 3.2)
    # each noise-free pattern holds (nearly) the whole beam
    assert 0.8 < float(np.asarray(ds.patterns).sum((-2, -1)).min()) <= 1.01


def test_sigkill_mid_run_then_rerun_gives_identical_files(tmp_path):
    cfg_path = tiny_config(tmp_path, output__n_files=2, output__samples_per_file=3)
    ref = simulate_dataset(load_config(cfg_path), tmp_path / "ref", progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "phasestem.cli", "simulate", str(cfg_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / ".work").glob("sample_*.h5"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "simulation_data2.h5").exists()  # nothing incomplete looks complete
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for a in ref:
        b = out / a.name
        _assert_same_files(a, b)
        assert a.read_bytes() == b.read_bytes()


def test_two_dask_workers_give_the_same_files_as_one_process(tmp_path):
    cfg_path = tiny_config(tmp_path)
    one = simulate_dataset(load_config(cfg_path), tmp_path / "one", progress=False)
    two = simulate_dataset(load_config(cfg_path, {"compute.workers": 2}), tmp_path / "two", progress=False)
    for a, b in zip(one, two, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_bad_input_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(InputFileError, match="nope.h5: no such file"):
        io.load(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data/frames"] = np.zeros((10, 8, 8), np.float32)
        f["other"] = np.zeros((3, 3, 8, 8), np.float32)
    with pytest.raises(InputFileError, match="no dataset 'frames' \\(patterns_key\\).*data/frames"):
        io.load(tmp_path / "d.h5", patterns_key="frames", energy=3e5, scan_step=1.0)
    with pytest.raises(ShapeError, match=r"holds 10 patterns but scan_shape 3×3 needs 9"):
        io.load(tmp_path / "d.h5", patterns_key="data/frames", energy=3e5, scan_step=1.0, scan_shape=(3, 3))
    with pytest.raises(InputFileError, match="give patterns_key: several"):
        io.load(tmp_path / "d.h5")
    with pytest.raises(ConfigError, match="detector.dose: .*must be positive"):
        load_config(tiny_config(tmp_path, detector__dose=-5.0))
    with pytest.raises(ConfigError, match="scan.shap: unknown key"):
        load_config(tiny_config(tmp_path, scan__shap=[3, 3]))
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="band limit|detector.shape"):
        cfg = load_config(tiny_config(tmp_path, detector__shape=[512, 512]))
        simulate_dataset(cfg, out, progress=False)
    assert not list(out.glob("*.h5"))


def test_probe_beyond_band_limit_is_refused_by_the_simulator(tmp_path):
    cfg = load_config(tiny_config(tmp_path, optics__semiangle=60.0))
    with pytest.raises(ValueError, match="exceeds the anti-aliased band limit"):
        simulate_sample(cfg, 0)
    seed = load_config(None)  # the seed defaults simulate on a grid that holds the 30 mrad probe
    assert seed.optics.semiangle == 30.0 and seed.grid.sim_gpts == (512, 512) and seed.grid.phase_gpts == (256, 256)
    assert seed.output.n_files == 5 and seed.output.samples_per_file == 700 and seed.scan.shape == (50, 50)


def test_original_generator_files_are_read_with_sigma_conversion(tmp_path):
    rng = np.random.default_rng(0)
    pot = rng.uniform(0, 100, (256, 256)).astype(np.float32)
    with h5py.File(tmp_path / "simulation_data1.h5", "w") as f:
        f["dp_set_0"] = rng.uniform(size=(50, 50, 16, 16)).astype(np.float32)
        f["phase_0"] = pot
    ds = io.load(tmp_path / "simulation_data1.h5", energy=200e3)
    np.testing.assert_allclose(ds.truth["phase"], pot * interaction_constant(200e3), rtol=1e-6)
    assert "projected potential" in ds.metadata["phase_target"]
    assert ds.scan_shape == (50, 50) and ds.scan_step == (2.0, 2.0)


@pytest.mark.parametrize("shape", [(10, 10, 16, 16), (7, 6, 8, 8)])  # whole chunks; edge chunks padded
def test_parallel_chunk_compression_writes_what_h5py_gzip_shuffle_writes(tmp_path, shape):
    from phasestem.simulate.writer import write_chunked

    rng = np.random.default_rng(0)
    data = (rng.random(shape, dtype=np.float32) * np.exp(-8 * rng.random(shape, dtype=np.float32)))
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        write_chunked(f, "x", data, (5, 5, *shape[2:]), 4)
    with h5py.File(tmp_path / "h5py.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(5, 5, *shape[2:]), compression="gzip", compression_opts=4,
                         shuffle=True)
    with h5py.File(tmp_path / "ours.h5", "r") as a, h5py.File(tmp_path / "h5py.h5", "r") as b:
        assert (a["x"].compression, a["x"].compression_opts, a["x"].shuffle) == ("gzip", 4, True)
        np.testing.assert_array_equal(a["x"][...], data)  # any HDF5 reader decodes our raw chunks
        for i in range(a["x"].id.get_num_chunks()):  # byte for byte the chunks h5py's own filters write
            ca, cb = a["x"].id.get_chunk_info(i), b["x"].id.get_chunk_info(i)
            assert ca.chunk_offset == cb.chunk_offset
            assert a["x"].id.read_direct_chunk(ca.chunk_offset) == b["x"].id.read_direct_chunk(cb.chunk_offset)


def test_dask_workers_spread_over_the_gpus_of_their_machine():
    from phasestem.simulate.writer import gpu_for_worker, worker_device

    assert [gpu_for_worker("cuda", k, 4) for k in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3",
                                                                 "cuda:0", "cuda:1"]  # LocalCluster names 0 … N−1
    assert gpu_for_worker("cuda", "tcp://node3:4321-2", 4) == "cuda:2"  # `dask worker --nworkers N` names …-k
    assert gpu_for_worker("cuda", "alice", 4) == "cuda"  # no number in the name: as given
    assert gpu_for_worker("cuda:1", 0, 4) == "cuda:1"  # an explicit GPU is kept
    assert gpu_for_worker("cuda", 3, 1) == "cuda"  # one GPU
    assert gpu_for_worker("cpu", 3, 4) == "cpu"
    assert worker_device("cuda") == "cuda"  # outside a Dask worker: unchanged


def test_vacancies_leave_every_other_draw_alone_and_are_recorded(tmp_path):
    """``specimen.vacancies: 0`` (the default) simulates exactly what a config without the key does; a rate > 0
    takes atoms out of the same specimen and records the sites."""
    plain = simulate_sample(load_config(tiny_config(tmp_path)), 0)
    zero = simulate_sample(load_config(tiny_config(tmp_path, specimen__vacancies=0.0)), 0)
    np.testing.assert_array_equal(plain["patterns"], zero["patterns"])
    assert "vacancies" not in zero["attrs"]
    holes = simulate_sample(load_config(tiny_config(tmp_path, specimen__vacancies=3.0)), 0)
    sites = holes["attrs"]["vacancies"]
    assert sites.ndim == 2 and sites.shape[1] == 2 and len(sites) > 0
    assert holes["attrs"]["n_atoms"] < plain["attrs"]["n_atoms"]
    assert holes["attrs"]["specimen"] == plain["attrs"]["specimen"]  # the same crystal, columns taken out
