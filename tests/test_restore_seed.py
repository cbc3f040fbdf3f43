"""The shipped restorer ``restore-seed`` (issue 48) offline, by name, on a file ``phasestem simulate`` writes at the
user's seed-000 geometry (configs/simulate_seed.yaml on a 20 Å cell: the same probe, pixels, step, 64² patterns and
detector sampling, which the model checks): ``reconstruct --prior restore-seed`` and ``restore`` both run, and a
corrupted copy of the model is one line."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("restore_seed")
    cfg = yaml.safe_load((ROOT / "configs" / "simulate_seed.yaml").read_text())
    cfg["grid"] = {"extent": [20.0, 20.0], "sim_gpts": [102, 102], "phase_gpts": [51, 51]}  # 0.984 mrad kept
    cfg["scan"] = {"shape": [10, 10], "step": [2.0, 2.0]}
    cfg["specimen"]["phonons"] = 1
    cfg["output"] = {**cfg["output"], "n_files": 1, "samples_per_file": 1}
    (tmp / "sim.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["simulate", str(tmp / "sim.yaml"), "--out", str(tmp / "data")]) == 0
    params = {"data": {"file": str(tmp / "data" / "simulation_data1.h5")},  # noise-free: a stated noise for σ
              "run": {"n_epochs": 4, "progress": False, "noise_sigma": 1e-3},
              "model": {"upsampling": 1}}  # restore-seed restores AD phases at the detector's pixel, 0.3125 Å
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def test_reconstruct_with_the_shipped_prior_and_restore_by_name(seed_run, capsys):
    params, run = seed_run / "params.yaml", seed_run / "prior"
    assert main(["reconstruct", str(params), "--out", str(run), "--prior", "restore-seed", "--prior-every", "1",
                 "--prior-start", "1", "--prior-weight", "0.5"]) == 0
    with h5py.File(run / "results.h5") as f:
        weights, returned = list(f["loss/prior_weight"][...]), int(f.attrs["epoch"])
        assert int(f["provenance/prior.returned_epoch"].attrs["value"]) == returned
    # the weight decays × 0.9 per refresh; the run returns its epoch with the lowest data loss (issue 68)
    assert weights == pytest.approx([0.5 * 0.9**n for n in range(returned)])
    text = (run / "reconstruct.log").read_text()
    assert "learned prior (restorer restore-seed): target after epoch 1" in text
    assert (f"learned prior: returned the state after epoch {returned} of 4 run" in text
            or f"learned prior: epoch {returned}, the last, has the lowest data loss" in text)
    prior_line = next(line for line in (run / "reconstruct.log").read_text().splitlines() if "its last target" in line)
    assert "learned prior: its last target differs from the final phase by more than 3 σ of the data on" in (
        prior_line) and "(0.27 % would be chance" in prior_line  # judged against the run's σ map (issue 53)
    out = seed_run / "restored.h5"
    assert main(["restore", str(run / "results.h5"), "--model", "restore-seed", "--out-file", str(out)]) == 0
    with h5py.File(out) as f:
        phase, inp = f["phase"][...], f["input"][...]
    assert np.isfinite(phase).all() and phase.shape == inp.shape
    assert np.abs(phase - inp).max() > 1e-3  # a trained restorer changes the phase (an untrained one returns it)
    # the change judged against the run's σ map (issue 53): in σ units over the scanned field, NaN outside it
    with h5py.File(out) as f:
        change, field = f["change_sigma"][...], f["field"][...]
    assert change.shape == phase.shape and np.isfinite(change[field > 0]).all() and np.isnan(change[field == 0]).all()
    assert "the restorer changed" in capsys.readouterr().out


def test_a_corrupted_shipped_restorer_is_one_line(seed_run, tmp_path, monkeypatch, capsys):
    from phasestem.learn.pretrained import model_dir

    for name in ("models.json", "restore-seed.safetensors"):
        data = (model_dir() / name).read_bytes()
        (tmp_path / name).write_bytes(data[:-64] if name.endswith(".safetensors") else data)
    monkeypatch.setenv("PHASESTEM_MODEL_DIR", str(tmp_path))
    capsys.readouterr()
    assert main(["restore", str(seed_run / "prior" / "results.h5"), "--model", "restore-seed", "--out-file",
                 str(tmp_path / "x.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "restore-seed" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.h5").exists()


def test_the_benchmark_geometry_restorer_runs_by_name_on_its_geometry_only(seed_run, tmp_path, capsys):
    """``restore-bench`` (15 mrad, C10 100 Å, 1.18 mrad: benchmarks/learned/restore_bench.yaml, a 6 × 6 scan on its
    50 Å cell) restores a run at its geometry, and refuses a run at the seed-000 geometry in one line."""
    cfg = yaml.safe_load((ROOT / "benchmarks" / "learned" / "restore_bench.yaml").read_text())
    cfg["scan"] = {"shape": [6, 6], "step": [2.0, 2.0]}
    cfg["specimen"]["phonons"] = 1
    cfg["output"] = {**cfg["output"], "n_files": 1, "samples_per_file": 1}
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["simulate", str(tmp_path / "sim.yaml"), "--out", str(tmp_path / "data")]) == 0
    params = {"data": {"file": str(tmp_path / "data" / "simulation_data1.h5")},
              "run": {"n_epochs": 2, "progress": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["reconstruct", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "restored.h5"
    assert main(["restore", str(tmp_path / "run" / "results.h5"), "--model", "restore-bench", "--out-file",
                 str(out)]) == 0
    with h5py.File(out) as f:
        phase, inp = f["phase"][...], f["input"][...]
    assert np.isfinite(phase).all() and np.abs(phase - inp).max() > 1e-3
    capsys.readouterr()
    assert main(["restore", str(seed_run / "prior" / "results.h5"), "--model", "restore-bench", "--out-file",
                 str(tmp_path / "wrong.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "restore-bench" in err and len(err.splitlines()) == 1, err


def test_the_point_defect_restorer_runs_by_name_at_the_seed_geometry_and_says_what_it_is(seed_run, capsys, caplog):
    """``restore-seed-defects`` (trained on the CPU alone, with vacancies) restores the seed geometry's run by name;
    choosing either seed restorer logs what a user must know about missing columns."""
    out = seed_run / "restored_defects.h5"
    with caplog.at_level("WARNING", logger="phasestem"):
        assert main(["restore", str(seed_run / "prior" / "results.h5"), "--model", "restore-seed-defects",
                     "--out-file", str(out)]) == 0
    with h5py.File(out) as f:
        phase, inp = f["phase"][...], f["input"][...]
    assert np.isfinite(phase).all() and np.abs(phase - inp).max() > 1e-3
    assert "a removed column stays absent" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="phasestem"):
        assert main(["restore", str(seed_run / "prior" / "results.h5"), "--model", "restore-seed", "--out-file",
                     str(seed_run / "restored_again.h5")]) == 0
    assert "fills in a missing atomic column" in caplog.text and "restore-seed-defects" in caplog.text


def test_a_default_run_at_the_seed_geometry_restores_with_the_fine_grid_restorer(seed_run, capsys, caplog):
    """``reconstruct``'s defaults put the seed geometry on the finer grid (model.upsampling auto → 2, issue 69):
    ``restore-seed-fine`` restores that run by name and says what it is for; ``restore-seed`` (the detector's grid)
    refuses it in one line naming the pixel."""
    params = yaml.safe_load((seed_run / "params.yaml").read_text())
    params["model"] = {}
    params["run"]["n_epochs"] = 2
    (seed_run / "params_default.yaml").write_text(yaml.safe_dump(params))
    run = seed_run / "default"
    assert main(["reconstruct", str(seed_run / "params_default.yaml"), "--out", str(run)]) == 0
    out = seed_run / "restored_fine.h5"
    with caplog.at_level("WARNING", logger="phasestem"):
        assert main(["restore", str(run / "results.h5"), "--model", "restore-seed-fine", "--out-file", str(out)]) == 0
    with h5py.File(out) as f:
        phase, inp = f["phase"][...], f["input"][...]
    assert np.isfinite(phase).all() and np.abs(phase - inp).max() > 1e-3
    assert "finer grid" in caplog.text or "model.upsampling" in caplog.text
    capsys.readouterr()
    assert main(["restore", str(run / "results.h5"), "--model", "restore-seed", "--out-file",
                 str(seed_run / "refused.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "restore-seed" in err, err
