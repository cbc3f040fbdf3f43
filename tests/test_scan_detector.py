"""GridScan positions and PixelatedDetector transforms (phasestem.scan, phasestem.detector)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from phasestem.base.errors import ConfigError, ShapeError
from phasestem.dataset import FourDSTEM
from phasestem.detector import PixelatedDetector
from phasestem.recon.params import ScanConfig, configured_scan
from phasestem.scan import GridScan, as_grid_scan


def _reference_positions(shape, step, origin, rotation, affine):
    """The raster builder recon/params.py used before GridScan (written out independently)."""
    out = []
    th = math.radians(rotation)
    for iy in range(shape[0]):
        for ix in range(shape[1]):
            y, x = iy * step[0], ix * step[1]
            y, x = y * math.cos(th) - x * math.sin(th), y * math.sin(th) + x * math.cos(th)
            if affine is not None:
                y, x = affine[0][0] * y + affine[0][1] * x, affine[1][0] * y + affine[1][1] * x
            out.append((y + origin[0], x + origin[1]))
    return np.array(out)


@pytest.mark.parametrize("rotation", [0.0, 17.3, 90.0, -123.0])
@pytest.mark.parametrize("affine", [None, ((1.02, 0.03), (-0.01, 0.97))])
def test_gridscan_matches_reference_and_scan_positions(rotation, affine):
    shape, step, origin = (3, 4), (0.4, 0.5), (1.5, -2.0)
    ref = _reference_positions(shape, step, origin, rotation, affine)
    scan = GridScan(shape, step, origin=origin, rotation=rotation, affine=affine)
    np.testing.assert_allclose(scan.positions(), ref, atol=1e-12)
    cfg = ScanConfig(shape=shape, step=step, origin=origin, rotation=rotation, affine=affine)
    np.testing.assert_allclose(configured_scan(cfg, GridScan(shape, step, origin=origin)).positions(), ref,
                               atol=1e-12)
    # matrix: position = origin + M · (iy, ix)
    np.testing.assert_allclose(scan.positions()[5], np.asarray(origin) + scan.matrix @ np.array([1, 1]), atol=1e-12)


def test_gridscan_rotation_is_counter_clockwise_as_displayed():
    # a step along +x (to the right) turned 90° ccw on a y-down display points up: −y
    pos = GridScan((1, 2), (1.0, 1.0), rotation=90.0).positions()
    np.testing.assert_allclose(pos[1], [-1.0, 0.0], atol=1e-12)


def test_gridscan_plain_raster_equals_dataset_grid_and_round_trips_dict():
    scan = GridScan((2, 3), 0.7, origin=(0.1, 0.2))
    ds = FourDSTEM(np.zeros((2, 3, 4, 4)), energy=300e3, scan_step=(0.7, 0.7), scan_origin=(0.1, 0.2))
    np.testing.assert_allclose(scan.positions(), ds.positions_angstrom())
    np.testing.assert_allclose(GridScan.from_dataset(ds).positions(), ds.positions_angstrom())
    det = PixelatedDetector.from_dataset(ds)
    assert det.shape == (4, 4) and det.angular_sampling is None
    assert scan.is_plain_raster
    again = GridScan.from_dict(scan.replace(rotation=12.0, affine=np.eye(2)).to_dict())
    assert again.rotation == 12.0 and not again.is_plain_raster
    np.testing.assert_allclose(again.positions(), scan.replace(rotation=12.0).positions())
    assert as_grid_scan((2, 3)).shape == (2, 3)


def test_gridscan_explicit_positions_and_errors():
    pos = np.random.default_rng(0).normal(size=(6, 2))
    scan = GridScan.from_positions(pos, shape=(2, 3))
    np.testing.assert_array_equal(scan.positions(), pos)
    with pytest.raises(ShapeError, match="5 positions for a 2×3 scan"):
        GridScan((2, 3), explicit=pos[:5])
    with pytest.raises(ConfigError, match="scan.shape"):
        GridScan((0, 3))
    with pytest.raises(ConfigError, match="scan.affine"):
        GridScan((2, 2), affine=np.eye(3))


def _frames(shape=(2, 7, 9), seed=1):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_detector_identity_and_mounting_round_trip():
    p = _frames()
    np.testing.assert_array_equal(PixelatedDetector((7, 9)).apply(p), p)
    # odd sizes: the central pixel is fixed by flips, so flips/transposes are exact permutations
    det = PixelatedDetector((7, 9), transpose=True, flip_y=True)
    out = det.apply(p)
    np.testing.assert_array_equal(out, np.swapaxes(p, -1, -2)[..., ::-1, :])
    assert det.output_shape == (9, 7)
    # undoing the mounting: flip back then transpose back
    back = PixelatedDetector((9, 7), flip_y=True).apply(out)
    np.testing.assert_array_equal(PixelatedDetector((9, 7), transpose=True).apply(back), p)


def test_detector_even_flip_keeps_zero_frequency_on_the_centre():
    p = np.zeros((6, 6), np.float32)
    p[3, 3] = 1.0  # zero frequency at the raw (H//2, W//2)
    out = PixelatedDetector((6, 6), flip_y=True, flip_x=True).apply(p)
    assert out[3, 3] == 1.0 and out.sum() == 1.0


def test_detector_rotation_matches_rot90_and_vectors():
    p = _frames((7, 7))
    np.testing.assert_allclose(PixelatedDetector((7, 7), rotation=90.0).apply(p), np.rot90(p), atol=1e-6)
    # 90° then −90° (bilinear path with a tiny extra angle) restores the frame
    there = PixelatedDetector((7, 7), rotation=90.0 + 1e-7).apply(p)
    np.testing.assert_allclose(PixelatedDetector((7, 7), rotation=-90.0).apply(there), p, atol=1e-4)
    # a feature to the right of the centre goes up after 90° ccw; oriented_vectors says the same
    det = PixelatedDetector((7, 7), rotation=90.0)
    q = np.zeros((7, 7), np.float32)
    q[3, 5] = 1.0
    assert det.apply(q)[1, 3] == 1.0
    np.testing.assert_allclose(det.oriented_vectors([0.0, 2.0]), [-2.0, 0.0], atol=1e-12)


def test_detector_centring_crop_binning_and_sampling():
    p = np.zeros((2, 10, 12), np.float32)
    p[0, 6, 4] = 5.0  # disc centres of two frames (descan): (6, 4) and (3, 8)
    p[1, 3, 8] = 7.0
    det = PixelatedDetector((10, 12), angular_sampling=(0.5, 0.6), crop=(6, 6), binning=3)
    out = det.apply(p, centres=[[6, 4], [3, 8]])
    assert out.shape == (2, 2, 2) and det.output_shape == (2, 2)
    assert out[0, 1, 1] == 5.0 and out[1, 1, 1] == 7.0  # zero frequency lands in bin (h//2, w//2)
    assert det.output_angular_sampling == pytest.approx((1.5, 1.8))
    assert PixelatedDetector((10, 12), angular_sampling=(0.5, 0.6), transpose=True).output_angular_sampling == (
        0.6, 0.5)
    # a fixed fractional centre: bilinear, total intensity of an interior feature kept
    q = np.zeros((9, 9), np.float32)
    q[4, 4] = 1.0
    sub = PixelatedDetector((9, 9), centre=(4.5, 4.0)).apply(q)
    np.testing.assert_allclose(sub[3:5, 4], [0.5, 0.5], atol=1e-6)


def test_detector_bad_pixels_dark_gain_and_mask():
    rng = np.random.default_rng(3)
    clean = rng.random((3, 8, 8)).astype(np.float32) + 1.0
    clean[..., 2, 5] = clean[..., 1:4, 4:7].sum((-2, -1)) / 9  # make the neighbour mean exact below
    raw = clean.copy()
    raw[..., 2, 5] = 1e6  # hot
    raw[..., 7, 0] = 0.0  # dead, in the corner
    bad = np.zeros((8, 8), bool)
    bad[2, 5] = bad[7, 0] = True
    dark = np.full((8, 8), 0.25, np.float32)
    gain = np.full((8, 8), 2.0, np.float32)
    det = PixelatedDetector((8, 8), bad_pixels=bad, dark=dark, gain=gain)
    out = det.apply(raw + dark)
    good = ~bad
    np.testing.assert_allclose(out[..., good], 2.0 * clean[..., good], rtol=1e-6)
    neighbours = np.array([(1, 4), (1, 5), (1, 6), (2, 4), (2, 6), (3, 4), (3, 5), (3, 6)])
    expect = 2.0 * clean[..., neighbours[:, 0], neighbours[:, 1]].mean(-1)
    np.testing.assert_allclose(out[..., 2, 5], expect, rtol=1e-5)
    expect_corner = 2.0 * clean[..., [6, 6, 7], [0, 1, 1]].mean(-1)
    np.testing.assert_allclose(out[..., 7, 0], expect_corner, rtol=1e-5)
    assert raw[0, 2, 5] == 1e6  # the caller's frames are untouched
    zero = PixelatedDetector((8, 8), bad_pixels=bad, bad_pixel_fill="zero").apply(raw)
    assert zero[..., 2, 5].max() == 0.0 and zero[..., 7, 0].max() == 0.0
    mask = det.valid_mask()
    assert not mask[2, 5] and not mask[7, 0] and mask.sum() == 62
    # YAML form: bad pixels as a list of [y, x]
    again = PixelatedDetector.from_dict(det.to_dict())
    np.testing.assert_array_equal(again.bad_pixels, bad)


def test_detector_errors_name_the_field():
    with pytest.raises(ShapeError, match=r"frames of shape \(8, 8\) do not match the detector \(7, 9\)"):
        PixelatedDetector((7, 9)).apply(np.zeros((8, 8)))
    with pytest.raises(ShapeError, match="detector.bad_pixels"):
        PixelatedDetector((7, 9), bad_pixels=np.zeros((9, 7), bool))
    with pytest.raises(ConfigError, match="detector.crop"):
        PixelatedDetector((7, 9), crop=(8, 8))
    with pytest.raises(ConfigError, match="unknown key"):
        PixelatedDetector.from_dict({"shape": (4, 4), "rotate": 3})


def test_detector_apply_dataset_reads_chunks():
    p = _frames((3, 2, 7, 9))
    ds = FourDSTEM(p, energy=200e3, scan_step=(1.0, 1.0), angular_sampling=(0.4, 0.4))
    det = PixelatedDetector((7, 9), angular_sampling=(0.4, 0.4), transpose=True, binning=1)
    out = det.apply_dataset(ds, chunk_rows=2)
    np.testing.assert_array_equal(out.patterns, np.swapaxes(p, -1, -2))
    assert out.metadata["detector"]["transpose"] is True


# ---- the former raster builders and crop/bin copies now give exactly GridScan's / PixelatedDetector's ----------
def test_former_raster_builders_equal_gridscan():
    from phasestem.calibrate.disk import DiskFit
    from phasestem.direct.frame import scan_map
    from phasestem.direct.tcbf import scan_shift_per_angle
    from phasestem.learn.data import BlockGeometry
    from phasestem.recon.synthetic import synthetic_scan
    from phasestem.scan import rotation_matrix

    for shape, step, origin in [((3, 4), (1 / 3, 0.7), (0.1, -2.3)), ((17, 9), (0.123456789, 1.1), (0.0, 0.0))]:
        grid = GridScan(shape, step, origin=origin).positions()
        ds = FourDSTEM(np.zeros((*shape, 2, 2)), energy=300e3, scan_step=step, scan_origin=origin)
        np.testing.assert_array_equal(ds.positions_angstrom(), grid)
        np.testing.assert_array_equal(GridScan.from_dataset(ds).positions(), grid)
        # the raster a reader infers from its positions is the same scan
        again = GridScan.raster_from_positions(grid)
        assert again.shape == shape and again.origin == origin
        np.testing.assert_allclose(again.step, step, atol=1e-3)  # from positions rounded to 3 decimals
    assert GridScan.raster_from_positions(np.random.default_rng(0).random((12, 2))) is None

    # recon.synthetic: the nominal grid (no position noise) is the plain GridScan
    syn = synthetic_scan(window=(16, 16), scan_shape=(3, 4), scan_step=0.7, max_phase=0.1)
    np.testing.assert_array_equal(syn.truth["positions"], GridScan((3, 4), 0.7).positions())

    # learn.data: a block's coordinates are its GridScan centred on 0 Å (float32)
    for block, step in [(14, (2.0, 2.0)), (5, (0.37, 1 / 7))]:
        g = BlockGeometry(scan_shape=(20, 20), scan_step=step, block=block, stride=9, patch=16)
        centred = GridScan((block, block), step, origin=(-(block - 1) / 2 * step[0], -(block - 1) / 2 * step[1]))
        np.testing.assert_array_equal(g.block_coords(), centred.positions().astype(np.float32))
        np.testing.assert_allclose(g.block_coords().mean(0), 0.0, atol=1e-5)

    # direct.frame / tcbf / calibrate.disk: the scan's affine map, rotation and index grid
    scan = GridScan((5, 6), (0.4, 0.5), origin=(1.0, -0.5), rotation=23.0)
    rotated = FourDSTEM(np.zeros((5, 6, 2, 2)), energy=300e3, scan_step=(0.4, 0.5), positions=scan.positions())
    L, origin = scan_map(rotated)
    np.testing.assert_allclose(L, scan.matrix, atol=1e-12)
    np.testing.assert_allclose(origin, scan.origin, atol=1e-12)
    np.testing.assert_array_equal(scan_shift_per_angle(23.0, (0.4, 0.5)),
                                  np.diag([1 / 0.4, 1 / 0.5]) @ rotation_matrix(23.0).T)
    fit = DiskFit.__new__(DiskFit)
    fit.plane = np.array([[10.0, 11.0], [0.5, -0.25], [0.125, 1.0]])
    idx = GridScan((5, 6)).indices()
    np.testing.assert_array_equal(fit.plane_at((5, 6)).reshape(-1, 2),
                                  fit.plane[0] + idx[:, :1] * fit.plane[1] + idx[:, 1:] * fit.plane[2])


@pytest.mark.parametrize("frame", [(10, 12), (9, 7), (64, 64), (15, 16)])
def test_former_crop_and_binning_equal_pixelated_detector(frame):
    import torch

    from phasestem.detector import centre_window
    from phasestem.learn.data import Preprocess

    p = _frames((2, 3, *frame), seed=4)
    ds = FourDSTEM(p, energy=300e3, scan_step=(1.0, 1.0), angular_sampling=(0.5, 0.6))
    for f in (2, 3, 4):
        det = PixelatedDetector(frame, angular_sampling=(0.5, 0.6), binning=f)
        b = ds.binned(f)
        np.testing.assert_array_equal(b.patterns, det.apply(p))
        np.testing.assert_array_equal(b.patterns, det.reduce(p))
        assert b.angular_sampling == det.output_angular_sampling and b.pattern_shape == det.output_shape
    for crop in [(5, 6), (frame[0] - 1, frame[1])]:
        np.testing.assert_array_equal(ds.cropped(crop).patterns, PixelatedDetector(frame, crop=crop).apply(p))
    for t, fy, fx in [(True, False, False), (False, True, True), (True, True, False)]:
        det = PixelatedDetector(frame, angular_sampling=(0.5, 0.6), transpose=t, flip_y=fy, flip_x=fx)
        out = ds.transformed(flip_y=fy, flip_x=fx, transpose=t)
        np.testing.assert_array_equal(out.patterns, det.apply(p))
        assert out.angular_sampling == det.output_angular_sampling
        if frame[0] % 2 and frame[1] % 2:  # odd frames: the flip about the centre is the plain reversal
            np.testing.assert_array_equal(out.patterns, det.orient(p))
    padded = ds.padded((frame[0] + 3, frame[1] + 2))
    np.testing.assert_array_equal(padded.patterns, centre_window(p, (frame[0] + 3, frame[1] + 2)))
    np.testing.assert_array_equal(padded.cropped(frame).patterns, p)
    # learning preprocessing: crop then bin, as the detector does (torch in, torch out)
    for crop, f in [(8, 2), (None, 3), (100, 4)]:
        pre = Preprocess(crop=crop, bin=f, normalize="none", scale="none")
        c = None if crop is None else (min(crop, frame[0]), min(crop, frame[1]))
        det = PixelatedDetector(frame, crop=c, binning=f)
        np.testing.assert_array_equal(pre(torch.from_numpy(p)).numpy(), det.reduce(torch.from_numpy(p)).numpy())
        np.testing.assert_allclose(pre(torch.from_numpy(p)).numpy(), det.apply(p), rtol=1e-6)  # torch vs numpy sums
        assert pre.output_shape(frame) == det.output_shape


def test_binning_keeps_zero_frequency_in_the_central_bin_when_the_bins_do_not_fit_evenly():
    """The one bin rule: the zero frequency H//2 is pixel (f − 1)//2 of bin h//2 whatever the frame; bins that
    reach past the frame's edge sum what they hold, and the detector's valid mask leaves them out."""
    for H, f in [(10, 2), (64, 3), (9, 3), (13, 4), (48, 3), (12, 4)]:
        p = np.zeros((H, H), np.float32)
        p[H // 2, H // 2] = 1.0
        det = PixelatedDetector((H, H), binning=f)
        out = det.apply(p)
        h = H // f
        assert out.shape == (h, h) and out[h // 2, h // 2] == 1.0 and out.sum() == 1.0
        for d in range(-(f - 1) // 2 - 1, f - (f - 1) // 2 + 1):  # the pixels of the central bin and one beyond
            q = np.zeros((H, H), np.float32)
            if 0 <= H // 2 + d < H:
                q[H // 2 + d, H // 2] = 1.0
                inside = -((f - 1) // 2) <= d < f - (f - 1) // 2
                assert (det.apply(q)[h // 2, h // 2] == 1.0) == inside, (H, f, d)
        ones = det.apply(np.ones((H, H), np.float32))
        full = det.valid_mask()
        np.testing.assert_array_equal(ones[full], f * f)
        assert (ones[~full] < f * f).all() and full[h // 2, h // 2]


def test_simulator_bins_are_the_detector_with_the_zero_frequency_centred_in_its_bin():
    """simulate.scan.DetectorGeometry (odd factors) = PixelatedDetector with the same crop and binning (the one
    bin rule: the zero frequency is the central pixel of the central bin)."""
    import torch

    from phasestem.simulate.scan import DetectorGeometry

    for gpts, shape in [((128, 128), (32, 32)), ((200, 180), (33, 31))]:
        geo = DetectorGeometry.make(gpts, (0.1, 0.11), 200e3, shape)
        assert geo.factor[0] == geo.factor[1] == 3
        full = torch.rand(2, *gpts, generator=torch.Generator().manual_seed(2))
        det = PixelatedDetector(gpts, crop=geo.crop, binning=3)
        np.testing.assert_allclose(geo.apply(full).numpy(), det.apply(full.numpy()), rtol=1e-6)  # torch vs numpy sums


def test_flipped_data_keep_the_zero_frequency_on_the_central_pixel():
    """``data.flip_y``/``flip_x`` mirror k → −k: a bright pixel at (H//2, W//2) stays there, and a
    pixel at +(2, 3) from it goes to −(2, 3), on even and odd frames alike."""
    for frame in [(8, 10), (7, 9)]:
        p = np.zeros((1, 1, *frame), np.float32)
        cy, cx = frame[0] // 2, frame[1] // 2
        p[0, 0, cy, cx] = 5.0
        p[0, 0, cy + 2, cx + 3] = 1.0
        ds = FourDSTEM(p, energy=300e3, scan_step=(1.0, 1.0), angular_sampling=(0.5, 0.5))
        out = ds.transformed(flip_y=True, flip_x=True).patterns[0, 0]
        assert out[cy, cx] == 5.0 and out[cy - 2, cx - 3] == 1.0 and out.sum() == 6.0


def test_dataset_carries_its_detector_shifts_and_bad_pixels_through_every_transform():
    """Each pattern is a single bright pixel at the zero frequency + its detector shift; the shifts the dataset
    carries after subset, transpose, flips, crop, padding (exact) and binning (to the bin) are where the pixel
    is, and the carried bad-pixel mask is the mask transformed as the patterns are."""
    rng = np.random.default_rng(0)
    sy, sx, n = 3, 4, 16
    shifts = rng.integers(-3, 4, size=(sy * sx, 2)).astype(float)
    pats = np.zeros((sy, sx, n, n), np.float32)
    for i, (dy, dx) in enumerate(shifts.astype(int)):
        pats[i // sx, i % sx, n // 2 + dy, n // 2 + dx] = 1.0
    mask = np.zeros((n, n), bool)
    mask[[2, 5, 11], [3, 9, 14]] = True
    ds = FourDSTEM(pats, 300e3, (1.0, 1.0), angular_sampling=(1.0, 1.0), detector_shifts=shifts, bad_pixels=mask)
    masks = FourDSTEM(np.broadcast_to(mask.astype(np.float32), pats.shape).copy(), 300e3, (1.0, 1.0),
                      angular_sampling=(1.0, 1.0))

    def peaks(d):
        p = d.get_patterns().numpy()
        idx = p.reshape(len(p), -1).argmax(1)
        h, w = d.pattern_shape
        return np.stack([idx // w - h // 2, idx % w - w // 2], -1).astype(float)

    chains = [lambda d: d.scan_subset(slice(1, 3), slice(0, 3)),
              lambda d: d.transformed(transpose=True, flip_y=True),
              lambda d: d.transformed(flip_x=True),
              lambda d: d.cropped((12, 12)),
              lambda d: d.padded((14, 14))]
    for step in chains:
        ds, masks = step(ds), (step(masks) if step is not chains[0] else masks)
        np.testing.assert_array_equal(ds.detector_shifts, peaks(ds))
        np.testing.assert_array_equal(ds.bad_pixels, masks.get_patterns().numpy()[0] > 0.5)
        assert ds.detector.shape == ds.pattern_shape and ds.scan.n == ds.n_patterns
        np.testing.assert_array_equal(ds.scan.positions(), ds.positions_angstrom())
    binned, masks = ds.binned(2), masks.binned(2)
    assert np.abs(binned.detector_shifts - peaks(binned)).max() <= 0.5  # the bin that holds the pixel
    np.testing.assert_array_equal(binned.bad_pixels, masks.get_patterns().numpy()[0] > 0)
    with pytest.raises(ShapeError, match="detector_shifts cannot follow"):
        ds._replace(patterns=np.zeros((2, 3, 8, 8), np.float32))
