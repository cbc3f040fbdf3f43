"""Held-out samples simulated by abTEM, written in the layout of ``phasestem simulate`` (seed-000 format).

Nothing of phasestem's physics makes these samples: abTEM builds the potential, the probe, the scan and the
diffraction patterns; the random crystals are drawn here with ASE. phasestem only supplies the geometry (its
simulation YAML is read, so the abTEM samples match the phasestem-simulated held-out samples it describes) and
the file layout (``phasestem.simulate.writer.root_attrs`` for the root attributes, so the learned route reads
both sources alike).

Conventions of the abTEM samples
--------------------------------
* Frame: abTEM's first array axis is its x, phasestem's first axis (row) is y; atoms are (x, y, z) in both
  (ASE). So abTEM is given the atoms with x and y swapped: its first axis then runs along the atoms' y, and
  phase image ``[i, j]`` is the potential at (y = i·Δ, x = j·Δ) as in phasestem's files; probe position
  (y, x) of the phasestem raster is abTEM's CustomScan position (its x, its y) = (y, x), and pattern
  ``[ky, kx]`` is abTEM's ``[kx, ky]`` of the swapped frame. (The swap is a mirror of real and reciprocal
  space together, under which a round aperture with C10 / C30 only is unchanged.) The same structure file
  therefore gives the same phase image in both simulators (``test_learned_abtem_eval.py`` checks it).
* Probe: ``abtem.Probe(energy, semiangle_cutoff=semiangle, defocus=-C10, Cs=C30)`` (abTEM's defocus is −C10;
  phasestem's C10 > 0 is an underfocus of the same sign in both), abTEM's soft aperture edge. Only C10 and
  C30 are passed; a config with other aberrations is refused.
* Potential: ``abtem.Potential(..., parametrization="kirkland", projection="infinite")`` in one slice as thick
  as the specimen (as phasestem's default ``slice_thickness: null``), on the config's ``grid.sim_gpts`` over
  ``grid.extent`` (periodic cell); ``--parametrization lobato`` uses abTEM's default table instead.
* Frozen phonons: ``abtem.FrozenPhonons(atoms, specimen.phonons, sigmas=specimen.phonon_sigma)`` (isotropic,
  x, y and z), the patterns are the mean over configurations (abTEM's ensemble mean).
* Truth: ``phase = σ(E) × mean over configurations of abTEM's projected potential`` (σ from
  ``abtem.core.energy.energy2sigma``), average-pooled from ``sim_gpts`` to ``phase_gpts``; ``potential`` is the
  pooled projected potential (V·Å).
* Detector: abTEM's full pixelated detector (the anti-aliasing aperture zeroes the corners), zero frequency at
  pixel (N//2, N//2); a central crop of ``f·H`` × ``f·W`` pixels is summed in ``f`` × ``f`` bins, ``f`` the
  odd factor phasestem's simulator picks for the same config (``phasestem.simulate.scan.DetectorGeometry``:
  the zero frequency is the central pixel of bin (H//2, W//2), as in phasestem's files; ``f`` = 1 when the
  config's pattern pixel is the grid's reciprocal pixel). The file's ``angular_sampling`` is abTEM's × ``f``.
* Noise: with ``detector.dose`` set, Poisson counts (NumPy) at dose × step area electrons per pattern;
  otherwise noise-free patterns as abTEM normalises them (the probe's intensity sums to 1).
  :func:`counted_copy` draws counts for a noise-free file afterwards (one abTEM run, several doses).
* Specimens: random crystals like the simulator's ``kind: crystal`` (fcc, bcc, diamond, rocksalt, zincblende,
  perovskite prototypes from ASE, a random in-plane rotation, a tilt of the zone axis up to
  ``specimen.max_tilt``, a random origin, cut to the cell × a depth drawn in ``specimen.depth``), drawn
  with NumPy from (seed, sample index) independently of phasestem's specimen module. :data:`UNSEEN` adds
  kinds that phasestem's training generator never draws (:func:`random_specimen`): wurtzite crystals (ZnO, GaN,
  viewed down [0001]), few-layer 2H-MoS2 (layers normal to the beam) and amorphous carbon / silicon.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from phasestem.base.safety import atomic_file

#: (ASE structure, candidate elements or compounds with lattice constants in Å) of the random crystals
PROTOTYPES = [
    ("fcc", ["Al", "Cu", "Ni", "Ag", "Au", "Pt", "Pd"]),
    ("bcc", ["Fe", "Mo", "W", "Cr", "V", "Nb"]),
    ("diamond", ["Si", "Ge", "C"]),
    ("rocksalt", [("NaCl", 5.64), ("MgO", 4.21), ("PbTe", 6.46)]),
    ("zincblende", [("GaAs", 5.65), ("ZnS", 5.41), ("InP", 5.87)]),
    ("perovskite", [("SrTiO3", 3.905)]),
]


#: specimen kinds absent from phasestem's training generator (``kind: crystal`` draws fcc, bcc, hcp, diamond,
#: rocksalt, zincblende and perovskite crystals): (ASE structure, candidates with lattice constants a, c in Å)
UNSEEN = {
    "wurtzite": [("ZnO", 3.25, 5.21), ("GaN", 3.19, 5.19)],
    "mos2": [("MoS2", 3.16, 12.29)],
    "amorphous": [("C", 0.09), ("Si", 0.05)],  # element, atoms / Å³
}
#: specimen kinds :func:`random_specimen` draws: "crystal" (one of :data:`PROTOTYPES`) and the :data:`UNSEEN` kinds
KINDS = ("crystal", *UNSEEN)


def _unit_cell(rng: np.random.Generator, kind: str = "crystal"):
    from ase import Atoms
    from ase.build import bulk

    if kind == "wurtzite":
        name, a, c = UNSEEN[kind][rng.integers(len(UNSEEN[kind]))]
        return bulk(name, "wurtzite", a=a, c=c)
    if kind == "mos2":  # 2H-MoS2: two S-Mo-S layers per cell, stacked along c (z)
        from ase.spacegroup import crystal

        _, a, c = UNSEEN[kind][0]
        return crystal(["Mo", "S"], basis=[(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)], spacegroup=194,
                       cellpar=[a, a, c, 90, 90, 120])
    kind, choices = PROTOTYPES[rng.integers(len(PROTOTYPES))]
    pick = choices[rng.integers(len(choices))]
    if kind == "perovskite":
        a = pick[1]
        return Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5),
                                                  (0, 0.5, 0.5)], cell=[a, a, a], pbc=True)
    if isinstance(pick, tuple):
        return bulk(pick[0], kind, a=pick[1], cubic=True)
    return bulk(pick, kind, cubic=True)


def _rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """In-plane rotation by a random angle after a tilt of the zone axis (z) by up to ``max_tilt_deg``."""
    phi = rng.uniform(0, 2 * math.pi)
    tilt = math.radians(rng.uniform(0, max_tilt_deg))
    az = rng.uniform(0, 2 * math.pi)
    axis = np.array([math.cos(az), math.sin(az), 0.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r_tilt = np.eye(3) + math.sin(tilt) * k + (1 - math.cos(tilt)) * k @ k  # Rodrigues
    c, s = math.cos(phi), math.sin(phi)
    r_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return r_z @ r_tilt


def random_amorphous(rng: np.random.Generator, extent: tuple[float, float], depth: float, element: str = "C",
                     density: float = 0.09, min_distance: float = 1.3):
    """ase.Atoms: ``density`` atoms / Å³ of ``element`` at random in the box (``extent`` (y, x) Å × ``depth``), no two
    closer than ``min_distance`` Å, also across the periodic x / y edges (random sequential addition: of uniform
    candidates, each is kept unless an earlier kept one is too close)."""
    from ase import Atoms
    from scipy.spatial import cKDTree

    box = np.array([extent[1], extent[0], depth])
    n = int(round(density * box.prod()))
    cand = rng.uniform(0, 1, (3 * n, 3)) * box
    tree = cKDTree(cand, boxsize=[box[0], box[1], 10 * depth])  # z never wraps: 10 × the depth
    earlier: dict[int, list[int]] = {}
    for i, j in tree.query_pairs(min_distance):
        earlier.setdefault(max(i, j), []).append(min(i, j))
    keep = np.zeros(len(cand), bool)
    for j in range(len(cand)):
        keep[j] = not any(keep[i] for i in earlier.get(j, ()))
    pos = cand[keep][:n]
    atoms = Atoms(symbols=[element] * len(pos), positions=pos, cell=np.diag(box), pbc=[True, True, False])
    atoms.info["name"] = f"amorphous {element}"
    return atoms


def random_specimen(rng: np.random.Generator, kind: str, extent: tuple[float, float], depth: float,
                    max_tilt: float):
    """ase.Atoms of ``kind`` (:data:`KINDS`) cut to the box: a random crystal of :data:`PROTOTYPES`, a wurtzite or
    2H-MoS2 crystal (:func:`random_crystal`), or an amorphous solid (:func:`random_amorphous`)."""
    if kind == "amorphous":
        element, density = UNSEEN[kind][rng.integers(len(UNSEEN[kind]))]
        return random_amorphous(rng, extent, depth, element, density)
    if kind not in KINDS:
        raise ValueError(f"specimen kind {kind!r}; known: {KINDS}")
    return random_crystal(rng, extent, depth, max_tilt, kind)


def random_crystal(rng: np.random.Generator, extent: tuple[float, float], depth: float, max_tilt: float,
                   kind: str = "crystal"):
    """ase.Atoms: a random crystal cut to the box (``extent`` (y, x) Å, ``depth`` along z), periodic in x, y;
    ``kind`` "crystal" draws one of :data:`PROTOTYPES`, "wurtzite" / "mos2" those of :data:`UNSEEN`."""
    from ase import Atoms

    unit = _unit_cell(rng, kind)
    box = np.array([extent[1], extent[0], depth])
    rot = _rotation(rng, max_tilt)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float) * box
    frac = ((corners - box / 2) @ rot) @ np.linalg.inv(unit.cell.array)  # box corners in the crystal's cells
    lo, hi = np.floor(frac.min(0)).astype(int) - 1, np.ceil(frac.max(0)).astype(int) + 1
    big = unit.repeat(tuple(int(n) for n in hi - lo))
    pos = big.positions + lo @ unit.cell.array - rng.uniform(0, 1, 3) @ unit.cell.array
    pos = pos @ rot.T + box / 2
    keep = np.all((pos >= 0) & (pos < box), axis=1)
    atoms = Atoms(numbers=big.numbers[keep], positions=pos[keep], cell=np.diag(box), pbc=[True, True, False])
    atoms.info["name"] = unit.get_chemical_formula() if kind == "crystal" else f"{kind} {unit.get_chemical_formula()}"
    return atoms


def write_structures(folder: str | Path, n: int, cfg, seed: int, kinds: list[str] | None = None) -> list[Path]:
    """``n`` random specimens of ``cfg``'s cell (depth drawn in ``specimen.depth``; ``kinds[k]`` of :data:`KINDS`,
    default all "crystal") as extended-XYZ files ``crystal_000.xyz`` …: the same specimens can then be simulated by
    phasestem (``specimen.kind: structures``) and by abTEM, so the two held-out sets differ only by the simulator."""
    from ase.io import write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        rng = np.random.default_rng([seed, k, 11])
        depth = float(rng.uniform(*cfg.specimen.depth))
        kind = "crystal" if kinds is None else kinds[k]
        atoms = random_specimen(rng, kind, cfg.grid.extent, depth, cfg.specimen.max_tilt)
        atoms.positions -= atoms.positions.min(0)  # phasestem puts a non-periodic structure's minimum at 0 too
        path = folder / f"crystal_{k:03d}.xyz"
        write(path, atoms, format="extxyz")
        paths.append(path)
    return paths


def _check_geometry(cfg) -> None:
    ab = dict(cfg.optics.aberrations)
    other = {k: v for k, v in ab.items() if k not in ("C10", "C30") and v}
    if other:
        raise ValueError(f"only C10 and C30 are passed to abTEM, the config also sets {other}")
    if cfg.specimen.kind not in ("crystal", "structures"):
        raise ValueError(f"abTEM samples are random crystals; the config's specimen.kind is {cfg.specimen.kind!r}")
    if cfg.specimen.slice_thickness is not None:
        raise ValueError("only specimen.slice_thickness: null (one slice, infinite projection) is supported")
    for ax in range(2):
        if cfg.detector.shape[ax] > cfg.grid.sim_gpts[ax]:
            raise ValueError("detector.shape larger than the simulation grid")


def detector_geometry(cfg):
    """The crop and odd binning factor phasestem's simulator uses for ``cfg`` (``DetectorGeometry``)."""
    from phasestem.simulate.scan import DetectorGeometry

    g = cfg.grid
    sampling = (g.extent[0] / g.sim_gpts[0], g.extent[1] / g.sim_gpts[1])
    return DetectorGeometry.make(g.sim_gpts, sampling, cfg.optics.energy, cfg.detector.shape, cfg.detector.max_angle)


def simulate_abtem_sample(cfg, index: int, seed: int, parametrization: str = "kirkland",
                          structure: str | Path | None = None, chunk: int = 256) -> dict:
    """One sample (patterns (Sy, Sx, H, W) float32, phase and potential on the phase grid, attrs) by abTEM: a random
    crystal, or the atoms of ``structure`` (an ASE-readable file whose cell is the simulation box); ``chunk``
    positions per abTEM scan call."""
    import abtem
    import torch
    from abtem.core.energy import energy2sigma, energy2wavelength

    abtem.config.set({"diagnostics.progress_bar": False, "fftw.planning_effort": "FFTW_ESTIMATE"})
    _check_geometry(cfg)
    rng = np.random.default_rng([seed, index, 7])
    g, o, s = cfg.grid, cfg.optics, cfg.specimen
    if structure is None:
        depth = float(rng.uniform(*s.depth))
        atoms = random_crystal(rng, g.extent, depth, s.max_tilt)
    else:
        from ase.io import read

        atoms = read(structure)
        atoms.info["name"] = Path(structure).name
        depth = float(atoms.cell.lengths()[2])
        if not np.allclose(atoms.cell.lengths()[[1, 0]], g.extent):
            raise ValueError(f"{structure}: cell (y, x) {atoms.cell.lengths()[[1, 0]]} is not the config's extent "
                             f"{g.extent}")
    atoms = atoms.copy()
    atoms.positions = atoms.positions[:, [1, 0, 2]]  # abTEM's first axis along the atoms' y (phasestem's rows)
    atoms.set_cell(np.diag(atoms.cell.lengths()[[1, 0, 2]]))
    phonons = abtem.FrozenPhonons(atoms, num_configs=s.phonons, sigmas=s.phonon_sigma,
                                  seed=int(rng.integers(2**31))) if s.phonon_sigma else atoms
    pot = abtem.Potential(phonons, gpts=tuple(g.sim_gpts), slice_thickness=depth + 1e-3,
                          parametrization=parametrization, projection="infinite")
    ab = dict(o.aberrations)
    probe = abtem.Probe(energy=o.energy, semiangle_cutoff=o.semiangle, defocus=-float(ab.get("C10", 0.0)),
                        Cs=float(ab.get("C30", 0.0)))
    iy, ix = np.meshgrid(np.arange(cfg.scan.shape[0]), np.arange(cfg.scan.shape[1]), indexing="ij")
    pos = np.stack([cfg.scan.origin[0] + iy.ravel() * cfg.scan.step[0],
                    cfg.scan.origin[1] + ix.ravel() * cfg.scan.step[1]], -1)
    det = detector_geometry(cfg)
    H, W = cfg.detector.shape
    parts = []
    for a in range(0, len(pos), chunk):  # a chunk of positions at a time: full 2-D patterns are large
        meas = probe.scan(pot, scan=abtem.CustomScan(pos[a:a + chunk]),
                          detectors=abtem.PixelatedDetector(max_angle="full"))
        meas = meas.compute(progress_bar=False)
        full = np.asarray(meas.array, dtype=np.float64)
        full = full.reshape(-1, *full.shape[-2:])
        m = len(pos[a:a + chunk])
        if len(full) != m:  # ensemble axis kept: average it
            full = full.reshape(-1, m, *full.shape[-2:]).mean(0)
        parts.append(det.apply(torch.from_numpy(full)).numpy())  # zero frequency at (N//2, N//2), as phasestem's
    pats = np.concatenate(parts).reshape(*cfg.scan.shape, H, W)
    lam = energy2wavelength(o.energy)
    ang = tuple(float(v) * lam * 1e3 * f for v, f in zip(meas.sampling[-2:], det.factor, strict=True))
    proj = np.asarray(pot.build().project().compute(progress_bar=False).array, dtype=np.float64)
    proj = proj.reshape(-1, *proj.shape[-2:]).mean(0)
    fy, fx = g.sim_gpts[0] // g.phase_gpts[0], g.sim_gpts[1] // g.phase_gpts[1]
    potential = proj.reshape(g.phase_gpts[0], fy, g.phase_gpts[1], fx).mean((1, 3))
    attrs = {"thickness": depth, "index": index, "seed": seed, "specimen": "abtem:" + atoms.info["name"],
             "n_atoms": len(atoms), "simulator": f"abtem {abtem.__version__}", "parametrization": parametrization}
    if cfg.detector.dose is not None:
        electrons = cfg.detector.dose * cfg.scan.step[0] * cfg.scan.step[1]
        pats = rng.poisson(np.clip(pats, 0, None) * electrons).astype(np.float32)
        attrs["electrons_per_pattern"] = electrons
    return {"patterns": pats.astype(np.float32), "potential": potential.astype(np.float32),
            "phase": (potential * energy2sigma(o.energy)).astype(np.float32), "attrs": attrs,
            "angular_sampling": ang}


def write_abtem_file(cfg, path: str | Path, n_samples: int, seed: int, parametrization: str = "kirkland",
                     progress: bool = True, structures: list | None = None) -> Path:
    """Write ``n_samples`` abTEM samples of ``cfg``'s geometry to ``path`` in ``phasestem simulate``'s layout
    (sample i of the atoms in ``structures[i]`` when given, else a random crystal). Each sample is kept in
    ``.<name>.parts/sample_<i>.npz`` until the file is written, so an interrupted run resumes sample by sample."""
    from phasestem.io import seed as seedfile
    from phasestem.simulate.writer import root_attrs

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(deep=True)
    cfg.output.samples_per_file = n_samples
    cfg.output.n_files = 1
    cfg.compute.seed = seed
    parts = path.with_name(f".{path.name}.parts")
    parts.mkdir(exist_ok=True)
    H, W = cfg.detector.shape
    sy, sx = cfg.scan.shape
    for i in range(n_samples):
        part = parts / f"sample_{i:04d}.npz"
        if part.exists():
            continue
        r = simulate_abtem_sample(cfg, i, seed, parametrization, None if structures is None else structures[i])
        with atomic_file(part, "abTEM sample") as tmp, open(tmp, "wb") as fh:  # a file object: no suffix added
            np.savez(fh, patterns=r["patterns"], phase=r["phase"], potential=r["potential"],
                     angular_sampling=np.asarray(r["angular_sampling"]), attrs=json.dumps(r["attrs"]))
        if progress:
            print(f"  abTEM sample {i + 1}/{n_samples} ({r['attrs']['specimen']})", flush=True)
    ang = None
    with atomic_file(path, "abTEM file") as tmp, h5py.File(tmp, "w", track_order=True) as f:
        for i in range(n_samples):
            with np.load(parts / f"sample_{i:04d}.npz") as r:
                ang = tuple(float(v) for v in r["angular_sampling"])
                d = f.create_dataset(seedfile.patterns_key(i), data=r["patterns"],
                                     chunks=(min(5, sy), min(5, sx), H, W), compression="gzip", compression_opts=4,
                                     shuffle=True)
                for k, v in json.loads(str(r["attrs"])).items():
                    d.attrs[k] = v
                f.create_dataset(seedfile.phase_key(i), data=r["phase"])
                f.create_dataset(seedfile.potential_key(i), data=r["potential"])
        for k, v in root_attrs(cfg, 1, ang).items():
            f.attrs[k] = v
        f.attrs["simulator"] = "abtem"
    for part in parts.glob("sample_*.npz"):
        part.unlink()
    parts.rmdir()
    return path


def counted_copy(source: str | Path, path: str | Path, electrons: float, seed: int) -> Path:
    """A copy of the noise-free file ``source`` (written by :func:`write_abtem_file`) whose patterns are Poisson
    counts at ``electrons`` per pattern (each pattern's mean scaled by ``electrons``: abTEM's noise-free patterns sum
    to about 1, less what falls outside the detector), drawn with NumPy from (seed, sample index); truths and
    attributes copied (``phasestem.physics.noise.poisson_counts``, the counts of ``detector.dose``). The same abTEM
    run then serves several doses; it works on any file of this layout (phasestem's too)."""
    from phasestem.io import seed as seedfile
    from phasestem.physics.noise import poisson_counts

    path = Path(path)
    with h5py.File(source, "r") as src, atomic_file(path, "counted copy") as tmp, \
            h5py.File(tmp, "w", track_order=True) as f:
        for k, v in src.attrs.items():
            f.attrs[k] = v
        step = np.asarray(src.attrs["scan_step"], float)
        f.attrs["dose"] = float(electrons / (step[0] * step[1]))  # e/Å², as phasestem's counted files
        for i in range(int(src.attrs["samples_per_file"])):
            d0 = src[seedfile.patterns_key(i)]
            counts = poisson_counts(d0[...], electrons, np.random.default_rng([seed, i, 13]))
            d = f.create_dataset(seedfile.patterns_key(i), data=counts, chunks=d0.chunks, compression="gzip",
                                 compression_opts=4, shuffle=True)
            for k, v in d0.attrs.items():
                d.attrs[k] = v
            d.attrs["electrons_per_pattern"] = float(electrons)
            for key in (seedfile.phase_key(i), seedfile.potential_key(i)):
                f.create_dataset(key, data=src[key][...])
    return path
