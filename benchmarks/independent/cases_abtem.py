"""The abTEM reference case: SrTiO3 [001] with point defects, frozen phonons and Poisson noise.

    python benchmarks/independent/cases_abtem.py OUT.npz [--quick] [--configs 4] [--dose 1e5]

Imports nothing from phasestem (abTEM 1.0 + ase only). Written in the case layout of
``benchmarks/recon_peers/common.py`` (as ``cases.py``), with ``loss = 'poisson'``.

Specimen: a 7 × 7 × 5 supercell of cubic SrTiO3 (a = 3.905 Å) viewed along [001], 19.5 Å thick; the
Sr column at cell (3, 3) replaced by Ba (a heavier column), three single Sr vacancies at different
depths in columns (1, 5), (5, 1) and (5, 5). abTEM potential (Lobato parametrisation, infinite
projection) in 5 slices of one unit cell (3.905 Å), frozen phonons (``FrozenPhonons``, ``--configs``
configurations, r.m.s. displacement 0.08 Å for Sr/Ba, 0.06 Å for Ti, 0.09 Å for O).

Optics: 300 keV, 20 mrad hard-edged aperture (``soft=False``), crossover 100 Å before the entrance
surface: C10 = +100 Å in the case file (PtyRAD / phasestem convention), abTEM ``defocus = −100``.

Sampling: the potential grid is 256² over the 27.3 Å cell (0.107 Å); abTEM's anti-aliasing keeps
frequencies up to 2/3 of that grid's Nyquist (61 mrad), and the patterns are cropped to the central
128² (± 46 mrad, fully inside the anti-aliased band). The reconstruction pixel is therefore
27.335 / 128 = 0.2136 Å and one 128² window spans exactly one period of the (periodic) specimen.

Scan: 32 × 32 raster with a 5-pixel step (1.068 Å), first probe centre at (0, 0) of the cell; the
scan spans 33.1 Å and wraps round the periodic cell (the specimen is periodic, so the data are
those of an infinite crystal with a 7 × 7 defect lattice). Patterns are normalised to the total
intensity of the full 256² pattern (so they sum to ≈ 1 within the crop), then Poisson-sampled at
``dose`` electrons per pattern (default 1e5).

Axes: abTEM's arrays are indexed (x, y); this case uses abTEM's first axis as the arrays' first
axis everywhere (positions, patterns, truth), i.e. the dataset's "y" is abTEM's x. That relabelling
is a mirror of the whole experiment and changes no physics.

Truth: σ · (projected potential summed over the slices), averaged over the frozen-phonon
configurations, band-limited to the 128² pattern's band (Fourier crop of the 256² grid), in the
dataset frame (pixel (0, 0) at the first probe centre), tiled periodically over the scanned field.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

A_STO = 3.905
A_GAAS = 5.653


#: crystals of the cases, each viewed along [001] of its cubic cell: (lattice constant Å, the cell's atoms in
#: fractional coordinates, the species whose central column is made heavier, the heavier species, abTEM slice Å,
#: r.m.s. thermal displacements of the frozen phonons Å)
MATERIALS = {
    "SrTiO3": (A_STO, [("Sr", (0, 0, 0)), ("Ti", (0.5, 0.5, 0.5)), ("O", (0.5, 0.5, 0)), ("O", (0.5, 0, 0.5)),
                       ("O", (0, 0.5, 0.5))], "Sr", "Ba", A_STO, {"Sr": 0.08, "Ba": 0.08, "Ti": 0.06, "O": 0.09}),
    # zinc blende: pure Ga and pure As columns on a square net 2.0 Å apart in projection
    "GaAs": (A_GAAS, [("Ga", (0, 0, 0)), ("Ga", (0.5, 0.5, 0)), ("Ga", (0.5, 0, 0.5)), ("Ga", (0, 0.5, 0.5)),
                      ("As", (0.25, 0.25, 0.25)), ("As", (0.75, 0.75, 0.25)), ("As", (0.75, 0.25, 0.75)),
                      ("As", (0.25, 0.75, 0.75))], "Ga", "In", A_GAAS / 2, {"Ga": 0.08, "In": 0.09, "As": 0.07}),
}


def _supercell(reps: tuple[int, int, int], vacancies: list[tuple[tuple[int, int], int]], material: str = "SrTiO3"):
    """``reps`` cells of ``material``; the central column of its marked species made heavier, and one atom of that
    species removed from column (i, j) at the given layer (counted from the entrance surface) per vacancy."""
    from ase import Atoms

    a, basis, marked, heavier = MATERIALS[material][:4]
    unit = Atoms([sym for sym, _ in basis], scaled_positions=[xyz for _, xyz in basis], cell=[a] * 3, pbc=True)
    atoms = unit * reps
    pos = atoms.get_positions()
    sym = atoms.get_chemical_symbols()

    def in_column(i, j):
        return [k for k, s in enumerate(sym) if s == marked and np.allclose(pos[k, :2], (i * a, j * a))]

    c = reps[0] // 2
    for k in in_column(c, c):  # the heavier column
        atoms[k].symbol = heavier
    drop = []
    for (i, j), layer in vacancies:
        col = sorted(in_column(i, j), key=lambda k: pos[k, 2])
        drop.append(col[layer])
    del atoms[sorted(drop)]
    return atoms


def make_abtem_case(quick: bool = False, n_configs: int = 4, dose: float = 1e5, seed: int = 0,
                    threads: int = 2, layout: dict | None = None) -> dict:
    """Simulate the case with abTEM; returns the arrays and scalars of a case file.

    ``layout`` (optional) replaces the specimen and scan of the default case: reps (cells y, x, z),
    grid (potential px per side), n_pat (pattern px), scan (Sy, Sx), step_px, vacancies
    [((i, j), layer), ...], c10 (Å, + = crossover before the entrance surface), recon_slices (the
    slice count the reconstruction is given; its dz = thickness / recon_slices), n_configs, dose
    (0: noise-free), specimen (a description) and, optionally, seed (of the frozen phonons) and tilt
    ((θy, θx) mrad along the pattern's first and second axes: abTEM's beam tilt, which tilts the propagator
    between slices; stored per position as ``tilt_mrad``).
    """
    import abtem
    import dask
    from abtem.core.energy import energy2sigma

    dask.config.set(scheduler="threads", num_workers=threads)
    abtem.config.set({"device": "cpu"})
    energy, semiangle, c10 = 300e3, 20.0, 100.0
    recon_slices, tilt, material = None, (0.0, 0.0), "SrTiO3"
    if layout is not None:
        reps, grid, n_pat, scan, step_px = (tuple(layout[k]) if k in ("reps", "scan") else layout[k]
                                            for k in ("reps", "grid", "n_pat", "scan", "step_px"))
        vac, c10 = layout["vacancies"], layout["c10"]
        n_configs, dose, recon_slices = layout["n_configs"], layout["dose"], layout["recon_slices"]
        seed = layout.get("seed", seed)
        tilt = tuple(float(t) for t in layout.get("tilt", tilt))
        material = layout.get("material", material)
    elif quick:
        reps, grid, n_pat, scan, step_px, n_configs = (4, 4, 2), 128, 64, (8, 8), 3, min(n_configs, 2)
        vac = [((1, reps[1] - 1), 0)]
    else:
        reps, grid, n_pat, scan, step_px = (7, 7, 5), 256, 128, (32, 32), 5
        vac = [((1, 5), 2), ((5, 1), 0), ((5, 5), 4)]
    atoms = _supercell(reps, vac, material)
    a, slice_dz, sigmas = MATERIALS[material][0], *MATERIALS[material][4:]
    extent = reps[0] * a
    sampling = extent / n_pat  # reconstruction pixel (Å)
    fp = abtem.FrozenPhonons(atoms, num_configs=n_configs, sigmas=sigmas, seed=seed)
    potential = abtem.Potential(fp, gpts=grid, slice_thickness=slice_dz, projection="infinite")
    pot_arr = potential.build().compute()
    v = np.asarray(pot_arr.array)  # (configs, slices, grid, grid) V·Å
    n_slices = v.shape[-3]
    proj = energy2sigma(energy) * v.sum(-3).reshape(-1, grid, grid).mean(0)  # rad, full grid
    # band-limit to the n_pat² window's band: Fourier crop (values kept: ifft of the crop × (n_pat/grid)²)
    f = np.fft.fftshift(np.fft.fft2(proj))
    lo = (grid - n_pat) // 2
    proj_w = np.fft.ifft2(np.fft.ifftshift(f[lo : lo + n_pat, lo : lo + n_pat])).real * (n_pat / grid) ** 2

    iy, ix = np.meshgrid(np.arange(scan[0]), np.arange(scan[1]), indexing="ij")
    pos_px = np.stack([iy.ravel(), ix.ravel()], -1) * step_px  # first probe centre at (0, 0)
    probe = abtem.Probe(energy=energy, semiangle_cutoff=semiangle, soft=False, defocus=-c10, tilt=tilt)
    scan_obj = abtem.CustomScan(pos_px * sampling)
    det = abtem.PixelatedDetector(max_angle="full")
    patterns = probe.scan(potential, scan=scan_obj, detectors=det).compute()
    pats = np.asarray(patterns.array, dtype=np.float64).reshape(-1, grid, grid)  # frozen phonons averaged
    total = pats.sum((-2, -1), keepdims=True)
    c0 = grid // 2 - n_pat // 2  # abTEM puts k = 0 at (grid/2, grid/2) → crop keeps it at (n_pat/2, n_pat/2)
    pats = pats[:, c0 : c0 + n_pat, c0 : c0 + n_pat] / total
    if dose:
        rng = np.random.default_rng(seed)
        pats = rng.poisson(pats * dose).astype(np.float32)

    fov = ((scan[0] - 1) * step_px + 1, (scan[1] - 1) * step_px + 1)
    ty, tx = np.arange(fov[0] + n_pat // 2), np.arange(fov[1] + n_pat // 2)
    truth = proj_w[np.ix_(ty % n_pat, tx % n_pat)]
    if layout is not None:
        specimen = layout["specimen"]
    else:
        specimen = "SrTiO3 [001] 4x4x2, Ba column, 1 Sr vacancy" if quick else \
            "SrTiO3 [001] 7x7x5, Ba column, 3 Sr vacancies"
    thickness = reps[2] * a
    r_slices = recon_slices or n_slices
    return dict(patterns=pats.reshape(scan[0], scan[1], n_pat, n_pat).astype(np.float32),
                truth_phase=truth.astype(np.float32), energy=energy, semiangle=semiangle, c10=float(c10),
                sampling=sampling, scan_step=step_px * sampling, n_slices=r_slices,
                dz=thickness / recon_slices if recon_slices else slice_dz, material=material,
                sim_slices=n_slices, thickness=thickness, n_modes=1, iters=10, batch=32 if not quick else 16,
                dose=float(dose), loss="poisson" if dose else "gaussian", source_size=0.0,
                frozen_phonons=n_configs, specimen=specimen, abtem_version=abtem.__version__,
                **({"tilt_mrad": np.tile(np.asarray(tilt, dtype=np.float64), (scan[0] * scan[1], 1))}
                   if any(tilt) else {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", type=int, default=4)
    ap.add_argument("--dose", type=float, default=1e5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    case = make_abtem_case(args.quick, args.configs, args.dose, args.seed)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, **case)
    os.replace(tmp, args.out)
    print(f"abtem case: {time.perf_counter() - t0:.1f} s -> {args.out} (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
