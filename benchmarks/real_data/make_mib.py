"""A Merlin .mib (+ .hdr) scan made the way a microscope would hand it over, from physics phasestem did not write.

    python benchmarks/real_data/make_mib.py OUT_DIR [--quick] [--workers 2]

Patterns: the independent NumPy multislice (``../independent/numpy_multislice.py``, imports nothing from
phasestem), one weak-phase slice of random Gaussian atoms, probed on a scan rotated by ``rotation``
(phasestem's ``scan.rotation`` convention: positions = R(θ)·grid, R acting on (y, x) column vectors).
Detector effects (as ``tests/abtem_scan.py``): detector axes transposed, a descan offset plus a drift
across the scan, Poisson counts at ``dose`` electrons per pattern, hot pixels (+Poisson(400)
per frame) and dead pixels (0) inside the bright-field disk, a 12-bit counter (clipped at 4095).

Written: ``scan.mib`` (384-byte 'MQ1' frame headers, big-endian uint16 pixels, one chip '1x1' of 256²),
``scan.hdr`` (frames per trigger = scan columns; ``ScanX``/``ScanY`` too, which py4DSTEM's reader needs),
and ``truth.npz`` (the phase on the simulation grid, the probe positions, every true parameter). The rows of
each frame are stored upside down, because Merlin readers (rsciio, HyperSpy, pyxem) flip them back: the
frames as rsciio returns them are the 'file frame' the truth refers to (hot/dead pixel (row, col), descan,
transpose). py4DSTEM's own reader does not flip, so it sees the file frame upside down.

The descan is simulated as a detector sees it: the far field is sampled at shifted frequencies (a phase ramp
on the exit-wave window, ``simulate_patterns(detector_shift=...)``). Shifting the *intensities* by a Fourier
shift instead (as ``tests/abtem_scan.py`` does) rings around the hard-edged disk; the clipped ringing puts a
dark-field signal into every pattern that follows the sub-pixel part of the descan, not the specimen.

Simulated row by row in ``--workers`` processes (one FFT of the object grid per pattern); memory stays
at a few rows of patterns.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "independent"))
from numpy_multislice import atom_phase, electron_wavelength, simulate_patterns  # noqa: E402

FULL = dict(scan=(128, 128), window=256)
QUICK = dict(scan=(32, 32), window=256)  # py4DSTEM's .mib reader knows only 256² (1x1) and 512² (2x2) chips
SETUP = dict(
    energy=300e3, semiangle=20.0, sampling=0.15, step=0.45, rotation=17.4, c10=150.0,  # C10 = +Δf (Å)
    dose=1e5, descan_offset=(1.2, -0.8), descan_drift=(3.0, -2.0), n_hot=6, n_dead=6, hot_mean=400.0,
    max_phase=0.5, atom_density=0.6, atom_width=0.4, counter_max=4095, seed=7,
)


def fast_size(n: int) -> int:
    """Smallest even m ≥ n whose prime factors are 2, 3 and 5."""
    m = n + (n % 2)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def rotation_matrix(degrees: float) -> np.ndarray:
    th = math.radians(degrees)
    return np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])


def geometry(scan: tuple[int, int], window: int, setup: dict) -> dict:
    """Object grid, probe positions (Å, specimen frame, row-major) and the bad pixels."""
    sy, sx = scan
    samp = setup["sampling"]
    iy, ix = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
    grid = np.stack([iy.ravel(), ix.ravel()], -1) * setup["step"]
    rel = grid @ rotation_matrix(setup["rotation"]).T
    margin = (window // 2 + 8) * samp
    pos = rel - rel.min(0) + margin
    shape = tuple(fast_size(int(math.ceil((pos[:, k].max() + margin) / samp)) + 1) for k in (0, 1))
    lam = electron_wavelength(setup["energy"])
    dk = lam / (window * samp) * 1e3  # mrad per detector pixel
    radius = setup["semiangle"] / dk
    rng = np.random.default_rng(setup["seed"] + 1)
    c = window // 2
    picked: list[tuple[int, int]] = []

    def pick(lo: float, hi: float) -> tuple[int, int]:
        while True:
            y, x = (int(v) for v in rng.integers(2, window - 2, 2))
            r = math.hypot(y - c, x - c)
            if lo <= r < hi and all(abs(y - a) > 3 or abs(x - b) > 3 for a, b in picked):
                picked.append((y, x))
                return y, x

    hot = [pick(0, window) for _ in range(setup["n_hot"])]
    dead = [pick(0, 0.8 * radius) for _ in range(setup["n_dead"])]
    return dict(positions=pos, shape=shape, dk=dk, radius=radius, hot=hot, dead=dead)


_W: dict = {}


def _init(phase: np.ndarray, geom: dict, scan: tuple[int, int], window: int, setup: dict) -> None:
    _W.update(phase=phase, geom=geom, scan=scan, window=window, setup=setup)


def mib_header(seq: int, h: int, w: int) -> bytes:
    """A 384-byte Merlin frame header (Quantum Detectors' layout: comma-separated ASCII, NUL-padded)."""
    fields = ["MQ1", f"{seq:06d}", "00384", "01", f"{w:04d}", f"{h:04d}", "U16", "   1x1", "01",
              "2026-11-23 10:00:00.000000", "0.001000", "0", "0", "0",
              "1.200000E+2", "5.110000E+2", *(["0.000000E+0"] * 6),
              "3RX", *(["100"] * 26), "MQ1A", "2026-11-23T10:00:00.000000000Z", "1000000ns", "12"]
    head = (",".join(fields) + ",").encode("ascii")
    return head + b"\x00" * (384 - len(head))


def simulate_row(row: int) -> bytes:
    """One scan row: patterns → detector effects → the row's .mib frames (headers + big-endian pixels)."""
    setup, geom, (sy, sx), n = _W["setup"], _W["geom"], _W["scan"], _W["window"]
    pos = geom["positions"][row * sx : (row + 1) * sx]
    ix = np.arange(sx) / max(1, sx - 1)
    off, drift = np.asarray(setup["descan_offset"]), np.asarray(setup["descan_drift"])
    shifts = np.stack([np.full(sx, off[0] + row / max(1, sy - 1) * drift[0]), off[1] + ix * drift[1]], -1)
    # the descan moves the pattern on the detector (file frame); the simulator samples the far field at the
    # shifted frequencies (specimen frame: the axes swapped back)
    clean = simulate_patterns(_W["phase"][None], setup["sampling"], pos, n, setup["energy"], setup["semiangle"],
                              setup["c10"], dz=0.0, detector_shift=shifts[:, ::-1])
    p = np.swapaxes(clean.astype(np.float64), -1, -2)  # detector axes transposed
    rng = np.random.default_rng([setup["seed"], 2, row])
    counts = rng.poisson(p / p.sum((-2, -1), keepdims=True) * setup["dose"])
    for y, x in geom["hot"]:
        counts[:, y, x] += rng.poisson(setup["hot_mean"], sx)
    for y, x in geom["dead"]:
        counts[:, y, x] = 0
    frames = np.clip(counts, 0, setup["counter_max"]).astype(">u2")[:, ::-1, :]  # readers flip the rows back
    return b"".join(mib_header(row * sx + i + 1, n, n) + frames[i].tobytes() for i in range(sx))


def write_hdr(path: Path, scan: tuple[int, int]) -> None:
    sy, sx = scan
    items = {"Time and Date Stamp (day, mnth, yr, hr, min, s)": "23/11/2026 10:00:00", "Chip ID": "W529_F5,-,-,-",
             "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX)": "Medipix 3RX", "Assembly Size (NX1, 2X2)": "1x1",
             "Chip Mode  (SPM, CSM, CM, CSCM)": "SPM", "Counter Depth (number)": "12",
             "Frames in Acquisition (Number)": str(sy * sx), "Frames per Trigger (Number)": str(sx),
             "ScanX": str(sx), "ScanY": str(sy)}
    lines = ["HDR,\t"] + [f"{k}:\t{v}" for k, v in items.items()] + ["End\t"]
    path.write_text("\n".join(lines) + "\n")


def make(out: Path, quick: bool = False, workers: int = 2, setup: dict | None = None) -> dict:
    """Write scan.mib, scan.hdr and truth.npz into ``out`` (skipped when they exist); returns the truth."""
    out = Path(out)
    mib, truth_file = out / "scan.mib", out / "truth.npz"
    if mib.exists() and truth_file.exists():
        return load_truth(truth_file)
    out.mkdir(parents=True, exist_ok=True)
    setup = dict(SETUP if setup is None else setup)
    size = QUICK if quick else FULL
    scan, n = size["scan"], size["window"]
    geom = geometry(scan, n, setup)
    phase = specimen(geom, setup)
    t0 = time.perf_counter()
    write_rows(mib, scan[0], workers, simulate_row, _init, (phase, geom, scan, n, setup))
    write_hdr(out / "scan.hdr", scan)
    truth = dict(setup, scan=list(scan), window=n, transpose=True, angular_sampling=geom["dk"],
                 disk_radius_px=geom["radius"], hot=geom["hot"], dead=geom["dead"], grid=list(geom["shape"]),
                 simulate_s=time.perf_counter() - t0, workers=workers)
    np.savez(truth_file, phase=phase.astype(np.float32), positions=geom["positions"],
             meta=json.dumps(truth))
    return load_truth(truth_file)


def write_rows(mib: Path, rows: int, workers: int, simulate, init, init_args: tuple) -> None:
    """``mib`` from ``simulate(row)`` → the row's frame bytes, in ``workers`` forked processes (each set up by
    ``init(*init_args)``), written through ``MIB.partial`` and renamed when whole; progress every 16 rows."""
    t0 = time.perf_counter()
    tmp = mib.with_name(mib.name + ".partial")
    with open(tmp, "wb") as f, get_context("fork").Pool(workers, init, init_args) as pool:
        for row, block in enumerate(pool.imap(simulate, range(rows))):
            f.write(block)
            if row % 16 == 15:
                print(f"  row {row + 1}/{rows} ({time.perf_counter() - t0:.0f} s)", flush=True)
    os.replace(tmp, mib)


def specimen(geom: dict, setup: dict) -> np.ndarray:
    """The weak-phase film of random Gaussian atoms on the simulation grid (rad), drawn with ``setup['seed']``."""
    rng = np.random.default_rng(setup["seed"])
    area = geom["shape"][0] * geom["shape"][1] * setup["sampling"] ** 2
    return atom_phase(geom["shape"], setup["sampling"], rng, int(setup["atom_density"] * area), setup["max_phase"],
                      width=setup["atom_width"])


def load_truth(path: Path) -> dict:
    with np.load(path) as z:
        truth = json.loads(str(z["meta"]))
        truth.update(phase=z["phase"], positions=z["positions"])
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true", help="32 × 32 scan of 256² patterns")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    truth = make(args.out, args.quick, args.workers)
    print(f"{args.out / 'scan.mib'}: {truth['scan'][0]}×{truth['scan'][1]} scan of {truth['window']}² patterns, "
          f"simulated in {truth['simulate_s']:.0f} s")


if __name__ == "__main__":
    main()
