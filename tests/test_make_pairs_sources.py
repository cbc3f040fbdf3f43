"""make-pairs inputs from the route's real degradations (issue 14, item 6): a trained network's predictions
(``--inputs-from stitch:MODEL``) and fast AD reconstructions (``--inputs-from ad``)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.cli import main

# a tiny scan: 24 Å periodic cell, 0.5 Å pixels, 12×12 positions at 2 Å, 32² patterns, synthetic phase objects
SIM = {
    "optics": {"energy": 300e3, "semiangle": 12.0, "aberrations": {"C10": 80.0}},
    "grid": {"extent": [24.0, 24.0], "sim_gpts": [48, 48], "phase_gpts": [48, 48]},
    "scan": {"shape": [12, 12], "step": [2.0, 2.0]},
    "detector": {"shape": [32, 32]},
    "specimen": {"kind": "synthetic", "synthetic_max_phase": 0.6, "phonons": 1},
    "output": {"n_files": 1, "samples_per_file": 4},
    "compute": {"seed": 3},
}
DATA = {"block": 6, "stride": 3, "patch": 24, "val_fraction": 0.25, "test_fraction": 0.0, "batch_size": 2,
        "preprocess": {"normalize": "pattern", "scale": "sqrt"}}
TRAINER = {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False}


def _yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pairs_sources")
    assert main(["simulate", _yaml(tmp / "sim.yaml", SIM), "--out", str(tmp / "data")]) == 0
    return tmp, tmp / "data" / "simulation_data1.h5"


def test_pairs_from_network_predictions_equal_predict_and_train_phaseformer(sim):
    tmp, file = sim
    e2e = {"stage": "end2end", "out_dir": str(tmp / "e2e"), "data": {"files": [str(file)], **DATA},
           "model": {"size": "tiny", "decoder_channels": [8, 8, 8], "pos_frequencies": 2},
           "stitch_model": {"size": "tiny", "vit_patch": 8, "decoder_channels": [8, 8, 8, 8, 8]}, "trainer": TRAINER}
    assert main(["train", "end2end", _yaml(tmp / "e2e.yaml", e2e)]) == 0
    pairs = tmp / "stitch_pairs.h5"
    assert main(["make-pairs", str(file), "--inputs-from", f"stitch:{tmp / 'e2e'}", "--out-file", str(pairs)]) == 0
    with h5py.File(pairs) as f, h5py.File(file) as s:
        inputs, gts = f["input"][...], f["gt"][...]
        assert inputs.shape == gts.shape == (4, 48, 48)
        assert '"stitch"' in f.attrs["inputs_from"]
        for i in range(4):
            np.testing.assert_array_equal(gts[i], s[f"phase_{i}"][...])
    for i in (0, 3):
        out = tmp / f"pred{i}.h5"
        assert main(["predict", str(file), "--sample", str(i), "--model", str(tmp / "e2e"), "--out-file", str(out),
                     "--no-png"]) == 0
        with h5py.File(out) as f:
            np.testing.assert_allclose(inputs[i], f["phase"][...], rtol=0, atol=1e-5)
    pf = {"network": "phaseformer", "out_dir": str(tmp / "pf"),
          "data": {"train": [str(pairs)], "crop": 32, "batch_size": 2, "val_fraction": 0.25},
          "model": {"dim": 4, "blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1], "refinement_blocks": 0},
          "loss": {"components": ["charbonnier", "gradient"]}, "trainer": TRAINER}
    assert main(["train", "phaseformer", _yaml(tmp / "pf.yaml", pf)]) == 0
    assert len((tmp / "pf" / "epochs.csv").read_text().splitlines()) == 2


def test_pairs_from_ad_keep_ads_grid_epochs_channels_and_recipe(sim):
    """--inputs-from ad (issue 48): AD with reconstruct's defaults (probe refined) on its own grid; phase,
    amplitude and illumination after epochs 2, 4 and at the end; the truth brought to AD's grid band-limited; the
    recipe in the attributes; the AD phase is closer to the truth than noise of its spread over the field."""
    import json

    from phasestem.learn.ad_pairs import LAYOUT, stored_epochs, truth_on_ad_grid
    from phasestem.metrics import phase_error

    tmp, file = sim
    pairs = tmp / "ad_pairs.h5"
    assert main(["make-pairs", str(file), "--inputs-from", "ad", "--ad-epochs", "6", "--out-file", str(pairs)]) == 0
    assert stored_epochs(pairs) == [2, 4, 6]
    with h5py.File(pairs) as f, h5py.File(file) as s:
        assert f.attrs["layout"] == LAYOUT
        source = json.loads(f.attrs["inputs_from"])
        assert source["kind"] == "ad" and source["n_epochs"] == 6 and source["snapshots"] == [2, 4, 6]
        params = json.loads(source["params"])
        assert params["run"]["optimizer"] == "lsq" and params["run"]["n_epochs"] == 6
        inputs, gts, field = f["input"][...], f["gt"][...], f["field"][...]
        n, h, w = inputs.shape
        assert n == 4 and gts.shape == field.shape == (n, h, w) and np.isfinite(inputs).all()
        np.testing.assert_array_equal(inputs, f["epoch_6/phase"][...])
        for e in (2, 4, 6):
            for c in ("phase", "amplitude", "illumination"):
                assert f[f"epoch_{e}/{c}"].shape == (n, h, w)
        secs = [f[f"epoch_{e}/seconds"][...] for e in (2, 4, 6)]
        assert secs[0].shape == (n,) and (secs[0] > 0).all() and (secs[0] < secs[1]).all() and (secs[1] < secs[2]).all()
        illum = f["epoch_6/illumination"][...]
        assert illum.min() >= 0 and np.allclose(illum.max((1, 2)), 1.0)
        assert not np.array_equal(f["epoch_2/phase"][...], inputs)  # the snapshots differ
        sampling = tuple(f["sampling"][0])
        truth0 = s["phase_0"][...]
        np.testing.assert_allclose(gts[0], truth_on_ad_grid(truth0, (0.5, 0.5), sampling, (h, w)), atol=1e-6)
    # the field: the positions' rectangle 0 … 22 Å
    ys = np.nonzero(field[0].any(1))[0]
    assert ys[0] == 0 and abs(ys[-1] * sampling[0] - 22.0) <= sampling[0]
    rng = np.random.default_rng(0)
    xs = np.nonzero(field[0].any(0))[0]
    fov = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    for inp, gt in zip(inputs[:2], gts[:2], strict=True):
        rand = gt.mean() + gt.std() * rng.standard_normal(gt.shape).astype(np.float32)
        e_ad, e_rand = phase_error(inp[fov], gt[fov], align=False), phase_error(rand[fov], gt[fov], align=False)
        assert e_ad < 0.8 * e_rand, (e_ad, e_rand)


def test_ad_pairs_hold_noise_free_and_counted_copies(sim):
    """--ad-electrons none 1000: two rows per sample, the second reconstructed from Poisson counts (another phase,
    the same truth), the dose of each row in 'electrons'; the same seed gives the same counts."""
    tmp, file = sim
    out = [tmp / "ad_dose_a.h5", tmp / "ad_dose_b.h5"]
    for path in out:
        assert main(["make-pairs", str(file), "--inputs-from", "ad", "--ad-epochs", "2", "--ad-electrons", "none",
                     "1000", "--out-file", str(path)]) == 0
    with h5py.File(out[0]) as f, h5py.File(out[1]) as g:
        e = f["electrons"][...]
        assert e.shape == (8,) and np.isnan(e[0::2]).all() and (e[1::2] == 1000).all()
        gt, inp = f["gt"][...], f["input"][...]
        np.testing.assert_array_equal(gt[0::2], gt[1::2])
        assert not np.allclose(inp[0::2], inp[1::2])
        np.testing.assert_array_equal(inp, g["input"][...])


def test_truth_on_grid_is_band_limited_and_periodic():
    """A cosine of whole periods over a 24 Å cell on 0.5 Å pixels → 0.37 Å pixels over 30 Å: exact beyond the cell
    too (its periodic continuation)."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid

    y = np.arange(48) * 0.5
    truth = np.cos(2 * np.pi * 3 * y / 24)[:, None] * np.cos(2 * np.pi * 2 * y / 24)[None, :]
    out = truth_on_ad_grid(truth.astype(np.float32), (0.5, 0.5), (0.37, 0.37), (81, 81))
    t = np.arange(81) * 0.37
    exact = np.cos(2 * np.pi * 3 * t / 24)[:, None] * np.cos(2 * np.pi * 2 * t / 24)[None, :]
    np.testing.assert_allclose(out, exact, atol=1e-5)


def test_inputs_from_is_validated(sim, capsys):
    tmp, file = sim
    assert main(["make-pairs", str(file), "--inputs-from", "stitch:", "--out-file", str(tmp / "x.h5")]) != 0
    assert "inputs_from" in capsys.readouterr().err
    assert not (tmp / "x.h5").exists()
