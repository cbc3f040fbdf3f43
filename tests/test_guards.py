"""Hallucination guards (issue 48, item 6) on images whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from phasestem.learn.guards import new_peaks, power_peaks, residual_ratio, site_fraction, vacuum_level


def _lattice(n=64, period=8.0, sigma=1.2):
    yy, xx = np.mgrid[:n, :n]
    cols = np.array([(y, x) for y in np.arange(period / 2, n, period) for x in np.arange(period / 2, n, period)])
    img = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)) for y, x in cols)
    return img, cols


def test_new_peaks_sees_a_lattice_put_into_an_amorphous_image():
    rng = np.random.default_rng(0)
    amorphous = np.asarray(np.fft.ifft2(np.fft.fft2(rng.standard_normal((64, 64))) * 0.3).real)
    lattice, _ = _lattice()
    hallucinated = amorphous + 2.0 * lattice
    assert new_peaks(amorphous, amorphous) == 0
    assert new_peaks(hallucinated, amorphous) >= 4  # (±1, 0), (0, ±1) orders of the 8-px lattice at least
    peaks = power_peaks(hallucinated)
    assert any(abs(abs(fy) - 8) <= 1 and abs(fx) <= 1 for fy, fx in peaks)  # 64 px / 8 px = 8 px from centre


def test_site_fraction_of_a_vacancy_and_of_a_column_put_back():
    full, cols = _lattice()
    site = cols[27]
    vacancy = full.copy()
    yy, xx = np.mgrid[:64, :64]
    vacancy -= np.exp(-((yy - site[0]) ** 2 + (xx - site[1]) ** 2) / (2 * 1.2**2))
    others = np.delete(cols, 27, axis=0)
    assert site_fraction(vacancy, site[None], others) < 0.05
    assert site_fraction(full, site[None], others) == pytest.approx(1.0, abs=0.02)


def test_vacuum_level():
    img, _ = _lattice()
    vac = np.zeros_like(img, bool)
    vac[:, :16] = True
    flat = img.copy()
    flat[vac] = 0.7
    assert vacuum_level(flat, vac) < 1e-12
    assert vacuum_level(img, vac) > 0.5


def test_residual_ratio_is_one_for_the_same_phase_and_larger_for_noise():
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(6, 6), window=(32, 32))
    phase = np.asarray(ds.truth["phase"], np.float32)
    s = tuple(ds.truth.get("sampling", ds.sampling))
    assert residual_ratio(phase, phase, ds, s) == pytest.approx(1.0)
    noisy = phase + 0.3 * np.random.default_rng(0).standard_normal(phase.shape).astype(np.float32)
    assert residual_ratio(noisy, phase, ds, s) > 1.2
