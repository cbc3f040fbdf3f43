"""Independent test data for calibration and direct methods: a small SrTiO3 [001] scan simulated by abTEM.

Nothing here uses phasestem's physics. abTEM simulates the patterns on a rotated scan; this module then
corrupts them the way a real detector does: transposed detector axes, a descan drift of the bright-field
disk across the scan, hot and dead pixels and Poisson counts. ``TRUTH`` holds what the calibration must
recover. abTEM's first array axis is phasestem's y; its ``defocus`` is −C10.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ENERGY = 300e3  # eV
SEMIANGLE = 21.4  # mrad
STEP = 0.45  # Å
SCAN = (16, 16)
CELL = 3.905  # Å, SrTiO3
REPEAT = 4  # unit cells across the periodic simulation box
GPTS = 96  # simulation grid; abTEM's 'cutoff' detector gives 64² patterns
DOSE = 3e4  # electrons per pattern
HOT = [(5, 50), (40, 12), (33, 29), (60, 61)]  # stored-array (row, col)
DEAD = [(30, 36), (26, 24), (38, 30), (29, 41)]  # inside the bright-field disk
TRUTH = {
    "rotation": 23.7,  # degrees, phasestem's scan.rotation
    "transpose": True,
    "C10": -90.0,  # Å (abTEM defocus = 90 Å)
    "angular_sampling": None,  # filled below: λ / box (mrad)
    "descan_offset": (0.8, -1.3),  # px, disk centre at scan (0, 0) relative to (H//2, W//2), stored frame
    "descan_drift": (2.5, -1.5),  # px across the whole scan: (per rows, per cols) in the stored frame
}


def _atoms():
    import ase

    a = CELL
    atoms = ase.Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5),
                                                  (0, 0.5, 0.5)], cell=[a, a, a], pbc=True)
    return atoms * (REPEAT, REPEAT, 2)


def grid_positions(rotation: float, shape=SCAN, step=STEP) -> np.ndarray:
    """(N, 2) Å: phasestem's rotated raster (scan.rotation convention), row-major."""
    iy, ix = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    g = np.stack([iy.ravel(), ix.ravel()], -1) * step
    th = np.radians(rotation)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return g @ rot.T


def _fourier_shift_real(p: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Shift real images (N, H, W) by (N, 2) px (content to larger indices), periodic."""
    H, W = p.shape[-2:]
    ky = np.fft.fftfreq(H)[:, None]
    kx = np.fft.fftfreq(W)[None, :]
    ramp = np.exp(-2j * np.pi * (ky[None] * shift[:, 0, None, None] + kx[None] * shift[:, 1, None, None]))
    return np.fft.ifft2(np.fft.fft2(p) * ramp).real


def simulate_clean(origin=(4.0, 6.0), rotation: float | None = None, c10: float | None = None) -> dict:
    """abTEM patterns (Sy, Sx, 64, 64) in the specimen frame, intensities summing to ≈ 1, plus the truth phase."""
    import abtem

    from phasestem.optics import interaction_constant

    # FFTW plans chosen by timing (FFTW_MEASURE) differ with the machine's load and change the last bits of the
    # patterns, and so the Poisson draws: plans by estimate give the same data on every run
    abtem.config.set({"progress_bar": False, "fftw.planning_effort": "FFTW_ESTIMATE"})
    atoms = _atoms()
    pot = abtem.Potential(atoms, gpts=GPTS, slice_thickness=CELL / 2, projection="infinite")
    pos = grid_positions(TRUTH["rotation"] if rotation is None else rotation) + np.asarray(origin)
    probe = abtem.Probe(energy=ENERGY, semiangle_cutoff=SEMIANGLE, defocus=-(TRUTH["C10"] if c10 is None else c10))
    meas = probe.scan(pot, scan=abtem.CustomScan(pos), detectors=abtem.PixelatedDetector(max_angle="cutoff"))
    pats = np.asarray(meas.compute().array, dtype=np.float64).reshape(*SCAN, *meas.array.shape[-2:])
    proj = np.asarray(pot.build().project().compute().array, dtype=np.float64)
    return {"patterns": pats, "phase": proj * interaction_constant(ENERGY), "phase_sampling": CELL * REPEAT / GPTS,
            "positions": pos, "dk": float(meas.sampling[0])}


def corrupt(clean: np.ndarray, seed: int = 0) -> np.ndarray:
    """Detector effects on (Sy, Sx, H, W) patterns: transpose, descan, Poisson counts, hot and dead pixels."""
    rng = np.random.default_rng(seed)
    sy, sx, H, W = clean.shape
    p = np.swapaxes(clean, -1, -2).reshape(-1, H, W)
    iy, ix = np.meshgrid(np.arange(sy) / (sy - 1), np.arange(sx) / (sx - 1), indexing="ij")
    off, drift = np.asarray(TRUTH["descan_offset"]), np.asarray(TRUTH["descan_drift"])
    shifts = off + np.stack([iy.ravel() * drift[0], ix.ravel() * drift[1]], -1)
    p = np.clip(_fourier_shift_real(p, shifts), 0, None)
    p = rng.poisson(p / p.sum((-2, -1), keepdims=True).mean() * DOSE).astype(np.int32)
    for y, x in HOT:
        p[:, y, x] += rng.poisson(400, len(p))
    for y, x in DEAD:
        p[:, y, x] = 0
    return p.reshape(sy, sx, H, W)


def make(folder: Path) -> dict:
    """Write ``scan.npy`` (int32 counts) into ``folder`` (once) and return paths and truth."""
    folder = Path(folder)
    data, truth_file = folder / "scan.npy", folder / "truth.npz"
    if not data.exists():
        folder.mkdir(parents=True, exist_ok=True)
        sim = simulate_clean()
        np.save(data, corrupt(sim["patterns"]))
        np.savez(truth_file, phase=sim["phase"], phase_sampling=sim["phase_sampling"], positions=sim["positions"],
                 dk=sim["dk"], clean=sim["patterns"])
    z = np.load(truth_file)
    from phasestem.optics import wavelength

    truth = dict(TRUTH)
    truth["angular_sampling"] = float(z["dk"]) * wavelength(ENERGY) * 1e3
    truth.update(phase=z["phase"], phase_sampling=float(z["phase_sampling"]), positions=z["positions"],
                 clean=z["clean"])
    return {"file": data, "truth": truth}


def pearson_vs_truth(image: np.ndarray, sampling: float, truth: np.ndarray, truth_sampling: float,
                     cell: float = CELL) -> float:
    """Largest Pearson r of ``image`` (pixels of ``sampling`` Å) against the periodic ``truth`` over all
    translations (a search over one unit cell, then a finer one); the truth is band-limited to the image's
    Nyquist frequency first."""
    from scipy import ndimage

    n = truth.shape[0]
    q = np.fft.fftfreq(n, truth_sampling)
    band = np.hypot(q[:, None], q[None, :]) <= 1 / (2 * sampling)
    t = np.fft.ifft2(np.fft.fft2(truth) * band).real
    h, w = image.shape
    iy, ix = np.meshgrid(np.arange(h) * sampling, np.arange(w) * sampling, indexing="ij")
    a = (image - image.mean()) / image.std()

    def scores(shifts: np.ndarray) -> np.ndarray:
        y = (iy[None] + shifts[:, 0, None, None]) / truth_sampling
        x = (ix[None] + shifts[:, 1, None, None]) / truth_sampling
        v = ndimage.map_coordinates(t, [y.ravel(), x.ravel()], order=3, mode="grid-wrap").reshape(len(shifts), h, w)
        v = (v - v.mean((1, 2), keepdims=True)) / (v.std((1, 2), keepdims=True) + 1e-12)
        return (v * a).mean((1, 2))

    grid = np.arange(0, cell, 0.1)
    cand = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    best = cand[np.argmax(scores(cand))]
    fine = np.arange(-0.1, 0.101, 0.02)
    cand = best + np.stack(np.meshgrid(fine, fine, indexing="ij"), -1).reshape(-1, 2)
    return float(scores(cand).max())


def make_focused(folder: Path, rotation: float = -31.0) -> dict:
    """A focused (C10 = 0) scan in the specimen frame with Poisson counts only (for DPC/SSB): ``focused.npy``."""
    folder = Path(folder)
    data, truth_file = folder / "focused.npy", folder / "focused_truth.npz"
    if not data.exists():
        folder.mkdir(parents=True, exist_ok=True)
        sim = simulate_clean(rotation=rotation, c10=0.0)
        p = sim["patterns"]
        rng = np.random.default_rng(1)
        np.save(data, rng.poisson(p / p.sum((-2, -1), keepdims=True).mean() * DOSE).astype(np.int32))
        np.savez(truth_file, phase=sim["phase"], phase_sampling=sim["phase_sampling"], dk=sim["dk"])
    z = np.load(truth_file)
    from phasestem.optics import wavelength

    return {"file": data, "rotation": rotation, "phase": z["phase"], "phase_sampling": float(z["phase_sampling"]),
            "angular_sampling": float(z["dk"]) * wavelength(ENERGY) * 1e3}
