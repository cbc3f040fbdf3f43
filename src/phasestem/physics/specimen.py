"""Specimens: atoms → projected potential per slice; random crystals, amorphous solids, structure
files, the user's materials HDF5; synthetic phase objects for fast tests.

Potential parameterisation: Kirkland (E. J. Kirkland, *Advanced Computing in Electron Microscopy*,
2nd ed., Springer 2010), with the per-element coefficients from phasestem's package data
``phasestem/data/kirkland.json`` (rows a, b, c, d of Kirkland's table, q in Å⁻¹ without 2π; written
once from abTEM's copy by ``scripts/make_kirkland_table.py``, checked equal to it by the tests).
The electron scattering factor is ``f(q) = Σ a_i/(q² + b_i) + c_i exp(−d_i q²)`` (Å) and the projected potential of one
atom is ``v(r) = 4π²a₀e Σ a_i K₀(2πr√b_i) + 2π²a₀e Σ (c_i/d_i) exp(−π²r²/d_i)`` (V·Å), whose 2-D Fourier
transform is ``2π a₀e f(|k|)``. Potentials are built in Fourier space from exact structure
factors, so atoms sit at their true sub-pixel positions and the cell is periodic.

Atom coordinates follow ASE: (x, y, z) in Å with z along the beam; images are (y, x).
"""
from __future__ import annotations

import functools
import json
import math
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from ..base.errors import InputFileError
from .optics import interaction_constant

#: Bohr radius (Å) × elementary charge expressed as a potential: a₀·e = a₀ · (e²/4πε₀)/e in V·Å².
A0_E = 0.529177210903 * 14.39964547842567


@functools.lru_cache(maxsize=1)
def kirkland_table() -> dict[str, np.ndarray]:
    """Element symbol → Kirkland coefficients (4, 3), from the package data file."""
    doc = json.loads((files("phasestem") / "data" / "kirkland.json").read_text(encoding="utf-8"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in doc["elements"].items()}


def kirkland_parameters(element: int | str) -> np.ndarray:
    """Kirkland coefficients (4, 3): rows a (Å⁻¹), b (Å⁻²), c (Å), d (Å²)."""
    from ase.data import chemical_symbols

    symbol = chemical_symbols[element] if isinstance(element, int | np.integer) else str(element)
    table = kirkland_table()
    if symbol not in table:
        raise ValueError(f"element '{symbol}' has no Kirkland parameters")
    return table[symbol]


def scattering_factor(element: int | str, k: np.ndarray | torch.Tensor):
    """Electron scattering factor f(|k|) in Å for spatial frequency |k| in Å⁻¹."""
    a, b, c, d = kirkland_parameters(element)
    lib = torch if isinstance(k, torch.Tensor) else np
    k2 = k**2
    return sum(a[i] / (k2 + b[i]) + c[i] * lib.exp(-d[i] * k2) for i in range(3))


def projected_potential_analytic(element: int | str, r: np.ndarray) -> np.ndarray:
    """Projected potential (V·Å) of one isolated atom at radius r (Å), Kirkland's closed form."""
    from scipy.special import k0

    a, b, c, d = kirkland_parameters(element)
    r = np.asarray(r, dtype=np.float64)
    v = sum(4 * math.pi**2 * A0_E * a[i] * k0(2 * math.pi * r * math.sqrt(b[i])) for i in range(3))
    v = v + sum(2 * math.pi**2 * A0_E * c[i] / d[i] * np.exp(-(math.pi**2) * r**2 / d[i]) for i in range(3))
    return v


def projected_potential(
    positions: np.ndarray,
    numbers: np.ndarray,
    extent: tuple[float, float],
    gpts: tuple[int, int],
    slice_edges: np.ndarray | None = None,
    device=None,
    atom_chunk: int = 4096,
) -> torch.Tensor:
    """Projected potential slices (S, ny, nx) in V·Å of atoms in a periodic (Ly, Lx) cell.

    ``positions`` (N, 3) Å as (x, y, z); ``numbers`` (N,) atomic numbers; ``slice_edges`` (S+1,) z
    boundaries in Å (one infinite-projection slice when None; atoms outside are dropped).
    Computed as IFFT of Σ_Z 2π a₀e f_Z(k) S_Z(k) / (cell area), with exact structure factors
    ``S_Z(k) = Σ_atoms exp(−2πi k·r)`` evaluated as a (ny × N)·(N × nx) matrix product.
    """
    positions = np.asarray(positions, dtype=np.float64)
    numbers = np.asarray(numbers)
    ny, nx = gpts
    dy, dx = extent[0] / ny, extent[1] / nx
    if slice_edges is None:
        slice_edges = np.array([-np.inf, np.inf])
    n_slices = len(slice_edges) - 1
    ky = torch.fft.fftfreq(ny, d=dy, dtype=torch.float64, device=device)
    kx = torch.fft.fftfreq(nx, d=dx, dtype=torch.float64, device=device)
    kabs = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    out = torch.zeros((n_slices, ny, nx), dtype=torch.float64, device=device)
    slice_index = np.searchsorted(slice_edges, positions[:, 2], side="right") - 1
    for Z in np.unique(numbers):
        form = 2 * math.pi * A0_E * scattering_factor(int(Z), kabs)  # V·Å³
        for s in range(n_slices):
            sel = (numbers == Z) & (slice_index == s)
            if not sel.any():
                continue
            pos = torch.as_tensor(positions[sel], dtype=torch.float64, device=device)
            sf = torch.zeros((ny, nx), dtype=torch.complex64, device=device)
            for start in range(0, len(pos), atom_chunk):
                p = pos[start : start + atom_chunk]
                sf += _phase_factors(ky, p[:, 1]) @ _phase_factors(kx, p[:, 0]).T
            out[s] += torch.fft.ifft2(form * sf.to(torch.complex128)).real / (dy * dx)
    return out.float()


def _phase_factors(k: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """exp(−2πi k·x) as complex64 (len(k), len(x)); the phase is reduced mod 1 cycle in float64 first."""
    cycles = torch.remainder(k[:, None] * coord[None, :], 1.0)
    return torch.polar(torch.ones_like(cycles), -2 * math.pi * cycles).to(torch.complex64)


def bin_image(image: torch.Tensor | np.ndarray, shape: tuple[int, int]):
    """Average-pool an image (..., H, W) to ``shape`` (H and W integer multiples of it)."""
    t = torch.as_tensor(image)
    H, W = t.shape[-2:]
    if H % shape[0] or W % shape[1]:
        raise ValueError(f"cannot bin {(H, W)} to {tuple(shape)}: not integer multiples")
    fy, fx = H // shape[0], W // shape[1]
    out = t.reshape(*t.shape[:-2], shape[0], fy, shape[1], fx).mean((-3, -1))
    return out if isinstance(image, torch.Tensor) else out.numpy()


# ---------------------------------------------------------------------------------------------
# structures
# ---------------------------------------------------------------------------------------------
#: (name, ASE crystal structure, candidate elements, lattice constant Å, c/a) for random crystals
CRYSTAL_PROTOTYPES = [
    ("fcc", "fcc", ["Al", "Cu", "Ni", "Ag", "Au", "Pt", "Pd"], None, None),
    ("bcc", "bcc", ["Fe", "Mo", "W", "Cr", "V", "Nb"], None, None),
    ("hcp", "hcp", ["Mg", "Ti", "Zn", "Co", "Zr"], None, None),
    ("diamond", "diamond", ["Si", "Ge", "C"], None, None),
    ("rocksalt", "rocksalt", [("Na", "Cl"), ("Mg", "O"), ("Pb", "Te")], {"NaCl": 5.64, "MgO": 4.21, "PbTe": 6.46},
     None),
    ("zincblende", "zincblende", [("Ga", "As"), ("Zn", "S"), ("In", "P")], {"GaAs": 5.65, "ZnS": 5.41, "InP": 5.87},
     None),
    ("perovskite", "perovskite", [("Sr", "Ti", "O")], {"SrTiO3": 3.905}, None),
]


def _random_rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """Rotation: a random in-plane angle times a random tilt of the zone axis up to max_tilt."""
    from scipy.spatial.transform import Rotation

    phi = rng.uniform(0, 2 * math.pi)
    tilt = math.radians(rng.uniform(0, max_tilt_deg))
    axis_angle = rng.uniform(0, 2 * math.pi)
    r_tilt = Rotation.from_rotvec(tilt * np.array([math.cos(axis_angle), math.sin(axis_angle), 0.0]))
    return (Rotation.from_rotvec([0, 0, phi]) * r_tilt).as_matrix()


def _bulk(proto: tuple, rng: np.random.Generator):
    from ase.build import bulk
    from ase.spacegroup import crystal

    _, kind, elements, lattice, _ = proto
    choice = elements[rng.integers(len(elements))]
    if kind == "perovskite":
        a = lattice["SrTiO3"]
        return crystal(["Sr", "Ti", "O"], basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], spacegroup=221,
                       cellpar=[a, a, a, 90, 90, 90])
    if isinstance(choice, tuple):
        name = "".join(choice)
        return bulk(name, kind, a=lattice[name], cubic=True)
    return bulk(choice, kind, cubic=kind != "hcp", orthorhombic=kind == "hcp")


def fill_cell(unit, extent: tuple[float, float], depth: float, rotation: np.ndarray, rng: np.random.Generator):
    """Tile ``unit`` (ase.Atoms, periodic) to cover the rotated box and cut it to (Ly, Lx, depth).

    Returns an ase.Atoms with cell (Lx, Ly, depth), periodic in x and y; positions inside the box; ``info`` holds
    ``unit_cell`` and ``orientation`` (3, 3), from which :mod:`phasestem.physics.defects` grows a second grain.
    """
    from ase import Atoms

    Ly, Lx = extent
    box = np.array([Lx, Ly, depth])
    # corners of the box in the crystal frame (inverse rotation) → how many unit cells we need
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * box
    shift = rng.uniform(0, 1, 3) @ unit.cell.array
    local = (corners - box / 2) @ rotation  # rows: R^T applied
    frac = local @ np.linalg.inv(unit.cell.array)
    lo = np.floor(frac.min(0)).astype(int) - 1
    hi = np.ceil(frac.max(0)).astype(int) + 1
    reps = hi - lo
    big = unit.repeat(tuple(int(r) for r in reps))
    pos = big.positions + lo @ unit.cell.array - shift
    pos = pos @ rotation.T + box / 2
    inside = np.all((pos >= 0) & (pos < box), axis=1)
    return Atoms(numbers=big.numbers[inside], positions=pos[inside], cell=np.diag(box), pbc=[True, True, False],
                 info={"unit_cell": unit, "orientation": rotation})


def random_crystal(rng: np.random.Generator, extent=(100.0, 100.0), depth: float = 15.0, max_tilt_deg: float = 3.0,
                   prototypes: list[str] | None = None):
    """A random crystal (prototype, elements, orientation, origin) cut to the cell."""
    protos = [p for p in CRYSTAL_PROTOTYPES if prototypes is None or p[0] in prototypes]
    if not protos:
        raise ValueError(f"no crystal prototypes among {prototypes}; known: {[p[0] for p in CRYSTAL_PROTOTYPES]}")
    proto = protos[rng.integers(len(protos))]
    unit = _bulk(proto, rng)
    # near a zone axis: low-index axes keep atomic columns (what ptychography resolves)
    atoms = fill_cell(unit, extent, depth, _random_rotation(rng, max_tilt_deg), rng)
    atoms.info["name"] = f"{proto[0]}:{unit.get_chemical_formula()}"
    return atoms


def column_mask(atoms, site: tuple[float, float], radius: float = 1.0) -> np.ndarray:
    """Which atoms (N,) bool of ``atoms`` (ase.Atoms, cell (Lx, Ly, depth) periodic in x, y) lie within ``radius`` Å
    of ``site`` (y, x) Å in projection along the beam, at the nearest periodic image: one atomic column."""
    lx, ly = atoms.cell.lengths()[:2]
    d = atoms.positions[:, :2] - (site[1], site[0])
    d -= np.round(d / (lx, ly)) * (lx, ly)
    return np.hypot(d[:, 0], d[:, 1]) < radius


def remove_columns(atoms, per_nm2: float, rng: np.random.Generator, radius: float = 1.0):
    """Vacancies: a Poisson number of atomic columns, ``per_nm2`` per nm² of the cell on average, taken out of
    ``atoms`` (ase.Atoms, cell (Lx, Ly, depth) periodic in x, y). Each takes every atom within ``radius`` Å in
    projection (:func:`column_mask`) of an atom drawn at random, so a crystal near its zone axis loses one whole
    column (a tilt of 3° moves a column by 1 Å over 20 Å). Returns the atoms left; ``info["vacancies"]`` holds the
    sites removed, (K, 2) (y, x) Å."""
    lx, ly = atoms.cell.lengths()[:2]
    keep = np.ones(len(atoms), bool)
    sites = []
    for _ in range(int(rng.poisson(per_nm2 * lx * ly / 100.0))):
        alive = np.flatnonzero(keep)
        if not len(alive):
            break
        x, y = atoms.positions[alive[rng.integers(len(alive))], :2]
        keep &= ~column_mask(atoms, (y, x), radius)
        sites.append((y, x))
    out = atoms[keep]
    out.info = {**atoms.info, "vacancies": np.asarray(sites, float).reshape(-1, 2)}
    return out


def amorphous(rng: np.random.Generator, extent=(100.0, 100.0), depth: float = 15.0, elements=("C",),
              density: float = 0.1, min_distance: float = 1.3):
    """Random amorphous solid: ``density`` atoms/Å³ with a hard-core ``min_distance`` (Å)."""
    from ase import Atoms
    from ase.data import atomic_numbers
    from scipy.spatial import cKDTree

    Ly, Lx = extent
    n_target = int(density * Lx * Ly * depth)
    box = np.array([Lx, Ly, depth])
    periodic_box = [Lx, Ly, 10 * depth]  # periodic in x, y; z effectively open
    pts = np.empty((0, 3))
    for _ in range(100):
        if len(pts) >= n_target:
            break
        cand = rng.uniform(0, 1, (n_target, 3)) * box
        if len(pts):
            dist, _ = cKDTree(pts, boxsize=periodic_box).query(cand)
            cand = cand[dist >= min_distance]
        clash = {j for _, j in cKDTree(cand, boxsize=periodic_box).query_pairs(min_distance)}
        cand = cand[[i for i in range(len(cand)) if i not in clash]]
        pts = np.concatenate([pts, cand[: n_target - len(pts)]])
    numbers = rng.choice([atomic_numbers[e] for e in elements], len(pts))
    atoms = Atoms(numbers=numbers, positions=pts, cell=[Lx, Ly, depth], pbc=[True, True, False])
    atoms.info["name"] = "amorphous:" + "".join(elements)
    return atoms


def load_structure(path: str | Path, extent=(100.0, 100.0), depth: float | None = None, rng=None,
                   max_tilt_deg: float = 0.0):
    """Read a structure file (CIF, XYZ, POSCAR … via ASE) and tile/cut it to the cell."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such structure file")
    try:
        unit = read(path)
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputFileError(f"{path}: ASE could not read a structure: {exc}") from exc
    return _cut_unit(unit, extent, depth, rng, max_tilt_deg, str(path.name))


def _cut_unit(unit, extent, depth, rng, max_tilt_deg, name):
    rng = rng or np.random.default_rng(0)
    if depth is None:
        depth = float(unit.cell.lengths()[2]) if unit.pbc[2] else float(np.ptp(unit.positions[:, 2]) + 1.0)
    if all(unit.pbc):
        atoms = fill_cell(unit, extent, depth, _random_rotation(rng, max_tilt_deg), rng)
    else:
        atoms = unit.copy()
        atoms.positions -= atoms.positions.min(0)
        atoms.set_cell(np.diag([extent[1], extent[0], depth]))
        atoms.pbc = [True, True, False]
        atoms.wrap()
    atoms.info["name"] = name
    return atoms


def read_materials_h5(path: str | Path, numbers_key="atomic_numbers", positions_key="positions",
                      lattice_key="lattice", pbc_key="pbc"):
    """Materials HDF5 (the user's layout): one group per material holding atomic numbers (N,),
    Cartesian coordinates (N, 3) Å, lattice matrix (3, 3) Å (rows = vectors) and periodic flags (3,).

    Returns a list of ``(name, ase.Atoms)``. Key names are configurable. The file's structure is checked first
    (:func:`phasestem.base.hdf5_links.check_file`: nothing read from outside its folder or ``PHASESTEM_READ_ROOT``).
    """
    import h5py
    from ase import Atoms

    from ..base.hdf5_links import check_file

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such materials file")
    out = []
    with h5py.File(path, "r") as f:
        check_file(f, path)
        groups = [f] if numbers_key in f else [f[k] for k in f if isinstance(f[k], h5py.Group)]
        for g in groups:
            for key in (numbers_key, positions_key, lattice_key):
                if key not in g:
                    raise InputFileError(
                        f"{path}:{g.name}: missing key '{key}' (expected atomic numbers '{numbers_key}', "
                        f"Cartesian positions '{positions_key}', lattice '{lattice_key}'); has {sorted(g.keys())}"
                    )
            pbc = np.asarray(g[pbc_key][...], dtype=bool) if pbc_key in g else np.array([True, True, True])
            atoms = Atoms(numbers=g[numbers_key][...], positions=g[positions_key][...], cell=g[lattice_key][...],
                          pbc=pbc)
            out.append((g.name.strip("/") or path.stem, atoms))
    if not out:
        raise InputFileError(f"{path}: no material groups found")
    return out


def frozen_phonon_positions(positions: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Positions displaced by isotropic Gaussian thermal noise of standard deviation ``sigma`` (Å)."""
    return positions + rng.normal(0.0, sigma, positions.shape)


# ---------------------------------------------------------------------------------------------
# synthetic phase objects
# ---------------------------------------------------------------------------------------------
def synthetic_phase(shape: tuple[int, int], rng: np.random.Generator, kind: str = "atoms", max_phase: float = 1.0,
                    n_features: int | None = None, width: float = 1.5) -> np.ndarray:
    """Synthetic phase image (rad), periodic, for fast tests.

    ``kind='atoms'``: random Gaussian 'atoms' of width ``width`` px; ``'smooth'``: low-pass random
    field. Scaled so the maximum equals ``max_phase``.
    """
    ny, nx = shape
    if kind == "atoms":
        n = n_features or max(4, ny * nx // 40)
        img = np.zeros(shape)
        img[rng.integers(0, ny, n), rng.integers(0, nx, n)] = rng.uniform(0.5, 1.0, n)
        ky = np.fft.fftfreq(ny)[:, None]
        kx = np.fft.fftfreq(nx)[None, :]
        img = np.fft.ifft2(np.fft.fft2(img) * np.exp(-2 * (math.pi * width) ** 2 * (ky**2 + kx**2))).real
    elif kind == "smooth":
        ky = np.fft.fftfreq(ny)[:, None]
        kx = np.fft.fftfreq(nx)[None, :]
        noise = rng.normal(size=shape)
        img = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-((ky**2 + kx**2) / (2 * (0.5 / width) ** 2 / 16)))).real
        img -= img.min()
    else:
        raise ValueError(f"synthetic phase kind must be 'atoms' or 'smooth', got {kind!r}")
    return (img / (img.max() + 1e-12) * max_phase).astype(np.float32)


def phase_from_potential(potential, energy: float):
    """Phase (rad) = σ(E) · projected potential (V·Å)."""
    return potential * interaction_constant(energy)
