"""End-to-end CLI of the autoencoder / Phaseformer route on a tiny simulated file:
train autoencoder → embed (+ report), make-pairs → train phaseformer → resume → refine."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.cli import main


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    from phasestem.learn.data import write_synthetic_file

    path = tmp_path_factory.mktemp("sim") / "simulation_data1.h5"
    return write_synthetic_file(path, 4, scan=6, window=32, phase_px=64, extent=32.0)


def _yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_autoencoder_train_embed_cli(tmp_path, sim_file, one_thread, capsys):
    cfg = _yaml(tmp_path / "ae.yaml", {
        "network": "autoencoder", "out_dir": str(tmp_path / "ae"),
        "data": {"files": [str(sim_file)], "patterns_per_scan": 16, "batch_size": 8, "val_fraction": 0.25},
        "model": {"channels": 8, "decoder_blocks": 1},
        "trainer": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False, "lr": 2e-3},
    })
    assert main(["train", "autoencoder", cfg]) == 0
    assert (tmp_path / "ae" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "ae" / "config.yaml").is_file()
    out = tmp_path / "latent.h5"
    assert main(["embed", str(sim_file), "--sample", "2", "--checkpoint", str(tmp_path / "ae"), "--out", str(out),
                 "--report", "6", "--summary"]) == 0
    with h5py.File(out) as f:
        maps = f["latent_maps"][()]
    assert maps.shape == (32, 6, 6) and np.isfinite(maps).all() and (maps >= 0).all()
    assert out.with_suffix(".png").is_file() and (tmp_path / "latent_comparison.png").is_file()
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "parameters: total" in printed
    # the wrong network's config is refused with one line
    assert main(["train", "phaseformer", cfg]) == 1
    assert "autoencoder" in capsys.readouterr().err


def test_phaseformer_pairs_train_resume_refine_cli(tmp_path, sim_file, one_thread):
    pairs = tmp_path / "pairs.h5"
    assert main(["make-pairs", str(sim_file), "--out", str(pairs), "--copies", "2"]) == 0
    with h5py.File(pairs) as f:
        assert f["input"].shape == f["gt"].shape == (8, 64, 64)
    data = {
        "network": "phaseformer", "out_dir": str(tmp_path / "pf"),
        "data": {"train": [str(sim_file), str(pairs)], "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"dim": 8, "blocks": [1, 1, 1, 1], "heads": [1, 1, 2, 2], "refinement_blocks": 1},
        "loss": {"components": ["charbonnier", "gradient"]},
        "trainer": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False},
    }
    cfg = _yaml(tmp_path / "pf.yaml", data)
    assert main(["train", "phaseformer", cfg]) == 0
    assert main(["train", "phaseformer", cfg, "--set", "trainer.epochs=2", "--resume"]) == 0
    rows = (tmp_path / "pf" / "epochs.csv").read_text().splitlines()
    assert len(rows) == 3 and "val/psnr_identity" in rows[0] and "train/wL/charbonnier" in rows[0]
    coarse = tmp_path / "coarse.npy"
    with h5py.File(pairs) as f:
        np.save(coarse, f["input"][0])
    out = tmp_path / "refined.h5"
    assert main(["refine", str(coarse), "--checkpoint", str(tmp_path / "pf"), "--size", "64", "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f["phase"].shape == (64, 64) and f["phase_x2"].shape == (128, 128)
