"""The live (streaming) ptychography benchmark's scan: a Merlin .mib of 64² patterns from physics phasestem did
not write.

    python benchmarks/live/make_scan.py OUT_DIR [--quick] [--workers 2] [--seed 7] [--dose 1e4] [--c10 150]

The development case is the defaults; the validation case another specimen, dose and defocus
(``--seed 8 --dose 2e3 --c10 100``), looked at only once the development case was settled.

Patterns: the independent NumPy multislice (``../independent/numpy_multislice.py``, imports nothing from
phasestem), one weak-phase slice of random Gaussian atoms (σ 0.4 Å, 0.6 atoms/Å², peak 0.5 rad), 300 keV,
20 mrad hard aperture, C10 = +150 Å (crossover 150 Å before the specimen; phasestem's convention), a 128 × 128
raster (``--quick``: 24 × 24) of 0.45 Å steps, scan rotation 0. The geometry, the frame headers, the .hdr and the
truth's loader are ``../real_data/make_mib.py``'s (imported, not copied); only the detector differs from its
file: no transpose, no descan, no hot or dead pixels, 1e4 e⁻ per pattern, and 64² pixels.

Detector model. The simulator samples the far field of a ``window``-pixel cut of the exit wave at λ/(window ·
sampling) per pixel. Cutting the exit wave to 64 pixels (17.9 Å at 0.28 Å) would truncate the defocused probe's
tails and point-sample the intensity. Instead each detector pixel is made of 4 × 4 sub-pixels: the exit wave is
cut to 256 pixels (71.7 Å, the whole probe), its far field sampled at a quarter of the detector pixel, and every
4 × 4 block summed, the area integral of a real pixel. The detector pixel is then λ/(64 · 0.28 Å) = 1.0986 mrad
(disk radius 18.2 px, 36 of the 64 pixels across; edge ±35 mrad), the real-space pixel of a 64² reconstruction
0.28 Å, the truth's own grid. The zero frequency lies at sub-pixel (128, 128) of the 256 grid, 1.5 sub-pixels off
the centre of the 4 × 4 block that becomes detector pixel (32, 32); the simulator's ``detector_shift`` (a phase
ramp on the exit-wave cut: the far field sampled at shifted frequencies, no resampling of intensities) moves it by
(1.5, 1.5) sub-pixels, so zero frequency sits at the centre of pixel (H//2, W//2) as phasestem and every reader
expect. The binned intensities are normalised to 1, Poisson-sampled at ``dose`` counts and clipped at 4095
(12-bit counter; never reached at this dose).

Written into OUT_DIR:

* ``scan.mib``: Merlin frames as make_mib writes them (384-byte 'MQ1' headers, big-endian U16, one '1x1' chip,
  here 64²), rows stored upside down because Merlin readers (rsciio, HyperSpy, pyxem; phasestem reads through
  rsciio) flip them back; the frames as they return them are the specimen frame of the truth;
* ``scan.hdr``: frames per trigger = scan columns, ``ScanX``/``ScanY``;
* ``truth.npz``: ``phase`` (rad, float32, on the simulation grid, pixel (0, 0) at 0 Å), ``sampling`` (Å),
  ``positions`` (N, 2) Å (probe centres on that grid, row-major) and ``meta`` (JSON: every true parameter,
  ``angular_sampling`` mrad, ``simulate_s``); ``make_mib.load_truth`` reads it back;
* ``params.yaml``: ``phasestem reconstruct`` parameters for these data (true optics and scan, run.out_dir
  ``recon`` beside it; model, losses and the rest of run at phasestem's defaults);
* ``live.yaml``: the same for ``phasestem live`` (no ``data.file``: ``phasestem live live.yaml --replay scan.mib``).

Simulated row by row in ``--workers`` processes (one FFT of the 480² object grid and one of the 256² cut per
pattern): the full scan took 190 s with 2 workers on a 2-core machine (the quick one 2 s).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "independent"))
sys.path.insert(0, str(HERE.parent / "real_data"))
import make_mib  # noqa: E402
from make_mib import geometry, load_truth, mib_header, specimen, write_hdr, write_rows  # noqa: E402
from numpy_multislice import electron_wavelength, simulate_patterns  # noqa: E402

FULL = dict(scan=(128, 128))
QUICK = dict(scan=(24, 24))
DETECTOR = 64  # detector pixels per side
SUB = 4  # simulated sub-pixels per detector pixel and axis (summed: the pixel's area integral)
SETUP = dict(
    make_mib.SETUP,  # specimen (atom density, width, peak phase), seed and 12-bit counter as make_mib
    energy=300e3, semiangle=20.0, sampling=0.28, step=0.45, rotation=0.0, c10=150.0,  # C10 = +Δf (Å)
    dose=1e4, descan_offset=(0.0, 0.0), descan_drift=(0.0, 0.0), n_hot=0, n_dead=0,
)

_W: dict = {}


def _init(phase: np.ndarray, geom: dict, scan: tuple[int, int], setup: dict) -> None:
    _W.update(phase=phase, geom=geom, scan=scan, setup=setup)


def simulate_row(row: int) -> bytes:
    """One scan row: 256² far fields → 64² detector pixels → counts → the row's .mib frames."""
    setup, geom, (_, sx) = _W["setup"], _W["geom"], _W["scan"]
    pos = geom["positions"][row * sx : (row + 1) * sx]
    centre = np.full((sx, 2), (SUB - 1) / 2)  # zero frequency onto the centre of its SUB × SUB block
    fine = simulate_patterns(_W["phase"][None], setup["sampling"], pos, DETECTOR * SUB, setup["energy"],
                             setup["semiangle"], setup["c10"], dz=0.0, detector_shift=centre)
    p = fine.astype(np.float64).reshape(sx, DETECTOR, SUB, DETECTOR, SUB).sum((2, 4))
    rng = np.random.default_rng([setup["seed"], 2, row])
    counts = rng.poisson(p / p.sum((-2, -1), keepdims=True) * setup["dose"])
    frames = np.clip(counts, 0, setup["counter_max"]).astype(">u2")[:, ::-1, :]  # readers flip the rows back
    return b"".join(mib_header(row * sx + i + 1, DETECTOR, DETECTOR) + frames[i].tobytes() for i in range(sx))


PARAMS = """\
# phasestem reconstruct parameters for the scan beside this file (benchmarks/live/make_scan.py): the true optics
# and scan; model, losses and run at phasestem's defaults but for the output folder.
data:
  file: scan.mib  # relative to this file; the scan shape is in scan.hdr too
optics:
  energy: {energy!r}  # eV
  semiangle: {semiangle!r}  # mrad
  aberrations: {{C10: {c10!r}}}  # Å (C10 = −defocus: crossover {c10:g} Å before the specimen)
  angular_sampling: {dk!r}  # mrad per detector pixel = λ / (64 × {sampling!r} Å)
scan:
  shape: [{sy}, {sx}]
  step: {step!r}  # Å
  rotation: {rotation!r}  # degrees
run:
  out_dir: recon  # relative to this file
"""


#: the first lines of ``live.yaml``: the same parameters without ``data.file`` (the stream is the data)
LIVE_HEAD = """\
# phasestem live parameters for the scan beside this file (benchmarks/live/make_scan.py): params.yaml without
# data.file. Rehearse:  phasestem live live.yaml --replay scan.mib --fps 1000 --out runs/rehearsal
"""


def write_params(path: Path, truth: dict) -> None:
    """``params.yaml`` (``phasestem reconstruct``) at ``path`` and ``live.yaml`` (``phasestem live``) beside it."""
    sy, sx = truth["scan"]
    text = PARAMS.format(energy=truth["energy"], semiangle=truth["semiangle"], c10=truth["c10"],
                         dk=truth["angular_sampling"], sampling=truth["sampling"], sy=sy, sx=sx, step=truth["step"],
                         rotation=truth["rotation"])
    path.write_text(text)
    body = text[text.index("optics:"):].replace("  out_dir: recon  # relative to this file\n",
                                                "  out_dir: live  # relative to this file (--out overrides)\n")
    (path.parent / "live.yaml").write_text(LIVE_HEAD + body)


def make(out: Path, quick: bool = False, workers: int = 2, setup: dict | None = None) -> dict:
    """Write scan.mib, scan.hdr, truth.npz and params.yaml into ``out`` (skipped when they exist); returns the
    truth."""
    out = Path(out)
    mib, truth_file = out / "scan.mib", out / "truth.npz"
    if mib.exists() and truth_file.exists():
        truth = load_truth(truth_file)
        if not (out / "params.yaml").exists() or not (out / "live.yaml").exists():
            write_params(out / "params.yaml", truth)
        return truth
    out.mkdir(parents=True, exist_ok=True)
    setup = dict(SETUP if setup is None else setup)
    scan = (QUICK if quick else FULL)["scan"]
    geom = geometry(scan, DETECTOR * SUB, setup)  # margins for the 256-px cut; no bad pixels (n_hot = n_dead = 0)
    phase = specimen(geom, setup)
    t0 = time.perf_counter()
    write_rows(mib, scan[0], workers, simulate_row, _init, (phase, geom, scan, setup))
    write_hdr(out / "scan.hdr", scan)
    dk = electron_wavelength(setup["energy"]) / (DETECTOR * setup["sampling"]) * 1e3  # mrad per detector pixel
    truth = dict(setup, scan=list(scan), window=DETECTOR, sub_pixels=SUB, transpose=False, angular_sampling=dk,
                 disk_radius_px=setup["semiangle"] / dk, hot=[], dead=[], grid=list(geom["shape"]),
                 simulate_s=time.perf_counter() - t0, workers=workers)
    write_params(out / "params.yaml", truth)
    np.savez(truth_file, phase=phase.astype(np.float32), sampling=setup["sampling"], positions=geom["positions"],
             meta=json.dumps(truth))
    return load_truth(truth_file)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true", help="24 × 24 scan instead of 128 × 128")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=SETUP["seed"],
                    help=f"specimen and noise seed (default {SETUP['seed']}: the development case)")
    ap.add_argument("--dose", type=float, default=SETUP["dose"], help=f"e⁻ per pattern (default {SETUP['dose']:g})")
    ap.add_argument("--c10", type=float, default=SETUP["c10"], help=f"C10 in Å (default {SETUP['c10']:g})")
    args = ap.parse_args()
    truth = make(args.out, args.quick, args.workers, dict(SETUP, seed=args.seed, dose=args.dose, c10=args.c10))
    print(f"{args.out / 'scan.mib'}: {truth['scan'][0]}×{truth['scan'][1]} scan of {truth['window']}² patterns "
          f"({truth['angular_sampling']:.4f} mrad/px, disk radius {truth['disk_radius_px']:.1f} px), simulated in "
          f"{truth['simulate_s']:.1f} s with {truth['workers']} workers")


if __name__ == "__main__":
    main()
