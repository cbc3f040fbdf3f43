"""Size estimates of a simulation run, checked before anything is allocated or written.

:func:`sample_memory` estimates the peak memory (bytes) of simulating one sample from the grid,
slices, phonons, wave batch, atoms, scan and detector sizes (an upper-side estimate of the arrays
:func:`phasestem.simulate.scan.simulate_sample` holds at once; measured 1.8-2.2× the peak resident
memory a fresh process adds for 128²-512² grids); :func:`check_memory` refuses a config whose sample
does not fit in the memory available now, naming the field to change. :func:`output_bytes` is the
size of the written files before compression.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..base.errors import ConfigError
from ..base.safety import gb
from .config import SimulationConfig

#: atoms per Å³ assumed for crystals and structure files (diamond, the densest prototype, has 0.176)
CRYSTAL_DENSITY = 0.2
#: bytes held per atom and phonon configuration (positions, numbers, ASE bookkeeping), generous
BYTES_PER_ATOM = 256
#: memory a fresh process takes on its first sample beyond the arrays (FFT plans, thread pools, allocator padding):
#: measured 60-80 MB on a 2-core CPU, rounded up
OVERHEAD = 128_000_000
#: atoms whose structure factors :func:`phasestem.physics.specimen.projected_potential` evaluates at once
ATOM_CHUNK = 4096


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one sample split by what drives them, each with the config field to change."""

    grid: int  # potentials, transmissions and waves on the simulation grid (compute.device)
    patterns: int  # the sample's patterns (host memory)
    atoms: int  # the specimen's atoms (host memory)

    @property
    def total(self) -> int:
        """Everything, library workspaces (:data:`OVERHEAD`) included."""
        return self.grid + self.patterns + self.atoms + OVERHEAD


def n_slices(cfg: SimulationConfig) -> int:
    """Largest number of multislice slices of a sample (thickest specimen)."""
    s = cfg.specimen
    if s.slice_thickness is None or s.kind == "synthetic":
        return 1
    return max(1, math.ceil(s.depth[1] / s.slice_thickness))


def wave_batch(cfg: SimulationConfig) -> int:
    """Positions simulated at once (on CPU capped to ``CPU_WAVE_BYTES`` of waves, as the simulator does)."""
    from .scan import CPU_WAVE_BYTES

    ny, nx = cfg.grid.sim_gpts
    batch = min(cfg.compute.batch, cfg.scan.shape[0] * cfg.scan.shape[1])
    if cfg.compute.device.startswith("cpu"):
        batch = max(1, min(batch, CPU_WAVE_BYTES // (ny * nx * 8)))
    return batch


def sample_memory(cfg: SimulationConfig) -> Estimate:
    """Estimated peak bytes of simulating one sample of ``cfg``."""
    ny, nx = cfg.grid.sim_gpts
    n2 = ny * nx
    s = cfg.specimen
    phonons = 1 if s.kind == "synthetic" else s.phonons
    volume = phonons * n_slices(cfg) * n2
    # potentials: the per-configuration list and the stacked copy (float32); transmissions: exp(iσV), its FFT and
    # the masked product (complex64); one configuration's projection: float64 slices plus ~10 float64 temporaries
    grid = volume * (2 * 4 + 3 * 8) + n2 * (8 * n_slices(cfg) + 80)
    # waves: incident, exit and far-field batches plus one temporary (complex64); probe, its spectrum and masks
    grid += 4 * wave_batch(cfg) * n2 * 8 + 6 * n2 * 8
    # structure factors: per axis, exp(-2πi k·x) of up to ATOM_CHUNK atoms at a time (float64 phase, its
    # complex128 polar form, the complex64 copy and one temporary: 48 bytes per grid line and atom)
    n_atoms = atom_count(cfg)
    grid += 2 * max(ny, nx) * min(ATOM_CHUNK, math.ceil(n_atoms)) * 48
    sy, sx = cfg.scan.shape
    h, w = cfg.detector.shape
    per_pattern = h * w * (3 * 4 + (8 if cfg.detector.dose is not None else 0)) + 2 * 8 * 2  # + positions
    return Estimate(grid=int(grid), patterns=sy * sx * per_pattern, atoms=int(n_atoms * BYTES_PER_ATOM * 2))


def atom_count(cfg: SimulationConfig) -> float:
    """Upper-side number of atoms of the thickest specimen (0 for synthetic objects)."""
    s = cfg.specimen
    if s.kind == "synthetic":
        return 0.0
    density = s.density if s.kind == "amorphous" else CRYSTAL_DENSITY
    return cfg.grid.extent[0] * cfg.grid.extent[1] * s.depth[1] * density


def output_bytes(cfg: SimulationConfig) -> int:
    """Bytes of every file of the run before compression (patterns, phase and potential, float32)."""
    sy, sx = cfg.scan.shape
    h, w = cfg.detector.shape
    py, px = cfg.grid.phase_gpts
    return cfg.output.n_files * cfg.output.samples_per_file * 4 * (sy * sx * h * w + 2 * py * px)


def available_host_memory() -> int:
    """Bytes of host memory available now (:func:`phasestem.base.safety.available_memory`)."""
    from ..base.safety import available_memory

    return available_memory()


def available_device_memory(device: str) -> int | None:
    """Free bytes on a CUDA device (None for CPU and devices that do not report it)."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def check_memory(cfg: SimulationConfig, processes: int = 1, source: str = "config") -> Estimate:
    """Refuse (ConfigError, one line) a config whose samples do not fit the memory available now.

    ``processes``: samples simulated at once on this machine (local Dask workers).
    """
    est = sample_memory(cfg)
    device_free = available_device_memory(cfg.compute.device)
    host_need = processes * (est.patterns + est.atoms + OVERHEAD + (est.grid if device_free is None else 0))
    host_free = available_host_memory()
    g, sc, d = cfg.grid, cfg.scan, cfg.detector
    grid_fix = (f"lower grid.sim_gpts {tuple(g.sim_gpts)}" + (f" or specimen.phonons ({cfg.specimen.phonons})"
                if cfg.specimen.phonons > 1 and cfg.specimen.kind != "synthetic" else "")
                + (f" or raise specimen.slice_thickness ({n_slices(cfg)} slices)" if n_slices(cfg) > 1 else ""))
    fixes = {"grid": grid_fix,
             "patterns": f"lower scan.shape {tuple(sc.shape)} or detector.shape {tuple(d.shape)}",
             "atoms": f"lower grid.extent {tuple(g.extent)} Å or specimen.depth {tuple(cfg.specimen.depth)} Å"}
    parts = {"grid": est.grid, "patterns": est.patterns, "atoms": est.atoms}
    if device_free is not None and est.grid > device_free:
        raise ConfigError(f"{source}: one sample needs about {gb(est.grid)} on {cfg.compute.device} (potentials and "
                          f"waves) but {gb(device_free)} is free there; {fixes['grid']} or compute.batch")
    if host_need > host_free:
        worst = max((k for k in parts if device_free is None or k != "grid"), key=parts.get)
        per = f" × {processes} workers" if processes > 1 else ""
        raise ConfigError(f"{source}: one sample needs about {gb(host_need / processes)}{per} of memory "
                          f"({worst}: {gb(parts[worst])}) but {gb(host_free)} is available; {fixes[worst]}"
                          + (" or compute.workers" if processes > 1 else ""))
    return est
