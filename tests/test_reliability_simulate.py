"""Issue 12 for simulate, tune and the config loader: the folder lock, the run's own file namespace, the output
folder and size guards, memory limits, replacing a failed run's stamp, tune's order of checks, ``--set`` tags."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from held_output import PHASESTEM, assert_refused_naming, second_while_held

from phasestem import cli
from phasestem.base.errors import ConfigError, InputFileError, PhasestemError
from phasestem.base.lock import LOCK_NAME
from phasestem.simulate import budget, load_config, simulate_dataset, simulate_sample
from phasestem.simulate import writer as sim_writer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "simulate_tiny.yaml"


def tiny_yaml(tmp_path: Path, name: str = "sim.yaml", **fields) -> Path:
    """configs/simulate_tiny.yaml with ``section__key=value`` changes, one file × one sample unless told."""
    data = yaml.safe_load(TINY.read_text())
    data["output"].update(n_files=1, samples_per_file=1)
    for key, value in fields.items():
        sec, _, field = key.partition("__")
        data.setdefault(sec, {})[field] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ---- item 1: two runs into one folder -----------------------------------------------------------------------
def test_second_simulate_process_is_refused_naming_the_holder_and_the_first_finishes(tmp_path):
    cfg_path = tiny_yaml(tmp_path, output__n_files=2, output__samples_per_file=2)
    out = tmp_path / "out"
    cmd = [*PHASESTEM, "simulate", str(cfg_path), "--out", str(out)]
    first, second, holder = second_while_held(cmd, cmd, out / LOCK_NAME)
    assert_refused_naming(second, holder, "phasestem simulate")
    assert first.returncode == 0, first.stderr
    cfg = load_config(cfg_path)
    for k, indices in ((1, (0, 1)), (2, (2, 3))):
        with h5py.File(out / f"simulation_data{k}.h5", "r") as f:
            assert sorted(f) == sorted(f"{n}_{i}" for i in indices for n in ("dp_set", "phase", "potential"))
            i = indices[-1]
            ref = simulate_sample(cfg, i)
            np.testing.assert_array_equal(f[f"dp_set_{i}"][...], ref["patterns"])
            np.testing.assert_array_equal(f[f"phase_{i}"][...], ref["phase"])
    # the lock went with the first process: a third run gets the folder and finds nothing left to do
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


# ---- item 3: the run touches only its own temporary names ----------------------------------------------------
def test_user_partial_files_survive_and_only_the_runs_own_temporaries_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.partial").write_text("mine")
    (out / "simulation_data1.h5.partial").write_text("also mine")
    stale = out / ".phasestem-simulation_data1.h5.partial"  # what a killed run of this folder leaves
    stale.write_text("torn")
    simulate_dataset(load_config(tiny_yaml(tmp_path)), out, progress=False)
    assert (out / "notes.partial").read_text() == "mine"
    assert (out / "simulation_data1.h5.partial").read_text() == "also mine"
    assert not stale.exists()
    assert (out / "simulation_data1.h5").is_file()


def test_a_torn_work_sample_is_simulated_again_instead_of_breaking_every_resume(tmp_path):
    cfg = load_config(tiny_yaml(tmp_path, output__samples_per_file=2))
    out = tmp_path / "out"
    out.mkdir()
    sim_writer._check_out(cfg, out)  # the stamp of this config, as a run writes it first
    (out / ".work" / "sample_0000000.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(88))  # 96 bytes, "committed"
    files = simulate_dataset(cfg, out, progress=False)
    with h5py.File(files[0], "r") as f:
        np.testing.assert_array_equal(f["dp_set_0"][...], simulate_sample(cfg, 0)["patterns"])


# ---- item 11: output folder required, default size needs --yes ------------------------------------------------
@pytest.fixture
def fake_run(monkeypatch):
    """Record simulate_dataset calls instead of simulating."""
    calls = []

    def fake(cfg, out, progress=True, restart=False):
        calls.append((cfg, Path(out)))
        return []

    monkeypatch.setattr(sim_writer, "simulate_dataset", fake)
    return calls


def test_empty_config_without_out_is_refused_in_one_line(tmp_path, monkeypatch, capsys, fake_run):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert cli.main(["simulate", str(empty)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "no output folder" in err
    assert fake_run == [] and not (tmp_path / "simulated").exists()


def test_default_output_size_needs_yes_and_says_what_it_writes(tmp_path, capsys, fake_run):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = tmp_path / "big"
    assert cli.main(["simulate", str(empty), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "3,500 samples in 5 files" in err and "145 GB" in err and "--yes" in err
    assert fake_run == [] and not out.exists()
    assert cli.main(["simulate", str(empty), "--out", str(out), "--yes"]) == 0
    assert len(fake_run) == 1 and fake_run[0][1] == out
    # an explicit output size, or 'out' in the config, needs neither
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"out": str(tmp_path / "from_config"), "output": {"n_files": 1}}))
    assert cli.main(["simulate", str(small)]) == 0
    assert fake_run[-1][1] == tmp_path / "from_config"


# ---- item 12: sizes validated and memory estimated before allocating ------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("scan__shape", [0, 8], "scan.shape: both values must be positive"),
    ("detector__shape", [-32, 32], "detector.shape: both values must be positive"),
    ("grid__sim_gpts", [0, 128], "grid.sim_gpts: both values must be positive"),
    ("grid__phase_gpts", [64, 0], "grid.phase_gpts: both values must be positive"),
    ("specimen__depth", [8.0, 5.0], "specimen.depth: must be"),
    ("output__prefix", "../elsewhere", "output.prefix: must be a plain file name prefix"),
    ("optics__energy", float("inf"), "optics.energy: Input should be a finite number"),
])
def test_bad_sizes_are_refused_naming_the_field(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tiny_yaml(tmp_path, **{field: value}))


def test_huge_grid_is_refused_with_the_estimate_before_anything_is_written(tmp_path, capsys):
    cfg_path = tiny_yaml(tmp_path, grid__sim_gpts=[1e6, 1e6], grid__phase_gpts=[1000, 1000])
    out = tmp_path / "out"
    assert cli.main(["simulate", str(cfg_path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "grid.sim_gpts (1000000, 1000000)" in err and "TB" in err and "available" in err
    assert not out.exists()


def test_memory_check_names_the_part_that_does_not_fit(tmp_path, monkeypatch):
    cfg = load_config(tiny_yaml(tmp_path))
    est = budget.sample_memory(cfg)
    monkeypatch.setattr(budget, "available_host_memory", lambda: est.total // 2)
    with pytest.raises(ConfigError, match=r"lower grid.sim_gpts \(128, 128\)"):
        simulate_dataset(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    big_scan = load_config(tiny_yaml(tmp_path, scan__shape=[400, 400]))
    monkeypatch.setattr(budget, "available_host_memory", lambda: budget.sample_memory(big_scan).total - 1)
    with pytest.raises(ConfigError, match=r"\(patterns: .*lower scan.shape \(400, 400\)"):
        budget.check_memory(big_scan)
    # on a GPU the grid part is compared with the device's free memory
    gpu = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"device": "cuda"})})
    monkeypatch.setattr(budget, "available_device_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match="on cuda .* is free there; lower grid.sim_gpts"):
        budget.check_memory(gpu)


PEAK_SCRIPT = """
import json, sys
import phasestem.simulate.scan, phasestem.physics.specimen  # the libraries a sample uses, loaded before the baseline
from phasestem.simulate import budget, load_config, simulate_sample
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
cfg = load_config(sys.argv[1])
base = status("VmRSS")
simulate_sample(cfg, 0)
peak = status("VmHWM")  # this process's own high-water mark (ru_maxrss keeps the parent's RSS across fork+exec)
print(json.dumps({"added": peak - base, "estimate": budget.sample_memory(cfg).total}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_memory_estimate_bounds_the_measured_peak_of_one_sample(tmp_path):
    """Upper-side but not absurd: the estimate covers the resident memory a fresh process adds for one
    sample (measured, grid 256², 2 phonons) and is within 4× of it."""
    cfg_path = tiny_yaml(tmp_path, grid__sim_gpts=[256, 256], grid__phase_gpts=[128, 128], grid__extent=[50.0, 50.0],
                         scan__shape=[4, 4], specimen__phonons=2)
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(cfg_path)], capture_output=True, text=True,
                          timeout=300, check=True)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["added"] <= r["estimate"] <= 4 * r["added"], r


def test_reconstruction_probe_modes_are_bounded():
    from phasestem.recon.params import parse_params

    data = yaml.safe_load((ROOT / "configs" / "reconstruct_tiny.yaml").read_text())
    data.setdefault("model", {})["n_probe_modes"] = 1e6
    with pytest.raises(ConfigError, match="model.n_probe_modes: Input should be less than or equal to 64"):
        parse_params(data, "params.yaml")


# ---- item 15: a failed stamp, --restart ------------------------------------------------------------------------
def test_failed_run_without_samples_does_not_block_a_corrected_config(tmp_path):
    out = tmp_path / "out"
    bad = load_config(tiny_yaml(tmp_path, "bad.yaml", optics__semiangle=60.0))  # beyond the band limit
    with pytest.raises(ValueError, match="band limit"):
        simulate_dataset(bad, out, progress=False)
    assert (out / ".work" / "config.yaml").exists()
    good = load_config(tiny_yaml(tmp_path, "good.yaml"))
    files = simulate_dataset(good, out, progress=False)
    with h5py.File(files[0], "r") as f:
        assert f.attrs["config"] == good.results_yaml()


def test_run_with_committed_samples_is_kept_unless_restart_deletes_only_its_own_files(tmp_path, monkeypatch,
                                                                                      capsys):
    from phasestem.simulate import scan

    first = tiny_yaml(tmp_path, "first.yaml", output__samples_per_file=2)
    real = scan.simulate_sample

    def fail_after_first(cfg, index, progress=False):
        if index > 0:
            raise RuntimeError("interrupted")
        return real(cfg, index, progress)

    monkeypatch.setattr(scan, "simulate_sample", fail_after_first)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        simulate_dataset(load_config(first), out, progress=False)
    monkeypatch.setattr(scan, "simulate_sample", real)
    assert (out / ".work" / "sample_0000000.h5").exists()
    (out / "mine.txt").write_text("keep")
    second = tiny_yaml(tmp_path, "second.yaml", compute__seed=8)
    assert cli.main(["simulate", str(second), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "1 sample(s) and 0 file(s) done" in err and "--restart" in err and "another --out" in err
    assert (out / ".work" / "sample_0000000.h5").exists()
    assert cli.main(["simulate", str(second), "--out", str(out), "--restart"]) == 0
    cfg = load_config(second)
    with h5py.File(out / "simulation_data1.h5", "r") as f:
        assert f.attrs["config"] == cfg.results_yaml()
        np.testing.assert_array_equal(f["dp_set_0"][...], simulate_sample(cfg, 0)["patterns"])
    assert (out / "mine.txt").read_text() == "keep"
    assert not (out / ".work").exists()


def test_tune_checks_the_data_before_creating_its_study(tmp_path):
    pytest.importorskip("optuna")
    from phasestem.recon.params import parse_params
    from phasestem.recon.tune import run_tuning

    data = yaml.safe_load((ROOT / "configs" / "reconstruct_tiny.yaml").read_text())
    data["data"]["file"] = str(tmp_path / "missing.h5")
    data["tune"] = {"n_trials": 1, "C10": {"low": -10.0, "high": 10.0}}
    params = parse_params(data, "params.yaml")
    out = tmp_path / "tune"
    with pytest.raises(InputFileError, match="missing.h5"):
        run_tuning(params, out)
    assert not (out / "tune.db").exists()


# ---- item 14 (part): --set with a YAML tag --------------------------------------------------------------------
def test_set_with_a_yaml_tag_is_one_line(tmp_path, capsys):
    cfg = ROOT / "configs" / "train_autoencoder_tiny.yaml"
    rc = cli.main(["train", "autoencoder", str(cfg), "--set", "trainer.lr=!!python/object/apply:os.system [id]"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--set trainer.lr: not a plain YAML value" in err and "python/object/apply:os.system" in err


def test_set_into_a_value_is_one_line():
    from phasestem.base.configfile import apply_overrides

    with pytest.raises(PhasestemError, match="trainer: is a value, not a section"):
        apply_overrides({"trainer": 5}, {"trainer.lr": 1.0})
