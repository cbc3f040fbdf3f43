"""Learned-route data: block geometry, rolled-crop targets, lazy HDF5 reading, exact augmentations."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from phasestem.base.errors import ConfigError, InputFileError
from phasestem.learn.data import (
    BlockGeometry,
    PatchDataset,
    Preprocess,
    SampleDataset,
    SampleIndex,
    StitchDataset,
    Symmetry,
    blocks_from_scan,
    check_augmentable,
    check_coverage,
    extract_patches,
    transform_patterns,
    transform_phase,
    write_synthetic_file,
)
from phasestem.physics.optics import interaction_constant


def seed_reference_target(phase: np.ndarray, start_position: float, probe_gpts=(256, 256)) -> np.ndarray:
    """The user's recipe, literally (one start position for both axes)."""
    bright_center = round((start_position + 13) * 2.56)
    shift = (probe_gpts[0] // 2 - bright_center, probe_gpts[1] // 2 - bright_center)
    rolled = np.roll(phase, shift, axis=(0, 1))
    c0 = (rolled.shape[0] - 76) // 2
    return rolled[c0:c0 + 76, c0:c0 + 76]


def test_start_indices_and_bright_centres():
    g = BlockGeometry()
    assert g.start_indices(0) == g.start_indices(1) == [0, 9, 18, 27, 36]
    assert g.n_blocks == 25
    assert [g.bright_centre(s) for s in g.start_indices()] == [33, 79, 125, 172, 218]
    assert g.blocks()[6] == (9, 9) and tuple(g.centres()[6]) == (79, 79)
    assert check_coverage(g) == 1.0  # the 25 patches tile the periodic 256² cell
    c = g.block_coords()
    assert c.shape == (196, 2) and np.allclose(c.mean(0), 0) and c[0, 0] == -13.0 and c[1, 1] - c[0, 1] == 2.0


def test_rolled_crop_equals_periodic_index_crop():
    rng = np.random.default_rng(0)
    phase = rng.standard_normal((256, 256)).astype(np.float32)
    g = BlockGeometry()
    got = extract_patches(phase, g).numpy()  # (25, 76, 76)
    for b, (y0, x0) in enumerate(g.blocks()):
        if y0 == x0:
            np.testing.assert_array_equal(got[b], seed_reference_target(phase, 2 * y0))
        cy, cx = g.centres()[b]
        ref = np.roll(phase, (128 - cy, 128 - cx), axis=(0, 1))[90:166, 90:166]
        np.testing.assert_array_equal(got[b], ref)
    # the first block wraps across the cell edge (centre 33 - 38 < 0)
    assert g.patch_indices(33)[0] == 251


def _original_file(path, n=2, H=8):
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        for i in range(n):
            f[f"dp_set_{i}"] = rng.random((50, 50, H, H), dtype=np.float32)
            f[f"phase_{i}"] = rng.random((256, 256), dtype=np.float32) * 10  # V·Å
    return path


def test_original_layout_sigma_conversion_and_lazy_blocks(tmp_path):
    path = _original_file(tmp_path / "simulation_data1.h5")
    idx = SampleIndex.from_paths([path])
    assert idx.files[0].layout == "original" and len(idx) == 2
    assert "σ" in idx.target_description and "300 keV" in idx.target_description
    ds = PatchDataset(idx, Preprocess(normalize="none", scale="none"))
    assert len(ds) == 50
    item = ds[1 * 25 + 7]  # sample 1, block 7 = starts (9, 18)
    with h5py.File(path) as f:
        raw = f["dp_set_1"][9:23, 18:32].reshape(196, 8, 8)
        pot = f["phase_1"][...]
    np.testing.assert_allclose(item["patterns"].numpy(), raw)
    sigma = interaction_constant(300e3)
    ref = np.roll(pot * sigma, (128 - 79, 128 - 125), axis=(0, 1))[90:166, 90:166]
    np.testing.assert_allclose(item["target"].numpy(), ref, rtol=1e-6)
    assert item["patterns"].dtype == torch.float32 and item["centre"].tolist() == [79, 125]
    pot_idx = SampleIndex.from_paths([path], target="potential")
    np.testing.assert_allclose(PatchDataset(pot_idx)[32]["target"].numpy(), ref / sigma, rtol=1e-5)


def test_workers_read_the_same_items(tmp_path):
    write_synthetic_file(tmp_path / "simulation_data1.h5", 3, extent=24.0, phase_px=48, scan=12, window=8)
    idx = SampleIndex.from_paths([tmp_path / "simulation_data1.h5"], block=6, stride=3, patch=24)
    ds = PatchDataset(idx)
    serial = [ds[i]["patterns"] for i in range(len(ds))]
    _ = ds[0]  # handles open in the parent before forking must not leak into workers
    loader = torch.utils.data.DataLoader(ds, batch_size=9, num_workers=2)
    par = torch.cat([b["patterns"] for b in loader])
    torch.testing.assert_close(par, torch.stack(serial))


def test_sample_and_stitch_items_agree(tmp_path):
    write_synthetic_file(tmp_path / "a.h5", 2, extent=24.0, phase_px=48, scan=12, window=8)
    idx = SampleIndex.from_paths([tmp_path / "a.h5"], block=6, stride=3, patch=24)
    s, st, p = SampleDataset(idx)[1], StitchDataset(idx)[1], PatchDataset(idx)[9 + 4]
    assert s["patterns"].shape == (9, 36, 8, 8) and s["phase"].shape == (48, 48)
    torch.testing.assert_close(s["patterns"][4], p["patterns"])
    torch.testing.assert_close(st["patches"], s["patches"])
    torch.testing.assert_close(s["patches"][4], p["target"])


def test_augmentation_is_an_exact_symmetry_of_the_physics(tmp_path):
    """Simulate a specimen and its flipped/transposed copy: the transformed data must match.

    The probe window is the whole periodic cell, as in the seed's simulator (a smaller window cuts the
    probe tails differently for mirrored positions, a few-% effect that is the window's, not the data's).
    """
    from phasestem.learn.data import scan_source_indices
    from phasestem.physics.operator import ForwardModel, transmission_function
    from phasestem.physics.optics import make_probe

    N, S, w, ps = 48, 12, 48, 0.5
    rng = np.random.default_rng(3)
    phase = rng.random((N, N)).astype(np.float32)
    probe = make_probe((w, w), (ps, ps), 300e3, 12.0, {"C10": 60.0})
    fm = ForwardModel((w, w), (ps, ps), 300e3)
    iy, ix = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    pos = torch.tensor(np.stack([iy.ravel(), ix.ravel()], -1) * 2.0, dtype=torch.float32)

    def sim(ph):
        with torch.no_grad():
            return fm(transmission_function(torch.from_numpy(ph))[None, None], probe, pos).reshape(S, S, w, w).numpy()

    orig = sim(phase)
    g = BlockGeometry(scan_shape=(S, S), phase_shape=(N, N), phase_sampling=(ps, ps), block=6, stride=3, patch=24)
    for sym in Symmetry.all()[1:]:
        expected = sim(transform_phase(phase, sym))
        r, c = scan_source_indices(np.arange(S), np.arange(S), sym, g)
        got = orig[r][:, c]
        if sym.transpose:
            got = np.swapaxes(got, 0, 1)
        got = transform_patterns(got, sym)
        err = np.abs(got - expected).max() / expected.max()
        assert err < 1e-4, (sym, err)
    # a flip about the array centre (the naive choice) is NOT a symmetry of the data
    naive = transform_patterns(orig[::-1], Symmetry(flip_y=True))
    assert np.abs(naive - sim(transform_phase(phase, Symmetry(flip_y=True)))).max() / orig.max() > 1e-2


def test_augmentation_refused_when_not_exact(tmp_path):
    g = BlockGeometry(scan_shape=(50, 50), scan_step=(1.5, 1.5))  # 75 Å scan in a 100 Å cell
    with pytest.raises(ConfigError, match="spans 75 Å"):
        check_augmentable(g, {}, "f.h5")
    with pytest.raises(ConfigError, match="C12"):
        check_augmentable(BlockGeometry(), {"C12": 20.0}, "f.h5")
    check_augmentable(BlockGeometry(), {"C10": 100.0, "C30": 1e5}, "f.h5")


def test_preprocess_binning_scaling_normalisation():
    x = torch.rand(2, 3, 8, 8) * 100
    p = Preprocess(bin=2, normalize="pattern", scale="none")(x)
    assert p.shape == (2, 3, 4, 4)
    torch.testing.assert_close(p.mean((-2, -1)), torch.ones(2, 3))
    s = Preprocess(bin=1, normalize="pattern", scale="sqrt")(x * 7)
    torch.testing.assert_close(s, Preprocess(scale="sqrt")(x))  # dose-independent
    assert Preprocess(crop=4, bin=2).output_shape((8, 8)) == (2, 2)
    assert Preprocess(crop=4, bin=2)(x).shape == (2, 3, 2, 2)


@pytest.mark.parametrize("normalize", ["pattern", "block", "none"])
def test_blocks_from_scan_equals_per_block_preprocessing(normalize):
    g = BlockGeometry(scan_shape=(12, 12), phase_shape=(48, 48), phase_sampling=(0.5, 0.5), block=6, stride=3,
                      patch=24)
    scan = torch.rand(12, 12, 8, 8) * 50
    pre = Preprocess(bin=2, normalize=normalize, scale="log")
    got = blocks_from_scan(scan.numpy(), g, pre)
    want = torch.stack([pre(scan[y:y + 6, x:x + 6].reshape(36, 8, 8)) for y, x in g.blocks()])
    assert got.shape == (len(list(g.blocks())), 36, 4, 4)
    torch.testing.assert_close(got, want)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(InputFileError, match="no such training file"):
        SampleIndex.from_paths([tmp_path / "nope.h5"])
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputFileError, match="dp_set_"):
        SampleIndex.from_paths([tmp_path / "empty.h5"])


def test_an_empty_split_stays_empty(tmp_path):
    """``val_fraction: 0`` means no validation samples; an empty subset used to refill itself with every sample, so
    the validation split silently became the whole set."""
    write_synthetic_file(tmp_path / "simulation_data1.h5", 4, extent=24.0, phase_px=48, scan=12, window=8)
    idx = SampleIndex.from_paths([tmp_path / "simulation_data1.h5"], block=6, stride=3, patch=24)
    assert len(idx) == 4 and len(idx.subset([])) == 0
    splits = idx.split(0.0, 0.25, seed=1)
    assert len(splits["val"]) == 0 and len(splits["test"]) == 1 and len(splits["train"]) == 3
    assert sorted(splits["train"].entries + splits["test"].entries) == sorted(idx.entries)
