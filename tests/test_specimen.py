"""Specimens: Kirkland potentials against the closed form, phase = σ·V, structures."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from phasestem.base.errors import InputFileError
from phasestem.physics import specimen
from phasestem.physics.optics import interaction_constant


def _atom_error(element, n, L=12.0):
    """Max |numeric − closed form| over 0.3 Å < r < 3 Å, and its max relative value inside 1.5 Å."""
    from ase.data import atomic_numbers

    v = specimen.projected_potential(np.array([[L / 2, L / 2, 0.0]]), [atomic_numbers[element]], (L, L), (n, n))
    v = v[0].double().numpy()
    y = np.arange(n) * L / n - L / 2
    r = np.hypot(y[:, None], y[None, :])
    ring = (r > 0.3) & (r < 3.0)
    yy, xx = np.broadcast_to(y[:, None], r.shape)[ring], np.broadcast_to(y[None, :], r.shape)[ring]
    # the cell is periodic: include the closed form of neighbouring images
    ref = sum(specimen.projected_potential_analytic(element, np.hypot(yy + i * L, xx + j * L))
              for i in range(-2, 3) for j in range(-2, 3))
    err = np.abs(v[ring] - ref)
    core = r[ring] < 1.5
    return err.max(), (err[core] / ref[core]).max()


@pytest.mark.parametrize("element", ["C", "Si", "Au"])
def test_single_atom_projected_potential_matches_kirkland_closed_form(element):
    coarse, _ = _atom_error(element, 240)  # 0.05 Å pixels
    fine, rel = _atom_error(element, 480)  # 0.025 Å pixels
    assert rel < 0.02  # within 2 % of the closed form where the potential matters
    assert fine < coarse / 3  # and converging to it (band-limit error ∝ pixel²)


def _shipped_kirkland() -> dict:
    from importlib.resources import files

    return json.loads((files("phasestem") / "data" / "kirkland.json").read_text(encoding="utf-8"))


def test_kirkland_table_is_package_data_with_its_citation():
    doc = _shipped_kirkland()
    assert "Kirkland" in doc["citation"] and "Advanced Computing in Electron Microscopy" in doc["citation"]
    assert len(doc["elements"]) == 103 and list(doc["elements"])[:2] == ["H", "He"]
    np.testing.assert_array_equal(specimen.kirkland_parameters("Si"), doc["elements"]["Si"])
    np.testing.assert_array_equal(specimen.kirkland_parameters(14), doc["elements"]["Si"])


def test_shipped_kirkland_table_equals_abtems():
    """The package data is abTEM's table, number for number (written by scripts/make_kirkland_table.py)."""
    spec = importlib.util.find_spec("abtem")  # found, not imported (abTEM imports slowly)
    if spec is None:
        pytest.skip("abTEM is not installed (the [abtem] extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "parametrizations" / "data" / "kirkland.json"
    assert _shipped_kirkland()["elements"] == json.loads(path.read_text())  # same elements, same numbers


def test_scattering_factor_is_fourier_transform_of_potential():
    # the k = 0 component of the cell potential equals 2π a0e f(0) / area
    L, n = 12.0, 96
    v = specimen.projected_potential(np.array([[3.0, 4.0, 0.0]]), [14], (L, L), (n, n))[0].double().numpy()
    f0 = specimen.scattering_factor(14, np.array(0.0))
    assert v.mean() == pytest.approx(2 * np.pi * specimen.A0_E * f0 / L**2, rel=1e-6)


def test_phase_is_sigma_times_potential():
    v = np.array([[10.0, 250.0]])
    np.testing.assert_allclose(specimen.phase_from_potential(v, 300e3), v * interaction_constant(300e3))


def test_slices_partition_the_projected_potential():
    rng = np.random.default_rng(0)
    atoms = specimen.amorphous(rng, (10.0, 10.0), 6.0, ("C",), 0.05)
    one = specimen.projected_potential(atoms.positions, atoms.numbers, (10.0, 10.0), (40, 40))
    edges = np.array([-np.inf, 2.0, 4.0, np.inf])
    three = specimen.projected_potential(atoms.positions, atoms.numbers, (10.0, 10.0), (40, 40), edges)
    assert three.shape == (3, 40, 40)
    np.testing.assert_allclose(three.sum(0).numpy(), one[0].numpy(), rtol=1e-4, atol=1e-3)


def test_random_crystal_fills_the_cell_and_is_reproducible():
    a = specimen.random_crystal(np.random.default_rng(3), (30.0, 30.0), 8.0)
    b = specimen.random_crystal(np.random.default_rng(3), (30.0, 30.0), 8.0)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.positions.min() >= 0 and (a.positions.max(0) < [30, 30, 8]).all()
    assert len(a) > 100


def test_structure_file_and_materials_h5(tmp_path):
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "si.cif", bulk("Si", "diamond", a=5.43, cubic=True))
    atoms = specimen.load_structure(tmp_path / "si.cif", (20.0, 20.0), 10.0)
    assert set(atoms.numbers) == {14} and atoms.positions.max(0)[0] < 20
    unit = bulk("Cu", "fcc", a=3.6, cubic=True)
    with h5py.File(tmp_path / "mats.h5", "w") as f:
        g = f.create_group("Cu")
        g["atomic_numbers"] = unit.numbers
        g["positions"] = unit.positions
        g["lattice"] = unit.cell.array
        g["pbc"] = [True, True, True]
    mats = specimen.read_materials_h5(tmp_path / "mats.h5")
    assert mats[0][0] == "Cu" and len(mats[0][1]) == 4
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_group("X")["positions"] = unit.positions
    with pytest.raises(InputFileError, match="bad.h5:/X: missing key 'atomic_numbers'"):
        specimen.read_materials_h5(tmp_path / "bad.h5")
    with pytest.raises(InputFileError, match="no such structure file"):
        specimen.load_structure(tmp_path / "missing.cif")


def test_vacancies_take_out_whole_columns_at_the_poisson_rate():
    """A simple cubic crystal on its zone axis (columns of 4 atoms every 3 Å): every vacancy removes exactly one
    column, none is left within 1 Å of a site, and the mean count over many draws is the rate × the cell's area."""
    from ase import Atoms

    a, n = 3.0, 10
    pos = np.array([(i * a + 0.2, j * a + 0.2, k * 2.0) for i in range(n) for j in range(n) for k in range(4)])
    atoms = Atoms("Si" * len(pos), positions=pos, cell=[n * a, n * a, 8.0], pbc=[True, True, False])
    counts = []
    for seed in range(200):
        out = specimen.remove_columns(atoms, 1.0, np.random.default_rng(seed))  # 9 nm² → 9 on average
        sites = out.info["vacancies"]
        assert len(out) == len(atoms) - 4 * len(sites)
        for y, x in sites:
            d = out.positions[:, :2] - (x, y)
            assert np.hypot(*d.T).min() >= 1.0
        counts.append(len(sites))
    assert abs(np.mean(counts) - 9.0) < 0.7  # Poisson: s.e.m. 0.21
    none = specimen.remove_columns(atoms, 0.0, np.random.default_rng(0))
    assert len(none) == len(atoms) and none.info["vacancies"].shape == (0, 2)
