"""Pydantic schema of a simulation run (YAML on disk). Defaults = the user's seed-000 generator,
with one correction: the simulation grid is fine enough for the 30 mrad probe (see ``Grid``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, Field, field_validator, model_validator

from ..base.configfile import (
    CheckedModel,
    ConfigPath,
    absolute_path,
    apply_overrides,
    map_config_paths,
    read_yaml_mapping,
    resolve_config_paths,
    validate,
)
from ..physics.optics import checked_aberrations


def _positive_pair(v: tuple, info) -> tuple:
    """Both numbers of a (y, x) pair must be > 0."""
    if min(v) <= 0:
        raise ValueError("both values must be positive")
    return v


class Optics(CheckedModel):
    energy: float = Field(300e3, gt=0, description="Beam energy in eV.")
    semiangle: float = Field(30.0, gt=0, description="Probe-forming (condenser) aperture semi-angle in mrad.")
    aberrations: Annotated[dict[str, float], AfterValidator(checked_aberrations)] = Field(
        default_factory=lambda: {"C10": 0.0, "C30": 1e6},
        description="Aberrations in Å / rad, Krivanek notation (C10 = -defocus, C12, phi12, C21, phi21, C30 = Cs …).",
    )
    on_band_limit: Literal["raise", "warn", "ignore"] = Field(
        "raise", description="What to do when the probe exceeds the anti-aliased band limit of the grid."
    )
    aperture_edge: Literal["soft", "hard"] = Field(
        "soft", description="Condenser aperture edge: 'soft' rolls the amplitude off over one reciprocal pixel of "
        "the simulation grid (intensity 1/4 at the semi-angle: calibrate with --edge-threshold 0.25), 'hard' cuts "
        "it (intensity 1/2 at the semi-angle once binned onto the detector, as a real aperture).")
    source_size: float = Field(
        0.0, ge=0, description="Effective source size, FWHM in Å, of a partially coherent probe: each pattern is the "
        "incoherent sum over source_modes orthogonal probe modes of a Gaussian source (0: a coherent probe).")
    source_modes: int | None = Field(
        None, ge=1, le=49, description="Probe modes summed for source_size > 0, the largest of the source's "
        "decomposition (null: as many as hold 99.5 % of its intensity; at 20 mrad a 0.8 Å source needs 16 and their "
        "patterns are within 20 % of the exact average's change, 49 are exact).")



class Grid(CheckedModel):
    extent: tuple[float, float] = Field((100.0, 100.0), description="Cell size (y, x) in Å; the specimen is periodic.")
    sim_gpts: tuple[int, int] = Field(
        (512, 512),
        description="Simulation grid (y, x). 512² over 100 Å (0.195 Å/px) keeps 33.6 mrad at 300 keV, enough for a "
        "30 mrad probe; the seed's 256² (16.7 mrad) would truncate it.",
    )
    phase_gpts: tuple[int, int] = Field(
        (256, 256), description="Grid of the stored phase/potential images (y, x); sim_gpts must be a multiple."
    )

    _positive = field_validator("extent", "sim_gpts", "phase_gpts")(_positive_pair)

    @model_validator(mode="after")
    def _multiples(self):
        if self.sim_gpts[0] % self.phase_gpts[0] or self.sim_gpts[1] % self.phase_gpts[1]:
            raise ValueError(f"grid.sim_gpts {self.sim_gpts} must be integer multiples of grid.phase_gpts "
                             f"{self.phase_gpts}")
        return self


class Scan(CheckedModel):
    shape: tuple[int, int] = Field((50, 50), description="Scan positions (rows, cols).")
    step: tuple[float, float] = Field((2.0, 2.0), description="Scan step (y, x) in Å.")
    origin: tuple[float, float] = Field((0.0, 0.0), description="Position of the first probe (y, x) in Å.")
    position_error: float = Field(
        0.0, ge=0, description="Scan distortion: standard deviation in Å (each axis) of a random error of every "
        "probe position. The patterns are simulated where the probe was; the data carry the nominal raster.")
    drift: tuple[float, float] = Field(
        (0.0, 0.0), description="Scan distortion: linear specimen drift (y, x) in Å over the whole scan, growing "
        "with the acquisition order (row-major).")

    _positive = field_validator("shape", "step")(_positive_pair)


class Detector(CheckedModel):
    shape: tuple[int, int] = Field((64, 64), description="Stored pattern size (H, W) after cropping and binning.")
    max_angle: float | None = Field(
        None, gt=0, description="Half-width of the kept square of the pattern in mrad, approximately: the binning "
        "factor is the nearest odd one, so the zero frequency stays on pixel (H//2, W//2); null = the anti-aliased "
        "band limit of the simulation grid."
    )
    dose: float | None = Field(
        None, description="Electron dose in e/Å² (Poisson noise on counts = dose × scan-step area); null = noise-free "
        "patterns normalised to the incident beam."
    )

    _positive = field_validator("shape")(_positive_pair)

    @field_validator("dose")
    @classmethod
    def _dose(cls, v):
        if v is not None and v <= 0:
            raise ValueError(f"detector.dose must be positive (e/Å²) or null for noise-free data, got {v}")
        return v


def _ordered_range(v: tuple, info) -> tuple:
    """A (low, high) range: 0 <= low <= high."""
    if not 0 <= v[0] <= v[1]:
        raise ValueError("must be (low, high) with 0 <= low <= high")
    return v


def _share_range(v: tuple, info) -> tuple:
    """A (low, high) share of something: 0 < low <= high < 1."""
    if not 0 < v[0] <= v[1] < 1:
        raise ValueError("must be (low, high) with 0 < low <= high < 1")
    return v


def _element_list(v: list[str], info) -> list[str]:
    from ase.data import atomic_numbers

    bad = [e for e in v if e not in atomic_numbers]
    if not v or bad:
        raise ValueError(f"expected a non-empty list of element symbols, unknown: {bad}")
    return v


class Defects(CheckedModel):
    """What real specimens have besides vacancies (``specimen.vacancies``); all off by default, and a defect that is
    off draws no random numbers, so the other draws stay as they were. Each sample's attributes record what was made
    (:mod:`phasestem.physics.defects`)."""

    substitutions: float = Field(0.0, ge=0, description="Substituted columns per nm² (Poisson) of crystals, "
                                 "structures and materials: every atom of a column becomes one lighter or heavier "
                                 "element. Sites in the attributes 'substitutions' ((K, 2) (y, x) Å), "
                                 "'substitution_numbers' and 'substitution_heavier'.")
    substitution_z_step: tuple[int, int] = Field(
        (3, 20), description="Range (low, high) of the atomic-number step of a substitution, above the column's "
        "heaviest atom or below its lightest (at most Bi, Z 83).")
    adatoms: float = Field(0.0, ge=0, description="Single atoms per nm² (Poisson) 2 Å above the entrance surface at "
                           "random (y, x), of any specimen kind. Sites in 'adatoms' ((K, 2) (y, x) Å) and "
                           "'adatom_numbers'.")
    adatom_elements: Annotated[list[str], AfterValidator(_element_list)] = Field(
        ["C", "O", "Si", "Pt"], description="Elements of adatoms, drawn at even odds.")
    film_probability: float = Field(0.0, ge=0, le=1, description="Chance that a sample carries an amorphous film on "
                                    "its entrance or exit surface (attributes 'film': z range Å, 'film_patch').")
    film_thickness: tuple[float, float] = Field((5.0, 20.0), description="Film thickness range in Å (uniform).")
    film_elements: Annotated[list[str], AfterValidator(_element_list)] = Field(
        ["C"], description="Elements of the film.")
    film_density: float = Field(0.1003, gt=0, description="Film atom density in atoms/Å³ (0.1003: amorphous carbon "
                                "at 2.0 g/cm³).")
    film_surface: Literal["entrance", "exit", "either"] = Field(
        "either", description="Which surface carries the film ('either': each at even odds).")
    film_patch_probability: float = Field(
        0.5, ge=0, le=1, description="Chance that a film covers only a random patch (a disk or a polygon) instead of "
        "the whole cell; the patch's vertices go to 'film_patch' ((V, 2) (y, x) Å; empty: the whole cell).")
    film_patch_fraction: tuple[float, float] = Field(
        (0.2, 0.6), description="Share (low, high) of the cell a film patch covers.")
    vacuum_probability: float = Field(
        0.0, ge=0, le=1, description="Chance that a sample has a hole (a disk or a polygon) with every atom removed; "
        "its vertices go to 'vacuum' ((V, 2) (y, x) Å).")
    vacuum_fraction: tuple[float, float] = Field((0.05, 0.3), description="Share (low, high) of the cell a hole "
                                                 "covers (high at most 0.5).")
    grain_boundary_probability: float = Field(
        0.0, ge=0, le=1, description="Chance that a crystal is split along a random line, one side the same crystal "
        "turned about the beam axis; 'grain_boundary' = (y, x, n_y, n_x, angle °): the turned grain where "
        "(r − (y, x))·n > 0.")
    grain_boundary_angle: tuple[float, float] = Field((5.0, 45.0), description="Range (low, high) of the grain's "
                                                      "turn in degrees (either sign).")
    grain_boundary_min_distance: float = Field(1.0, ge=0, description="Atoms of the turned grain closer than this "
                                               "(Å) to the other grain are removed.")
    thickness_step_probability: float = Field(
        0.0, ge=0, le=1, description="Chance of a terrace: on one side of a random line, the atoms deeper than a depth "
        "removed (exit surface); 'thickness_step' = (y, x, n_y, n_x, z Å): gone where (r − (y, x))·n > 0 and deeper "
        "than z.")
    thickness_step_fraction: tuple[float, float] = Field(
        (0.2, 0.6), description="Share (low, high) of the thickness a step removes.")

    _ranges = field_validator("substitution_z_step", "film_thickness", "grain_boundary_angle")(_ordered_range)
    _shares = field_validator("film_patch_fraction", "vacuum_fraction", "thickness_step_fraction")(_share_range)

    @field_validator("substitution_z_step")
    @classmethod
    def _z_step(cls, v):
        if v[0] < 1:
            raise ValueError("must be (low, high) atomic-number steps with 1 <= low <= high")
        return v

    @field_validator("film_thickness")
    @classmethod
    def _thickness(cls, v):
        if v[0] <= 0:
            raise ValueError("must be (low, high) Å with 0 < low <= high")
        return v

    @field_validator("vacuum_fraction")
    @classmethod
    def _hole(cls, v):
        if v[1] > 0.5:
            raise ValueError("must be (low, high) with 0 < low <= high <= 0.5 (a hole within half a cell)")
        return v


class Specimen(CheckedModel):
    kind: Literal["crystal", "amorphous", "structures", "materials", "synthetic"] = Field(
        "crystal", description="Random crystals, random amorphous solids, structure files (ASE), the user's "
        "materials HDF5, or synthetic phase objects (fast tests)."
    )
    depth: tuple[float, float] = Field((10.0, 20.0), description="Specimen thickness range in Å (drawn uniformly).")
    slice_thickness: float | None = Field(
        None, gt=0, description="Multislice slice thickness in Å; null = one slice with the infinite projection."
    )
    phonons: int = Field(10, ge=1, description="Frozen-phonon configurations averaged per sample.")
    phonon_sigma: float = Field(0.1, ge=0, description="Thermal displacement standard deviation in Å.")
    max_tilt: float = Field(3.0, ge=0, description="Largest random tilt of crystals off the zone axis in degrees.")
    prototypes: list[str] | None = Field(None, description="Crystal prototypes to draw from (null = all).")
    vacancies: float = Field(0.0, ge=0, description="Vacancies per nm² of the cell (Poisson): atomic columns "
                             "(every atom within 1 Å of a random atom, in projection) taken out of crystals, "
                             "structures and materials; amorphous specimens have no columns and are left alone. The "
                             "sites go to each sample's attribute 'vacancies' ((K, 2) (y, x) Å).")
    defects: Defects = Field(default_factory=Defects, description="Substitutions, adatoms, amorphous films, vacuum "
                             "holes, grain boundaries and thickness steps (all off by default).")
    elements: list[str] = Field(["C", "Si"], description="Elements of amorphous specimens.")
    density: float = Field(0.08, gt=0, description="Atom density of amorphous specimens in atoms/Å³.")
    files: Annotated[list[Path], ConfigPath()] = Field(
        default_factory=list, description="Structure files (kind=structures) or one materials HDF5 (kind=materials); "
        "relative to this file's folder.")
    materials_keys: dict[str, str] = Field(
        default_factory=lambda: {"numbers": "atomic_numbers", "positions": "positions", "lattice": "lattice",
                                 "pbc": "pbc"},
        description="Key names inside the materials HDF5 groups.",
    )
    synthetic_max_phase: float = Field(1.0, gt=0, description="Maximum phase (rad) of synthetic objects.")

    @field_validator("depth")
    @classmethod
    def _depth(cls, v):
        if not 0 < v[0] <= v[1]:
            raise ValueError("must be (low, high) Å with 0 < low <= high")
        return v

    @field_validator("prototypes")
    @classmethod
    def _prototypes(cls, v):
        from ..physics.specimen import CRYSTAL_PROTOTYPES

        known = [p[0] for p in CRYSTAL_PROTOTYPES]
        if v is not None and (not v or any(p not in known for p in v)):
            raise ValueError(f"expected a non-empty list among {known} or null")
        return v

    @field_validator("elements")
    @classmethod
    def _elements(cls, v):
        from ase.data import atomic_numbers

        bad = [e for e in v if e not in atomic_numbers]
        if not v or bad:
            raise ValueError(f"expected a non-empty list of element symbols, unknown: {bad}")
        return v


class Output(CheckedModel):
    n_files: int = Field(5, ge=1, description="Number of HDF5 files (shards).")
    samples_per_file: int = Field(700, ge=1, description="Samples per file.")
    prefix: str = Field("simulation_data", description="File name prefix: <prefix>1.h5 … <prefix>N.h5.")
    compression: int = Field(4, ge=0, le=9, description="gzip level of the stored patterns (0 = none).")

    @field_validator("prefix")
    @classmethod
    def _file_name(cls, v):
        if not v or any(c in v for c in "/\\\0") or v.startswith("."):
            raise ValueError("must be a plain file name prefix (no path separator, not hidden)")
        return v


class Compute(CheckedModel):
    seed: int = Field(0, description="Master seed; sample i uses the stream (seed, i), whatever process runs it.")
    device: str = Field("cpu", description="torch device for the simulation (cpu, cuda, cuda:1, mps). With "
                        "`cuda` and Dask workers on a machine of several GPUs, worker k uses cuda:(k mod GPUs): "
                        "set `workers` to the number of GPUs for one worker per GPU.")
    batch: int = Field(32, ge=1, description="Scan positions simulated at once.")
    workers: int = Field(0, ge=0, description="Local Dask worker processes (0 = run in this process).")
    threads_per_worker: int = Field(1, ge=1, description="torch threads in each Dask worker.")
    scheduler: str | None = Field(None, description="Address of a running Dask scheduler (tcp://host:8786) for many "
                                  "machines; the output folder must then be on a shared file system.")


class SimulationConfig(CheckedModel):
    """A complete simulation run."""

    out: Annotated[str | None, ConfigPath()] = Field(
        None, description="Output folder (relative to this file's folder); --out overrides it. One of the two is "
        "required.")
    optics: Optics = Field(default_factory=Optics, description="Probe optics.")
    grid: Grid = Field(default_factory=Grid, description="Simulation and output grids.")
    scan: Scan = Field(default_factory=Scan, description="Scan raster.")
    detector: Detector = Field(default_factory=Detector, description="Stored patterns and noise.")
    specimen: Specimen = Field(default_factory=Specimen, description="What is simulated.")
    output: Output = Field(default_factory=Output, description="File layout.")
    compute: Compute = Field(default_factory=Compute, description="Seeds and parallelism.")

    def to_yaml(self) -> str:
        """The resolved config, documented, paths absolute (:func:`phasestem.base.configdump.config_yaml`)."""
        from ..base.configdump import config_yaml

        return config_yaml(self, "phasestem simulate")

    def results_yaml(self) -> str:
        """The config less the settings that cannot change the results (devices, parallelism, batch); paths
        absolute, so the same run resumed from another working directory is recognised."""
        data = map_config_paths(type(self), self.model_dump(mode="json", exclude={"out"}), absolute_path)
        data["compute"] = {"seed": self.compute.seed}
        return yaml.safe_dump(data, sort_keys=False)


def load_config(path: str | Path | None, overrides: dict | None = None) -> SimulationConfig:
    """Read and validate a YAML config (``None`` = defaults); raise ConfigError naming the field. Relative paths
    in the file are taken from its folder; ``overrides`` (command line) from the working directory."""
    data = {} if path is None else resolve_config_paths(SimulationConfig, read_yaml_mapping(path), Path(path).parent)
    return validate(SimulationConfig, apply_overrides(data, overrides), str(path or "config"))
