"""``restore``'s data guard (issue 68, item 2): a restored phase judged by the diffraction patterns, not by AD's phase.

The scans come from the independent NumPy multislice (``benchmarks/independent/numpy_multislice.py``): a square
lattice of Gaussian columns with one column removed (a vacancy), noise-free and at 10⁴ e⁻ per pattern, each
reconstructed briefly by phasestem (3 epochs: AD's columns lower and broader than the truth's). The crafted
"restoration" moves AD's phase halfway toward the truth (sharper, higher intact columns: what the data hold) and puts
0.6 of a column back at the vacancy (what they do not)."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from test_restore_output import _identity_restorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "independent"))
from numpy_multislice import raster, simulate_patterns  # noqa: E402

from phasestem.cli import main  # noqa: E402

#: Å: pixel, scan step, lattice constant; px: pattern side; positions per side; eV, mrad, Å (C10)
SAMPLING, STEP, LATTICE, WINDOW, SCAN, ENERGY, SEMIANGLE, DEFOCUS = 0.2, 0.6, 2.4, 48, 18, 300e3, 25.0, 40.0
PAD = WINDOW // 2 + 4  # object pixels before the first probe position
FILL = 0.6  # of a column put back at the vacancy


def _columns(peak: float = 0.6, width: float = 0.35) -> tuple[int, np.ndarray, int]:
    """(object side px, column centres (M, 2) Å, index of the column nearest the scan's centre: the vacancy)."""
    n = int((SCAN - 1) * STEP / SAMPLING) + 2 * PAD
    grid = np.arange(0.6, n * SAMPLING, LATTICE)
    cols = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    centre = PAD * SAMPLING + (SCAN - 1) * STEP / 2
    return n, cols, int(np.argmin(np.hypot(*(cols - centre).T)))


def _phase(n: int, cols: np.ndarray, peak: float = 0.6, width: float = 0.35) -> np.ndarray:
    """Gaussian columns (rad) of ``peak`` and σ ``width`` Å at ``cols`` (Å) on an n × n grid of SAMPLING Å."""
    y = np.arange(n) * SAMPLING
    out = np.zeros((n, n))
    for cy, cx in cols:
        out += np.exp(-((y[:, None] - cy) ** 2 + (y[None, :] - cx) ** 2) / (2 * width ** 2))
    return peak * out


def _run(folder: Path, dose: float | None) -> Path:
    """The vacancy specimen's scan (independent simulator) reconstructed for 3 epochs; returns results.h5."""
    n, cols, vacancy = _columns()
    truth = _phase(n, np.delete(cols, vacancy, 0))
    positions = raster((SCAN, SCAN), STEP, (PAD * SAMPLING, PAD * SAMPLING))
    patterns = simulate_patterns(truth[None], SAMPLING, positions, WINDOW, ENERGY, SEMIANGLE, DEFOCUS, dose=dose,
                                 rng=np.random.default_rng(0))
    folder.mkdir(parents=True)
    np.savez(folder / "data.npz", patterns=patterns.reshape(SCAN, SCAN, WINDOW, WINDOW))
    params = {"data": {"file": str(folder / "data.npz"), "patterns_key": "patterns"},
              "optics": {"energy": ENERGY, "semiangle": SEMIANGLE, "aberrations": {"C10": DEFOCUS},
                         "sampling": SAMPLING},
              "scan": {"shape": [SCAN, SCAN], "step": STEP},
              "run": {"n_epochs": 3, "batch_size": 32, "progress": False, "check_optics": False,
                      "uncertainty": "off"}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["reconstruct", str(folder / "params.yaml"), "--out", str(folder / "run")]) == 0
    return folder / "run" / "results.h5"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("data_guard")
    return {"noise-free": _run(tmp / "noise_free", None), "counted": _run(tmp / "counted", 1e4)}


def _in_frame(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An object-grid image of the simulator cut to the run's dataset frame (its pixel (0, 0) at the first
    position), zeros where the simulated object ends."""
    out = np.zeros(shape)
    part = image[PAD:PAD + shape[0], PAD:PAD + shape[1]]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def _crafted(results: Path) -> dict:
    """AD's phase, field, the crafted restoration, the vacancy and the intact columns inside the field (dataset
    pixels)."""
    from phasestem.recon.channels import channels_from_results

    channels, _ = channels_from_results(results)
    ad, field = channels["phase"], channels["field"]
    n, cols, vacancy = _columns()
    truth = _in_frame(_phase(n, np.delete(cols, vacancy, 0)), ad.shape)
    inside = field > 0
    toward = ad + 0.5 * (truth - np.median(truth[inside]) + np.median(ad[inside]) - ad)
    restored = toward + FILL * _in_frame(_phase(n, cols[vacancy:vacancy + 1]), ad.shape)
    px = np.round((cols - PAD * SAMPLING) / SAMPLING).astype(int)
    margin = 4
    ok = np.all((px >= margin) & (px < np.asarray(ad.shape) - margin), 1)
    ok &= field[np.clip(px[:, 0], 0, ad.shape[0] - 1), np.clip(px[:, 1], 0, ad.shape[1] - 1)] > 0
    intact = px[ok & (np.arange(len(cols)) != vacancy)]
    return {"ad": ad, "field": field, "restored": restored.astype(np.float32), "vacancy": px[vacancy],
            "intact": intact}


@pytest.mark.parametrize("kind", ["noise-free", "counted"])
def test_a_filled_vacancy_is_flagged_and_intact_columns_moved_toward_the_data_are_not(runs, kind):
    from phasestem.learn.data_guard import data_guard, guard_line
    from phasestem.learn.hybrid import guard_run

    case = _crafted(runs[kind])
    run = guard_run(runs[kind])
    assert ("Poisson deviance" in (g := data_guard(run, case["restored"], case["ad"], case["field"])).noise) == (
        kind == "counted")
    assert "floor = AD's own rms amplitude residual" in g.noise or kind == "counted"
    assert g.counted == (kind == "counted")  # the printed line warns where the floor is AD's residual
    assert ("trust it on counted data" in guard_line(g, "out.h5")) == (kind == "noise-free")
    # the sites it found: the vacancy is among them, flagged, and nothing else is
    nearest = np.hypot(*(g.sites - case["vacancy"]).T)
    assert nearest.min() <= 1.5 and g.flagged[np.argmin(nearest)] and g.statistic[np.argmin(nearest)] > 5
    assert g.flagged.sum() == 1
    # every intact column tested where it is: present fits far better than absent, and the restored column better
    # than AD's (the change is toward the data); none is flagged
    known = data_guard(run, case["restored"], case["ad"], case["field"], sites=case["intact"])
    assert len(case["intact"]) >= 12 and not known.flagged.any() and (known.opposite == 1).all()
    assert (known.statistic < -3).all() and np.median(known.change_z) < 0
    # the map (a probe's width sharp): the restored phase fits worse than AD's at the vacancy, its peak there, and
    # better at the intact columns beyond a probe's reach of it
    assert g.support[tuple(case["vacancy"])] > g.threshold
    peak = np.unravel_index(np.nanargmax(g.support), g.support.shape)
    assert np.hypot(*(np.asarray(peak) - case["vacancy"])) <= 2
    far = case["intact"][np.hypot(*(case["intact"] - case["vacancy"]).T) > 1.5 * LATTICE / SAMPLING]
    assert len(far) >= 4 and np.median(g.support[tuple(far.T)]) < 0
    assert np.isnan(g.support[case["field"] == 0]).all()


def test_an_unchanged_restoration_tests_nothing_and_an_invented_interstitial_column_is_flagged(runs):
    from phasestem.learn.data_guard import data_guard
    from phasestem.learn.hybrid import guard_run

    case = _crafted(runs["counted"])
    run = guard_run(runs["counted"])
    same = data_guard(run, case["ad"], case["ad"], case["field"])
    assert len(same.sites) == 0 and np.nanmax(np.abs(same.support)) == 0.0
    # a column invented between four intact ones: as unsupported as the vacancy's
    n, cols, vacancy = _columns()
    between = cols[vacancy] + LATTICE / 2
    invented = case["ad"] + FILL * _in_frame(_phase(n, between[None]), case["ad"].shape)
    site = np.round((between - PAD * SAMPLING) / SAMPLING).astype(int)[None]
    g = data_guard(run, invented.astype(np.float32), case["ad"], case["field"], sites=site)
    assert g.flagged.all() and g.statistic[0] > 10


def test_chance_flags_at_most_the_stated_share_of_true_features():
    """A linear Gaussian model, the restored state x and the opposite state 0, data y = truth + noise: a true restored
    state of any size is flagged at most Φ(−3) of the time (exactly that at 3 σ apart), a false one of 6 σ or more
    nearly always."""
    from phasestem.learn.data_guard import chance_flagged, site_verdict

    rng = np.random.default_rng(0)
    assert abs(chance_flagged(3.0) - 0.5 * math.erfc(3 / math.sqrt(2))) < 1e-15
    for size in (0.5, 3.0, 6.0, 30.0):  # the two states' distance in σ
        noise = rng.standard_normal(100_000)  # the noise's projection on their difference, in σ
        for truth in (size, 0.0):
            # 2ΔNLL of each state against AD's: ‖y − state‖² − ‖y − AD‖², AD's term cancelling in the difference
            flagged = np.array([site_verdict((y - size) ** 2, y ** 2, 3.0)[1] for y in truth + noise])
            if truth:
                assert flagged.mean() <= chance_flagged(3.0) + 4e-4, size
            elif size >= 6:
                assert flagged.mean() > 0.97, size


@pytest.fixture
def fake_restorer(runs, monkeypatch, tmp_path):
    """The crafted restoration of the counted run, handed out by ``restore`` in place of a network's (the
    restorer is not what is tested here), and an untrained restorer file with the run's card."""
    import phasestem.learn.apply.restorer as restore

    results = runs["counted"]
    case = _crafted(results)
    monkeypatch.setattr(restore, "restore_channels", lambda net, channels: case["restored"])
    return results, _identity_restorer(tmp_path / "restorer.safetensors", results), case


def test_restore_writes_the_map_the_flagged_sites_and_a_fifth_panel(fake_restorer, tmp_path, capsys):
    results, model, case = fake_restorer
    out = tmp_path / "restored.h5"
    assert main(["restore", str(results), "--model", model, "--out-file", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("1 flagged (the opposite state, column absent or present, fits them better by more than 3 σ; 0.13 % of "
            "true features would be by chance") in printed
    with h5py.File(out) as f:
        flagged, tested = f["flagged_sites"][...], f["tested_sites"][...]
        assert f["data_support"].shape == case["ad"].shape and "Poisson" in f["flagged_sites"].attrs["noise"]
        assert f["flagged_sites"].attrs["chance"] == pytest.approx(0.00135, abs=1e-5)
    assert len(flagged) == 1 and len(tested) >= 1 and f"{len(tested)} site" in printed
    assert np.hypot(flagged["row"][0] - case["vacancy"][0], flagged["col"][0] - case["vacancy"][1]) <= 1.5
    assert flagged["statistic"][0] > 3 and flagged["change_z"][0] > 3
    log = (tmp_path / "restored.log").read_text()
    assert "data guard on" in log and "Poisson deviance at" in log
    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "restored.png")
    assert png.shape[1] > 4 * png.shape[0]  # five panels side by side


def test_restore_without_its_data_file_says_why_and_takes_data_from_the_user(fake_restorer, tmp_path, capsys):
    results, model, _ = fake_restorer
    run = tmp_path / "moved"
    shutil.copytree(results.parent.parent, run)
    moved = run / "data_moved.npz"
    (run / "data.npz").rename(moved)
    with h5py.File(run / "run" / "results.h5", "r+") as f:  # the record names a file that is gone
        config = yaml.safe_load(f.attrs["config"])
        config["data"]["file"] = str(run / "data.npz")
        f.attrs["config"] = yaml.safe_dump(config)
    moved_results = str(run / "run" / "results.h5")
    assert main(["restore", moved_results, "--model", model, "--out-file", str(tmp_path / "a.h5")]) == 0
    printed = capsys.readouterr().out
    assert (f"data guard skipped: {run / 'data.npz'}: the run's data file ({moved_results}: attrs config data.file) "
            "is not readable; give --data FILE") in printed
    with h5py.File(tmp_path / "a.h5") as f:
        assert "data_support" not in f and "phase" in f
    assert main(["restore", moved_results, "--model", model, "--out-file", str(tmp_path / "b.h5"), "--data",
                 str(moved)]) == 0
    assert "1 flagged" in capsys.readouterr().out
    assert main(["restore", moved_results, "--model", model, "--out-file", str(tmp_path / "c.h5"), "--data",
                 str(run / "nothing.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert "nothing.npz: the run's data file (--data) is not readable" in err and len(err.splitlines()) == 1
    assert main(["restore", moved_results, "--model", model, "--out-file", str(tmp_path / "d.h5"),
                 "--no-data-guard"]) == 0
    assert "data guard: off (--no-data-guard)" in capsys.readouterr().out
