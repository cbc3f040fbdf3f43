"""What ``phasestem restore`` leaves beside its output (issue 64, item 7), with an untrained (identity) restorer on a
tiny run: a five-panel figure (the last a zoom where columns can be seen), where the crop sits in the run's object,
the share beyond 3 σ beside chance's, a log file that holds the model's warning, and the true reason when the run
has no σ map."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.cli import main


def _tiny_run(folder, **run) -> str:
    """A 4-epoch reconstruction of the tiny synthetic scan in ``folder``/run; returns its results.h5."""
    from phasestem.recon.synthetic import write_npz

    write_npz(folder / "tiny.npz")
    params = {"data": {"file": str(folder / "tiny.npz"), "patterns_key": "patterns"},
              "optics": {"energy": 300e3, "semiangle": 15.0, "aberrations": {"C10": 50.0}, "sampling": 0.4},
              "scan": {"shape": [8, 8], "step": 1.0},
              "run": {"n_epochs": 4, "batch_size": 16, "progress": False, "check_optics": False, **run}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["reconstruct", str(folder / "params.yaml"), "--out", str(folder / "run")]) == 0
    return str(folder / "run" / "results.h5")


def _identity_restorer(path, results) -> str:
    """An untrained restorer (it returns its input phase) for the run's energy and pixel."""
    from phasestem.learn.meta import make_meta
    from phasestem.learn.nets.restorer import Restorer, RestorerConfig
    from phasestem.learn.trainer.checkpoint import save_weights

    with h5py.File(results) as f:
        optics = {"energy": float(f.attrs["energy"]), "sampling": [float(s) for s in f.attrs["sampling"]]}
    net = Restorer(RestorerConfig(width=4))
    return str(save_weights(net.state_dict(), path, make_meta("restorer", net.config, {"optics": optics})))


@pytest.fixture(scope="module")
def with_sigma(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("restore_sigma")
    results = _tiny_run(folder, noise_sigma=1e-3)  # a stated noise: the run has σ maps
    return results, _identity_restorer(folder / "restorer.safetensors", results)


def _find(crop: np.ndarray, whole: np.ndarray) -> tuple[int, int]:
    """The (row, col) of ``whole`` where ``crop``'s top-left 8 × 8 corner sits (exact match, by search)."""
    corner = crop[:8, :8]
    for r in range(whole.shape[0] - 7):
        for c in range(whole.shape[1] - 7):
            if np.array_equal(whole[r:r + 8, c:c + 8], corner):
                return r, c
    raise AssertionError("the crop is nowhere in the object")


def test_restore_records_where_its_crop_sits_and_writes_a_four_panel_figure(with_sigma, tmp_path, capsys):
    results, model = with_sigma
    moved = tmp_path / "results.h5"  # the run's own file, its origin moved to a known, unequal (row, col)
    shutil.copy(results, moved)
    with h5py.File(moved, "r+") as f:
        dy, dx = (float(s) for s in f.attrs["sampling"])
        f.attrs["origin"] = np.array([5 * dy, 7 * dx])
        marks = np.random.default_rng(0).standard_normal(f["object/phase_sum"].shape).astype(np.float32)
        f["object/phase_sum"][...] = marks  # every pixel distinct: the search below finds one place only
    out = tmp_path / "restored.h5"
    assert main(["restore", str(moved), "--model", model, "--out-file", str(out)]) == 0
    printed = capsys.readouterr().out
    with h5py.File(out) as f:
        inp, offset = f["input"][...], tuple(int(v) for v in f.attrs["crop_offset"])
        crop_shape, object_shape = tuple(f.attrs["crop_shape"]), tuple(f.attrs["object_shape"])
    assert offset == (5, 7) == _find(inp, marks)
    assert crop_shape == inp.shape and object_shape == marks.shape
    assert "from row 5, col 7" in printed and f"{marks.shape[0]}×{marks.shape[1]} px" in printed
    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "restored.png")
    assert png.shape[1] > 3 * png.shape[0]  # four panels side by side
    assert f"figure: {tmp_path / 'restored.png'}" in printed


def test_the_figure_has_five_panels_with_colour_bars_in_rad_the_last_a_zoom():
    from phasestem.plot.restoration import restoration_figure

    rng = np.random.default_rng(1)
    before = rng.standard_normal((24, 30))
    after = before + 0.1 * rng.standard_normal((24, 30))
    field = np.zeros((24, 30))
    field[4:20, 5:25] = 1
    change = np.where(field > 0, rng.standard_normal((24, 30)) * 2, np.nan)
    for sigma_map in (change, None):
        fig = restoration_figure(before, after, field, (0.4, 0.4), sigma_map, no_sigma="the run computed no σ")
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        bars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(panels) == 5
        assert bars[:3] == ["phase (rad)", "phase (rad)", "Δφ (rad)"]
        assert panels[4].images[0].get_array().shape == (16, 20)  # a 16 Å zoom of a 6.4 x 8 Å field: the field
        assert [im.get_array().shape for ax in panels[:3] for im in ax.images] == [(16, 20)] * 3  # the field only
        if sigma_map is None:
            assert "the run computed no σ" in panels[3].texts[0].get_text() and len(bars) == 4
        else:
            assert bars[3] == "|Δφ| / σ"


def test_the_share_beyond_3_sigma_is_printed_beside_chance_and_logged(with_sigma, tmp_path, capsys):
    from phasestem.metrics import chance_beyond

    results, model = with_sigma
    out = tmp_path / "restored.h5"
    assert main(["restore", results, "--model", model, "--out-file", str(out)]) == 0
    printed = capsys.readouterr().out
    line = "by more than 3 σ of the data (0.27 % would be chance"
    assert "the restorer changed 0.00 % of the scanned field " + line in printed  # the identity changes nothing
    assert line in (tmp_path / "restored.log").read_text()
    noise = np.random.default_rng(2).standard_normal(2_000_000)  # the baseline is what pure noise gives
    assert abs((np.abs(noise) > 3).mean() - chance_beyond(3.0)) < 2e-4


def test_a_models_warning_lands_in_the_log_beside_the_output(with_sigma, tmp_path, monkeypatch, capsys):
    from phasestem.learn.pretrained import sha256_file

    results, model = with_sigma
    models = tmp_path / "models"
    models.mkdir()
    weights = models / "tiny-vacancy.safetensors"
    shutil.copy(model, weights)
    note = "fills in a missing atomic column: for point defects use another model"
    (models / "models.json").write_text(json.dumps({"tiny-vacancy": {
        "file": weights.name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size, "note": note}}))
    monkeypatch.setenv("PHASESTEM_MODEL_DIR", str(models))
    out = tmp_path / "restored.h5"
    assert main(["restore", results, "--model", "tiny-vacancy", "--out-file", str(out)]) == 0
    log = (tmp_path / "restored.log").read_text()
    assert f"WARNING pretrained model 'tiny-vacancy': {note}" in log
    assert "the restorer changed" in log and "from row" in log
    captured = capsys.readouterr()
    assert captured.out.count("the restorer changed") == 1 and "the restorer changed" not in captured.err


def test_without_sigma_restore_says_why_and_does_not_blame_a_setting_that_is_on(with_sigma, tmp_path, capsys):
    results, model = with_sigma
    plain = tmp_path / "run" / "results.h5"  # the run's file without its σ maps, its log beside it
    plain.parent.mkdir()
    shutil.copy(results, plain)
    with h5py.File(plain, "r+") as f:
        del f["uncertainty"]
    assert main(["restore", str(plain), "--model", model, "--out-file", str(tmp_path / "a.h5")]) == 0
    printed = capsys.readouterr().out
    assert f"the run computed no σ (its log says why: {plain.parent / 'reconstruct.log'})" in printed
    assert "run.uncertainty" not in printed
    with h5py.File(plain, "r+") as f:  # a run made with σ switched off says so
        config = yaml.safe_load(f.attrs["config"])
        config["run"]["uncertainty"] = "off"
        f.attrs["config"] = yaml.safe_dump(config)
    assert main(["restore", str(plain), "--model", model, "--out-file", str(tmp_path / "b.h5")]) == 0
    assert "the run was made with run.uncertainty: off" in capsys.readouterr().out
    assert (tmp_path / "b.png").is_file()


def test_an_out_file_named_like_its_figure_or_log_is_refused_in_one_line(with_sigma, tmp_path, capsys):
    results, model = with_sigma
    assert main(["restore", results, "--model", model, "--out-file", str(tmp_path / "restored.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "OUT.h5" in err and len(err.splitlines()) == 1, err
