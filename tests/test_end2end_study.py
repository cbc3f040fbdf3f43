"""Plumbing of ``benchmarks/learned/end2end_study.py`` (issue 48 item 5): its geometries are ones the training
accepts (scans that tile the cell, so augmentation's exact symmetries hold; patch sides from the probe), and the
report reads AD's truth-picked best per half and dose."""
from __future__ import annotations

import json

import pytest
from bench_scripts import load_bench

from phasestem.simulate.config import SimulationConfig


@pytest.fixture(scope="module")
def study():
    return load_bench("end2end_study", "end2end_study_bench")


def test_each_geometry_scans_the_whole_cell_with_the_seed_optics(study):
    for name, g in study.GEOMETRIES.items():
        cfg = SimulationConfig.model_validate(study.sim_config(name, 64))
        assert cfg.scan.shape[0] * cfg.scan.step[0] == pytest.approx(study.CELL), name  # augmentation needs it
        assert (cfg.optics.semiangle, cfg.optics.aberrations) == (g["semiangle"], {"C10": 0.0, "C30": 1e6})
        assert cfg.grid.phase_gpts[0] % study.VIT_PATCH == 0  # the stitching tokens tile the phase image
        assert cfg.output.n_files * cfg.output.samples_per_file == 64
        blocks = range(0, g["scan"] - g["block"] + 1, g["stride"])
        assert blocks[-1] + g["block"] == g["scan"], name  # the blocks reach the scan's last row


def test_patches_by_intensity_hold_the_aberrated_halo_and_the_seed_rule_does_not(study):
    """At 30 mrad and Cs 0.1 mm without defocus, 90 % of the intensity needs a 44.7 Å disk (135 px over a 5 × 5 block
    at 2 Å), the seed's 5 %-of-peak rule 3.7 Å (30 px); at 20 mrad the probe is compact (61 px over 8 × 8 at 1.5 Å)."""
    assert study.patch_side("seed", False) == 30
    assert study.patch_side("seed", True) == 135
    assert study.patch_side("dense", True) == 61


def test_ad_best_is_the_lowest_epoch_of_any_setting_per_sample_then_the_mean(study, tmp_path):
    record = {"val:0|none|a": {"curve": {"10": [0.5, 1.0], "20": [0.4, 2.0]}},
              "val:0|none|b": {"curve": {"10": [0.3, 1.0]}},
              "val:1|none|a": {"curve": {"10": [0.6, 1.0]}},
              "val:0|1e+04|a": {"curve": {"10": [0.9, 1.0]}},
              "dev:0|none|a": {"curve": {"10": [0.2, 1.0]}}}
    path = tmp_path / "ad_best.json"
    path.write_text(json.dumps(record))
    assert study.ad_best(path) == pytest.approx({"val": 0.45, "val_1e4": 0.9, "dev": 0.2})
