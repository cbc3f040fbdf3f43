"""The simulator's imperfect acquisitions: a partially coherent source and a distorted scan.

The partially coherent patterns (a sum over the source's probe modes) are checked against the same source as an
explicit incoherent average of coherent patterns at shifted probe positions; the drift against a scan of another
step; the position errors against their asked spread.
"""
from __future__ import annotations

import numpy as np
import pytest

from phasestem.simulate.config import SimulationConfig
from phasestem.simulate.scan import distorted_positions, simulate_sample

BASE = {"optics": {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 40.0}, "aperture_edge": "hard"},
        "grid": {"extent": (19.2, 19.2), "sim_gpts": (96, 96), "phase_gpts": (48, 48)},
        "scan": {"shape": (4, 4), "step": (0.8, 0.8), "origin": (8.0, 8.0)},
        "detector": {"shape": (48, 48)},
        "specimen": {"kind": "synthetic", "depth": (5.0, 5.0), "synthetic_max_phase": 0.8},
        "output": {"n_files": 1, "samples_per_file": 1}, "compute": {"seed": 3}}


def config(**changes) -> SimulationConfig:
    data = {k: dict(v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        data[section][key] = value
    return SimulationConfig.model_validate(data)


def test_partially_coherent_patterns_are_the_source_average_of_coherent_ones():
    """FWHM 0.8 Å: the sum over all 49 modes is the explicit average over a 7 × 7 Gaussian grid of probe offsets
    (±2σ, the source model of optics.partial_coherence_modes) to < 1 % of the coherent-vs-partial change; the
    default, 99.5 % of the intensity (16 modes), to < 25 % of it (measured 20 %; 8 modes: 110 %)."""
    source = 0.8
    sigma = source / (2 * np.sqrt(2 * np.log(2)))
    exact = simulate_sample(config(**{"optics.source_size": source, "optics.source_modes": 49}), 0)
    partial = simulate_sample(config(**{"optics.source_size": source}), 0)
    coherent = simulate_sample(config(), 0)
    offsets = np.linspace(-2 * sigma, 2 * sigma, 7)
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    average = np.zeros_like(coherent["patterns"], dtype=np.float64)
    for i, dy in enumerate(offsets):
        for j, dx in enumerate(offsets):
            origin = (BASE["scan"]["origin"][0] + dy, BASE["scan"]["origin"][1] + dx)
            average += weights[i, j] * simulate_sample(config(**{"scan.origin": origin}), 0)["patterns"]
    change = np.abs(average - coherent["patterns"]).max()
    assert change > 0.1 * coherent["patterns"].max()  # the source changes the patterns: the check can fail
    assert np.abs(exact["patterns"] - average).max() < 0.01 * change
    assert np.abs(partial["patterns"] - average).max() < 0.25 * change
    occupancy = partial["attrs"]["source_mode_occupancy"]
    assert len(occupancy) == 16 and sum(occupancy) == pytest.approx(1.0, abs=1e-5)
    assert partial["attrs"]["source_size"] == source


def test_a_drift_of_one_step_per_step_is_a_scan_of_twice_the_step():
    """One row of 5 positions at 0.8 Å drifting 3.2 Å along it is a row at 1.6 Å: the same patterns."""
    drifting = simulate_sample(config(**{"scan.shape": (1, 5), "scan.drift": (0.0, 3.2)}), 0)
    wider = simulate_sample(config(**{"scan.shape": (1, 5), "scan.step": (0.8, 1.6)}), 0)
    np.testing.assert_allclose(drifting["positions"], wider["positions"], atol=1e-9)
    np.testing.assert_allclose(drifting["patterns"], wider["patterns"], rtol=0, atol=1e-6)
    assert drifting["attrs"]["drift"] == [0.0, 3.2]


def test_position_errors_have_the_asked_spread_and_leave_the_raster_nominal():
    cfg = config(**{"scan.shape": (50, 50), "scan.position_error": 0.3, "scan.drift": (1.0, -2.0)})
    nominal = distorted_positions(config(**{"scan.shape": (50, 50)}).scan, np.random.default_rng(0))
    moved = distorted_positions(cfg.scan, np.random.default_rng(0))
    error = moved - nominal - np.linspace(0, 1, 2500)[:, None] * np.array([1.0, -2.0])
    assert error.std(0) == pytest.approx([0.3, 0.3], rel=0.05)
    assert np.abs(error.mean(0)).max() < 0.03
    # no distortion asked: nothing is drawn, so the rest of a sample's random stream is unchanged
    rng = np.random.default_rng(5)
    distorted_positions(config().scan, rng)
    assert rng.random() == np.random.default_rng(5).random()
