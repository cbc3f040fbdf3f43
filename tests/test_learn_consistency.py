"""Measurement consistency (issue 14, item 3): the data residual of a phase image against the measured patterns."""
from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, zoom

from phasestem.io import load
from phasestem.learn.consistency import MeasurementModel, block_scan_indices, consistency_loss, measurement_residual
from phasestem.learn.data import BlockGeometry, Preprocess, SampleDataset, SampleIndex, write_synthetic_file

GEO = dict(extent=24.0, phase_px=48, scan=12, window=16, c10=100.0, n_blobs=8)
BLOCKS = dict(block=6, stride=3, patch=24)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Two tiny seed-layout files: noise-free and Poisson noise at 1e5 e⁻ per pattern (same phases)."""
    tmp = tmp_path_factory.mktemp("consistency")
    return {"clean": write_synthetic_file(tmp / "clean.h5", 2, **GEO),
            "noisy": write_synthetic_file(tmp / "noisy.h5", 2, dose=1e5, **GEO), "tmp": tmp}


def _candidates(phase: np.ndarray) -> dict[str, np.ndarray]:
    return {"true": phase, "blur σ=1 px": gaussian_filter(phase, 1.0, mode="wrap"),
            "blur σ=2 px": gaussian_filter(phase, 2.0, mode="wrap"), "shift 2 px": np.roll(phase, 2, axis=(0, 1)),
            "shift 2 px in x": np.roll(phase, 2, axis=1), "zero": np.zeros_like(phase)}


@pytest.mark.parametrize("kind", ["clean", "noisy"])
def test_true_phase_explains_the_patterns_best(sim, kind):
    ds = load(sim[kind], sample=1)
    truth, sampling = ds.truth["phase"], ds.truth["sampling"]
    res = {name: measurement_residual(img, ds, sampling) for name, img in _candidates(truth).items()}
    print(kind, {k: f"{v['residual']:.3g}" for k, v in res.items()})
    r = {k: v["residual"] for k, v in res.items()}
    assert res["true"]["periodic"] and res["true"]["map"].shape == (12, 12)
    for name in r:
        if name != "true":
            assert r["true"] < r[name], name
    if kind == "clean":  # the same forward model and nominal probe made the data: nothing is left
        assert r["true"] < 1e-9
    assert r["blur σ=1 px"] < r["blur σ=2 px"] < r["zero"]
    assert np.all(res["true"]["map"] >= 0)


def test_resampled_and_non_periodic_phase():
    """An object padded beyond the scan (not periodic), the phase given on a 2x finer grid (resampled bilinearly)."""
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(window=(32, 32), sampling=0.4, scan_shape=(8, 8), scan_step=1.0)
    oy, ox = (round(o / 0.4) for o in ds.truth["object_origin"])
    truth = ds.truth["object_phase"][0][oy:, ox:]  # dataset frame: pixel 0 at 0 Å
    r = {name: measurement_residual(img, ds, (0.4, 0.4))["residual"] for name, img in _candidates(truth).items()}
    fine = measurement_residual(zoom(truth, 2, order=1), ds, (0.2, 0.2))
    assert not fine["periodic"]
    assert fine["residual"] < r["blur σ=1 px"] and r["true"] < min(v for k, v in r.items() if k != "true")


def test_consistency_loss_gradient_and_preprocessed_blocks(sim):
    """On End2End batches (preprocessed, binned blocks) the true phase gives ~0 and the loss has a finite,
    non-zero gradient with respect to the phase."""
    idx = SampleIndex.from_paths([sim["clean"]], **BLOCKS)
    pre = Preprocess(normalize="pattern", scale="sqrt", bin=2)
    batch = torch.utils.data.default_collate([SampleDataset(idx, pre)[i] for i in (0, 1)])
    meas = MeasurementModel.from_file(sim["clean"], idx.geometry, idx.pattern_shape, pre).with_blocks(idx.geometry)
    assert consistency_loss(batch["phase"], batch, meas).item() < 1e-9
    phase = gaussian_filter(batch["phase"].numpy(), (0, 1.5, 1.5), mode="wrap")
    phase = torch.tensor(phase, requires_grad=True)
    loss = consistency_loss(phase, batch, meas, weight=2.0)
    loss.backward()
    assert loss.item() > 1e-6
    assert torch.isfinite(phase.grad).all() and phase.grad.abs().max() > 0
    # one gradient step along −∇ lowers the residual
    with torch.no_grad():
        step = phase - 1e-3 * phase.grad / phase.grad.abs().max()
        assert consistency_loss(step, batch, meas, weight=2.0).item() < loss.item()
    # every scan position is used once
    ks, ts, flat = block_scan_indices(BlockGeometry(scan_shape=(12, 12), phase_shape=(48, 48), **BLOCKS))
    assert len(flat) == 144 and np.array_equal(flat, np.arange(144))


def test_end2end_loss_with_consistency_term(sim):
    from phasestem.base.errors import ConfigError
    from phasestem.learn.config import TrainLossConfig
    from phasestem.learn.nets.end2end import end2end_loss_fn, loss_fn_from_config

    assert TrainLossConfig().consistency_weight == 0.0
    idx = SampleIndex.from_paths([sim["clean"]], **BLOCKS)
    pre = Preprocess()
    batch = torch.utils.data.default_collate([SampleDataset(idx, pre)[0]])
    torch.manual_seed(0)
    model = _tiny_e2e()
    base = loss_fn_from_config(TrainLossConfig(), idx, pre)(model, batch)
    assert "consistency" not in base
    out = loss_fn_from_config(TrainLossConfig(consistency_weight=10.0), idx, pre)(model, batch)
    assert torch.isfinite(out["consistency"]) and out["consistency"] > 0
    torch.testing.assert_close(out["loss"].detach(), base["loss"].detach() + 10.0 * out["consistency"])
    out["loss"].backward()
    grads = [p.grad for p in model.stitch_net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with pytest.raises(ConfigError, match="consistency_weight"):
        end2end_loss_fn(consistency_weight=1.0)


def _tiny_e2e():
    from phasestem.learn.nets.end2end import End2End
    from phasestem.learn.nets.patch import PatchRecoveryConfig, PatchRecoveryNet
    from phasestem.learn.nets.stitch import PhaseStitchingConfig, PhaseStitchingNet

    return End2End(PatchRecoveryNet(PatchRecoveryConfig(size="tiny", block=6, patch=24)),
                   PhaseStitchingNet(PhaseStitchingConfig(size="tiny", vit_patch=8, image_size=48, patch=24)))


def _save_model(sim) -> tuple:
    from phasestem.learn.trainer import save_weights

    torch.manual_seed(0)
    e2e = _tiny_e2e()
    g = SampleIndex.from_paths([sim["clean"]], **BLOCKS).geometry
    meta = {"model": {"kind": "end2end", "config": e2e.config},
            "data": {"geometry": g.to_dict(), "preprocess": Preprocess().model_dump(), "target": "phase",
                     "target_description": "phase (rad)", "pattern_shape": [16, 16], "files": [str(sim["clean"])],
                     "split_seed": 0, "val_fraction": 0.0, "test_fraction": 0.5, "max_samples": None}}
    path = sim["tmp"] / "e2e" / "best" / "model.safetensors"
    save_weights(e2e.state_dict(), path, meta)
    return path.parent.parent, meta


def test_evaluate_and_predict_report_the_residual(sim):
    from phasestem.learn.apply.phase import load_predictor, predict_file
    from phasestem.learn.evaluate import evaluate_model, format_table, write_report

    run, _ = _save_model(sim)
    model, meta = load_predictor(run)
    idx = SampleIndex.from_paths([sim["noisy"]], **BLOCKS)
    result = evaluate_model(model, meta, idx)
    rows = result["rows"]
    assert len(rows) == 2 and all(np.isfinite(r["residual"]) and np.isfinite(r["truth_residual"]) for r in rows)
    # an untrained network's phase explains the data worse than the true phase does
    assert all(r["truth_residual"] < r["residual"] for r in rows)
    assert "data residual" in format_table(result) and "| true phase |" in format_table(result)
    paths = write_report(result, sim["tmp"] / "eval")
    with open(paths["csv"]) as fh:
        header = next(csv.reader(fh))
    assert "residual" in header and "truth_residual" in header
    out = predict_file(sim["noisy"], run, sim["tmp"] / "pred.h5", png=False, sample=1)
    with h5py.File(out) as f:
        assert np.isfinite(f.attrs["residual"]) and f.attrs["residual"] > 0
        assert f["residual_map"].shape == (12, 12)
        np.testing.assert_allclose(f.attrs["residual"], f["residual_map"][...].mean(), rtol=1e-5)
    no_res = evaluate_model(model, meta, idx, residual=False)
    assert "residual" not in no_res["rows"][0]
