"""``phasestem plan``: the closed-form quantities against hand-computed cases, one warning line per problem, the
command line, and the expected result (simulate → --auto → score) on tiny settings."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from phasestem.plan import plan
from phasestem.plan.advice import advise
from phasestem.plan.config import load_plan_config, plan_config
from phasestem.plan.quantities import circle_overlap, compute, probe_radius

#: λ at 300 keV (Å), relativistic
LAMBDA_300 = 0.0196875

GOOD = {"optics": {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 100.0}},
        "scan": {"step": 0.5, "shape": [64, 64]},
        "detector": {"shape": 128, "angular_sampling": 0.5},
        "dose": {"electrons_per_area": 1e4},
        "specimen": {"thickness": 20.0}}


def settings(**changes) -> dict:
    """GOOD with dotted changes, e.g. settings(**{"scan.step": 5})."""
    data = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        node = data
        *head, last = dotted.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return data


def test_circle_overlap_hand_values():
    assert circle_overlap(0.0, 1.0) == pytest.approx(1.0)
    assert circle_overlap(2.0, 1.0) == 0.0 and circle_overlap(3.0, 1.0) == 0.0
    # d = r: x = 1/2, (2/π)(π/3 − (1/2)(√3/2)) = 0.391002
    assert circle_overlap(1.0, 1.0) == pytest.approx(0.391002, abs=1e-6)


def test_probe_radius_from_semiangle_and_defocus():
    r, geo, diff = probe_radius(300e3, 20.0, {"C10": 100.0})
    assert geo == pytest.approx(2.0)  # |C10|·α = 100 Å × 0.02
    assert diff == pytest.approx(0.61 * LAMBDA_300 / 0.02, rel=1e-4)  # Airy radius 0.6005 Å
    assert r == pytest.approx(math.hypot(2.0, 0.60047), rel=1e-4)
    _, geo_cs, _ = probe_radius(300e3, 20.0, {"C10": 0.0, "C30": 1e6})
    assert geo_cs == pytest.approx(8.0, rel=1e-6)  # Cs·α³ = 1e6 Å × 8e-6
    # C10 balancing Cs: |C10 θ + C30 θ³| peaks inside the aperture, at θ² = −C10/(3 C30) = 2e-4, not at its edge
    _, geo_bal, _ = probe_radius(300e3, 20.0, {"C10": -600.0, "C30": 1e6})
    assert geo_bal == pytest.approx(600 * math.sqrt(2e-4) * 2 / 3, rel=1e-5)  # 5.657 Å (edge: 4 Å)


def test_quantities_of_a_good_plan_by_hand():
    q = compute(plan_config(GOOD))
    assert q.wavelength == pytest.approx(LAMBDA_300, rel=1e-4)
    assert q.probe_window == pytest.approx(LAMBDA_300 / 0.5e-3, rel=1e-4)  # 39.37 Å
    assert q.detector_extent == pytest.approx(32.0)  # 128 × 0.5 / 2 mrad
    assert q.band_limit == pytest.approx(32.0 * 2 / 3)
    assert q.pixel == pytest.approx(LAMBDA_300 / (128 * 0.5e-3), rel=1e-4)  # 0.3076 Å
    assert q.bf_pixels == pytest.approx(40.0)
    x = 0.5 / (2 * math.hypot(2.0, 0.60047))  # step / probe diameter
    assert q.overlap == pytest.approx(2 / math.pi * (math.acos(x) - x * math.sqrt(1 - x * x)), rel=1e-4)
    assert q.overlap == pytest.approx(0.848, abs=1e-3)
    # Fourier space: disks of 20 mrad, λ/(2d) = 19.69 mrad apart → x = 0.4922 → 0.3995
    assert q.fourier_overlap == pytest.approx(0.3995, abs=1e-3)
    assert q.electrons_per_pattern == pytest.approx(2500.0)  # 1e4 e/Å² × 0.25 Å²
    assert q.depth_of_field == pytest.approx(LAMBDA_300 / 0.02**2, rel=1e-4)  # 49.2 Å
    assert q.data_bytes == 64 * 64 * 128 * 128 * 2
    assert q.field_of_view == (31.5, 31.5)
    assert q.warnings == []


def test_dose_from_current_and_dwell_and_sampling_from_camera_length():
    cfg = plan_config(settings(**{"dose": {"beam_current": 10.0, "dwell_time": 1.0},
                                  "detector": {"shape": 128, "pixel_size": 55.0, "camera_length": 110.0,
                                               "binning": 2}}))
    q = compute(cfg)
    electrons = 10e-12 * 1e-6 / 1.602176634e-19  # 62.42 e⁻
    assert q.electrons_per_pattern == pytest.approx(electrons)
    assert q.dose == pytest.approx(electrons / 0.25)
    assert q.acquisition_seconds == pytest.approx(64 * 64 * 1e-6)
    assert q.angular_sampling == pytest.approx(1.0)  # 55 µm × 2 / 110 mm



def test_a_dose_per_pattern_plans_as_the_same_dose_per_square_angstrom():
    """Issue 64: the dose in e⁻ per pattern (what a detector frame counts) is the third way to give it; 2500 e⁻ per
    pattern at a 0.5 Å step is GOOD's 10⁴ e⁻/Å² (physics.noise: per pattern = per Å² × step²), the same plan."""
    from phasestem.plan.config import with_value
    from phasestem.plan.quantities import format_quantities

    per_area = plan_config(GOOD)
    per_pattern = plan_config(settings(dose={"electrons_per_pattern": 2500.0}))
    a, b = compute(per_pattern).to_dict(), compute(per_area).to_dict()
    assert a.keys() == b.keys() and a["electrons_per_pattern"] == 2500.0
    for key in a:
        assert a[key] == (pytest.approx(b[key], rel=1e-12) if isinstance(b[key], float) else b[key]), key
    assert format_quantities(compute(per_pattern), per_pattern) == format_quantities(compute(per_area), per_area)
    with pytest.raises(Exception, match="give one dose: .* not electrons_per_area and electrons_per_pattern"):
        plan_config(settings(dose={"electrons_per_area": 1e4, "electrons_per_pattern": 2500.0}))
    swept = with_value(per_area, "dose.electrons_per_pattern", 625.0)  # a sweep of it replaces the other forms
    assert swept.dose.electrons_per_area is None and compute(swept).dose == pytest.approx(2500.0)


def test_plan_and_probe_extent_state_one_probe_size(capsys):
    """Issue 64: plan said a 30 mrad, Cs 0.1 mm probe has a 27 Å radius while probe-extent said 3.7 Å across (the
    seed's 5 %-of-peak rule, which sees the central peak). Both now print phasestem's one probe size, with its rule,
    and probe-extent the share of the intensity a disk of that radius holds (most of it, for any of these optics)."""
    from phasestem.cli import main
    from phasestem.plan.quantities import format_quantities
    from phasestem.simulate.probe_extent import illuminated_extent

    for semiangle, aberrations in ((30.0, {"C10": 0.0, "C30": 1e6}), (20.0, {"C10": 100.0}), (20.0, {"C10": 0.0})):
        cfg = plan_config(settings(**{"optics.semiangle": semiangle, "optics.aberrations": aberrations}))
        plan_line = format_quantities(compute(cfg), cfg).splitlines()[0]
        assert main(["probe-extent", "--energy", "300e3", "--semiangle", str(semiangle), "--C10",
                     str(aberrations["C10"]), "--C30", str(aberrations.get("C30", 0.0)), "--block", "2"]) == 0
        extent_line = capsys.readouterr().out.splitlines()[0]
        stated = plan_line.split("probe: ")[1].split("; λ")[0]
        assert extent_line.startswith(f"probe: {stated} (phasestem's probe size"), (plan_line, extent_line)
        assert "√(r_aberr² + r_Airy²)" in stated
        r = compute(cfg).probe_radius
        assert stated.startswith(f"radius {r:.3g} Å")
        inside = illuminated_extent(300e3, semiangle, aberrations, block=2).inside_probe_radius
        assert 0.8 < inside < 1.0, (semiangle, aberrations, inside)
    assert compute(plan_config(settings(**{"optics.semiangle": 30.0, "optics.aberrations": {"C10": 0.0, "C30": 1e6}}))
                   ).probe_radius == pytest.approx(27.0, rel=0.01)  # Cs·α³, the halo the 5 % rule misses

@pytest.mark.parametrize("changes, start", [
    ({"scan.step": 5.0}, "no overlap:"),
    ({"scan.step": 3.0}, "low overlap:"),
    ({"optics.aberrations.C10": 300.0, "detector.angular_sampling": 3.0}, "aliases the probe: the probe"),
    ({"detector.angular_sampling": 3.0}, "coarse angular sampling: the probe fills"),  # 6.56 Å window, 4.18 Å probe
    ({"detector.shape": 50, "detector.angular_sampling": 1.0}, "aliases the probe: the reconstruction grid"),
    ({"detector.shape": 30, "detector.angular_sampling": 1.0}, "the detector (±15 mrad) does not hold"),
    ({"dose.electrons_per_area": 100.0}, "low dose:"),
    ({"specimen.thickness": 200.0}, "thick specimen:"),
    ({"reconstruction.slice_thickness": 5.0}, "thin slices:"),
])
def test_each_problem_is_one_warning_line(changes, start):
    q = compute(plan_config(settings(**changes)))
    hits = [w for w in q.warnings if w.startswith(start)]
    assert len(hits) == 1, q.warnings
    assert "\n" not in hits[0]


def test_no_overlap_and_aliasing_say_so_in_one_line_each():
    q = compute(plan_config(settings(**{"scan.step": 6.0, "optics.aberrations.C10": 300.0,
                                        "detector.angular_sampling": 3.0})))
    # probe radius √(6² + 0.2²) = 6.0 Å: 12 Å diameter; window λ/3 mrad = 6.56 Å
    assert q.overlap > 0 and q.window_ratio < 1
    q = compute(plan_config(settings(**{"scan.step": 13.0, "optics.aberrations.C10": 300.0,
                                        "detector.angular_sampling": 3.0})))
    assert q.overlap == 0
    assert sum(w.startswith("no overlap:") for w in q.warnings) == 1
    assert sum(w.startswith("aliases the probe:") for w in q.warnings) == 1


def test_advice_names_the_change_that_helps_most():
    rows = [{"scan.step": 0.6, "phase_error": 0.26, "frc_resolution": 0.7},
            {"scan.step": 1.0, "phase_error": 0.41, "frc_resolution": 1.1}]
    text = advise(rows, ["scan.step"], {"scan.step": 1.0}, {"phase_error": 0.41, "frc_resolution": 1.1})
    assert text == ("advice: 0.6 Å step instead of 1 Å step lowers the expected E_φ from 0.41 to 0.26 (FRC "
                    "resolution 1.1 → 0.7 Å)")
    same = [{"scan.step": 0.6, "phase_error": 0.40, "frc_resolution": 0.7}]  # E_φ alike: advised for resolution
    text = advise(same, ["scan.step"], {"scan.step": 1.0}, {"phase_error": 0.41, "frc_resolution": 1.1})
    assert text.startswith("advice: 0.6 Å step instead of 1 Å step raises the expected FRC resolution from 1.1 to "
                           "0.7 Å"), text
    text = advise(rows[1:], ["scan.step"], {"scan.step": 1.0}, {"phase_error": 0.41, "frc_resolution": 1.1})
    assert text.startswith("advice: none of the swept scan step values")
    text = advise(rows, ["scan.step"], {"scan.step": 1.0}, {"phase_error": float("nan"), "frc_resolution": 5.0})
    assert text.startswith("advice: 0.6 Å step instead of 1 Å step gives a usable reconstruction (E_φ 0.26"), text


def test_advice_follows_e_phi_where_resolutions_differ_by_one_ring():
    """README's sweep: the FRC resolution jitters by one ring at the band limit (0.513/0.524 Å) while 2e4 e⁻/Å²
    lowers E_φ by 27 %; ranking by resolution first said none helped (and the previous main did)."""
    ring = 1 / 0.513 - 1 / 0.524  # 1/Å: the two values one ring apart
    rows = [{"dose.electrons_per_area": d, "phase_error": e, "frc_resolution": r} for d, e, r in
            ((1000, 0.278, 0.513), (2000, 0.229, 0.524), (5000, 0.192, 0.513), (20000, 0.143, 0.524))]
    base = {"phase_error": 0.196, "frc_resolution": 0.524, "frc_ring": ring * 1.05}
    text = advise(rows, ["dose.electrons_per_area"], {"dose.electrons_per_area": 4880}, base)
    assert text == ("advice: 2e+04 e⁻/Å² instead of 4.88e+03 e⁻/Å² lowers the expected E_φ from 0.20 to 0.14 (FRC "
                    "resolution 0.52 → 0.52 Å, the same within one ring)"), text
    # a lower E_φ bought with more than one ring of resolution is not advised
    worse = [{"dose.electrons_per_area": 20000, "phase_error": 0.143, "frc_resolution": 0.8}]
    text = advise(worse, ["dose.electrons_per_area"], {"dose.electrons_per_area": 4880}, base)
    assert text.startswith("advice: none of the swept"), text


def test_one_time_estimate_with_its_basis(tmp_path):
    """The quantities' line is the one estimate of the reconstruction time, with its basis; the expected result no
    longer adds a second one scaled from the small field (15 min against 82 min on README's plan)."""
    from phasestem.plan import compute, plan_config
    from phasestem.plan.quantities import format_quantities

    cfg = plan_config(settings())
    text = format_quantities(compute(cfg), cfg)
    line = next(ln for ln in text.splitlines() if ln.startswith("data:"))
    assert "reconstruction (--auto, 10 epochs) ≈" in line and "ms per pattern (to 256² px) and epoch" in line
    source = (Path(__file__).parents[1] / "src" / "phasestem" / "plan" / "__init__.py").read_text()
    assert "for the full acquisition on this machine" not in source and "full_auto_seconds_here" not in source


def test_dump_config_without_a_settings_file_is_the_example(tmp_path):
    """``phasestem plan --dump-config`` without a file prints the example of configs/plan.yaml (an argparse error
    before); without --dump-config a file is asked for in one line."""
    dump = subprocess.run([sys.executable, "-m", "phasestem.cli", "plan", "--dump-config", "--set", "scan.step=0.7"],
                          capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    (tmp_path / "dumped.yaml").write_text(dump.stdout)
    dumped = load_plan_config(tmp_path / "dumped.yaml")
    example = load_plan_config(Path(__file__).parents[1] / "configs" / "plan.yaml", {"scan.step": 0.7})
    assert dumped.model_dump(exclude={"out"}) == example.model_dump(exclude={"out"})
    bare = subprocess.run([sys.executable, "-m", "phasestem.cli", "plan"], capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode == 1 and bare.stderr.count("\n") == 1 and "phasestem plan --dump-config" in bare.stderr


def test_cli_prints_quantities_and_warnings_and_refuses_bad_keys(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(settings(**{"scan.step": 5.0})))
    run = subprocess.run([sys.executable, "-m", "phasestem.cli", "plan", str(path), "--quantities-only"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(ln.startswith("overlap: real space 0 % at a 5 Å step") for ln in lines), run.stdout
    assert sum(ln.startswith("warning: no overlap:") for ln in lines) == 1
    assert not list(tmp_path.glob("plan_out"))  # nothing written
    dump = subprocess.run([sys.executable, "-m", "phasestem.cli", "plan", str(path), "--dump-config",
                           "--set", "scan.step=0.7"], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    (tmp_path / "dumped.yaml").write_text(dump.stdout)
    assert load_plan_config(tmp_path / "dumped.yaml").scan.step == 0.7
    bad = subprocess.run([sys.executable, "-m", "phasestem.cli", "plan", str(path), "--set", "scan.stepp=1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "scan.stepp: unknown key" in bad.stderr


#: the smallest meaningful plan: 32² patterns of 2 mrad (window 9.8 Å), 6 × 6 positions, 3 epochs
TINY = {"optics": {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 60.0}},
        "scan": {"step": 0.8, "shape": [32, 32]},
        "detector": {"shape": 32, "angular_sampling": 2.0},
        "specimen": {"thickness": 6.0},
        "reconstruction": {"epochs": 3},
        "expected": {"scan_shape": [7, 7], "simulation_slice": 6.0}}


def test_field_is_sized_in_angstrom_with_a_least_number_of_positions():
    """The default field spans 10 Å (or 3 probe diameters) whatever the step, with at least 12 positions a side
    (the rotation fit of --auto needs positions) and never more than the acquisition; 'field' sets the Å."""
    from phasestem.plan.config import plan_config
    from phasestem.plan.expected import field_shape

    base = {k: v for k, v in TINY.items() if k != "expected"}
    shapes = {step: field_shape(plan_config({**base, "scan": {"step": step, "shape": [64, 64]}}))
              for step in (0.25, 0.5, 1.5)}
    assert shapes == {0.25: (24, 24), 0.5: (21, 21), 1.5: (12, 12)}, shapes
    small = plan_config({**base, "scan": {"step": 0.5, "shape": [16, 9]}, "expected": {"field": 6.0}})
    assert field_shape(small) == (13, 9)


def test_simulated_field_has_a_real_aperture_edge_and_calibrates_to_the_planned_sampling(tmp_path):
    """The plan simulates a hard-edged aperture, as a real one: calibrate at its default half-intensity edge reads
    the planned angular sampling to < 0.5 % (the soft simulated edge read it 1.2 % high on a 7.8 Å perovskite)."""
    from phasestem.calibrate import calibrate, load_for_calibration
    from phasestem.plan.config import plan_config
    from phasestem.plan.expected import simulate_field

    cfg = plan_config({"optics": {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 60.0}},
                       "scan": {"step": 0.8, "shape": [10, 10]}, "detector": {"shape": 48, "angular_sampling": 1.5},
                       "specimen": {"thickness": 4.0}, "expected": {"simulation_slice": 4.0}})
    sim = simulate_field(cfg, tmp_path, (10, 10))
    cal = calibrate(load_for_calibration(sim["file"], 300e3, 0.8), semiangle=20.0, parallax=False)
    assert abs(cal.angular_sampling / 1.5 - 1) < 0.005, cal.angular_sampling


def test_expected_result_runs_and_follows_the_dose(tmp_path, one_torch_thread):
    """At 1e5 e⁻/Å² the field reconstructs; at 3 e⁻/Å² (2 e⁻ per pattern) --auto finds no bright-field disk on the
    field: the plan says so in one line (NaN figures, no crash) and the sweep's advice is to raise the dose."""
    high = plan(settings_tiny(dose=1e5), out=tmp_path / "high")
    low = plan(settings_tiny(dose=3.0, sweep=[3.0, 1e5]), out=tmp_path / "low")
    e = high.expected
    assert e.scan_shape == (7, 7) and np.isfinite(e.phase_error) and np.isfinite(e.frc_resolution)
    assert e.phase_error < 0.8, e  # measured 0.62 (7 × 7 positions, 3 epochs)
    assert (tmp_path / e.folder / "expected.png").stat().st_size > 10_000
    assert "expected (a 7 × 7 field" in high.text and "--auto failed" not in high.text
    from phasestem.recon.params import load_params

    recon = load_params(tmp_path / "high" / "expected" / "recon" / "params.yaml")
    rates = recon.model.learning_rates
    assert rates["positions"].lr == 0.03 and rates["positions"].start == 3  # 6.4e4 counts a pattern: refined
    assert recon.constraints.position_affine.enabled  # their affine part removed
    # a 7 × 7 field is too small for the parallax and the CoM: one line for the defocus, one for the geometry
    warned = [line for line in high.text.splitlines() if line.startswith(("warning: --auto could not",
                                                                           "warning: --auto cannot"))]
    assert len(warned) == 2, high.text
    assert "the defocus" in warned[0] and "give it the C10 the microscope is set to (--c10 60)" in warned[0]
    assert recon.optics.aberrations == {"C10": 60.0}  # --auto was given the planned defocus, as a user would
    cal = json.loads((tmp_path / "high" / "expected" / "recon" / "calibration" / "calibration.json").read_text())
    assert cal["defocus_source"] == "given" and "C10" not in cal["undetermined"], cal  # said once, not contradicted
    assert not any(n.startswith("C10 undetermined") for n in cal["notes"]), cal["notes"]
    assert "the rotation and transpose" in warned[1] and "8 × 8 positions" in warned[1]
    assert np.isnan(low.expected.phase_error) and "no bright-field disk" in low.expected.extra["auto_failed"]
    assert sum("warning: --auto failed on the simulated field: no bright-field disk" in line
               for line in low.text.splitlines()) == 1, low.text
    assert [r["dose.electrons_per_area"] for r in low.sweep] == [3.0, 1e5]
    assert low.sweep[1]["phase_error"] == pytest.approx(high.expected.phase_error, rel=1e-6)  # the same run
    assert low.advice.startswith("advice: 1e+05 e⁻/Å² instead of 3 e⁻/Å²"), low.advice
    assert (tmp_path / "low" / "sweep.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "low" / "plan.json").read_text())["advice"] == low.advice


def settings_tiny(dose: float, sweep: list[float] | None = None) -> dict:
    data = json.loads(json.dumps(TINY))
    data["dose"] = {"electrons_per_area": dose}
    if sweep:
        data["expected"]["sweep"] = {"dose.electrons_per_area": sweep}
    return data


def test_data_too_weak_to_calibrate_the_rotation_are_planned_with_it_given(tmp_path, monkeypatch, one_torch_thread):
    """Where --auto's calibration finds no specimen contrast (here: a focused probe, so no parallax, and the CoM
    declared unusable, as at low dose), the plan says so in one line and reconstructs with the rotation given, as
    a user would (--rotation, calibrated at higher dose); its result is finite."""
    import phasestem.calibrate.pipeline as pipeline
    from phasestem.calibrate import NoContrastError, calibrate, load_for_calibration

    monkeypatch.setattr(pipeline, "MAX_CURL_RATIO", 0.0)
    data = settings_tiny(dose=1e5)
    data["optics"]["aberrations"] = {"C10": 0.0}
    data["expected"]["scan_shape"] = [9, 9]
    report = plan(data, out=tmp_path / "p")
    with pytest.raises(NoContrastError):  # what --auto alone meets on this field
        calibrate(load_for_calibration(tmp_path / "p" / "expected" / "scan.npy", 300e3, 0.8), semiangle=20.0)
    lines = [line for line in report.text.splitlines() if "cannot calibrate the scan rotation" in line]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "--rotation" in lines[0], report.text
    assert np.isfinite(report.expected.phase_error) and "auto_failed" not in report.expected.extra
    record = json.loads((tmp_path / "p" / "expected" / "recon" / "calibration" / "calibration.json").read_text())
    assert record["rotation_source"] == "given"


def test_a_partially_coherent_source_and_a_distorted_scan_are_simulated_when_asked(tmp_path):
    """source_size, position_error and drift reach the simulated field (other patterns, the nominal raster kept as
    the truth's positions; the field drifts by as many Å a row as the acquisition) and the plan's text names
    them."""
    from phasestem.plan.expected import simulate_field, simulation_config

    clean = plan_config(settings_tiny(dose=1e5))
    data = settings_tiny(dose=1e5)
    data["optics"]["source_size"] = 0.6
    data["scan"].update(position_error=0.3, drift=[4.0, 0.0])
    rough = plan_config(data)
    a, b = simulate_field(clean, tmp_path / "a"), simulate_field(rough, tmp_path / "b")
    np.testing.assert_allclose(a["truth_positions"] - a["truth_positions"][0],
                               b["truth_positions"] - b["truth_positions"][0], atol=1e-9)
    sim, _ = simulation_config(rough, (7, 7))
    assert sim.optics.source_size == 0.6 and sim.scan.position_error == 0.3
    assert sim.scan.drift == pytest.approx((4.0 * 7 / 32, 0.0))
    # the cell leaves room for the wandering probe: 3 σ and the drift on each side
    assert sim.grid.extent[0] >= simulation_config(clean, (7, 7))[0].grid.extent[0] + 2 * (0.875 + 0.9) - 1e-9
    assert np.abs(np.load(a["file"]).astype(float) - np.load(b["file"])).mean() > 0.1 * np.load(a["file"]).mean()
    from phasestem.plan import _imperfections

    assert _imperfections(rough) == (", with a source of 0.6 Å FWHM, position errors of 0.3 Å, a drift of (4, 0) Å "
                                     "over the acquisition")
    assert _imperfections(clean) == ""
