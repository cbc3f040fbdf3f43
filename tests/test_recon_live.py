"""OUT/live.npz: the epoch snapshot a reconstruction writes for the live page of phasestem serve."""
from __future__ import annotations

import numpy as np
import pytest

from phasestem.recon import Ptychography
from phasestem.recon.callbacks import LiveSnapshots
from phasestem.recon.engine import optimize_with_options
from phasestem.recon.live import LIVE_FILE, block_mean, read_snapshot
from phasestem.recon.synthetic import synthetic_scan


def test_a_snapshot_after_every_epoch_holds_the_state_of_that_epoch(tmp_path, one_torch_thread):
    ds = synthetic_scan(scan_shape=(6, 6), seed=2)
    model = Ptychography.from_dataset(ds)
    path = tmp_path / LIVE_FILE
    seen = []
    for _ in optimize_with_options(model, ds, 3, batch_size=12, progress=False, callbacks=[LiveSnapshots(path, 3)]):
        snap = read_snapshot(path)
        seen.append(int(snap["epoch"]))
        np.testing.assert_array_equal(snap["loss"], [h["loss"] for h in model.loss_history])
    assert seen == [1, 2, 3] and int(snap["n_epochs"]) == 3
    assert snap["object_phase"].dtype == np.float32 and snap["object_phase"].ndim == 2
    assert np.iscomplexobj(snap["probe"]) and snap["probe"].shape == tuple(model.get_probe().shape[-2:])
    np.testing.assert_allclose(np.abs(snap["probe"]), np.abs(model.get_probe()[0].detach().numpy()), rtol=1e-6)
    assert int(snap["gpu_memory"]) == -1  # on the CPU
    np.testing.assert_allclose(snap["probe_sampling"], model.sampling)  # the probe kept whole: the model's pixel
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary name, nothing left over
    assert read_snapshot(tmp_path / "missing.npz") is None


def test_block_mean_keeps_images_small():
    img = np.arange(400 * 300, dtype=np.float32).reshape(400, 300)
    small, f = block_mean(img, 192)
    assert f == 3 and small.shape == (133, 100)
    assert small[0, 0] == img[:3, :3].mean()
    same, f = block_mean(img[:100, :100], 192)
    assert f == 1 and same.shape == (100, 100)


def test_a_reduced_probe_keeps_its_pixel_for_the_scale_bar(tmp_path, one_torch_thread):
    """The live page draws an Å scale bar on the probe whatever its size: a block-averaged probe's pixel is the
    model's times the block."""
    from phasestem.recon.live import snapshot

    model = Ptychography.from_dataset(synthetic_scan(scan_shape=(3, 3), seed=2, max_phase=0.2))
    snap = snapshot(model, 1, max_side=12)  # the 32-px probe averaged over 3 × 3 blocks
    assert snap["probe"].shape == (10, 10)
    np.testing.assert_allclose(snap["probe_sampling"], np.asarray(model.sampling) * 3)
    pytest.importorskip("starlette")
    from phasestem.serve.runs import live_pixels

    _, probe_px = live_pixels(snap)
    assert probe_px["unit"] == "Å" and probe_px["size"] == pytest.approx(float(np.mean(model.sampling)) * 3)
