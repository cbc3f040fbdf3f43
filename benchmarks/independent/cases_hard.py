"""The hard independent cases of issue 29, split into a development and a validation half.

Every kind of difficulty has one case in each half, with a different specimen (seed, atom size,
slice count) and different parameters; defaults may be tuned on ``dev`` only and are reported on
``val``. Simulators: ``numpy_multislice.py`` (via ``cases.simulate_case``) and abTEM
(``cases_abtem.make_abtem_case``, the validation thick case); nothing from phasestem.

Geometry (unless the case says otherwise): 24 × 24 raster at 1 Å, 96² windows of 0.2 Å pixels
(19.2 Å), 300 keV, 20 mrad hard aperture, batch 32; the low-dose cases: 32 × 32 raster at 0.5 Å.
``c10`` (Å): + = crossover before the entrance surface; the thick and tilted cases focus inside.

  kind       dev                                        val
  strong     8 × 10 Å, 2.0 rad / slice                   12 × 8 Å, 2.5 rad / slice, c10 −50
  thick      24 × 10 Å (24 nm) columns, NumPy              abTEM SrTiO3 5 × 5 × 52 cells (20.3 nm), 52 slices
  dose1e3    1e3 e⁻ / pattern, 0.5 Å step                the same on another specimen
  dose1e4    1e4 e⁻ / pattern, 0.5 Å step                the same on another specimen
  tilt       constant (2, 2) mrad, 12 × 15 Å             constant (−3.5, 1.5) mrad, 16 × 12 Å
  tiltvar    θx 2 → 5 mrad across x                      |θ| from 2.2 to 5.0 mrad, varying along y and x
  distort    σ 0.3 Å per axis + drift (0.8, −0.5) Å      σ 0.4 Å + drift (−0.6, 1.0) Å
  coherence  source 0.6 Å FWHM, 1e6 e⁻, 4 probe modes    source 0.8 Å FWHM, 1e6 e⁻, 4 probe modes
  strongthick  issue 69's regime: 32 × 32 at 1 Å, 128² patterns, crossover 100 Å before the specimen, noise-free
             8 × 10 Å, summed peak 2.4 rad                8 × 10 Å, atoms σ 0.35 Å, summed peak 2.9 rad
             10 × 8 Å, summed peak 2.8 rad, c10 +60      7 × 12 Å, summed peak 2.6 rad, c10 +150

Case names are ``HALF_KIND`` (``dev_strong``, ``val_thick``, ...). Besides the fields of
``cases.py``, each file records ``kind``, ``half`` and ``description``; the NumPy cases also store
their phase slices (``slice_phases``) so ``check_cases.py`` can re-simulate patterns from the file.
"""
from __future__ import annotations

from cases import GEOM, simulate_case

HARD_GEOM = dict(GEOM, scan=(24, 24), window=96)
HARD_QUICK = dict(GEOM, scan=(6, 6), window=64, batch=16)
HALVES = ("dev", "val")
KINDS = ("strong", "thick", "dose1e3", "dose1e4", "tilt", "tiltvar", "distort", "coherence", "strongthick")

_BASE = dict(iters=20, dose=0, source=0.0, keep_slices=True, margin=16)
_LOWDOSE_GEOM = dict(scan=(32, 32), step=0.5)
_QUICK_LOWDOSE_GEOM = dict(scan=(8, 8), step=0.5)
_REGIME_GEOM = dict(scan=(32, 32), window=128)  # issue 69's strong-phase regime: the base cases' geometry


def _crystal(material: str, reps: tuple[int, int, int], c10: float, recon_slices: int, seed: int,
             vacancies: list, tilt: tuple[float, float] = (0.0, 0.0)) -> dict:
    """An abTEM crystal case on the thick cases' geometry: 192² potential px, 96² patterns, a 24 × 24 scan every
    5 (SrTiO3) or 4 (GaAs) px, 2 frozen phonons, noise-free; ``c10`` Å (− = crossover inside), ``tilt`` (θy, θx)
    mrad of beam tilt. The quick layout (tests) is 2–3 cells across, a 6 × 6 scan, one phonon configuration."""
    a, cell, step = {"SrTiO3": (3.905, "SrTiO3", 5), "GaAs": (5.653, "GaAs", 4)}[material]
    off = f", beam tilt ({tilt[0]:g}, {tilt[1]:g}) mrad" if any(tilt) else ""
    name = f"{cell} [001] {reps[0]}x{reps[1]}x{reps[2]}"
    common = dict(material=material, c10=c10, recon_slices=recon_slices, dose=0, seed=seed, tilt=tuple(tilt))
    quick_cells = 3 if material == "SrTiO3" else 2
    return dict(simulator="abtem", iters=20,
                layout=dict(common, reps=reps, grid=192, n_pat=96, scan=(24, 24), step_px=step,
                            vacancies=vacancies, n_configs=2,
                            specimen=f"{name} ({reps[2] * a / 10:.1f} nm), {len(vacancies)} vacancies{off}"),
                quick_layout=dict(common, reps=(quick_cells, quick_cells, reps[2]), grid=128, n_pat=64, scan=(6, 6),
                                  step_px=3, vacancies=[((0, 1), vacancies[0][1])], n_configs=1,
                                  specimen=f"{cell} [001] {quick_cells}x{quick_cells}x{reps[2]}, 1 vacancy{off}"),
                description=f"abTEM {name} cells ({reps[2] * a / 10:.1f} nm), 2 frozen phonons{off or ', on axis'}, "
                            f"crossover {-c10:g} Å inside, noise-free; recon given {recon_slices} slices")


# spec: cases.simulate_case's keys, plus geom (overrides of HARD_GEOM: defocus, scan, step), seed,
# description; simulator 'abtem' uses cases_abtem's layout instead.
HARD: dict[str, dict] = {
    # -- development half ------------------------------------------------------------------
    "dev_strong": dict(_BASE, n_slices=8, dz=10.0, max_phase=2.0, density=0.15, seed=101,
                       description="8 × 10 Å, Gaussian atoms σ 0.4 Å, 2.0 rad peak per slice, noise-free"),
    "dev_thick": dict(_BASE, n_slices=24, dz=10.0, max_phase=0.6, density=0.05, columns=True, seed=102,
                      geom=dict(defocus=-120.0),
                      description="24 × 10 Å (24 nm), atom columns (the same atoms in every slice, 0.6 rad each: "
                                  "14.4 rad per column), crossover at mid-thickness, noise-free"),
    "dev_thick_crystal": dict(simulator="abtem", iters=20,
                              layout=dict(reps=(5, 5, 64), grid=192, n_pat=96, scan=(24, 24), step_px=5,
                                          vacancies=[((2, 1), 15), ((1, 4), 40)], c10=-150.0, recon_slices=24,
                                          n_configs=2, dose=0, seed=11,
                                          specimen="SrTiO3 [001] 5x5x64 (25.0 nm), Ba column, 2 Sr vacancies"),
                              quick_layout=dict(reps=(3, 3, 64), grid=128, n_pat=64, scan=(6, 6), step_px=3,
                                                vacancies=[((2, 1), 15)], c10=-150.0, recon_slices=24, n_configs=1,
                                                dose=0, seed=11,
                                                specimen="SrTiO3 [001] 3x3x64, Ba column, 1 Sr vacancy"),
                              description="abTEM SrTiO3 [001] 5 × 5 × 64 cells (25.0 nm), 64 slices of 3.905 Å, 2 "
                                          "frozen phonons, crossover 150 Å inside, noise-free; recon given 24 × "
                                          "10.41 Å (a crystal, as val_thick is: dev_thick's identical slices "
                                          "reward what spreads the phase evenly over depth)"),
    "dev_tilt_crystal": dict(simulator="abtem", iters=20,
                             layout=dict(reps=(5, 5, 48), grid=192, n_pat=96, scan=(24, 24), step_px=5,
                                         vacancies=[((1, 3), 20)], c10=-90.0, recon_slices=16, n_configs=2,
                                         dose=0, seed=12, tilt=(2.5, -2.0),
                                         specimen="SrTiO3 [001] 5x5x48 (18.7 nm), Ba column, 1 Sr vacancy, "
                                                  "beam tilt (2.5, -2.0) mrad"),
                             quick_layout=dict(reps=(3, 3, 48), grid=128, n_pat=64, scan=(6, 6), step_px=3,
                                               vacancies=[((1, 2), 20)], c10=-90.0, recon_slices=16,
                                               n_configs=1, dose=0, seed=12, tilt=(2.5, -2.0),
                                               specimen="SrTiO3 [001] 3x3x48, Ba column, 1 Sr vacancy, tilted"),
                             description="abTEM SrTiO3 [001] 5 × 5 × 48 cells (18.7 nm), 48 slices of 3.905 Å, 2 "
                                         "frozen phonons, beam tilt (θy, θx) = (2.5, −2.0) mrad (3.2), crossover "
                                         "90 Å inside, noise-free; recon given 16 × 11.72 Å (a mistilted crystal: "
                                         "its columns are straight only in the tilted frame)"),
    # added in the eighth session of 2026-11-25, for obj_shear: auto after a kept coarse start (its spurious turn-on
    # on on-axis crystals): a crystal near its zone axis, one on it of the other material, and one 1.2 mrad off
    "dev_thick_near_axis": _crystal("SrTiO3", (5, 5, 60), c10=-120.0, recon_slices=20, seed=19,
                                    vacancies=[((3, 1), 25)], tilt=(-0.35, -0.35)),
    "dev_thick_gaas": _crystal("GaAs", (4, 4, 40), c10=-90.0, recon_slices=20, seed=20,
                               vacancies=[((1, 3), 12), ((3, 1), 28)]),
    "dev_thick_tilt1": _crystal("SrTiO3", (5, 5, 52), c10=-100.0, recon_slices=18, seed=21,
                                vacancies=[((1, 2), 30)], tilt=(1.0, 0.6)),
    "dev_dose1e3": dict(_BASE, n_slices=4, dz=10.0, max_phase=0.5, density=0.15, dose=1e3, seed=103,
                        geom=_LOWDOSE_GEOM, description="4 × 10 Å, 0.5 rad per slice, 1e3 e⁻/pattern (Poisson)"),
    "dev_dose1e4": dict(_BASE, n_slices=4, dz=10.0, max_phase=0.5, density=0.15, dose=1e4, seed=103,
                        geom=_LOWDOSE_GEOM, description="as dev_dose1e3 (same specimen), 1e4 e⁻/pattern"),
    "dev_tilt": dict(_BASE, n_slices=12, dz=15.0, max_phase=0.5, density=0.1, tilt=(2.0, 2.0), seed=104,
                     geom=dict(defocus=-90.0), description="12 × 15 Å (18 nm), constant mistilt (2, 2) mrad"),
    "dev_tiltvar": dict(_BASE, n_slices=12, dz=15.0, max_phase=0.5, density=0.1, tilt=(0.0, 3.5),
                        tilt_grad=((0.0, 0.0), (0.0, 1.5)), seed=105, geom=dict(defocus=-90.0),
                        description="12 × 15 Å, mistilt θx from 2 to 5 mrad linearly across x, θy 0"),
    "dev_distort": dict(_BASE, n_slices=4, dz=10.0, max_phase=0.5, density=0.15, pos_error=0.3,
                        drift=(0.8, -0.5), seed=106,
                        description="4 × 10 Å; random position errors σ 0.3 Å per axis + linear drift (0.8, −0.5) Å"),
    "dev_coherence": dict(_BASE, n_slices=2, dz=10.0, max_phase=0.5, density=0.3, source=0.6, dose=1e6,
                          n_modes=4, seed=107,
                          description="2 × 10 Å, source 0.6 Å FWHM, 1e6 e⁻ (Poisson); recon given 4 probe modes"),
    # added 2026-11-27 for issue 69's strong-phase regime (8 × 10 Å, summed peak 2.4 rad, 20 mrad, +100 Å, 1 Å step,
    # 128² patterns of 0.2 Å, noise-free; r at 5 and 20 iterations); max_phase is per slice, set for the summed peak
    "dev_strongthick": dict(_BASE, n_slices=8, dz=10.0, max_phase=1.35, density=0.15, seed=111, geom=_REGIME_GEOM,
                            description="8 × 10 Å, 1.35 rad peak per slice (summed peak 2.4 rad), noise-free"),
    "dev_strongthick_b": dict(_BASE, n_slices=10, dz=8.0, max_phase=1.35, density=0.12, seed=112,
                              geom=dict(_REGIME_GEOM, defocus=60.0),
                              description="10 × 8 Å, 1.35 rad peak per slice (summed peak 2.8 rad), crossover 60 Å "
                                          "before the specimen, noise-free"),
    # -- validation half -------------------------------------------------------------------
    "val_strong": dict(_BASE, n_slices=12, dz=8.0, max_phase=2.5, density=0.12, width=0.35, seed=201,
                       geom=dict(defocus=-50.0),
                       description="12 × 8 Å, atoms σ 0.35 Å, 2.5 rad peak per slice, crossover 50 Å inside"),
    "val_thick": dict(simulator="abtem", iters=20,
                      layout=dict(reps=(5, 5, 52), grid=192, n_pat=96, scan=(24, 24), step_px=5,
                                  vacancies=[((1, 3), 10), ((3, 1), 30), ((3, 3), 45)], c10=-100.0,
                                  recon_slices=20, n_configs=2, dose=0,
                                  specimen="SrTiO3 [001] 5x5x52 (20.3 nm), Ba column, 3 Sr vacancies"),
                      quick_layout=dict(reps=(3, 3, 52), grid=128, n_pat=64, scan=(6, 6), step_px=3,
                                        vacancies=[((1, 2), 20)], c10=-100.0, recon_slices=20, n_configs=1,
                                        dose=0, specimen="SrTiO3 [001] 3x3x52, Ba column, 1 Sr vacancy"),
                      description="abTEM SrTiO3 [001] 5 × 5 × 52 cells (20.3 nm), 52 slices of 3.905 Å, 2 frozen "
                                  "phonons, noise-free; recon given 20 × 10.15 Å"),
    "val_dose1e3": dict(_BASE, n_slices=3, dz=12.0, max_phase=0.6, density=0.12, width=0.35, dose=1e3, seed=203,
                        geom=dict(_LOWDOSE_GEOM, defocus=80.0),
                        description="3 × 12 Å, atoms σ 0.35 Å, 0.6 rad per slice, 1e3 e⁻/pattern"),
    "val_dose1e4": dict(_BASE, n_slices=3, dz=12.0, max_phase=0.6, density=0.12, width=0.35, dose=1e4, seed=203,
                        geom=dict(_LOWDOSE_GEOM, defocus=80.0),
                        description="as val_dose1e3 (same specimen), 1e4 e⁻/pattern"),
    "val_tilt": dict(_BASE, n_slices=16, dz=12.0, max_phase=0.4, density=0.08, width=0.35, tilt=(-3.5, 1.5),
                     seed=204, geom=dict(defocus=-100.0),
                     description="16 × 12 Å (19.2 nm), constant mistilt (−3.5, 1.5) mrad"),
    "val_tilt_crystal": dict(simulator="abtem", iters=20,
                             layout=dict(reps=(5, 5, 56), grid=192, n_pat=96, scan=(24, 24), step_px=5,
                                         vacancies=[((3, 1), 12), ((1, 1), 40)], c10=-110.0, recon_slices=20,
                                         n_configs=2, dose=0, seed=13, tilt=(-1.5, -3.5),
                                         specimen="SrTiO3 [001] 5x5x56 (21.9 nm), Ba column, 2 Sr vacancies, "
                                                  "beam tilt (-1.5, -3.5) mrad"),
                             quick_layout=dict(reps=(3, 3, 56), grid=128, n_pat=64, scan=(6, 6), step_px=3,
                                               vacancies=[((1, 2), 20)], c10=-110.0, recon_slices=20,
                                               n_configs=1, dose=0, seed=13, tilt=(-1.5, -3.5),
                                               specimen="SrTiO3 [001] 3x3x56, Ba column, 1 Sr vacancy, tilted"),
                             description="abTEM SrTiO3 [001] 5 × 5 × 56 cells (21.9 nm), 56 slices of 3.905 Å, 2 "
                                         "frozen phonons, beam tilt (θy, θx) = (−1.5, −3.5) mrad (3.8), crossover "
                                         "110 Å inside, noise-free; recon given 20 × 10.93 Å"),
    # added after obj_shear's 'auto' rule was revised with val_tilt_crystal seen: a crystal no rule was chosen on
    "val_tilt_crystal_b": dict(simulator="abtem", iters=20,
                               layout=dict(reps=(5, 5, 64), grid=192, n_pat=96, scan=(24, 24), step_px=5,
                                           vacancies=[((2, 2), 30)], c10=-130.0, recon_slices=16, n_configs=2,
                                           dose=0, seed=14, tilt=(-2.0, 1.0),
                                           specimen="SrTiO3 [001] 5x5x64 (25.0 nm), Ba column, 1 Sr vacancy, "
                                                    "beam tilt (-2.0, 1.0) mrad"),
                               quick_layout=dict(reps=(3, 3, 64), grid=128, n_pat=64, scan=(6, 6), step_px=3,
                                                 vacancies=[((1, 2), 20)], c10=-130.0, recon_slices=16,
                                                 n_configs=1, dose=0, seed=14, tilt=(-2.0, 1.0),
                                                 specimen="SrTiO3 [001] 3x3x64, Ba column, 1 Sr vacancy, tilted"),
                               description="abTEM SrTiO3 [001] 5 × 5 × 64 cells (25.0 nm), 64 slices of 3.905 Å, 2 "
                                           "frozen phonons, beam tilt (θy, θx) = (−2.0, 1.0) mrad (2.2), crossover "
                                           "130 Å inside, noise-free; recon given 16 × 15.62 Å"),
    # added after constraints.obj_clamp's 'auto' rule (positivity on crystals) was chosen with every other crystal of
    # both halves seen: a crystal of another material, structure and geometry that no rule was chosen on
    "val_thick_gaas": dict(simulator="abtem", iters=20,
                           layout=dict(material="GaAs", reps=(4, 4, 36), grid=192, n_pat=96, scan=(24, 24), step_px=4,
                                       vacancies=[((1, 2), 10), ((3, 1), 25)], c10=-80.0, recon_slices=20,
                                       n_configs=2, dose=0, seed=15,
                                       specimen="GaAs [001] 4x4x36 (20.4 nm), In column, 2 Ga vacancies"),
                           quick_layout=dict(material="GaAs", reps=(2, 2, 36), grid=128, n_pat=64, scan=(6, 6),
                                             step_px=3, vacancies=[((1, 1), 10)], c10=-80.0, recon_slices=20,
                                             n_configs=1, dose=0, seed=15,
                                             specimen="GaAs [001] 2x2x36, In column, 1 Ga vacancy"),
                           description="abTEM GaAs [001] 4 × 4 × 36 cells (20.4 nm), 72 slices of 2.83 Å, 2 frozen "
                                       "phonons, crossover 80 Å inside, noise-free; recon given 20 × 10.18 Å (pure Ga "
                                       "and As columns 2.0 Å apart, an In column, 0.2355 Å pixels, 0.94 Å step)"),
    # added after run.coarse_start's 'auto' rule (kept for a crystal on its zone axis only) was chosen with every
    # thick case of both halves seen: three crystals no rule was chosen on, one mistilted, one on axis and thicker
    # than any other, one 0.5 mrad off axis (as well as a microscopist aligns a zone axis)
    "val_tilt_crystal_gaas": dict(simulator="abtem", iters=20,
                          layout=dict(material="GaAs", reps=(4, 4, 36), grid=192, n_pat=96, scan=(24, 24), step_px=4,
                                      vacancies=[((2, 1), 20)], c10=-90.0, recon_slices=18, n_configs=2, dose=0,
                                      seed=16, tilt=(2.4, -1.6),
                                      specimen="GaAs [001] 4x4x36 (20.4 nm), In column, 1 Ga vacancy, beam tilt "
                                               "(2.4, -1.6) mrad"),
                          quick_layout=dict(material="GaAs", reps=(2, 2, 36), grid=128, n_pat=64, scan=(6, 6),
                                            step_px=3, vacancies=[((1, 1), 10)], c10=-90.0, recon_slices=18,
                                            n_configs=1, dose=0, seed=16, tilt=(2.4, -1.6),
                                            specimen="GaAs [001] 2x2x36, In column, 1 Ga vacancy, tilted"),
                          description="abTEM GaAs [001] 4 × 4 × 36 cells (20.4 nm), 72 slices of 2.83 Å, 2 frozen "
                                      "phonons, beam tilt (θy, θx) = (2.4, −1.6) mrad (2.9), crossover 90 Å inside, "
                                      "noise-free; recon given 18 × 11.31 Å"),
    "val_thick_sto30": dict(simulator="abtem", iters=20,
                            layout=dict(reps=(5, 5, 77), grid=192, n_pat=96, scan=(24, 24), step_px=5,
                                        vacancies=[((2, 3), 20), ((1, 1), 60)], c10=-150.0, recon_slices=24,
                                        n_configs=2, dose=0, seed=17,
                                        specimen="SrTiO3 [001] 5x5x77 (30.1 nm), Ba column, 2 Sr vacancies"),
                            quick_layout=dict(reps=(3, 3, 77), grid=128, n_pat=64, scan=(6, 6), step_px=3,
                                              vacancies=[((1, 2), 20)], c10=-150.0, recon_slices=24, n_configs=1,
                                              dose=0, seed=17, specimen="SrTiO3 [001] 3x3x77, Ba column, 1 Sr vacancy"),
                            description="abTEM SrTiO3 [001] 5 × 5 × 77 cells (30.1 nm), 77 slices of 3.905 Å, 2 "
                                        "frozen phonons, crossover 150 Å inside, noise-free; recon given 24 × 12.53 Å"),
    "val_thick_near_axis": dict(simulator="abtem", iters=20,
                               layout=dict(material="GaAs", reps=(4, 4, 42), grid=192, n_pat=96, scan=(24, 24),
                                           step_px=4, vacancies=[((1, 1), 15), ((2, 3), 30)], c10=-100.0,
                                           recon_slices=20, n_configs=2, dose=0, seed=18, tilt=(0.3, -0.4),
                                           specimen="GaAs [001] 4x4x42 (23.7 nm), In column, 2 Ga vacancies, beam "
                                                    "tilt (0.3, -0.4) mrad"),
                               quick_layout=dict(material="GaAs", reps=(2, 2, 42), grid=128, n_pat=64, scan=(6, 6),
                                                 step_px=3, vacancies=[((1, 1), 10)], c10=-100.0, recon_slices=20,
                                                 n_configs=1, dose=0, seed=18, tilt=(0.3, -0.4),
                                                 specimen="GaAs [001] 2x2x42, In column, 1 Ga vacancy, 0.5 mrad off"),
                               description="abTEM GaAs [001] 4 × 4 × 42 cells (23.7 nm), 84 slices of 2.83 Å, 2 "
                                           "frozen phonons, beam tilt (θy, θx) = (0.3, −0.4) mrad (0.5), crossover "
                                           "100 Å inside, noise-free; recon given 20 × 11.87 Å"),
    # added in the eighth session of 2026-11-25 before any rule was run on them: the same three kinds on new specimens
    "val_thick_near_axis_sto": _crystal("SrTiO3", (5, 5, 64), c10=-130.0, recon_slices=22, seed=22,
                                        vacancies=[((1, 3), 30)], tilt=(0.45, 0.2)),
    "val_thick_tilt1_gaas": _crystal("GaAs", (4, 4, 40), c10=-100.0, recon_slices=20, seed=23,
                                     vacancies=[((3, 3), 18)], tilt=(-0.9, -0.9)),
    "val_thick_gaas_b": _crystal("GaAs", (4, 4, 46), c10=-120.0, recon_slices=22, seed=24,
                                 vacancies=[((1, 1), 20), ((3, 2), 35)]),
    "val_tiltvar": dict(_BASE, n_slices=16, dz=12.0, max_phase=0.4, density=0.08, width=0.35, tilt=(2.5, -2.5),
                        tilt_grad=((1.1, 0.2), (0.0, -0.7)), seed=205, geom=dict(defocus=-100.0),
                        description="16 × 12 Å, mistilt θy 2.5 ± 1.3, θx −2.5 ± 0.7 mrad across the field "
                                    "(|θ| 2.2–5.0)"),
    "val_distort": dict(_BASE, n_slices=6, dz=8.0, max_phase=0.6, density=0.12, width=0.35, pos_error=0.4,
                        drift=(-0.6, 1.0), seed=206,
                        description="6 × 8 Å; random position errors σ 0.4 Å per axis + linear drift (−0.6, 1.0) Å"),
    "val_coherence": dict(_BASE, n_slices=3, dz=10.0, max_phase=0.4, density=0.25, width=0.35, source=0.8,
                          dose=1e6, n_modes=4, seed=207,
                          description="3 × 10 Å, source 0.8 Å FWHM, 1e6 e⁻ (Poisson); recon given 4 probe modes"),
    "val_strongthick": dict(_BASE, n_slices=8, dz=10.0, max_phase=1.27, density=0.15, width=0.35, seed=211,
                            geom=_REGIME_GEOM,
                            description="8 × 10 Å, atoms σ 0.35 Å, 1.27 rad peak per slice (summed peak 2.9 rad), "
                                        "noise-free"),
    "val_strongthick_b": dict(_BASE, n_slices=7, dz=12.0, max_phase=1.15, density=0.13, seed=212,
                              geom=dict(_REGIME_GEOM, defocus=150.0),
                              description="7 × 12 Å, 1.15 rad peak per slice (summed peak 2.6 rad), crossover 150 Å "
                                          "before the specimen, noise-free"),
}


def hard_names(half: str) -> list[str]:
    """Case names of one half ('dev', 'val') or of both ('all')."""
    halves = HALVES if half == "all" else (half,)
    return [name for name in HARD if name.split("_", 1)[0] in halves]


def make_hard_case(name: str, quick: bool = False) -> dict:
    """Simulate one hard case (test-sized with ``quick``); the case-file dict with kind/half/description."""
    spec = HARD[name]
    half, kind = name.split("_", 1)
    if spec.get("simulator") == "abtem":
        from cases_abtem import make_abtem_case

        case = make_abtem_case(layout=spec["quick_layout" if quick else "layout"], quick=quick)
        case["iters"] = spec["iters"]
    else:
        geom = dict(HARD_QUICK if quick else HARD_GEOM)
        over = dict(spec.get("geom", {}))
        if quick and "scan" in over:
            over["scan"] = _QUICK_LOWDOSE_GEOM["scan"]
        if quick:
            over.pop("window", None)
        geom.update(over)
        case = simulate_case(spec, geom, seed=spec["seed"])
    case.update(kind=kind, half=half, description=spec["description"])
    return case
