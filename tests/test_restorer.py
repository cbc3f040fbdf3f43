"""The restorer (issue 48, build 3): identity at initialisation, the offset-free loss, dihedral symmetry, and a
tiny train → resume → reload through ``phasestem train restorer``."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.cli import main
from phasestem.learn.data.restorer_pairs import dihedral
from phasestem.learn.nets.restorer import Restorer, RestorerConfig, invented_mass, offset_free_loss


@pytest.mark.parametrize("arch", ["unet", "phaseformer"])
def test_untrained_restorer_returns_its_input_phase_exactly(arch):
    torch.manual_seed(0)
    net = Restorer(RestorerConfig(arch=arch))
    x = torch.randn(2, 3, 37, 44)
    np.testing.assert_array_equal(net(x).detach().numpy(), x[:, :1].numpy())
    with pytest.raises(Exception, match=r"\(B, 3, H, W\)"):
        net(torch.randn(1, 1, 16, 16))


def test_offset_free_loss_ignores_a_constant_and_the_outside_of_the_field():
    y = torch.randn(2, 1, 16, 16)
    m = torch.zeros_like(y)
    m[..., 4:12, 4:12] = 1
    off = y + 3.0 + 5.0 * (1 - m)  # a constant offset, and anything outside the field
    assert float(offset_free_loss(off, y, m)) == pytest.approx(1e-3, rel=1e-4)
    assert float(offset_free_loss(y + 0.1 * torch.randn_like(y), y, m)) > 0.05


def _lattice_with_a_vacancy(size=32, spacing=8):
    """Gaussian columns of 1 rad on a square lattice, the one at (12, 12) missing: (lattice, truth), (1, 1, H, W)."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    sites = [(y, x) for y in range(4, size, spacing) for x in range(4, size, spacing)]
    column = [np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0) for y, x in sites]
    full = sum(column)
    truth = full - column[sites.index((12, 12))]
    return [torch.as_tensor(a, dtype=torch.float32)[None, None] for a in (full, truth)]


def test_invented_mass_costs_a_filled_vacancy_and_not_a_brighter_real_column():
    full, truth = _lattice_with_a_vacancy()
    assert float(invented_mass(truth + 2.0, truth)) == pytest.approx(0.0, abs=1e-6)  # an offset is free
    filled = float(invented_mass(full, truth))  # the vacancy's column put back: all of it is invented
    brighter = float(invented_mass(truth * 1.3, truth))  # real columns 30 % brighter: they are not empty pixels
    assert filled > 0.01 and brighter < 0.1 * filled, (filled, brighter)
    # the pixels of the filled column outside the field cost nothing
    field = torch.ones_like(truth)
    field[..., 8:17, 8:17] = 0
    assert float(invented_mass(full, truth, field)) < 0.2 * filled


def test_dihedral_covers_the_eight_symmetries():
    x = torch.arange(9.0).reshape(3, 3)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8


def _pairs(path, n=6, size=24, seed=0):
    """A pairs file of AD epochs written by hand: the 'AD' phase a blurred truth, epochs 2 and 5."""
    from phasestem.learn.ad_pairs import LAYOUT

    rng = np.random.default_rng(seed)
    gt = rng.standard_normal((n, size, size)).astype(np.float32)
    field = np.zeros_like(gt)
    field[:, 2:-2, 2:-2] = 1
    with h5py.File(path, "w") as f:
        f["gt"], f["field"], f["sampling"] = gt, field, np.full((n, 2), 0.3)
        for e, s in ((2, 0.5), (5, 0.8)):
            f[f"epoch_{e}/phase"] = s * gt
            f[f"epoch_{e}/amplitude"] = np.ones_like(gt)
            f[f"epoch_{e}/illumination"] = np.ones_like(gt)
        f["input"] = f["epoch_5/phase"][...]
        f.attrs.update({"format": "phasestem-pairs", "layout": LAYOUT, "epochs": json.dumps([2, 5]),
                        "optics": json.dumps({"energy": 300e3, "semiangle": 20.0, "aberrations": {},
                                              "angular_sampling": [1.0, 1.0], "scan_step": [2.0, 2.0],
                                              "sampling": [0.3, 0.3]})})
    return path


def test_train_restorer_resume_and_reload(tmp_path):
    from phasestem.learn.registry import load_model

    torch.set_num_threads(1)
    pairs = _pairs(tmp_path / "ad.h5")
    cfg = {"network": "restorer", "out_dir": str(tmp_path / "run"),
           "data": {"train": [str(pairs)], "batch_size": 4, "val_fraction": 0.25},
           "model": {"arch": "unet", "width": 4},
           "trainer": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False, "lr": 1e-2,
                       "monitor": "val/e_phi", "monitor_mode": "min"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "restorer", str(path)]) == 0
    assert main(["train", "restorer", str(path), "--epochs", "2", "--resume"]) == 0
    rows = (tmp_path / "run" / "epochs.csv").read_text().splitlines()
    assert len(rows) == 3, rows  # header + 2 epochs: the second continued the first
    net, meta = load_model(tmp_path / "run")
    assert meta["model"]["kind"] == "restorer" and meta["data"]["optics"]["sampling"] == [0.3, 0.3]
    x = torch.ones(1, 3, 24, 24)
    assert not torch.equal(net(x), x[:, :1])  # trained: no longer the identity


def test_train_restorer_from_another_restorers_weights(tmp_path, capsys):
    """model.init fine-tunes a trained restorer: the new run's network starts with its best weights (not the
    untrained identity); a restorer of another width is refused in one line."""
    from phasestem.learn.registry import build_run, load_run_config

    torch.set_num_threads(1)
    pairs = _pairs(tmp_path / "ad.h5")
    cfg = {"network": "restorer", "out_dir": str(tmp_path / "first"),
           "data": {"train": [str(pairs)], "batch_size": 4, "val_fraction": 0.25, "augment": False},
           "model": {"arch": "unet", "width": 4},
           "trainer": {"epochs": 3, "device": "cpu", "progress": False, "tensorboard": False, "lr": 1e-2}}
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "restorer", str(tmp_path / "first.yaml")]) == 0
    tuned = {**cfg, "out_dir": str(tmp_path / "tuned"), "model": {**cfg["model"], "init": str(tmp_path / "first")}}
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(tuned))
    trainer = build_run(load_run_config(tmp_path / "tuned.yaml", "restorer"))
    from phasestem.learn.trainer.checkpoint import load_weights

    state, _ = load_weights(tmp_path / "first")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v.cpu(), state[k].cpu()), k
    wide = {**tuned, "model": {**tuned["model"], "width": 8}}
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(wide))
    capsys.readouterr()
    assert main(["train", "restorer", str(tmp_path / "wide.yaml")]) != 0
    err = capsys.readouterr().err.strip()
    assert "model.init" in err and len(err.splitlines()) == 1, err
