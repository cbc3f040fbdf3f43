"""Independent test data for calibration and direct methods: a small SrTiO3 [001] scan simulated by abTEM.

Nothing here uses phasestem's physics. abTEM simulates the patterns on a rotated scan; this module then
corrupts them the way a real detector does: transposed detector axes, a descan drift of the bright-field
disk across the scan (the far field displaced on the detector, as a descan does: nothing resampled), hot and dead
pixels and Poisson counts. ``TRUTH`` holds what the calibration must
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


def descan_shifts(shape=SCAN) -> np.ndarray:
    """(N, 2) px: the disk centre of every pattern relative to (H//2, W//2) in the stored (transposed) frame."""
    iy, ix = np.meshgrid(np.arange(shape[0]) / (shape[0] - 1), np.arange(shape[1]) / (shape[1] - 1), indexing="ij")
    off, drift = np.asarray(TRUTH["descan_offset"]), np.asarray(TRUTH["descan_drift"])
    return off + np.stack([iy.ravel() * drift[0], ix.ravel() * drift[1]], -1)


def _displaced_far_field(waves, positions: np.ndarray, shifts: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """|F[ψ · ramp]|² (N, h, w) of abTEM exit waves (N, G, G): each far field displaced by ``shifts`` (N, 2) px
    toward larger indices (a descan as the detector sees it: the far field lands elsewhere, nothing is
    resampled), cropped to the central (h, w) like abTEM's 'cutoff' detector. The ramp is centred on the probe
    position, so its wrap lies where the wave is weakest."""
    arr = np.asarray(waves.array)
    G = arr.shape[-1]
    samp = float(waves.sampling[0])
    r = np.arange(G)
    out = []
    for wave, p, s in zip(arr, positions, shifts, strict=True):
        ry = (r - p[0] / samp + G / 2) % G - G / 2  # px from the probe centre, wrapped
        rx = (r - p[1] / samp + G / 2) % G - G / 2
        ramp = np.exp(2j * np.pi * (s[0] * ry[:, None] + s[1] * rx[None, :]) / G)
        far = np.fft.fftshift(np.abs(np.fft.fft2(wave * ramp)) ** 2)
        y0, x0 = (G - crop[0]) // 2, (G - crop[1]) // 2
        out.append(far[y0 : y0 + crop[0], x0 : x0 + crop[1]])
    return np.stack(out)


def simulate_clean(origin=(4.0, 6.0), rotation: float | None = None, c10: float | None = None,
                   detector_shifts: np.ndarray | None = None) -> dict:
    """abTEM patterns (Sy, Sx, 64, 64) in the specimen frame, intensities summing to ≈ 1, plus the truth phase.

    ``detector_shifts`` (N, 2) px, specimen frame: displace each far field on the detector (descan) by a phase
    ramp on abTEM's exit wave (:func:`_displaced_far_field`, checked against abTEM's detector at zero shift)."""
    import abtem

    from phasestem.physics.optics import interaction_constant

    # FFTW plans chosen by timing (FFTW_MEASURE) differ with the machine's load and change the last bits of the
    # patterns, and so the Poisson draws: plans by estimate give the same data on every run
    abtem.config.set({"progress_bar": False, "fftw.planning_effort": "FFTW_ESTIMATE"})
    atoms = _atoms()
    pot = abtem.Potential(atoms, gpts=GPTS, slice_thickness=CELL / 2, projection="infinite")
    pos = grid_positions(TRUTH["rotation"] if rotation is None else rotation) + np.asarray(origin)
    probe = abtem.Probe(energy=ENERGY, semiangle_cutoff=SEMIANGLE, defocus=-(TRUTH["C10"] if c10 is None else c10))
    meas = probe.scan(pot, scan=abtem.CustomScan(pos), detectors=abtem.PixelatedDetector(max_angle="cutoff"))
    meas = meas.compute()
    pats = np.asarray(meas.array, dtype=np.float64)
    if detector_shifts is not None:
        waves = probe.multislice(pot, scan=abtem.CustomScan(pos)).compute()
        own = _displaced_far_field(waves, pos, np.zeros_like(pos), pats.shape[-2:])
        scale = pats.sum() / own.sum()
        assert np.abs(own * scale - pats).max() < 1e-5 * pats.max(), "the exit-wave crop is not abTEM's detector"
        pats = _displaced_far_field(waves, pos, np.asarray(detector_shifts), pats.shape[-2:]) * scale
    pats = pats.reshape(*SCAN, *pats.shape[-2:])
    proj = np.asarray(pot.build().project().compute().array, dtype=np.float64)
    return {"patterns": pats, "phase": proj * interaction_constant(ENERGY), "phase_sampling": CELL * REPEAT / GPTS,
            "positions": pos, "dk": float(meas.sampling[0])}


def corrupt(descanned: np.ndarray, seed: int = 0, dose: float = DOSE) -> np.ndarray:
    """Detector effects on (Sy, Sx, H, W) patterns already displaced by the descan (specimen frame): transpose,
    Poisson counts, hot and dead pixels."""
    rng = np.random.default_rng(seed)
    sy, sx, H, W = descanned.shape
    p = np.swapaxes(descanned, -1, -2).reshape(-1, H, W)
    p = rng.poisson(p / p.sum((-2, -1), keepdims=True).mean() * dose).astype(np.int32)
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
        sim = simulate_clean(detector_shifts=descan_shifts()[:, ::-1])  # stored frame → specimen frame
        np.save(data, corrupt(sim["patterns"]))
        np.savez(truth_file, phase=sim["phase"], phase_sampling=sim["phase_sampling"], positions=sim["positions"],
                 dk=sim["dk"], descanned=sim["patterns"])
    z = np.load(truth_file)
    from phasestem.physics.optics import wavelength

    truth = dict(TRUTH)
    truth["angular_sampling"] = float(z["dk"]) * wavelength(ENERGY) * 1e3
    truth.update(phase=z["phase"], phase_sampling=float(z["phase_sampling"]), positions=z["positions"],
                 descanned=z["descanned"])
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
    from phasestem.physics.optics import wavelength

    return {"file": data, "rotation": rotation, "phase": z["phase"], "phase_sampling": float(z["phase_sampling"]),
            "angular_sampling": float(z["dk"]) * wavelength(ENERGY) * 1e3}
