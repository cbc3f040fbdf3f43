"""The learned route's verdict per site (issue 81, item 1): conformal p-values and Benjamini–Hochberg against their
definitions, the verdict on a lattice whose truth is known (an invented column unsupported, real columns light and
heavy supported), and ``phasestem restore --verdict`` end to end (calibration simulated, cached and reused, the
site table, the line, the figure)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from phasestem.learn.verdict import benjamini_hochberg, column_heights, conformal_p, find_sites, verdict

PIXEL = (0.2, 0.2)


def _lattice(rng, n=120, spacing=2.0, vacancies=(), light_every=3, width=0.35):
    """(image, column sites (K, 2) px, vacancy sites (V, 2) px): Gaussian columns on a square lattice, every
    ``light_every``-th column at 0.4 of the others' height, the columns at ``vacancies`` (lattice indices) left out."""
    yy, xx = np.mgrid[:n, :n] * PIXEL[0]
    image = np.zeros((n, n))
    cols, vac = [], []
    k = 0
    for i in range(1, int(n * PIXEL[0] / spacing)):
        for j in range(1, int(n * PIXEL[1] / spacing)):
            y, x = i * spacing + rng.normal(0, 0.05), j * spacing + rng.normal(0, 0.05)
            if (i, j) in vacancies:
                vac.append((y / PIXEL[0], x / PIXEL[1]))
                continue
            h = 0.4 if k % light_every == 0 else 1.0
            k += 1
            image += h * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width ** 2))
            cols.append((y / PIXEL[0], x / PIXEL[1]))
    return image, np.asarray(cols), np.asarray(vac).reshape(-1, 2)


def _ad_and_restored(rng, vacancies, fill, noise=0.03):
    """AD's phase (the truth blurred, with noise) and a restoration that sharpens it and puts a column back at the
    vacancies of ``fill``."""
    from scipy import ndimage

    truth, cols, vac = _lattice(rng, vacancies=vacancies)
    ad = ndimage.gaussian_filter(truth, 2.0) * 2.5 + rng.normal(0, noise, truth.shape)
    restored = truth.copy()
    yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]] * PIXEL[0]
    for v in fill:  # the restorer invents these columns (full height) where the truth has none
        restored += np.exp(-((yy - v[0] * 2.0) ** 2 + (xx - v[1] * 2.0) ** 2) / (2 * 0.35 ** 2))
    return truth, ad, restored, cols, vac


def test_conformal_p_values_are_valid_under_exchangeability_and_bh_controls_the_fdr():
    rng = np.random.default_rng(0)
    # under the null (test and calibration scores from one distribution) P(p <= a) <= a, and near it
    hits = {a: [] for a in (0.05, 0.1, 0.2)}
    for _ in range(400):
        null = rng.normal(size=39)
        p = conformal_p(rng.normal(size=50), null)
        assert p.min() >= 1 / 40 and p.max() <= 1
        for a in hits:
            hits[a].append(np.mean(p <= a))
    for a, h in hits.items():
        assert np.mean(h) <= a + 0.01 and np.mean(h) >= a - 0.05
    # -inf nulls (sites the restoration left empty) never reach a score
    assert conformal_p(np.array([0.0]), np.array([-np.inf] * 9))[0] == pytest.approx(0.1)
    # Benjamini–Hochberg: the textbook example and the realised FDR over mixtures of null and real sites
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.6])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, False, False, True, False, False]  # k = 2: 0.01 <= 2/6 a
    assert benjamini_hochberg(p, 0.2).tolist() == [True, True, True, True, False, False]  # k = 4: 0.04 <= 4/6 a
    fdp = []
    for _ in range(300):
        null = rng.normal(size=99)
        real = conformal_p(rng.normal(4.0, 1.0, 80), null)
        fake = conformal_p(rng.normal(size=20), null)
        chosen = benjamini_hochberg(np.concatenate([real, fake]), 0.1)
        fdp.append(chosen[80:].sum() / max(chosen.sum(), 1))
    assert np.mean(fdp) <= 0.1 + 0.02


def test_the_verdict_marks_an_invented_column_and_supports_real_columns_light_and_heavy():
    rng = np.random.default_rng(1)
    field = np.ones((120, 120))
    # calibration: the same kind of data with known vacancies, the restorer filling some of them
    null = []
    for seed in range(4):
        r = np.random.default_rng(10 + seed)
        vac = ((2, 2), (4, 7), (7, 3), (9, 9), (5, 5))
        _, ad, restored, _, vac_px = _ad_and_restored(r, vac, fill=vac[:3])
        v = verdict(ad, restored, field, PIXEL, np.array([]))
        for site in vac_px:
            d = np.hypot(*(v.sites - site).T)
            null.append(v.score[d.argmin()] if d.min() < 3 else -np.inf)
    truth, ad, restored, cols, vac_px = _ad_and_restored(rng, ((3, 4), (8, 6)), fill=((3, 4),))
    v = verdict(ad, restored, field, PIXEL, np.asarray(null), alpha=0.1, calibration={"samples": 4})
    invented = np.hypot(*(v.sites - vac_px[0]).T).argmin()
    assert np.hypot(*(v.sites[invented] - vac_px[0])) < 2
    assert not v.supported[invented] and v.score[invented] < 0.5
    real = [np.hypot(*(v.sites - c).T).argmin() for c in cols if np.hypot(*(v.sites - c).T).min() < 2]
    assert len(real) >= 0.95 * len(cols) and np.mean(v.supported[real]) >= 0.95
    # light columns (0.4 of the others) are among the supported: the score is relative to each image's own heights
    light = cols[::3]
    at_light = [np.hypot(*(v.sites - c).T).argmin() for c in light]
    assert np.mean(v.supported[at_light]) >= 0.9
    # the empty vacancy is no candidate; its truth is empty; heights read as expected
    assert np.hypot(*(v.sites - vac_px[1]).T).min() > 3
    assert column_heights(truth, vac_px, PIXEL).max() < 0.1 < column_heights(truth, cols[1:2], PIXEL)[0]
    assert v.unsupported >= 1 and "not supported by the data at 10% FDR: read them from AD's phase" in v.line()
    # a flat image has no columns
    assert len(find_sites(np.zeros((50, 50)), np.ones((50, 50)), PIXEL)) == 0


def test_restore_verdict_calibrates_at_the_runs_geometry_caches_it_and_writes_its_table(tmp_path, capsys):
    from test_restore_output import _identity_restorer, _tiny_run

    from phasestem.cli import main

    torch.set_num_threads(1)
    results = _tiny_run(tmp_path, noise_sigma=1e-3)
    model = _identity_restorer(tmp_path / "restorer.safetensors", results)
    cal = tmp_path / "calibration"
    out = tmp_path / "restored.h5"
    args = ["restore", results, "--model", model, "--out-file", str(out), "--verdict", "--calibration", str(cal),
            "--calibration-samples", "1", "--calibration-cell", "8", "--fdr", "0.2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("verdict: "))
    assert "restored columns are not supported by the data at 20% FDR" in line and "calibrated on" in line
    record = json.loads((cal / "calibration.json").read_text())
    assert list(record["cpu_seconds"]) == ["0"] and record["cpu_seconds"]["0"] > 0
    with np.load(cal / "sample_0.npz", allow_pickle=False) as z:  # the images the scores are made from
        assert z["ad"].shape == z["restored"].shape == z["truth"].shape == z["field"].shape
    with h5py.File(out) as f:
        table = f["verdict_sites"][...]
        assert set(table.dtype.names) >= {"row", "col", "ad_height", "restored_height", "p_value", "supported"}
        assert f["verdict_sites"].attrs["fdr"] == pytest.approx(0.2)
        assert f["verdict_sites"].attrs["calibration_samples"] == 1
        assert np.all((table["p_value"] > 0) & (table["p_value"] <= 1))
        # the identity restorer restores AD itself: every score is 1 (AD shows what it shows)
        assert np.allclose(table["score"][table["restored_height"] > 0.1], 1.0, atol=1e-4)
    assert out.with_suffix(".png").is_file()
    # a second restore at the same geometry reads the calibration: nothing simulated again
    stamp = (cal / "calibration.json").stat().st_mtime_ns
    assert main([*args, "--replace"]) == 0
    assert (cal / "calibration.json").stat().st_mtime_ns == stamp
    assert "calibrating" not in (tmp_path / "restored.log").read_text().split("phasestem restore")[-1]
    # --verdict without the run's patterns (their dose) is refused in one line
    assert main([*args, "--replace", "--no-data-guard"]) == 1
    assert "--verdict calibrates at the run's dose" in capsys.readouterr().err
