"""Coordinates that carry information (issue 14, item 2): PatchRecoveryNet sees its patterns' positions in the
target patch's pixel frame (the rounding of bright_center included), older models get what they were trained on,
and a tiny trained net uses them (the longer measurement: benchmarks/learned/coordinates.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from phasestem.learn.data import BlockGeometry, PatchDataset, Preprocess, SampleDataset, SampleIndex
from phasestem.learn.data.synthetic import write_synthetic_file
from phasestem.learn.meta import make_meta, normalize_meta
from phasestem.learn.nets.patch import PatchRecoveryNet

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "legacy_models"


def test_seed_blocks_differ_by_exactly_their_rounding():
    """Every pattern's coordinate = its scan position − the bright-centre pixel of the block's target, with the
    seed's own formula; two blocks whose bright centres round differently differ by exactly that rounding."""
    g = BlockGeometry()
    ps = 100 / 256
    coords = g.frame_coords().astype(np.float64)  # (25, 196, 2)
    for b, (y0, x0) in enumerate(g.blocks()):
        cy, cx = (round((2 * s + 13) * 2.56) for s in (y0, x0))  # bright_center, as the user wrote it
        iy, ix = np.divmod(np.arange(196), 14)
        np.testing.assert_allclose(coords[b, :, 0], 2.0 * (y0 + iy) - cy * ps, atol=2e-6)
        np.testing.assert_allclose(coords[b, :, 1], 2.0 * (x0 + ix) - cx * ps, atol=2e-6)
    # rows starting at scan index 18 and 27: centres 125.44 → 125 and 171.52 → 172 px, i.e. +0.44 and −0.48 px
    b18, b27 = g.blocks().index((18, 0)), g.blocks().index((27, 0))
    diff = coords[b18] - coords[b27]
    np.testing.assert_allclose(diff[:, 0], (0.44 - -0.48) * ps, atol=2e-6)  # 0.92 px, the figure
    np.testing.assert_allclose(diff[:, 1], 0.0, atol=2e-6)
    np.testing.assert_allclose(g.frame_offsets()[[b18, b27], 0], [0.44 * ps, -0.48 * ps], atol=1e-9)
    assert np.abs(g.frame_offsets()).max() <= 0.5 * ps + 1e-12
    # the old coordinates are the same for every block: frame coordinates re-centred
    np.testing.assert_allclose(coords - coords.mean(1, keepdims=True), np.broadcast_to(g.block_coords(), coords.shape),
                               atol=2e-6)


def _index(tmp_path):
    # 72 px over 32 Å: 4.5 px per 2 Å step, so block centres fall at 6.75, 20.25, … px and round by ∓0.25 px
    path = write_synthetic_file(tmp_path / "sim.h5", 2, extent=32.0, phase_px=72, scan=16, window=16, c10=100.0)
    return SampleIndex.from_paths([path], block=4, stride=3, patch=24)


def test_datasets_give_each_block_its_frame_coordinates(tmp_path):
    idx = _index(tmp_path)
    g = idx.geometry
    offs = g.frame_offsets() / np.asarray(g.phase_sampling)
    np.testing.assert_allclose(np.unique(np.round(offs, 6)), [-0.25, 0.25])
    pre = Preprocess()
    pds, sds = PatchDataset(idx, pre), SampleDataset(idx, pre)
    for b in (0, 1, 6):
        item = pds[b]
        np.testing.assert_array_equal(item["coords"].numpy(), g.frame_coords()[b])
        assert tuple(item["centre"].tolist()) == tuple(g.centres()[b])
    np.testing.assert_array_equal(sds[0]["coords"].numpy(), g.frame_coords())
    assert not np.allclose(sds[0]["coords"][0].numpy(), sds[0]["coords"][1].numpy())


def test_old_models_are_fed_the_coordinates_they_were_trained_on(tmp_path, one_torch_thread):
    """A model saved before the patch frame (no ``coords`` in its metadata) reads as block_centre and gives the
    same output for patch-frame coordinates as for the block-centred ones it was trained on; a new model's
    metadata says patch_frame, and the offsets reach it."""
    from phasestem.learn.registry import load_model

    model, meta = load_model(LEGACY / "patch")
    assert meta["model"]["config"]["coords"] == "block_centre" and model.config.coords == "block_centre"
    _, meta_e2e = load_model(LEGACY / "end2end")
    assert meta_e2e["model"]["config"]["patch"]["coords"] == "block_centre"
    g = BlockGeometry(scan_shape=(12, 12), scan_step=(2.0, 2.0), phase_shape=(54, 54), phase_sampling=(24 / 54,) * 2,
                      block=6, stride=3, patch=24)  # 4.5 px per step: offsets ±0.25 px
    assert np.abs(g.frame_offsets()).max() > 0.1
    pats = torch.rand(2, 36, 16, 16, generator=torch.Generator().manual_seed(0))
    frame = torch.from_numpy(g.frame_coords()[:2])
    old = torch.from_numpy(g.block_coords()).expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(pats, frame), model(pats, old), atol=1e-5, rtol=0)
        new = PatchRecoveryNet({**model.config.model_dump(), "coords": "patch_frame"}).eval()
        new.load_state_dict(model.state_dict())
        assert (new(pats, frame) - new(pats, old)).abs().max() > 1e-4
    saved = normalize_meta(make_meta("patch", new.config.model_dump(mode="json")))
    assert saved["model"]["config"]["coords"] == "patch_frame"
    assert PatchRecoveryNet().config.coords == "patch_frame"



def _bench():
    from bench_scripts import load_bench

    return load_bench("coordinates", "coordinates_bench")


def test_coordinate_benchmark_smoke(one_torch_thread):
    """The plumbing of benchmarks/learned/coordinates.py (the learning itself takes ~6 min there: a net trained with
    coordinates beats the same net with them zeroed on held-out blocks, and moving the coordinates moves its patch
    the same way; figures in its docstring and docs/benchmarks.md). Here: the shift estimator is exact on known
    shifts, a target crop sits in the pixel frame of the coordinates, a net with zeroed coordinates cannot move,
    and a net given them responds to a sub-pixel change."""
    bench = _bench()
    assert bench.estimator_check(0.4, n=4) == pytest.approx(0.4, abs=0.01)
    assert bench.estimator_check(-0.25, n=4) == pytest.approx(-0.25, abs=0.01)
    # the same object under a block offset by +0.3 px: same target (the pixel frame), coordinates 0.15 Å apart,
    # and windows showing the object moved by −0.3 px — only the coordinates say where the patterns sit
    a = bench.make_blocks(1, 3, offsets=np.array([[0.0, 0.0]]))
    b = bench.make_blocks(1, 3, offsets=np.array([[0.3 * 0.5, 0.0]]))
    np.testing.assert_allclose(b["coords"][0] - a["coords"][0], np.broadcast_to([0.15, 0.0], (16, 2)), atol=1e-6)
    torch.testing.assert_close(a["target"], b["target"])
    got = np.median([bench.measure_shift(x, y, margin=2)[0] for x, y in zip(a["patterns"][0].numpy(),
                                                                            b["patterns"][0].numpy(), strict=True)])
    assert got == pytest.approx(-0.3, abs=0.03)
    data = bench.make_blocks(48, 0)
    nets = {m: bench.tiny_net(m) for m in ("patch_frame", "none")}
    for net in nets.values():
        losses = bench.train(net, data, 15, batch=8)
        assert np.isfinite(losses).all()
    test = {k: v[:3] for k, v in bench.make_blocks(3, 1).items()}
    assert np.all(bench.shift_response(nets["none"], test, 0.4, 0.5) == 0.0)
    moved = test["coords"].clone()
    moved[..., 0] += 0.2
    assert (bench.predict(nets["patch_frame"], test["patterns"], moved)
            - bench.predict(nets["patch_frame"], test["patterns"], test["coords"])).abs().max() > 1e-4


@pytest.mark.parametrize("coords", ["block_centre", "patch_frame"])
def test_resume_keeps_the_checkpoints_coordinates(tmp_path, one_torch_thread, coords):
    """A run folder whose config.yaml does not name ``coords`` (written before the key existed) is resumed with the
    convention its checkpoint's metadata records, not the default: block_centre stays block_centre (an old run
    folder), patch_frame stays patch_frame."""
    import json

    import yaml

    from phasestem.learn.registry import build_run, load_run_config, train_run

    path = write_synthetic_file(tmp_path / "sim.h5", 3, extent=32.0, phase_px=72, scan=16, window=16, c10=100.0)
    run = tmp_path / "run"
    model = {"size": "tiny"} if coords == "patch_frame" else {"size": "tiny", "coords": coords}
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({
        "network": "patch", "out_dir": str(run), "model": model,
        "data": {"files": [str(path)], "block": 4, "stride": 3, "patch": 24, "batch_size": 4,
                 "val_fraction": 0.0, "test_fraction": 0.0, "augment": False},
        "trainer": {"epochs": 1, "progress": False, "tensorboard": False}}))
    train_run(load_run_config(first, "patch"))
    saved = json.loads((run / "last" / "meta.json").read_text())
    assert saved["model"]["config"]["coords"] == coords
    # the run folder as an older version left it: its config.yaml says nothing about coords
    written = yaml.safe_load((run / "config.yaml").read_text())
    del written["model"]["coords"]
    written["trainer"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(written))
    cfg = load_run_config(run / "config.yaml", "patch", {"resume": True})
    assert build_run(cfg).unwrapped_model.config.coords == coords
    cfg = load_run_config(run / "config.yaml", "patch", {"resume": True})
    summary = train_run(cfg)
    assert summary["epochs_run"] == 2 and summary["global_step"] > 1
    assert json.loads((run / "last" / "meta.json").read_text())["model"]["config"]["coords"] == coords
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["coords"] == coords
    # without resume the default holds (a new run in that folder is a new network)
    assert build_run(load_run_config(first, "patch", {"model.coords": "patch_frame"})).unwrapped_model.config.coords \
        == "patch_frame"


# ------------------------------------------------------------------------------ PhaseStitchingNet: exact centres
_OFFSET_GEOMETRY = dict(scan_shape=(12, 12), scan_step=(2.0, 2.0), phase_shape=(54, 54), phase_sampling=(24 / 54,) * 2,
                        block=6, stride=3, patch=24)  # 4.5 px per step: block centres round by ±0.25 px


@pytest.mark.parametrize("geometry", [{}, _OFFSET_GEOMETRY,
                                      dict(scan_shape=(16, 16), scan_step=(1.7, 1.3), phase_shape=(64, 48),
                                           phase_sampling=(0.43, 0.47), block=4, stride=3, patch=20)])
def test_exact_centres_round_to_the_centres_the_targets_are_cropped_at(geometry):
    """The stitching net places each patch at ``round(exact centre)`` (torch); the targets were cropped at
    ``BlockGeometry.centres()`` (Python's round): the two must be the same pixels, or every patch lands off."""
    g = BlockGeometry(**geometry)
    exact = torch.from_numpy(g.exact_centres())
    np.testing.assert_array_equal(exact.round().long().numpy(), g.centres())
    assert (exact - exact.round()).abs().max() <= 0.5


def test_stitching_canvas_carries_each_patch_s_sub_pixel_offset(one_torch_thread):
    """With ``centres: exact`` the canvas gets two more channels: per pixel, the mean (dy, dx) offset of the
    covering patches' block centres from their rounded centres (checked against a plain loop over the blocks'
    crop indices); the first three channels are the rounded model's, integer centres give zero offsets, and the
    offsets reach the network's output."""
    from phasestem.learn.nets.stitch import PhaseStitchingNet

    g = BlockGeometry(**_OFFSET_GEOMETRY)
    cfg = {"size": "tiny", "image_size": 54, "patch": 24, "vit_patch": 6}
    exact_net, rounded_net = PhaseStitchingNet(cfg).eval(), PhaseStitchingNet({**cfg, "centres": "rounded"}).eval()
    assert exact_net.config.centres == "exact" and exact_net.config.canvas_channels == 5
    patches = torch.randn(1, g.n_blocks, 24, 24, generator=torch.Generator().manual_seed(1))
    exact = torch.from_numpy(g.exact_centres())[None]
    with torch.no_grad():
        canvas = exact_net.canvas(patches, exact)
        plain = rounded_net.canvas(patches, exact)
        assert plain.shape == (1, 3, 54, 54) and canvas.shape == (1, 5, 54, 54)
        torch.testing.assert_close(canvas[:, :3], plain)
        torch.testing.assert_close(rounded_net.canvas(patches, torch.from_numpy(g.centres())[None]), plain)
        whole = exact_net.canvas(patches, torch.from_numpy(g.centres())[None])
        assert whole[:, 3:].abs().max() == 0
    total, count = np.zeros((2, 54, 54)), np.zeros((54, 54))
    for c, e in zip(g.centres(), g.exact_centres(), strict=True):
        rows, cols = g.patch_indices(int(c[0]), 0), g.patch_indices(int(c[1]), 1)
        count[np.ix_(rows, cols)] += 1
        for axis in (0, 1):
            total[axis][np.ix_(rows, cols)] += e[axis] - c[axis]
    expect = total / np.maximum(count, 1)
    np.testing.assert_allclose(canvas[0, 3:].numpy(), expect, atol=1e-6)
    assert np.unique(np.round(np.abs(expect[:, count == 1]), 6)).tolist() == [0.25]
    # a head that reads the offset channels makes the output depend on them
    with torch.no_grad():
        exact_net.decoder.head.weight[:, -2:] = 1.0
        moved = exact + torch.tensor([0.2, -0.1], dtype=exact.dtype)
        assert (exact_net(patches, moved) - exact_net(patches, exact)).abs().max() > 1e-3


def test_old_stitching_models_read_as_rounded_centres(one_torch_thread):
    """Stitching nets saved before ``centres`` existed (three canvas channels) load as ``rounded``, alone and inside
    an end2end model; new metadata records ``exact``."""
    from phasestem.learn.nets.stitch import PhaseStitchingNet
    from phasestem.learn.registry import load_model

    model, meta = load_model(LEGACY / "stitch")
    assert meta["model"]["config"]["centres"] == "rounded" and model.config.canvas_channels == 3
    e2e, meta_e2e = load_model(LEGACY / "end2end")
    assert meta_e2e["model"]["config"]["stitch"]["centres"] == "rounded"
    assert e2e.stitch_net.config.centres == "rounded"
    new = PhaseStitchingNet({"size": "tiny", "image_size": 32, "patch": 16, "vit_patch": 8})
    saved = normalize_meta(make_meta("stitch", new.config.model_dump(mode="json")))
    assert saved["model"]["config"]["centres"] == "exact"


@pytest.mark.parametrize("centres", ["rounded", "exact"])
def test_resume_keeps_the_checkpoints_stitching_centres(tmp_path, one_torch_thread, centres):
    """A stitching run folder whose config.yaml does not name ``centres`` (written before the key existed) resumes
    with the input its checkpoint was trained on (three canvas channels for ``rounded``), not the default."""
    import json

    import yaml

    from phasestem.learn.registry import build_run, load_run_config, train_run

    path = write_synthetic_file(tmp_path / "sim.h5", 3, extent=32.0, phase_px=72, scan=16, window=16, c10=100.0)
    run = tmp_path / "run"
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({
        "network": "stitch", "out_dir": str(run), "stitch_model": {"size": "tiny", "vit_patch": 8, "centres": centres},
        "data": {"files": [str(path)], "block": 4, "stride": 3, "patch": 24, "batch_size": 2,
                 "val_fraction": 0.0, "test_fraction": 0.0, "augment": False},
        "trainer": {"epochs": 1, "progress": False, "tensorboard": False}}))
    train_run(load_run_config(first, "stitch"))
    assert json.loads((run / "last" / "meta.json").read_text())["model"]["config"]["centres"] == centres
    written = yaml.safe_load((run / "config.yaml").read_text())
    del written["stitch_model"]["centres"]
    written["trainer"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(written))
    net = build_run(load_run_config(run / "config.yaml", "stitch", {"resume": True})).unwrapped_model
    assert net.config.centres == centres and net.config.canvas_channels == (5 if centres == "exact" else 3)
    summary = train_run(load_run_config(run / "config.yaml", "stitch", {"resume": True}))
    assert summary["epochs_run"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["stitch_model"]["centres"] == centres
