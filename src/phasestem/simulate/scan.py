"""4D-STEM scans of a periodic specimen on the shared physics core, and one seed-000 sample."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..base.errors import ConfigError
from ..base.runtime import retain_freed_memory
from ..detector import bin_pixels, bin_window, centre_window, sum_bins
from ..physics import defects
from ..physics import specimen as spec
from ..physics.fourier import add_squared_modulus, fft2, ifft2
from ..physics.multislice import multislice, propagator, shifted_probes
from ..physics.noise import electrons_per_pattern, poisson_counts
from ..physics.optics import (
    antialias_mask,
    band_limit_mrad,
    interaction_constant,
    make_probe,
    partial_coherence_modes,
    wavelength,
)
from ..scan import GridScan
from .config import Defects, SimulationConfig

#: on CPU, the largest batch of waves (bytes) simulated at once; more gains nothing there and leaves the memory
#: the C library keeps for reuse (measured, 400 positions of 512² × 10 phonons on 2 cores, medians of 3:
#: 2 positions per batch 3.56 s, 4 positions 3.31 s, 8 positions 3.72 s; 32 positions were 2.2× slower than 8)
CPU_WAVE_BYTES = 8 << 20


@dataclass
class DetectorGeometry:
    """How full-grid patterns (N, N) become stored patterns: central crop then integer binning."""

    crop: tuple[int, int]
    factor: tuple[int, int]
    angular_sampling: tuple[float, float]  # mrad per stored pixel

    @classmethod
    def make(cls, gpts, sampling, energy, shape, max_angle=None) -> DetectorGeometry:
        """Odd binning factors only, so that the zero frequency is the central pixel of its bin and lands on
        stored pixel (H//2, W//2) exactly: the odd factor nearest to the one whose crop spans ±``max_angle``
        (the band limit by default), or the largest odd one the grid allows."""
        lam = wavelength(energy)
        dk = (lam / (gpts[0] * sampling[0]) * 1e3, lam / (gpts[1] * sampling[1]) * 1e3)  # mrad / px
        max_angle = band_limit_mrad(sampling, energy) if max_angle is None else max_angle
        crop, factor = [], []
        for ax in range(2):
            if shape[ax] > gpts[ax]:
                raise ConfigError(f"detector.shape {tuple(shape)} has more pixels than the simulation grid "
                                  f"{tuple(gpts)}; lower detector.shape or raise grid.sim_gpts")
            span = 2 * max_angle / dk[ax] / shape[ax]  # binning factor that would span ±max_angle exactly
            f = 2 * max(0, round((span - 1) / 2)) + 1  # the nearest odd factor
            while f > 1 and f * shape[ax] > gpts[ax]:
                f -= 2
            crop.append(f * shape[ax])
            factor.append(f)
        return cls(tuple(crop), tuple(factor), (dk[0] * factor[0], dk[1] * factor[1]))

    def zero_offset(self, axis: int) -> int:
        """Index of the zero frequency inside the crop along ``axis`` (0 = y, 1 = x), by the detector's one bin
        rule (:func:`phasestem.detector.bin_window`): the centre pixel of bin H//2."""
        return self.crop[axis] // 2 - bin_window(self.crop[axis], self.factor[axis])

    def unshifted_indices(self, n: int, crop: int, device=None, axis: int = 0) -> torch.Tensor:
        """fftfreq-order indices of the ``crop`` detector pixels of a spectrum axis of length ``n``."""
        return (torch.arange(crop, device=device) - self.zero_offset(axis)) % n

    def crop_blocks(self, n: int, axis: int) -> list[tuple[slice, slice]]:
        """The crop along ``axis`` of an fftfreq-order spectrum axis of length ``n`` as at most two
        contiguous runs: ``(crop slice, spectrum slice)`` pairs (negative frequencies, then the rest)."""
        z, c = self.zero_offset(axis), self.crop[axis]
        runs = [(slice(0, z), slice(n - z, n)), (slice(z, c), slice(0, c - z))]
        return [(dst, src) for dst, src in runs if dst.stop > dst.start]

    def bin(self, cropped: torch.Tensor) -> torch.Tensor:
        """(B, crop_y, crop_x) fftshift-ed intensities of the crop (zero frequency at :meth:`zero_offset`) →
        (B, H, W) summed into detector pixels (:func:`phasestem.detector.sum_bins`)."""
        return sum_bins(cropped, self.factor)

    def apply(self, centred: torch.Tensor) -> torch.Tensor:
        """(B, N, N) fftshift-ed intensities → (B, H, W): the detector's bins of the whole far field
        (:func:`phasestem.detector.bin_pixels`), the central (H, W) of them kept."""
        shape = (self.crop[0] // self.factor[0], self.crop[1] // self.factor[1])
        return centre_window(bin_pixels(centred, self.factor), shape)


def simulate_patterns(
    transmissions: torch.Tensor,
    probe: torch.Tensor,
    positions: np.ndarray,
    sampling: tuple[float, float],
    energy: float,
    slice_thickness: float,
    detector: DetectorGeometry,
    batch: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Mean diffraction patterns over frozen-phonon configurations of a periodic cell.

    ``transmissions`` (P, S, N, N) complex: P configurations × S slices covering the whole
    cell; ``probe`` (N, N) or (M, N, N) with its centre at (N//2, N//2); ``positions`` (B, 2) Å.
    The probe window is the cell, so each probe is placed by a Fourier shift of the whole
    position (periodic, as abTEM does) and computed once per position for all configurations.
    Returns (B, H, W) float32 detector patterns (fftshift-ed), each summing to ≤ 1. ``batch`` positions
    are simulated at once (on CPU at most :data:`CPU_WAVE_BYTES` of waves).
    """
    retain_freed_memory()  # reuse the per-batch wave buffers instead of page-faulting fresh ones
    if probe.dim() == 2:
        probe = probe[None]
    P, S, Ny, Nx = transmissions.shape
    device = transmissions.device
    prop = None
    if S > 1:
        prop = propagator((Ny, Nx), sampling, energy, slice_thickness, antialias=True, device=device)
    spec_probe = fft2(probe.to(device))
    pos = torch.as_tensor(positions, dtype=torch.float32, device=device)
    shifts = pos / torch.tensor(sampling, device=device) - torch.tensor([Ny // 2, Nx // 2], device=device)
    # only the detector's crop of the far field is ever used: |·|² is accumulated straight from the (at most
    # four) contiguous blocks of the spectrum that make up the crop, then band-limited like the propagator
    # (the exit wave of the last slice is not propagated) once per batch
    ry, rx = (detector.unshifted_indices(n, c, device, ax) for ax, (n, c) in enumerate(zip((Ny, Nx), detector.crop,
                                                                                               strict=True)))
    mask2 = antialias_mask((Ny, Nx), sampling, device=device)[ry[:, None], rx[None, :]].square()
    blocks = [(dy, sy, dx, sx) for dy, sy in detector.crop_blocks(Ny, 0) for dx, sx in detector.crop_blocks(Nx, 1)]
    if device.type == "cpu":  # (B, M, N, N) waves below CPU_WAVE_BYTES stay in reused heap memory and in cache
        batch = max(1, min(batch, CPU_WAVE_BYTES // (probe.shape[0] * Ny * Nx * probe.element_size())))
    out = []
    for start in tqdm(range(0, len(pos), batch), disable=not progress, desc="positions", leave=False):
        psi = shifted_probes(probe, shifts[start : start + batch], spec_probe)  # (B, M, N, N)
        acc = torch.zeros((psi.shape[0], *detector.crop), device=device)
        for p in range(P):
            t = transmissions[p][None].expand(psi.shape[0], S, Ny, Nx)[:, None]  # (B, 1, S, N, N)
            far = fft2(multislice(psi, t, prop)[:, :, 0])  # (B, M, N, N)
            for dy, sy, dx, sx in blocks:
                for m in range(far.shape[1]):
                    add_squared_modulus(acc[:, dy, dx], far[:, m, sy, sx])
            del far
        acc.mul_(mask2 / P)
        out.append(detector.bin(acc).float().cpu())
    return torch.cat(out)


def transmission_slices(potential: torch.Tensor, energy: float, sampling) -> torch.Tensor:
    """Band-limited transmission functions exp(iσV) of potential slices (..., N, N) V·Å."""
    t = torch.polar(torch.ones_like(potential), interaction_constant(energy) * potential)
    mask = antialias_mask(potential.shape[-2:], sampling, device=potential.device)
    return ifft2(fft2(t) * mask)


@functools.lru_cache(maxsize=4)
def _materials(path: str, keys: tuple) -> list:
    k = dict(keys)
    return spec.read_materials_h5(path, k["numbers"], k["positions"], k["lattice"], k["pbc"])


def make_atoms(cfg: SimulationConfig, rng: np.random.Generator, thickness: float):
    """The specimen of one sample (ase.Atoms), drawn with ``rng``, with its defects: a grain boundary, then
    ``specimen.vacancies`` columns taken out (:func:`phasestem.physics.specimen.remove_columns`), then the rest of
    ``specimen.defects`` (:func:`add_defects`). A defect that is off draws nothing, so the other draws stay as they
    were."""
    s = cfg.specimen
    atoms = _draw_atoms(cfg, rng, thickness)
    crystalline = s.kind != "amorphous"
    d = s.defects
    if crystalline and _chance(d.grain_boundary_probability, rng):
        atoms = defects.add_grain_boundary(atoms, rng, d.grain_boundary_angle, d.grain_boundary_min_distance)
    if s.vacancies > 0 and crystalline:
        atoms = spec.remove_columns(atoms, s.vacancies, rng)
    return add_defects(atoms, d, rng, crystalline)


def _chance(p: float, rng: np.random.Generator) -> bool:
    """True with probability ``p``; no draw when ``p`` is 0."""
    return p > 0 and rng.random() < p


def add_defects(atoms, d: Defects, rng: np.random.Generator, crystalline: bool):
    """``atoms`` with the defects of ``d`` after the vacancies, in this order: substituted columns and a thickness step
    (``crystalline`` specimens only), an amorphous film, a vacuum hole (through the film), adatoms
    (:mod:`phasestem.physics.defects`)."""
    if crystalline and d.substitutions > 0:
        atoms = defects.substitute_columns(atoms, d.substitutions, rng, d.substitution_z_step)
    if crystalline and _chance(d.thickness_step_probability, rng):
        atoms = defects.cut_thickness_step(atoms, rng, d.thickness_step_fraction)
    if _chance(d.film_probability, rng):
        patch = None
        if _chance(d.film_patch_probability, rng):
            patch = defects.random_patch(rng, defects.cell_extent(atoms), d.film_patch_fraction)
        atoms = defects.add_film(atoms, rng, d.film_thickness, tuple(d.film_elements), d.film_density,
                                 d.film_surface, patch)
    if _chance(d.vacuum_probability, rng):
        atoms = defects.cut_vacuum(atoms, rng, d.vacuum_fraction)
    if d.adatoms > 0:
        atoms = defects.add_adatoms(atoms, d.adatoms, rng, tuple(d.adatom_elements))
    return atoms


def _draw_atoms(cfg: SimulationConfig, rng: np.random.Generator, thickness: float):
    s, extent = cfg.specimen, cfg.grid.extent
    if s.kind == "crystal":
        return spec.random_crystal(rng, extent, thickness, s.max_tilt, s.prototypes)
    if s.kind == "amorphous":
        return spec.amorphous(rng, extent, thickness, tuple(s.elements), s.density)
    if s.kind == "structures":
        if not s.files:
            raise ConfigError("specimen.files: kind 'structures' needs at least one structure file")
        return spec.load_structure(s.files[rng.integers(len(s.files))], extent, thickness, rng, s.max_tilt)
    if s.kind == "materials":
        if len(s.files) != 1:
            raise ConfigError("specimen.files: kind 'materials' needs exactly one materials HDF5 file")
        mats = _materials(str(s.files[0]), tuple(sorted(s.materials_keys.items())))
        name, unit = mats[rng.integers(len(mats))]
        atoms = spec._cut_unit(unit, extent, thickness, rng, s.max_tilt, name)
        return atoms
    raise ConfigError(f"specimen.kind: unknown kind {s.kind!r}")


#: intensity the source's probe modes hold when their number is not given (:func:`source_modes`)
SOURCE_POWER = 0.995
#: shifted copies of the probe the source is decomposed from (optics.partial_coherence_modes' 7 × 7 samples)
SOURCE_SAMPLES = 49


def source_modes(probe: torch.Tensor, sampling, source_size: float, n_modes: int | None):
    """The probe modes (M, N, N) of a Gaussian source of FWHM ``source_size`` Å, Σ|ψ|² = 1, and their occupancies:
    ``n_modes`` of them, or (None) as many as hold :data:`SOURCE_POWER` of the intensity."""
    modes, occupancy = partial_coherence_modes(probe.cpu(), sampling, source_size, n_modes or SOURCE_SAMPLES)
    if n_modes is None:
        keep = int(np.searchsorted(np.cumsum(occupancy.numpy()), SOURCE_POWER)) + 1
        modes, occupancy = modes[:keep], occupancy[:keep]
        modes = modes / occupancy.sum().sqrt()
        occupancy = occupancy / occupancy.sum()
    return modes.to(probe.device), occupancy


def distorted_positions(scan, rng: np.random.Generator) -> np.ndarray:
    """Where the probe was (Sy·Sx, 2) Å, row-major: the nominal raster of the config's ``scan`` plus its linear
    ``drift`` (0 at the first position, the whole drift at the last) and Gaussian errors of σ ``position_error``
    (drawn from ``rng`` only when non-zero, so a scan without them draws nothing)."""
    positions = GridScan(scan.shape, scan.step, origin=scan.origin).positions()
    n = len(positions)
    if any(scan.drift):
        positions = positions + np.linspace(0.0, 1.0, n)[:, None] * np.asarray(scan.drift, np.float64)
    if scan.position_error:
        positions = positions + rng.normal(0.0, scan.position_error, positions.shape)
    return positions


def simulate_sample(cfg: SimulationConfig, index: int, progress: bool = False) -> dict:
    """Simulate sample ``index``: a reproducible function of (cfg.compute.seed, index) alone.

    Returns ``patterns`` (Sy, Sx, H, W) float32, ``phase`` (rad) and ``potential`` (V·Å) on the
    phase grid (thermal mean, binned from the simulation grid), and per-sample ``attrs``.
    """
    rng = np.random.default_rng([cfg.compute.seed, index])
    device = torch.device(cfg.compute.device)
    g, o = cfg.grid, cfg.optics
    sampling = (g.extent[0] / g.sim_gpts[0], g.extent[1] / g.sim_gpts[1])
    thickness = float(rng.uniform(*cfg.specimen.depth))
    s = cfg.specimen
    if s.slice_thickness is None:
        edges, dz = None, thickness
    else:
        n_sl = max(1, int(math.ceil(thickness / s.slice_thickness)))
        edges, dz = np.linspace(0, thickness, n_sl + 1), thickness / n_sl
        edges[0], edges[-1] = -np.inf, np.inf
    attrs = {"thickness": thickness, "index": index, "seed": cfg.compute.seed}
    if s.kind == "synthetic":
        phase = spec.synthetic_phase(g.sim_gpts, rng, "atoms", s.synthetic_max_phase, width=0.5 / sampling[0])
        pots = torch.as_tensor(phase / interaction_constant(o.energy), device=device)[None, None]
        attrs["specimen"] = "synthetic"
    else:
        atoms = make_atoms(cfg, rng, thickness)
        attrs["specimen"] = str(atoms.info.get("name", "structure"))
        attrs["n_atoms"] = len(atoms)
        attrs.update({k: atoms.info[k] for k in defects.DEFECT_KEYS if k in atoms.info})
        confs = []
        for _ in range(s.phonons):
            xyz = atoms.positions
            if s.phonon_sigma:
                xyz = spec.frozen_phonon_positions(xyz, s.phonon_sigma, rng)
            confs.append(spec.projected_potential(xyz, atoms.numbers, g.extent, g.sim_gpts, edges, device=device))
        pots = torch.stack(confs)  # (P, S, N, N)
    probe = make_probe(g.sim_gpts, sampling, o.energy, o.semiangle, o.aberrations, soft=o.aperture_edge == "soft",
                       device=device, on_band_limit=o.on_band_limit)
    if o.source_size > 0:  # partially coherent: the incoherent sum over the source's largest modes
        probe, occupancy = source_modes(probe, sampling, o.source_size, o.source_modes)
        attrs["source_size"], attrs["source_mode_occupancy"] = o.source_size, occupancy.tolist()
    det = DetectorGeometry.make(g.sim_gpts, sampling, o.energy, cfg.detector.shape, cfg.detector.max_angle)
    positions = distorted_positions(cfg.scan, rng)
    if cfg.scan.position_error or any(cfg.scan.drift):
        attrs["position_error"], attrs["drift"] = cfg.scan.position_error, list(cfg.scan.drift)
    patterns = simulate_patterns(transmission_slices(pots, o.energy, sampling), probe, positions, sampling, o.energy,
                                 dz, det, cfg.compute.batch, progress)
    patterns = patterns.numpy().reshape(*cfg.scan.shape, *cfg.detector.shape)
    if cfg.detector.dose is not None:
        electrons = electrons_per_pattern(cfg.detector.dose, cfg.scan.step)
        patterns = poisson_counts(patterns, electrons, rng)
        attrs["electrons_per_pattern"] = electrons
    potential = spec.bin_image(pots.sum(1).mean(0).cpu(), g.phase_gpts).numpy().astype(np.float32)
    return {
        "positions": positions,
        "patterns": patterns.astype(np.float32),
        "potential": potential,
        "phase": (potential * interaction_constant(o.energy)).astype(np.float32),
        "attrs": attrs,
        "angular_sampling": det.angular_sampling,
    }
