"""Specimen defects (phasestem.physics.defects, specimen.defects): each makes what it says and records where."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from ase import Atoms

from phasestem.base.errors import ConfigError
from phasestem.physics import defects
from phasestem.physics import specimen as spec
from phasestem.simulate import load_config, simulate_dataset, simulate_sample
from phasestem.simulate.config import Defects
from phasestem.simulate.scan import add_defects, make_atoms

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "simulate_tiny.yaml"
A, N, LAYERS = 3.0, 10, 4  # simple cubic test crystal: columns of 4 Si atoms every 3 Å over a 30 Å cell
EXTENT = (N * A, N * A)


def cubic(element: str = "Si") -> Atoms:
    """A simple cubic crystal on its zone axis, columns at (i·3 + 0.2, j·3 + 0.2) Å, atoms 2 Å apart in z."""
    pos = np.array([(i * A + 0.2, j * A + 0.2, k * 2.0) for i in range(N) for j in range(N) for k in range(LAYERS)])
    return Atoms(element * len(pos), positions=pos, cell=[N * A, N * A, 8.0], pbc=[True, True, False])


def grown_cubic(rng: np.random.Generator) -> Atoms:
    """The same crystal grown by fill_cell from its unit cell, so that it carries its unit cell and orientation."""
    unit = Atoms("Si", positions=[(0, 0, 0)], cell=[A, A, 2.0], pbc=True)
    return spec.fill_cell(unit, EXTENT, 8.0, np.eye(3), rng)


def projected_distance(atoms: Atoms, site_yx) -> np.ndarray:
    """(N,) distance in projection (Å) of every atom from ``site_yx`` at the nearest periodic image."""
    d = defects._wrap_about(atoms.positions[:, [1, 0]], np.asarray(site_yx, float), defects.cell_extent(atoms))
    return np.hypot(*d.T)


def config_file(tmp_path: Path, **specimen) -> Path:
    """The tiny simulation config, one file of one sample, with ``specimen`` settings."""
    data = yaml.safe_load(TINY.read_text())
    data["specimen"].update(specimen)
    data["output"].update(n_files=1, samples_per_file=1)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_substitutions_change_whole_columns_to_a_lighter_or_heavier_element():
    atoms, counts, kinds = cubic(), [], set()
    for seed in range(60):
        out = defects.substitute_columns(atoms, 1.0, np.random.default_rng(seed), z_step=(3, 8))  # 9 per cell
        sites, new_z = out.info["substitutions"], out.info["substitution_numbers"]
        heavier = out.info["substitution_heavier"].astype(bool)
        np.testing.assert_array_equal(out.positions, atoms.positions)
        assert (out.numbers != 14).sum() == LAYERS * len(sites)  # whole columns, nothing else
        for site, z, up in zip(sites, new_z, heavier, strict=True):
            column = projected_distance(out, site) < 1.0
            assert column.sum() == LAYERS and (out.numbers[column] == z).all()
            assert (3 <= z - 14 <= 8) if up else (3 <= 14 - z <= 8)
            kinds.add(bool(up))
        counts.append(len(sites))
    assert abs(np.mean(counts) - 9.0) < 1.2  # Poisson: s.e.m. 0.39
    assert kinds == {True, False}
    # no lighter element below Z 1: hydrogen's columns can only get heavier
    out = defects.substitute_columns(cubic("H"), 1.0, np.random.default_rng(0), z_step=(3, 8))
    assert len(out.info["substitutions"]) and out.info["substitution_heavier"].all()


def test_adatoms_sit_one_by_one_just_above_the_entrance_surface_where_recorded():
    atoms = cubic()
    out = defects.add_adatoms(atoms, 2.0, np.random.default_rng(1), elements=("O", "Pt"), height=2.0)
    sites, numbers = out.info["adatoms"], out.info["adatom_numbers"]
    new = out[len(atoms):]
    assert len(new) == len(sites) == len(numbers) > 5
    np.testing.assert_array_equal(out.positions[: len(atoms)], atoms.positions)
    assert set(new.numbers) <= {8, 78} and (new.numbers == numbers).all()
    np.testing.assert_allclose(new.positions[:, [1, 0]], sites)
    np.testing.assert_allclose(new.positions[:, 2], -2.0)  # 2 Å above the entrance layer at z = 0
    again = defects.add_adatoms(atoms, 2.0, np.random.default_rng(1), elements=("O", "Pt"))
    np.testing.assert_array_equal(again.positions, out.positions)


def test_film_is_an_amorphous_layer_of_the_density_and_thickness_beyond_the_chosen_surface():
    atoms = cubic()
    out = defects.add_film(atoms, np.random.default_rng(2), thickness=(6.0, 6.0), surface="exit", gap=1.5)
    film = out[len(atoms):]
    z0, z1 = out.info["film"]
    assert z0 == pytest.approx(6.0 + 1.5) and z1 == pytest.approx(z0 + 6.0)
    assert set(film.numbers) == {6} and (film.positions[:, 2] >= z0).all() and (film.positions[:, 2] < z1).all()
    assert len(film) / (EXTENT[0] * EXTENT[1] * 6.0) == pytest.approx(defects.AMORPHOUS_CARBON_DENSITY, rel=0.01)
    top = defects.add_film(atoms, np.random.default_rng(2), thickness=(6.0, 6.0), surface="entrance")
    assert (top.positions[len(atoms):, 2] < -1.5).all() and top.info["film"][1] == pytest.approx(-1.5)
    # over a patch only: every film atom inside it, about the patch's share of a whole film
    patch = defects.random_patch(np.random.default_rng(3), EXTENT, (0.3, 0.3))
    part = defects.add_film(atoms, np.random.default_rng(2), thickness=(6.0, 6.0), surface="exit", patch=patch)
    inside = defects.inside_polygon(part.positions[len(atoms):, [1, 0]], patch, EXTENT)
    assert inside.all() and (len(part) - len(atoms)) / len(film) == pytest.approx(0.3, abs=0.05)
    np.testing.assert_array_equal(part.info["film_patch"], patch)


def test_vacuum_hole_takes_out_every_atom_inside_and_only_those():
    atoms = defects.substitute_columns(cubic(), 1.0, np.random.default_rng(0))
    out = defects.cut_vacuum(atoms, np.random.default_rng(4), fraction=(0.25, 0.25))
    hole = out.info["vacuum"]
    inside = defects.inside_polygon(atoms.positions[:, [1, 0]], hole, EXTENT)
    assert 0 < inside.sum() and len(out) == len(atoms) - inside.sum()
    assert not defects.inside_polygon(out.positions[:, [1, 0]], hole, EXTENT).any()
    assert defects.polygon_mask(hole, EXTENT, (128, 128)).mean() == pytest.approx(0.25, abs=0.02)
    kept = ~defects.inside_polygon(atoms.info["substitutions"], hole, EXTENT)  # sites in the hole are forgotten
    np.testing.assert_array_equal(out.info["substitutions"], atoms.info["substitutions"][kept])
    np.testing.assert_array_equal(out.info["substitution_numbers"], atoms.info["substitution_numbers"][kept])
    # a hole across the cell's corner wraps: the four corners' atoms go together
    corner = np.array([[-3.0, -3.0], [-3.0, 3.0], [3.0, 3.0], [3.0, -3.0]])
    wrapped = defects.inside_polygon(np.array([[0.2, 0.2], [29.0, 29.0], [0.2, 29.0], [15.0, 15.0]]), corner, EXTENT)
    np.testing.assert_array_equal(wrapped, [True, True, True, False])


def test_grain_boundary_turns_one_side_about_the_beam_and_clears_close_pairs():
    atoms = grown_cubic(np.random.default_rng(0))
    out = defects.add_grain_boundary(atoms, np.random.default_rng(5), angle=(20.0, 20.0), min_distance=2.0)
    plane = out.info["grain_boundary"]
    assert abs(plane[4]) == 20.0
    side_old = defects.beyond_line(atoms.positions[:, [1, 0]], plane)
    turned = defects.beyond_line(out.positions[:, [1, 0]], plane)
    np.testing.assert_array_equal(out.positions[~turned], atoms.positions[~side_old])  # one side untouched
    assert turned.sum() > 0.5 * side_old.sum()
    # no pair closer than 2 Å across the boundary (or the cell's edge); without the clearing, this seed has 1.44 Å
    for p in out.positions[turned]:
        d = out.positions[~turned] - p
        d[:, :2] -= np.round(d[:, :2] / EXTENT[::-1]) * EXTENT[::-1]
        assert np.linalg.norm(d, axis=1).min() >= 2.0
    # the turned grain's lattice rows run at the recorded angle (mod 90°): nearest in-plane neighbours 3 Å apart
    layer = out[turned & (np.abs(out.positions[:, 2] - out.positions[turned, 2].min()) < 0.5)]
    xy = layer.positions[:, :2]
    d = xy[None] - xy[:, None]
    dist = np.hypot(d[..., 0], d[..., 1])
    pairs = np.argwhere(np.abs(dist - A) < 0.05)
    angles = np.degrees(np.arctan2(d[pairs[:, 0], pairs[:, 1], 1], d[pairs[:, 0], pairs[:, 1], 0])) % 90
    assert len(pairs) > 20 and np.allclose(angles, plane[4] % 90, atol=0.1)
    # an amorphous solid has no unit cell: unchanged
    glass = spec.amorphous(np.random.default_rng(0), EXTENT, 5.0)
    assert defects.add_grain_boundary(glass, np.random.default_rng(0)) is glass


def test_thickness_step_removes_the_deep_atoms_on_one_side_only():
    atoms = cubic()
    out = defects.cut_thickness_step(atoms, np.random.default_rng(6), fraction=(0.5, 0.5))
    step = out.info["thickness_step"]
    z_cut = step[4]
    assert z_cut == pytest.approx(6.0 - 0.5 * 6.0)
    gone = defects.beyond_line(atoms.positions[:, [1, 0]], step) & (atoms.positions[:, 2] > z_cut)
    assert 0 < gone.sum() and len(out) == len(atoms) - gone.sum()
    np.testing.assert_array_equal(out.positions, atoms.positions[~gone])
    mask = defects.half_plane_mask(step, EXTENT, (64, 64))
    assert 0.1 < mask.mean() < 0.9


def everything_on() -> Defects:
    return Defects(substitutions=1.0, adatoms=1.0, film_probability=1.0, film_patch_probability=1.0,
                   vacuum_probability=1.0, thickness_step_probability=1.0)


def test_same_seed_same_atoms_and_zero_rates_change_nothing():
    a = add_defects(grown_cubic(np.random.default_rng(0)), everything_on(), np.random.default_rng(9), True)
    b = add_defects(grown_cubic(np.random.default_rng(0)), everything_on(), np.random.default_rng(9), True)
    c = add_defects(grown_cubic(np.random.default_rng(0)), everything_on(), np.random.default_rng(10), True)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    assert {"substitutions", "adatoms", "film", "film_patch", "vacuum", "thickness_step"} <= set(a.info)
    for key in set(defects.DEFECT_KEYS) & set(a.info):
        np.testing.assert_array_equal(a.info[key], b.info[key])
    assert len(a) != len(c) or not np.array_equal(a.positions, c.positions)
    # everything off: the same atoms, and not one number drawn
    atoms, rng = grown_cubic(np.random.default_rng(0)), np.random.default_rng(9)
    same = add_defects(atoms, Defects(), rng, True)
    np.testing.assert_array_equal(same.positions, atoms.positions)
    assert rng.random() == np.random.default_rng(9).random()
    assert not set(defects.DEFECT_KEYS) & set(same.info)


def test_amorphous_specimens_get_film_hole_and_adatoms_but_no_column_defects(tmp_path):
    cfg = load_config(config_file(tmp_path, kind="amorphous", vacancies=1.0, defects=dict(
        substitutions=1.0, adatoms=1.0, film_probability=1.0, vacuum_probability=1.0, grain_boundary_probability=1.0,
        thickness_step_probability=1.0)))
    atoms = make_atoms(cfg, np.random.default_rng(0), 6.0)
    assert {"film", "vacuum", "adatoms"} <= set(atoms.info)
    assert not {"vacancies", "substitutions", "grain_boundary", "thickness_step"} & set(atoms.info)


@pytest.mark.parametrize("defect, expected", [
    ({"substitutions": -0.1}, "specimen.defects.substitutions: Input should be greater than or equal to 0"),
    ({"film_probability": 1.5}, "specimen.defects.film_probability: Input should be less than or equal to 1"),
    ({"vacuum_fraction": [0.1, 0.8]}, "specimen.defects.vacuum_fraction: must be (low, high) with 0 < low"),
    ({"adatom_elements": ["Xx"]}, "specimen.defects.adatom_elements: expected a non-empty list of element symbols"),
    ({"vacancy": 1.0}, "specimen.defects.vacancy: unknown key"),
])
def test_config_refuses_a_bad_defect_in_one_line_naming_it(tmp_path, defect, expected):
    with pytest.raises(ConfigError) as err:
        load_config(config_file(tmp_path, defects=defect))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_preset_config_loads_with_every_defect_on():
    cfg = load_config(ROOT / "configs" / "simulate_seed_defects.yaml")
    seed = load_config(ROOT / "configs" / "simulate_seed.yaml")
    d = cfg.specimen.defects
    assert cfg.specimen.vacancies > 0 and d.substitutions > 0 and d.adatoms > 0
    assert 0 < d.film_probability < 1 and d.vacuum_probability > 0 and d.grain_boundary_probability > 0
    assert d.thickness_step_probability > 0
    assert seed.specimen.defects == Defects()  # the seed generator stays as it was
    assert cfg.model_dump(exclude={"specimen"}) == seed.model_dump(exclude={"specimen"})


def test_simulated_phase_changes_exactly_at_the_recorded_vacancies_and_substitutions(tmp_path):
    """A tiny ``simulate`` run (no thermal jitter, so that only the defects differ from the same crystal without
    them): the stored phase loses most of a column at each recorded vacancy, rises at each heavier and falls at each
    lighter substitution, and changes nowhere farther than 1.5 Å from a recorded site."""
    common = dict(phonon_sigma=0.0, prototypes=["zincblende"])
    plain = simulate_sample(load_config(config_file(tmp_path, **common)), 0)["phase"]
    path = config_file(tmp_path, vacancies=0.5, defects={"substitutions": 0.5, "substitution_z_step": [8, 20]},
                       **common)
    cfg = load_config(path)
    (file,) = simulate_dataset(cfg, tmp_path / "out", progress=False)
    with h5py.File(file, "r") as f:
        phase, attrs = f["phase_0"][...], dict(f["dp_set_0"].attrs)
    vacancies, subs, heavier = attrs["vacancies"], attrs["substitutions"], attrs["substitution_heavier"]
    assert len(vacancies) and len(subs) and set(heavier) == {0, 1}
    pixel = cfg.grid.extent[0] / phase.shape[0]
    change = phase - plain

    def at(image, site):
        return image[int(round(site[0] / pixel)) % image.shape[0], int(round(site[1] / pixel)) % image.shape[1]]

    for site in vacancies:
        assert at(change, site) < -0.5 * at(plain, site)
    for site, up in zip(subs, heavier, strict=True):
        assert np.sign(at(change, site)) == (1 if up else -1) and abs(at(change, site)) > 0.01
    grid = np.stack(np.meshgrid(*(np.arange(n) * pixel for n in phase.shape), indexing="ij"), -1).reshape(-1, 2)
    near = np.zeros(len(grid), bool)
    for site in np.concatenate([vacancies, subs]):
        near |= np.hypot(*defects._wrap_about(grid, site, cfg.grid.extent).T) < 1.5
    changed = np.abs(change).ravel() > 0.05 * np.abs(change).max()
    assert changed.any() and near[changed].all()
