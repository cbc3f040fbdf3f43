"""``benchmarks/scale/scale.py``'s windowed NumPy multislice (the scale benchmark's independent data): for one slice
it must give the benchmark suite's whole-grid NumPy simulator's patterns (the probe propagated on its own 128²
window instead of the whole specimen), and it writes what it promises (a memory-mapped ``.npy`` of the scan, the
truth on the scanned field)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(BENCH / "independent"))
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH / "scale" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("specimen", ["thin", "coherent"])
def test_the_windowed_simulator_matches_the_whole_grid_one_for_a_single_slice(scale, tmp_path, monkeypatch,
                                                                            specimen):
    """The specimen's part of each pattern (the pattern less the vacuum's) correlates ≥ 0.98 with the whole-grid
    simulator's, position by position, coherent and with a source of 0.6 Å (the sum over source points, which
    must be nearer the whole-grid simulator's with that source than without); transposed or from the next position
    it does not (measured, coherent: 0.990–0.993 against at most 0.77 and 0.36). Pointwise they differ at the
    disk's edge: the whole-grid probe's aperture is sampled on the specimen's grid, the window's on 128², as
    phasestem samples its own."""
    from numpy_multislice import atom_phase, simulate_patterns

    side, g, spec = 2, scale.GEOM, scale.SPECIMENS[specimen]
    monkeypatch.setitem(scale.SPECIMENS, "vacuum", dict(spec, density=0.0))
    n, samp = g["window"], g["sampling"]
    pats = np.load(scale.simulate_windowed(tmp_path / "spec", specimen, side, seed=4) / "patterns.npy",
                   mmap_mode="r")
    vacuum = np.load(scale.simulate_windowed(tmp_path / "vacuum", "vacuum", side, seed=4) / "patterns.npy")
    truth = np.load(tmp_path / "spec" / "truth.npy")
    assert pats.shape == (side, side, n, n) and pats.dtype == np.float32
    np.testing.assert_allclose(pats.sum((-2, -1)), 1.0, rtol=1e-4)
    # the same specimen, drawn as simulate_windowed draws it, through the whole-grid simulator
    rng = np.random.default_rng(4)
    pad = n // 2 + 8
    fov = int(round((side - 1) * g["step"] / samp)) + 1
    shape = (fov + 2 * pad, fov + 2 * pad)
    phase = atom_phase(shape, samp, rng, int(spec["density"] * shape[0] * shape[1] * samp**2), spec["max_phase"])
    np.testing.assert_allclose(truth, phase[pad:pad + fov, pad:pad + fov], atol=1e-6)
    iy, ix = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    centres = np.stack([iy.ravel(), ix.ravel()], -1) * g["step"] + pad * samp
    optics = (g["energy"], g["semiangle"], g["defocus"])
    ours = pats.reshape(-1, n, n) - vacuum.reshape(-1, n, n)
    src = dict(source_size=spec["source"])
    ref = (simulate_patterns(phase, samp, centres, n, *optics, **src)
           - simulate_patterns(0 * phase, samp, centres, n, *optics, **src))

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    for j in range(side * side):
        assert corr(ours[j], ref[j]) > 0.98, j
        assert corr(ours[j].T, ref[j]) < 0.9 and corr(ours[j], ref[(j + 1) % len(ref)]) < 0.9, j
    if spec["source"]:  # the source is summed: nearer the partially coherent reference than the coherent one
        coherent = (simulate_patterns(phase, samp, centres, n, *optics)
                    - simulate_patterns(0 * phase, samp, centres, n, *optics))
        for j in range(side * side):  # measured 0.989-0.991 against 0.980-0.982
            assert corr(ours[j], ref[j]) > corr(ours[j], coherent[j]) + 0.004, j
