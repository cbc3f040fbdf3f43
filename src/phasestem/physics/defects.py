"""Defects that real specimens have, put into an ase.Atoms specimen: substituted columns, adatoms, amorphous
films, vacuum holes, grain boundaries and thickness steps (vacancies:
:func:`phasestem.physics.specimen.remove_columns`).

Every function takes the atoms (cell (Lx, Ly, depth), periodic in x and y, z along the beam, the entrance surface at
the smallest z) and a numpy Generator, draws only from that Generator, and returns new atoms whose ``info`` records
what it made, so that an evaluation can read it back:

* ``substitutions`` (K, 2) (y, x) Å, ``substitution_numbers`` (K,) the new atomic numbers, ``substitution_heavier``
  (K,) 1 where the column became heavier, 0 where lighter;
* ``adatoms`` (K, 2) (y, x) Å, ``adatom_numbers`` (K,);
* ``film`` (2,) the film's z range (Å), ``film_patch`` (V, 2) (y, x) Å the polygon it covers ((0, 2): the whole cell);
* ``vacuum`` (V, 2) (y, x) Å the polygon emptied;
* ``grain_boundary`` (5,) (y, x, n_y, n_x, angle °): the grain where ``(r − p)·n > 0`` is the crystal rotated by the
  angle about the beam axis;
* ``thickness_step`` (5,) (y, x, n_y, n_x, z Å): where ``(r − p)·n > 0`` the atoms beyond depth z are gone.

Polygons are tested at the periodic image nearest their vertices' mean; half planes in the cell's own coordinates
[0, L). :func:`polygon_mask` and :func:`half_plane_mask` draw both on an image grid.
"""
from __future__ import annotations

import math

import numpy as np

from .specimen import amorphous, column_mask, fill_cell, kirkland_table

#: the keys of ``atoms.info`` the functions here (and vacancies) write, each a plain array an HDF5 attribute can hold
DEFECT_KEYS = ("vacancies", "substitutions", "substitution_numbers", "substitution_heavier", "adatoms",
               "adatom_numbers", "film", "film_patch", "vacuum", "grain_boundary", "thickness_step")
#: per-site records and the arrays that go with them (a hole made later drops the sites inside it)
SITE_GROUPS = {"vacancies": (), "substitutions": ("substitution_numbers", "substitution_heavier"),
               "adatoms": ("adatom_numbers",)}
#: atoms/Å³ of amorphous carbon at 2.0 g/cm³ (2.0 / 12.011 g/mol × N_A)
AMORPHOUS_CARBON_DENSITY = 0.1003
#: heaviest atomic number a substitution makes (Bi: the last element with a stable isotope)
MAX_SUBSTITUTE_Z = 83
#: an adatom lands only where a specimen atom lies within this distance (Å, in projection) of its (y, x)
LANDING_RADIUS = 3.0


def cell_extent(atoms) -> tuple[float, float]:
    """(Ly, Lx) Å of the cell."""
    lx, ly = atoms.cell.lengths()[:2]
    return float(ly), float(lx)


def _with_info(atoms, **records):
    """``atoms`` (a new object) with ``records`` added to its info."""
    atoms.info = {**atoms.info, **records}
    return atoms


def _poisson_count(per_nm2: float, extent: tuple[float, float], rng: np.random.Generator) -> int:
    return int(rng.poisson(per_nm2 * extent[0] * extent[1] / 100.0))


# ------------------------------------------------------------------------------------------- regions
def _wrap_about(points_yx: np.ndarray, centre: np.ndarray, extent) -> np.ndarray:
    """Offsets (N, 2) of ``points_yx`` from ``centre`` at the nearest periodic image."""
    size = np.asarray(extent, np.float64)
    d = np.asarray(points_yx, np.float64) - centre
    return d - np.round(d / size) * size


def inside_polygon(points_yx: np.ndarray, vertices_yx: np.ndarray, extent) -> np.ndarray:
    """Which points (N,) bool lie inside the polygon ``vertices_yx`` (V, 2) Å (even–odd rule), the points taken at
    their periodic image nearest the vertices' mean in a cell of ``extent`` (Ly, Lx) Å."""
    vertices = np.asarray(vertices_yx, np.float64)
    if not len(vertices):
        return np.zeros(len(points_yx), bool)
    centre = vertices.mean(0)
    p = _wrap_about(points_yx, centre, extent)
    v = vertices - centre
    a, b = v, np.roll(v, -1, axis=0)
    py, px = p[:, None, 0], p[:, None, 1]
    crosses = (a[:, 0] > py) != (b[:, 0] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = a[:, 1] + (py - a[:, 0]) * (b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0])
    return (crosses & (px < x_at)).sum(1) % 2 == 1


def beyond_line(points_yx: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Which points (N,) bool lie where ``(r − p)·n > 0`` for ``plane`` = (p_y, p_x, n_y, n_x, …)."""
    p, n = np.asarray(plane[:2], np.float64), np.asarray(plane[2:4], np.float64)
    return (np.asarray(points_yx, np.float64) - p) @ n > 0


def _pixel_centres(extent, shape) -> np.ndarray:
    """(H·W, 2) (y, x) Å of the pixels of an image over the cell: pixel (i, j) at (i·Ly/H, j·Lx/W)."""
    y = np.arange(shape[0]) * extent[0] / shape[0]
    x = np.arange(shape[1]) * extent[1] / shape[1]
    return np.stack(np.meshgrid(y, x, indexing="ij"), -1).reshape(-1, 2)


def polygon_mask(vertices_yx: np.ndarray, extent, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool image of a recorded polygon (``vacuum``, ``film_patch``) over a cell of ``extent`` (Ly, Lx) Å."""
    return inside_polygon(_pixel_centres(extent, shape), vertices_yx, extent).reshape(shape)


def half_plane_mask(plane: np.ndarray, extent, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool image of the changed side of a recorded ``grain_boundary`` or ``thickness_step``."""
    return beyond_line(_pixel_centres(extent, shape), plane).reshape(shape)


def random_patch(rng: np.random.Generator, extent, fraction: tuple[float, float]) -> np.ndarray:
    """A random region (V, 2) (y, x) Å covering a share drawn from ``fraction`` (low, high) of the cell: a disk
    (48 vertices) or a star-shaped polygon of 5–9 vertices about a random centre, kept within half a cell of it."""
    size = np.asarray(extent, np.float64)
    share = rng.uniform(*fraction)
    centre = rng.uniform(0, 1, 2) * size
    if rng.random() < 0.5:
        angles, radii = np.linspace(0, 2 * math.pi, 48, endpoint=False), np.ones(48)
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi / n, n) + np.arange(n) * 2 * math.pi / n)
        radii = rng.uniform(0.7, 1.3, n)
    unit = np.stack([radii * np.sin(angles), radii * np.cos(angles)], -1)
    area = 0.5 * abs(np.sum(unit[:, 1] * np.roll(unit[:, 0], -1) - unit[:, 0] * np.roll(unit[:, 1], -1)))
    scale = min(math.sqrt(share * size.prod() / area), 0.49 * size.min() / np.hypot(*unit.T).max())
    return centre + scale * unit


def _random_plane(rng: np.random.Generator, extent) -> np.ndarray:
    """A random line: a point (y, x) Å uniform in the cell's middle half (each side then holds a fair share of it)
    and a unit normal (n_y, n_x) of uniform direction."""
    point = rng.uniform(0.25, 0.75, 2) * np.asarray(extent, np.float64)
    angle = rng.uniform(0, 2 * math.pi)
    return np.array([point[0], point[1], math.sin(angle), math.cos(angle)])


# ------------------------------------------------------------------------------------------- defects
def _substitute_number(z_column: np.ndarray, step: int, heavier: bool) -> int | None:
    """The new atomic number: ``step`` above the column's heaviest atom or below its lightest (None: out of range)."""
    z = int(z_column.max()) + step if heavier else int(z_column.min()) - step
    return z if 1 <= z <= min(MAX_SUBSTITUTE_Z, len(kirkland_table())) else None


def substitute_columns(atoms, per_nm2: float, rng: np.random.Generator, z_step: tuple[int, int] = (3, 20),
                       radius: float = 1.0):
    """Substitutions: a Poisson number of atomic columns (``per_nm2`` per nm² on average; a column = every atom
    within ``radius`` Å in projection of an atom drawn at random) whose atoms all become one element, ``z_step``
    (low, high, integers) above the column's heaviest atom or below its lightest (heavier or lighter at even odds;
    the other way when one is out of range). Records ``substitutions``, ``substitution_numbers``,
    ``substitution_heavier``."""
    out = atoms.copy()
    numbers = out.numbers.copy()
    changed = np.zeros(len(out), bool)
    sites, new_z, heavier_flags = [], [], []
    for _ in range(_poisson_count(per_nm2, cell_extent(out), rng)):
        free = np.flatnonzero(~changed)
        if not len(free):
            break
        x, y = out.positions[free[rng.integers(len(free))], :2]
        column = column_mask(out, (y, x), radius) & ~changed
        step, heavier = int(rng.integers(z_step[0], z_step[1] + 1)), bool(rng.random() < 0.5)
        z = _substitute_number(numbers[column], step, heavier)
        if z is None:
            heavier = not heavier
            z = _substitute_number(numbers[column], step, heavier)
        if z is None:
            continue
        numbers[column], changed[column] = z, True
        sites.append((y, x))
        new_z.append(z)
        heavier_flags.append(heavier)
    out.numbers = numbers
    return _with_info(out, substitutions=np.asarray(sites, float).reshape(-1, 2),
                      substitution_numbers=np.asarray(new_z, np.int64),
                      substitution_heavier=np.asarray(heavier_flags, np.int8))


def add_adatoms(atoms, per_nm2: float, rng: np.random.Generator, elements=("C", "O", "Si", "Pt"),
                height: float = 2.0, tries: int = 20):
    """Adatoms: a Poisson number of single atoms (``per_nm2`` per nm²), each of an element drawn from ``elements``, at a
    random (y, x) where the specimen has an atom within :data:`LANDING_RADIUS` Å in projection (redrawn up to
    ``tries`` times, else left out), ``height`` Å above the entrance-most of those atoms. Records ``adatoms``,
    ``adatom_numbers``."""
    from ase import Atoms
    from ase.data import atomic_numbers

    extent = cell_extent(atoms)
    size = np.asarray(extent, np.float64)
    choices = [atomic_numbers[e] for e in elements]
    sites, numbers, xyz = [], [], []
    for _ in range(_poisson_count(per_nm2, extent, rng)):
        z_elem = int(choices[rng.integers(len(choices))])
        for _ in range(tries):
            y, x = rng.uniform(0, 1, 2) * size
            below = np.hypot(*_wrap_about(atoms.positions[:, [1, 0]], np.array([y, x]), extent).T) < LANDING_RADIUS
            if below.any():
                sites.append((y, x))
                numbers.append(z_elem)
                xyz.append((x, y, atoms.positions[below, 2].min() - height))
                break
    out = atoms + Atoms(numbers=numbers, positions=np.asarray(xyz, float).reshape(-1, 3))
    return _with_info(out, adatoms=np.asarray(sites, float).reshape(-1, 2),
                      adatom_numbers=np.asarray(numbers, np.int64))


def add_film(atoms, rng: np.random.Generator, thickness: tuple[float, float] = (5.0, 20.0), elements=("C",),
             density: float = AMORPHOUS_CARBON_DENSITY, surface: str = "either", patch: np.ndarray | None = None,
             gap: float = 1.5, min_distance: float = 1.3):
    """An amorphous film (:func:`phasestem.physics.specimen.amorphous`: ``density`` atoms/Å³ of ``elements``, a
    thickness drawn from ``thickness`` (low, high) Å) ``gap`` Å beyond the specimen's entrance or exit ``surface``
    ('entrance', 'exit' or 'either' at even odds), over the whole cell or only inside ``patch`` (V, 2) (y, x) Å.
    Records ``film`` (z range Å) and ``film_patch``."""
    extent = cell_extent(atoms)
    t = float(rng.uniform(*thickness))
    if surface == "either":
        surface = "entrance" if rng.random() < 0.5 else "exit"
    if surface not in ("entrance", "exit"):
        raise ValueError(f"surface must be 'entrance', 'exit' or 'either', got {surface!r}")
    z = atoms.positions[:, 2]
    z0 = (z.min() - gap - t) if surface == "entrance" else (z.max() + gap)
    film = amorphous(rng, extent, t, tuple(elements), density, min_distance)
    patch = np.zeros((0, 2)) if patch is None else np.asarray(patch, np.float64)
    if len(patch):
        film = film[inside_polygon(film.positions[:, [1, 0]], patch, extent)]
    film.positions[:, 2] += z0
    return _with_info(atoms + film, film=np.array([z0, z0 + t]), film_patch=patch)


def _drop_sites(info: dict, region_yx: np.ndarray, extent) -> dict:
    """``info`` less the recorded sites (and their companion arrays) inside the polygon ``region_yx``."""
    out = dict(info)
    for key, companions in SITE_GROUPS.items():
        if key in out and len(out[key]):
            keep = ~inside_polygon(out[key], region_yx, extent)
            for k in (key, *companions):
                out[k] = np.asarray(out[k])[keep]
    return out


def cut_vacuum(atoms, rng: np.random.Generator, fraction: tuple[float, float] = (0.05, 0.3)):
    """A hole: every atom inside a :func:`random_patch` covering a share ``fraction`` (low, high) of the cell taken
    out, and the recorded sites inside it forgotten (there is no column left to be vacant or substituted). Records
    ``vacuum``."""
    extent = cell_extent(atoms)
    hole = random_patch(rng, extent, fraction)
    out = atoms[~inside_polygon(atoms.positions[:, [1, 0]], hole, extent)]
    out.info = {**_drop_sites(atoms.info, hole, extent), "vacuum": hole}
    return out


def _beam_rotation(angle_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def add_grain_boundary(atoms, rng: np.random.Generator, angle: tuple[float, float] = (5.0, 45.0),
                       min_distance: float = 1.0):
    """A grain boundary: on one side of a random line the crystal is replaced by the same crystal
    (``info["unit_cell"]``, ``info["orientation"]`` from :func:`phasestem.physics.specimen.fill_cell`) turned about
    the beam axis by an angle drawn from ``angle`` (low, high) degrees, of either sign, at a new random origin; atoms
    of the new grain closer than ``min_distance`` Å to the old one (3-D, across the line or the cell's edge) are
    taken out. Records ``grain_boundary``. Atoms without a recorded unit cell (amorphous solids, molecules) are
    returned unchanged."""
    from scipy.spatial import cKDTree

    if "unit_cell" not in atoms.info:
        return atoms
    extent, depth = cell_extent(atoms), float(atoms.cell.lengths()[2])
    plane = _random_plane(rng, extent)
    turn = float(rng.uniform(*angle)) * (1 if rng.random() < 0.5 else -1)
    grain = fill_cell(atoms.info["unit_cell"], extent, depth, _beam_rotation(turn) @ atoms.info["orientation"], rng)
    old = atoms[~beyond_line(atoms.positions[:, [1, 0]], plane)]
    new = grain[beyond_line(grain.positions[:, [1, 0]], plane)]
    if len(old) and len(new):
        box = [extent[1], extent[0], 10 * depth + 10]
        offset = np.array([0, 0, 4 * depth + 4])
        dist, _ = cKDTree(np.mod(old.positions + offset, box), boxsize=box).query(np.mod(new.positions + offset, box))
        new = new[dist >= min_distance]
    return _with_info(old + new, grain_boundary=np.append(plane, turn))


def cut_thickness_step(atoms, rng: np.random.Generator, fraction: tuple[float, float] = (0.2, 0.6)):
    """A thickness step (a terrace on the exit surface): on one side of a random line, the atoms deeper than a
    depth z are taken out, z leaving a share drawn from ``fraction`` (low, high) of the specimen's thickness removed
    there. Records ``thickness_step``."""
    z = atoms.positions[:, 2]
    plane = _random_plane(rng, cell_extent(atoms))
    z_cut = z.max() - rng.uniform(*fraction) * (z.max() - z.min()) if len(z) else 0.0
    out = atoms[~(beyond_line(atoms.positions[:, [1, 0]], plane) & (z > z_cut))]
    return _with_info(out, thickness_step=np.append(plane, z_cut))
