"""Check numpy_multislice's conventions numerically against abTEM (nothing from phasestem).

    python benchmarks/independent/check_conventions.py

Three comparisons on a 256² grid of 0.1 Å pixels, 300 keV, 20 mrad hard aperture, the probe's
crossover Δf = 100 Å before the entrance surface (numpy_multislice ``defocus=+100``, abTEM
``defocus=-100``); abTEM's first array axis is taken as numpy_multislice's first axis (y):

1. probe intensity at the entrance surface (|ψ|² is the same for ±Δf alone, so this checks shape,
   position and normalisation, not the sign);
2. the diffraction pattern after a weak phase object in two slices 10 Å apart (one propagation)
   for a probe at an off-grid position: sensitive to the defocus sign *relative to* the
   propagator's, to position conventions and to the axis order; the same with the defocus sign
   flipped in numpy_multislice is printed as the size of a sign error;
3. pattern centring: a phase object tilted by integer cycles per cell along one axis shifts the
   disk by exactly that many pixels; checked against abTEM and against the expected pixel.

Printed: max |a − b| / max b for each comparison (b = abTEM), and the disk centres.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_multislice import atom_phase, electron_wavelength, probe_spectrum, sigma_interaction  # noqa: E402

N, DX, E, ALPHA, DF, DZ = 256, 0.1, 300e3, 20.0, 100.0, 10.0


def np_exit_pattern(phases: np.ndarray, pos: tuple[float, float], defocus: float) -> np.ndarray:
    """numpy_multislice's own steps on the whole grid: probe at ``pos``, transmit/propagate, |FFT|², k=0 at N/2."""
    ky = np.fft.fftfreq(N, DX)[:, None]
    kx = np.fft.fftfreq(N, DX)[None, :]
    lam = electron_wavelength(E)
    spec = probe_spectrum((N, N), DX, E, ALPHA, defocus) * np.exp(-2j * math.pi * (ky * pos[0] + kx * pos[1]))
    wave = np.fft.ifft2(spec, norm="ortho")
    prop = np.exp(-1j * math.pi * lam * (ky**2 + kx**2) * DZ)
    for s, ph in enumerate(phases):
        wave = wave * np.exp(1j * ph)
        if s < len(phases) - 1:
            wave = np.fft.ifft2(np.fft.fft2(wave, norm="ortho") * prop, norm="ortho")
    pat = np.fft.fftshift(np.abs(np.fft.fft2(wave, norm="ortho")) ** 2)
    return pat / pat.sum()


def ab_probe(defocus_abtem: float):
    import abtem

    return abtem.Probe(energy=E, semiangle_cutoff=ALPHA, soft=False, defocus=defocus_abtem, gpts=(N, N),
                       sampling=DX)


def ab_exit_pattern(phases: np.ndarray, pos: tuple[float, float], defocus_abtem: float) -> np.ndarray:
    import abtem

    pot = abtem.PotentialArray(np.asarray(phases / sigma_interaction(E), dtype=np.float32),
                               slice_thickness=DZ, sampling=DX)
    waves = ab_probe(defocus_abtem).build(scan=abtem.CustomScan(np.array([pos]))).multislice(pot)
    pat = np.asarray(waves.diffraction_patterns(max_angle="full").compute().array).reshape(N, N)
    return pat / pat.sum()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def centre(p: np.ndarray) -> tuple[float, float]:
    y, x = np.indices(p.shape)
    return float((p * y).sum() / p.sum()), float((p * x).sum() / p.sum())


def main() -> None:
    import abtem

    abtem.config.set({"device": "cpu"})
    print(f"abTEM {abtem.__version__}; grid {N}² × {DX} Å, {E / 1e3:.0f} keV, {ALPHA} mrad, "
          f"crossover {DF} Å before the entrance surface")
    from abtem.core.energy import energy2sigma, energy2wavelength

    print(f"sigma: numpy_multislice {sigma_interaction(E):.6e}, abTEM {energy2sigma(E):.6e} rad/(V·Å); "
          f"wavelength {electron_wavelength(E):.6f} Å vs {energy2wavelength(E):.6f}")

    # 1. probe intensity at the entrance surface, probe at the cell centre
    c = (N * DX / 2, N * DX / 2)
    ky = np.fft.fftfreq(N, DX)[:, None]
    kx = np.fft.fftfreq(N, DX)[None, :]
    spec = probe_spectrum((N, N), DX, E, ALPHA, DF) * np.exp(-2j * math.pi * (ky * c[0] + kx * c[1]))
    i_np = np.abs(np.fft.ifft2(spec, norm="ortho")) ** 2
    built = ab_probe(-DF).build(scan=abtem.CustomScan(np.array([c]))).compute()
    i_ab = np.abs(np.asarray(built.array).reshape(N, N)) ** 2
    print(f"1. entrance-surface probe intensity: max rel. diff {rel(i_np / i_np.sum(), i_ab / i_ab.sum()):.2e} "
          f"(sums {i_np.sum():.4g} vs {i_ab.sum():.4g}, compared after normalising); "
          f"centres {centre(i_np)} vs {centre(i_ab)} px")

    # 2. weak phase object, two slices DZ apart, probe off-grid
    rng = np.random.default_rng(1)
    phases = np.stack([atom_phase((N, N), DX, rng, 40, 0.3) for _ in range(2)])
    pos = (11.37, 13.81)
    p_np = np_exit_pattern(phases, pos, DF)
    p_ab = ab_exit_pattern(phases, pos, -DF)
    p_flip = np_exit_pattern(phases, pos, -DF)
    p_tr = np_exit_pattern(phases, pos[::-1], DF)  # the position's axes swapped
    print(f"2. pattern after 2 weak slices {DZ} Å apart: max rel. diff vs abTEM {rel(p_np, p_ab):.2e}; "
          f"with the defocus sign flipped {rel(p_flip, p_ab):.2e}; "
          f"with the position's axes swapped {rel(p_tr, p_ab):.2e}")
    bright = (np.abs(np.fft.fftshift(np.fft.fftfreq(N, DX)))[:, None] ** 2
              + np.abs(np.fft.fftshift(np.fft.fftfreq(N, DX)))[None, :] ** 2) ** 0.5 * electron_wavelength(E) * 1e3
    dark = bright > ALPHA * 1.1
    print(f"   dark field only (> {1.1 * ALPHA:.0f} mrad): {rel(p_np * dark, p_ab * dark):.2e}, flipped sign "
          f"{rel(p_flip * dark, p_ab * dark):.2e}")

    # 3. pattern centring: a tilt of m cycles per cell along axis 0 moves the disk by m pixels
    m = 7
    y = np.arange(N)[:, None] * np.ones((1, N))
    tilt = (2 * math.pi * m * y / N)[None]
    p0_np = np_exit_pattern(np.zeros((1, N, N)), c, DF)
    pt_np = np_exit_pattern(tilt, c, DF)
    pt_ab = ab_exit_pattern(tilt, c, -DF)
    print(f"3. centring: untilted disk centre (numpy) {centre(p0_np)} px, expected ({N // 2}, {N // 2}); tilted by "
          f"{m} cycles: numpy {centre(pt_np)}, abTEM {centre(pt_ab)}, expected ({N // 2 + m}, {N // 2}); "
          f"max rel. diff {rel(pt_np, pt_ab):.2e}")


if __name__ == "__main__":
    main()
