"""AD at the size of a real acquisition (issue 52): phasestem on 128 × 128 and 256 × 256 scans of 128² patterns,
the patterns in memory or streamed from disk, time per epoch, peak memory and r against the truth.

    python benchmarks/scale/scale.py [--out runs/scale] [--cases thin_128 thin_256 ...] [--epochs 3]

Cases (:data:`CASES`): the independent benchmark's geometry (1 Å raster, 128² patterns of 0.2 Å, 300 keV, 20 mrad,
focus 100 Å before the entrance surface), random Gaussian atoms (the ``thin`` and ``thick`` specimens of
``benchmarks/independent/cases.py``), noise-free. The patterns are made here by :func:`simulate_windowed`, a NumPy
multislice written for this benchmark and sharing nothing with phasestem: each position's probe is propagated on its
own 128² window of the specimen (periodic within the window, as the probe has decayed at its edge), vectorised over
chunks of positions and written row block by row block into a ``.npy`` file that is never held whole in memory
(4 GiB at 256 × 256). Each run is its own process (``_run``): ``Ptychography.from_dataset`` on the memory-mapped file,
``LSQ_optimize`` with the parameter file's defaults and ``data_in_memory`` True or False, its peak resident memory
from ``getrusage`` (which counts the pages of the memory-mapped file it has read), its anonymous memory (``RssAnon``,
its own arrays) at each epoch's end, and r (Pearson, over the scanned field) of the phase against the truth after
each epoch. Writes ``OUT/result.json`` and ``OUT/result.md``; the load average is recorded at each run's start.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "independent"))

from numpy_multislice import atom_phase, electron_wavelength, probe_spectrum, source_points  # noqa: E402

GEOM = dict(step=1.0, window=128, sampling=0.2, energy=300e3, semiangle=20.0, defocus=100.0)
#: the specimens and their illumination: ``source`` (FWHM Å of a Gaussian source, 0: coherent; sampled by
#: ``numpy_multislice.source_points``, 5 × 5 points, as ``simulate_patterns`` samples it) and ``n_modes`` (the probe
#: modes every tool is given)
SPECIMENS = {"thin": dict(n_slices=1, dz=10.0, max_phase=0.5, density=0.6, source=0.0, n_modes=1),
             "thick": dict(n_slices=8, dz=10.0, max_phase=0.5, density=0.15, source=0.0, n_modes=1),
             "coherent": dict(n_slices=1, dz=10.0, max_phase=0.5, density=0.6, source=0.6, n_modes=4)}
#: case → (specimen, scan side, data_in_memory)
CASES = {"thin_128_memory": ("thin", 128, True), "thin_128_streamed": ("thin", 128, False),
         "thin_256_streamed": ("thin", 256, False), "thick_128_streamed": ("thick", 128, False),
         "coherent_128_streamed": ("coherent", 128, False)}
CHUNK = 256  # positions simulated at once


def simulate_windowed(out: Path, specimen: str, side: int, seed: int = 0) -> Path:
    """``out/patterns.npy`` (side, side, 128, 128) float32, each pattern normalised to 1, and ``out/truth.npy`` (the
    summed phase over the scanned field, pixel (0, 0) at the first position); skipped when both exist.

    A partially coherent specimen (``source`` > 0) sums the intensities of the probe moved to each source point
    (a 5 × 5 grid over ±2σ, Gaussian weights), the detector window staying on the nominal position."""
    if (out / "patterns.npy").exists() and (out / "truth.npy").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    spec, g = SPECIMENS[specimen], GEOM
    n, samp = g["window"], g["sampling"]
    rng = np.random.default_rng(seed)
    pad = n // 2 + 8
    fov = int(round((side - 1) * g["step"] / samp)) + 1
    shape = (fov + 2 * pad, fov + 2 * pad)
    count = int(spec["density"] * shape[0] * shape[1] * samp**2)
    phases = np.stack([atom_phase(shape, samp, rng, count, spec["max_phase"]) for _ in range(spec["n_slices"])])
    trans = np.exp(1j * phases).astype(np.complex64)
    lam = electron_wavelength(g["energy"])
    k = np.fft.fftfreq(n, samp)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    prop = np.exp(-1j * math.pi * lam * (ky**2 + kx**2) * spec["dz"]).astype(np.complex64)
    spec0 = probe_spectrum((n, n), samp, g["energy"], g["semiangle"], g["defocus"], 0.0, 0.0)
    jitter, weights = source_points(spec["source"])
    pats = np.lib.format.open_memmap(out / "patterns.npy.tmp", mode="w+", dtype=np.float32,
                                     shape=(side, side, n, n))
    iy, ix = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    centres = np.stack([iy.ravel(), ix.ravel()], -1) * g["step"] + pad * samp  # Å in the specimen frame
    rows = np.arange(n)
    for start in range(0, len(centres), CHUNK):
        c = centres[start:start + CHUNK]
        cpx = np.floor(c / samp + 0.5).astype(int)  # the window's centre pixel
        oy = (cpx[:, 0, None] - n // 2 + rows[None]) % shape[0]
        ox = (cpx[:, 1, None] - n // 2 + rows[None]) % shape[1]
        inten = np.zeros((len(c), n, n))
        for d, w in zip(jitter, weights, strict=True):
            frac = c + d - cpx * samp  # offset of the probe from the window's centre, Å
            ramp = np.exp(-2j * math.pi * (ky[None] * frac[:, :1, None] + kx[None] * frac[:, 1:, None]))
            wave = np.fft.fftshift(np.fft.ifft2(spec0[None] * ramp, norm="ortho"), axes=(-2, -1)).astype(np.complex64)
            for s in range(spec["n_slices"]):
                wave = wave * trans[s][oy[:, :, None], ox[:, None, :]]
                if s < spec["n_slices"] - 1:
                    wave = np.fft.ifft2(np.fft.fft2(wave, norm="ortho") * prop, norm="ortho")
            inten += w * np.abs(np.fft.fftshift(np.fft.fft2(wave, norm="ortho"), axes=(-2, -1))) ** 2
        inten /= inten.sum((-2, -1), keepdims=True)
        flat = pats.reshape(side * side, n, n)
        flat[start:start + len(c)] = inten.astype(np.float32)
    pats.flush()
    del pats
    os.replace(out / "patterns.npy.tmp", out / "patterns.npy")
    np.save(out / "truth.npy", phases.sum(0)[pad:pad + fov, pad:pad + fov].astype(np.float32))
    return out


def _run(folder: Path, n_slices: int, dz: float, epochs: int, in_memory: bool, result: Path,
         batch: int = 32, n_modes: int = 1) -> None:
    """One reconstruction in this process (``python scale.py _run …``); its record as JSON in ``result``."""
    import resource

    import torch

    from phasestem.dataset import FourDSTEM
    from phasestem.physics.optics import angular_sampling_for
    from phasestem.recon import Ptychography

    torch.set_num_threads(2)
    g = GEOM
    pats = np.load(folder / "patterns.npy", mmap_mode="r")
    truth = np.load(folder / "truth.npy")
    n = g["window"]
    t0 = time.perf_counter()
    ds = FourDSTEM(patterns=pats, energy=g["energy"], scan_step=(g["step"], g["step"]),
                   angular_sampling=angular_sampling_for(g["energy"], g["sampling"], (n, n)),
                   semiangle=g["semiangle"], aberrations={"C10": g["defocus"]})
    model = Ptychography.from_dataset(ds, n_slices=n_slices, slice_thickness=dz, n_probe_modes=n_modes)
    model.set_learning_rates(positions=0.0)
    setup = time.perf_counter() - t0
    walls, r, anon = [], [], [anonymous_gib()]
    t = time.perf_counter()
    for _ in model.LSQ_optimize(epochs, ds, batch_size=batch, progress=False, data_in_memory=in_memory):
        walls.append(time.perf_counter() - t)
        anon.append(anonymous_gib())
        phase = model.phase_in_dataset_frame(truth.shape)
        r.append(float(np.corrcoef(phase.ravel(), truth.ravel())[0, 1]))
        t = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    result.write_text(json.dumps({"setup_s": setup, "epoch_s": walls, "r": r, "peak_rss_gib": rss,
                                  "anonymous_gib": max(anon), "patterns_gib": pats.nbytes / 2**30}))


def anonymous_gib() -> float:
    """This process's resident anonymous memory now (GiB, Linux ``RssAnon``): its own arrays, without the pages of
    the memory-mapped pattern file that ``ru_maxrss`` also counts (the kernel's to drop); nan elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        f, s, dz, ep, mem, res, batch, modes = sys.argv[2:10]
        _run(Path(f), int(s), float(dz), int(ep), mem == "1", Path(res), int(batch), int(modes))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[32],
                    help="mini-batch sizes to run each case with (default 32, the parameter file's); a size other "
                         "than 32 is recorded as CASE_bSIZE")
    args = ap.parse_args()
    out = Path(args.out)
    result_path = out / "result.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    for name, batch in ((c, b) for c in args.cases for b in args.batch_sizes):
        specimen, side, in_memory = CASES[name]
        name = name if batch == 32 else f"{name}_b{batch}"
        t = time.perf_counter()
        folder = simulate_windowed(out / f"{specimen}_{side}", specimen, side)
        sim_s = time.perf_counter() - t
        spec = SPECIMENS[specimen]
        rec_path = out / f"{name}.json"
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "_run", str(folder), str(spec["n_slices"]), str(spec["dz"]),
               str(args.epochs), "1" if in_memory else "0", str(rec_path), str(batch), str(spec["n_modes"])]
        proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="2"), capture_output=True, text=True)
        if proc.returncode:
            results[name] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "load_average": load}
        else:
            results[name] = {**json.loads(rec_path.read_text()), "load_average": load, "simulate_s": sim_s,
                             "scan": side, "slices": spec["n_slices"], "modes": spec["n_modes"],
                             "in_memory": in_memory, "batch": batch}
        print(name, json.dumps(results[name]), flush=True)
        result_path.write_text(json.dumps(results, indent=1))
    lines = ["| case | scan | slices | probe modes | patterns (GiB) | data | batch | s / epoch (median) "
             "| peak RSS (GiB) "
             "| anonymous at epoch ends, max (GiB) | r after each epoch | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rec in results.items():
        if "error" in rec:
            lines.append(f"| {name} | | | | | | | {rec['error']} | | | | |")
            continue
        lines.append(f"| {name} | {rec['scan']} × {rec['scan']} | {rec['slices']} | {rec.get('modes', 1)} | "
                     f"{rec['patterns_gib']:.2f} | "
                     f"{'memory' if rec['in_memory'] else 'streamed'} | {rec.get('batch', 32)} | "
                     f"{np.median(rec['epoch_s']):.1f} | "
                     f"{rec['peak_rss_gib']:.2f} | {rec.get('anonymous_gib', float('nan')):.2f} | "
                     f"{', '.join(f'{v:.4f}' for v in rec['r'])} | "
                     f"{rec['load_average']:.1f} |")
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
