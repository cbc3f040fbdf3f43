"""PtyRAD params files: ``phasestem convert ptyrad`` translates them, ``phasestem reconstruct`` recognises them.

The PtyRAD files here are our own, in PtyRAD 1.0's format (its sections and key names, our values); the params files
of an installed ``ptyrad`` distribution are read as files (PtyRAD is never imported), the test skipped without it.
"""
from __future__ import annotations

import importlib.metadata
import logging
import math

import numpy as np
import pytest
import yaml

from phasestem.cli import main
from phasestem.convert.ptyrad import is_ptyrad_params, translate
from phasestem.physics.optics import wavelength
from phasestem.recon.params import load_params, parse_params

#: every translated field, PtyRAD style (values of our own)
PTYRAD = {
    "init_params": {
        "probe_kv": 200, "probe_conv_angle": 25.0,
        "probe_aberrations": {"defocus": -80, "Cs": 5000, "C12": 20, "phi12": 90, "B2": 100, "C23a": 0, "C23b": 30},
        "meas_Npix": 128, "pos_N_scan_slow": 40, "pos_N_scan_fast": 50, "pos_scan_step_size": 0.5,
        "meas_calibration": {"mode": "dk", "value": 0.02},
        "probe_pmode_max": 3, "probe_pmode_init_pows": [0.05], "obj_omode_max": 2,
        "obj_Nlayer": 4, "obj_slice_thickness": 5,
        "meas_flipT": [1, 0, 1], "meas_crop": [[0, 30], None, [4, 124], [4, 124]],
        "meas_pad": {"mode": "on_the_fly", "padding_type": "constant", "target_Npix": 160, "value": 0},
        "meas_resample": {"mode": "precompute", "scale_factors": [0.5, 0.5]},
        "tilt_params": {"tilt_type": "all", "init_tilts": [[1.5, -2.0]]},
        "pos_scan_rand_std": 0.15, "meas_permute": None,
        "meas_params": {"path": "data/scan.h5", "key": "dp"},
    },
    "model_params": {
        "detector_blur_std": 0.7, "obj_preblur_std": 0.3,
        "optimizer_params": {"name": "SGD", "configs": {}},
        "scheduler_params": None,
        "update_params": {"obja": {"start_iter": 3, "lr": 1e-3, "end_iter": 40}, "objp": {"start_iter": 1, "lr": 2e-3},
                          "probe": {"start_iter": None, "lr": 0}, "probe_pos_shifts": {"start_iter": 5, "lr": 1e-2},
                          "obj_tilts": {"start_iter": 10, "lr": 1e-3}},
    },
    "loss_params": {"loss_single": {"state": True, "weight": 1.0, "dp_pow": 0.4},
                    "loss_poissn": {"state": True, "weight": 0.5, "dp_pow": 1.0},
                    "loss_sparse": {"state": True, "weight": 0.2, "ln_order": 1},
                    "loss_simlar": {"state": True, "weight": 0.1}},
    "constraint_params": {
        "ortho_pmode": {"start_iter": 2, "step": 1, "end_iter": None},
        "obj_rblur": {"start_iter": 1, "step": 2, "end_iter": 30, "obj_type": "both", "std": 0.6},
        "obj_zblur": {"start_iter": 1, "step": 1, "end_iter": None, "std": 2},
        "kz_filter": {"start_iter": 4, "beta": 0.5, "alpha": 1, "obj_type": "phase"},
        "probe_mask_k": {"start_iter": 1, "radius": 0.25, "width": 0.05},
        "obja_thresh": {"start_iter": 1, "relax": 0, "thresh": [0.9, 1.1]},
        "objp_postiv": {"start_iter": 1, "relax": 0},
        "tilt_smooth": {"start_iter": 1, "std": 3},
        "mirrored_amp": {"start_iter": 1, "relax": 0.1, "scale": 0.03, "power": 4},
        "kr_filter": {"start_iter": None, "radius": 0.15},
    },
    "recon_params": {"NITER": 60, "BATCH_SIZE": {"size": 16, "grad_accumulation": 2}, "GROUP_MODE": "compact",
                     "SAVE_ITERS": 5, "output_dir": "output/x/", "postfix": "", "selected_figs": ["forward"],
                     "compiler_configs": {"enable": True}},
    "hypertune_params": {"if_hypertune": False},
}


def test_every_field_translates_with_its_units_and_sign(tmp_path):
    tr = translate(PTYRAD, "ours.yaml", cwd=tmp_path)
    p = tr.params
    lam = wavelength(200e3)
    o, d, s, m, r = p["optics"], p["data"], p["scan"], p["model"], p["run"]
    assert o["energy"] == 200e3 and o["semiangle"] == 25.0
    ab = o["aberrations"]
    assert ab["C10"] == 80 and ab["C30"] == 5000 and ab["C12"] == 20  # C10 = −defocus
    assert ab["phi12"] == pytest.approx(math.pi / 2) and ab["C21"] == 300  # degrees → rad; B2 = C21 / 3
    assert ab["C23"] == pytest.approx(30) and ab["phi23"] == pytest.approx(math.pi / 2 / 3)  # cartesian → polar
    assert o["angular_sampling"] == pytest.approx(0.02 * lam * 1e3)  # dk (1/Å) → mrad per pixel
    assert s == {"shape": [40, 50], "step": 0.5}
    assert d["file"] == str(tmp_path / "data" / "scan.h5") and d["patterns_key"] == "dp"
    # PtyRAD flips rows, then transposes; phasestem transposes first: the row flip becomes a column flip
    assert d["transpose"] is True and d["flip_x"] is True and "flip_y" not in d
    assert d["scan_subset"] == [0, 30, 0, 50] and d["crop"] == [120, 120]
    assert d["resample"] == [60, 60] and d["pad"] == [80, 80]  # pad to 160 then × 0.5
    assert m["n_slices"] == 4 and m["slice_thickness"] == 5.0 and m["n_probe_modes"] == 3
    assert m["mode_power"] == 0.05 and m["n_object_modes"] == 2 and m["tilt"] == [1.5, -2.0]
    assert m["detector_blur"] == 0.7 and m["obj_preblur"] == 0.3
    dx = lam * 1e3 / (160 * o["angular_sampling"])  # PtyRAD's pixel after crop and pad (Å)
    lr = m["learning_rates"]
    assert lr["obj_amplitude"] == {"lr": 1e-3, "start": 3, "end": 40} and lr["obj_phase"] == 2e-3
    assert lr["probe"] == 0.0 and lr["slice_thickness"] == 0.0
    assert lr["positions"]["lr"] == pytest.approx(1e-2 * dx) and lr["positions"]["start"] == 5  # px → Å
    assert lr["tilt"] == {"lr": 1e-3, "start": 10}
    assert p["losses"] == {"gaussian": 1.0, "power": 0.4, "poisson": 0.5, "sparsity": 0.2}
    c = p["constraints"]
    assert c["ortho_probe"] == {"enabled": True, "start_iter": 2}
    assert c["obj_blur"] == {"enabled": True, "start_iter": 1, "step": 2, "end_iter": 30, "sigma": 0.6}
    assert c["rz_filter"]["sigma"] == 10.0  # 2 layers of 5 Å
    assert c["kz_filter"]["beta"] == 0.5 and c["kz_filter"]["start_iter"] == 4 and c["kz_filter"]["obj_type"] == "phase"
    assert c["probe_mask"]["radius_mrad"] == pytest.approx(0.25 * 60 * o["angular_sampling"])  # kMax of 120 px
    assert c["obj_clamp"] == {"enabled": True, "start_iter": 1, "amp_min": 0.9, "amp_max": 1.1, "phase_min": 0.0}
    assert c["tilt_smooth"]["sigma"] == 1.5  # 3 scan positions of 0.5 Å
    assert r == {"optimizer": "sgd", "lr_decay": "none", "n_epochs": 60, "batch_size": 32, "batch_mode": "compact",
                 "checkpoint_every": 5, "compile": "compile"}
    params = parse_params(p, "translated")  # loads as a phasestem parameter file
    assert params.run.optimizer == "sgd" and params.optics.aberrations["C10"] == 80


def test_what_is_not_translated_is_listed_one_line_each(tmp_path):
    tr = translate(PTYRAD, "ours.yaml", cwd=tmp_path)
    lines = tr.report_lines()
    untranslated = [x for x in lines if x.startswith("not translated:")]
    for key in ("init_params.pos_scan_rand_std", "constraint_params.mirrored_amp", "loss_params.loss_simlar",
                "recon_params.output_dir", "constraint_params.fix_probe_int", "constraint_params.pos_recenter"):
        assert sum(key in x for x in untranslated) == 1, (key, untranslated)
    assert "(PtyRAD's default)" in next(x for x in untranslated if "fix_probe_int" in x)  # not in the file, yet on
    assert all("\n" not in x for x in lines)
    ignored = lines[-1]
    assert ignored.startswith("ignored") and "init_params.meas_permute" in ignored and "recon_params.postfix" in ignored
    assert "constraint_params.kr_filter" in ignored and "hypertune_params" in ignored
    assert any("azimuths" in x for x in lines if x.startswith("approximate:"))


def test_calibration_modes_and_an_untranslatable_fit(tmp_path):
    lam = wavelength(300e3)
    expect = {"dx": (0.25, lam * 1e3 / (64 * 0.25)), "da": (0.9, 0.9), "angleMax": (32.0, 1.0),
              "RBF": (10.0, 2.0), "kMax": (1.0, 2 * lam * 1e3 / 64), "n_alpha": (2.0, 1.25)}
    for mode, (value, mrad) in expect.items():
        data = {"init_params": {"probe_kv": 300, "probe_conv_angle": 20, "meas_Npix": 64,
                                "meas_calibration": {"mode": mode, "value": value},
                                "meas_params": {"path": "d.h5", "key": "dp"}}}
        assert translate(data, cwd=tmp_path).params["optics"]["angular_sampling"] == pytest.approx(mrad), mode
    data["init_params"]["meas_calibration"] = {"mode": "fitRBF"}
    tr = translate(data, cwd=tmp_path)
    assert "angular_sampling" not in tr.params["optics"]
    assert any(x.startswith("not translated: init_params.meas_calibration") for x in tr.report_lines())


def test_a_ptyrad_file_is_recognised_by_reconstruct(tmp_path, monkeypatch, capsys, caplog):
    """Before: ``phasestem reconstruct PTYRAD.yaml`` stopped with a list of unknown keys."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ptyrad.yaml"
    path.write_text(yaml.safe_dump(PTYRAD))
    assert is_ptyrad_params(PTYRAD) and not is_ptyrad_params({"data": {}, "init_params": {}})
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        assert main(["reconstruct", str(path), "--dump-config"]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    assert dumped["optics"]["aberrations"]["C10"] == 80 and dumped["run"]["n_epochs"] == 60
    assert dumped["data"]["file"] == str(tmp_path / "data" / "scan.h5")
    assert "PtyRAD params file: translated on the fly" in caplog.text and "phasestem convert ptyrad" in caplog.text
    assert "not translated: constraint_params.mirrored_amp" in caplog.text


def test_convert_writes_a_loadable_file_and_keeps_an_existing_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    src, out = tmp_path / "ptyrad.yaml", tmp_path / "sub" / "phasestem.yaml"
    src.write_text(yaml.safe_dump(PTYRAD))
    out.parent.mkdir()
    assert main(["convert", "ptyrad", str(src), "--out-file", str(out)]) == 0
    text = out.read_text()
    assert "# phasestem reconstruct parameters translated from the PtyRAD params file" in text
    assert "#   not translated: init_params.pos_scan_rand_std" in text
    assert "file: ../data/scan.h5" in text  # relative to the file's folder
    params = load_params(out)
    assert params.data.file.resolve() == tmp_path / "data" / "scan.h5" and params.model.n_slices == 4
    assert main(["convert", "ptyrad", str(src), "--out-file", str(out)]) == 1
    assert f"--out-file {out} exists: give --overwrite" in capsys.readouterr().err
    assert main(["convert", "ptyrad", str(src), "--out", str(out), "--lsq", "--overwrite"]) == 0  # --out X.yaml
    assert "--out-file" in capsys.readouterr().err
    lsq = load_params(out)
    assert lsq.run.optimizer == "lsq" and lsq.model.learning_rates["obj_phase"].lr is None
    assert lsq.model.learning_rates["obj_amplitude"].start == 3 and lsq.model.learning_rates["probe"] == 0.0
    assert main(["convert", "ptyrad", str(src), "--out", str(tmp_path / "folder")]) == 0  # --out DIR
    assert load_params(tmp_path / "folder" / "ptyrad_phasestem.yaml").model.n_slices == 4


def test_bad_ptyrad_values_name_the_field(tmp_path):
    from phasestem.base.errors import ConfigError

    base = {"probe_kv": 300, "meas_Npix": 64, "meas_params": {"path": "d.h5"}}
    for change, field in (({"probe_kv": "fast"}, "init_params.probe_kv"),
                          ({"probe_illum_type": "xray"}, "init_params.probe_illum_type"),
                          ({"meas_params": None}, "init_params.meas_params"),
                          ({"meas_calibration": {"mode": "guess", "value": 1}}, "init_params.meas_calibration.mode")):
        with pytest.raises(ConfigError, match=f"^x.yaml: {field}: "):
            translate({"init_params": {**base, **change}}, "x.yaml", cwd=tmp_path)


def _ptyrad_distribution_params():
    try:
        dist = importlib.metadata.distribution("ptyrad")
    except importlib.metadata.PackageNotFoundError:
        return None
    return [dist.locate_file(f) for f in dist.files or [] if "/params/" in str(f) and str(f).endswith(".yaml")]


def test_every_params_file_of_the_installed_ptyrad_translates(tmp_path):
    """Every params file the installed PtyRAD ships (examples, templates, walkthrough) translates and loads as a
    phasestem parameter file. PtyRAD is read as files, never imported."""
    files = _ptyrad_distribution_params()
    if files is None:
        pytest.skip("ptyrad is not installed (pip install --no-deps ptyrad==1.0.0 to run this test; PtyRAD itself "
                    "is never imported)")
    from phasestem.base.errors import ConfigError

    assert files, "the installed ptyrad ships no params files"
    names, stopped = set(), set()
    for f in files:
        data = yaml.safe_load(f.read_text())
        try:
            tr = translate(data, str(f), cwd=tmp_path)
        except ConfigError as err:  # positions from another reconstruction: a geometry the file does not hold
            assert f"{f}: init_params.pos_source: " in str(err) and "\n" not in str(err), str(err)
            stopped.add(f.name)
            tr = translate(data, str(f), cwd=tmp_path, allow_untranslated=True)
        parse_params(tr.params, str(f))
        names.add(f.name)
    assert "tBL_WSe2.yaml" in names and "04_resume_reconstruction.yaml" in stopped


def test_a_translated_run_reaches_the_hand_written_runs_r(tmp_path, monkeypatch):
    """The same small case (independent NumPy multislice, C10 = 50 Å) from a PtyRAD params file, translated on the
    fly, and from a phasestem file written by hand from docs/coming_from.md: the same Pearson r of the phase."""
    import h5py
    from numpy_cases import numpy_scan, pearson

    from phasestem.recon.run import run_reconstruction

    ds, truth, _ = numpy_scan(3, 32, 0.3, (10, 10), 0.6, 50.0, 0.02)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["dp"] = np.asarray(ds.patterns, np.float32)
    monkeypatch.chdir(tmp_path)
    ptyrad = {"init_params": {"probe_kv": 300, "probe_conv_angle": 20.0, "probe_aberrations": {"defocus": -50},
                              "meas_Npix": 32, "meas_calibration": {"mode": "dx", "value": 0.3},
                              "pos_N_scan_slow": 10, "pos_N_scan_fast": 10, "pos_scan_step_size": 0.6,
                              "probe_pmode_max": 1, "obj_Nlayer": 1, "obj_slice_thickness": 10,
                              "meas_params": {"path": "scan.h5", "key": "dp"}},
              "model_params": {"update_params": {"obja": {"start_iter": 1, "lr": 2e-2},
                                                 "objp": {"start_iter": 1, "lr": 2e-2},
                                                 "probe": {"start_iter": None, "lr": 0},
                                                 "probe_pos_shifts": {"start_iter": None, "lr": 0}}},
              "constraint_params": {"obj_rblur": {"start_iter": None}},
              "recon_params": {"NITER": 8, "BATCH_SIZE": {"size": 16}, "output_dir": "out"}}
    hand = {"data": {"file": "scan.h5", "patterns_key": "dp"},
            "optics": {"energy": 300e3, "semiangle": 20.0, "sampling": 0.3, "aberrations": {"C10": 50.0}},
            "scan": {"shape": [10, 10], "step": 0.6},
            "model": {"learning_rates": {"obj_amplitude": 2e-2, "obj_phase": 2e-2, "probe": 0, "positions": 0,
                                         "tilt": 0, "slice_thickness": 0}},
            "run": {"optimizer": "adam", "n_epochs": 8, "batch_size": 16, "lr_decay": "none", "progress": False}}
    r = {}
    for name, data in (("ptyrad", ptyrad), ("hand", hand)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        params = load_params(path)
        params.run.out_dir, params.run.progress = tmp_path / f"run_{name}", False
        model = run_reconstruction(params)
        r[name] = pearson(model.phase_in_dataset_frame(truth.shape), truth)
    assert r["hand"] > 0.8, r
    assert r["ptyrad"] == pytest.approx(r["hand"], abs=2e-3), r
    print(f"Pearson r after 8 epochs: translated {r['ptyrad']:.4f}, hand-written {r['hand']:.4f}")


def _ptyrad_affine(scale, asymmetry, rotation, shear):
    """PtyRAD's [scale, asymmetry, rotation, shear] matrix, written here from its definition (PtychoShelves'
    compose_affine_matrix; degrees), for row vectors (y, x): positions @ F."""
    th, sh = np.radians(rotation), np.radians(shear)
    return (np.diag([scale, scale]) @ np.diag([1 + asymmetry / 2, 1 - asymmetry / 2])
            @ np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]]) @ np.array([[1, 0], [np.tan(sh), 1]]))


def _ptyrad_positions(shape, step, affine, flip=None):
    """PtyRAD's simulated positions (Å, (y, x) rows): the raster, its grid flipped ([ud, lr, transpose]; transpose
    flips the (y, x) axis), centred on its mean, times F from the right."""
    pos = step * np.array([(y, x) for y in range(shape[0]) for x in range(shape[1])], dtype=np.float64)
    if flip is not None and any(flip):
        pos = np.flip(pos.reshape(*shape, 2), tuple(np.nonzero(flip)[0])).reshape(-1, 2)
    return (pos - pos.mean(0)) @ _ptyrad_affine(*affine)


def _translated_positions(init: dict, tmp_path) -> np.ndarray:
    from phasestem.recon.params import configured_scan
    from phasestem.scan import GridScan

    base = {"probe_kv": 300, "meas_Npix": 32, "meas_params": {"path": "d.h5"}, "pos_N_scan_slow": 5,
            "pos_N_scan_fast": 7}
    params = parse_params(translate({"init_params": {**base, **init}}, cwd=tmp_path).params, "translated")
    file_step = 0.8 if params.scan.step is None else params.scan.step  # a square step from the data file
    pos = configured_scan(params.scan, GridScan((5, 7), file_step, origin=(3.0, -2.0))).positions()
    return pos - pos.mean(0)


def test_the_scan_affine_gives_ptyrad_s_positions(tmp_path):
    """Before: pos_scan_affine was 'not translated' and the run went on at rotation 0."""
    from phasestem.base.errors import ConfigError

    tr = translate({"init_params": {"probe_kv": 300, "meas_Npix": 32, "meas_params": {"path": "d.h5"},
                                    "pos_N_scan_slow": 5, "pos_N_scan_fast": 7, "pos_scan_step_size": 0.6,
                                    "pos_scan_affine": [1, 0, 23.7, 0]}}, cwd=tmp_path)
    assert tr.params["scan"] == {"shape": [5, 7], "step": 0.6, "rotation": 23.7}  # a rotation is scan.rotation
    assert not any("pos_scan_affine" in x for x in tr.report_lines())
    cases = [([1, 0, 23.7, 0], None, 0.6), ([1.1, 0.2, -40.0, 7.5], None, 0.6), ([1, 0, 90, 0], [0, 1, 0], 0.6),
             ([0.9, -0.3, 12.0, -5.0], [1, 0, 1], 0.6), ([1.05, 0.1, 30.0, 3.0], [1, 1, 0], None)]
    for affine, flip, step in cases:
        init = {"pos_scan_affine": affine, "pos_scan_flipT": flip, "pos_scan_step_size": step}
        expected = _ptyrad_positions((5, 7), 0.8 if step is None else step, affine, flip)
        np.testing.assert_allclose(_translated_positions(init, tmp_path), expected, atol=1e-9,
                                   err_msg=str((affine, flip, step)))
    with pytest.raises(ConfigError, match="^PtyRAD params: init_params.pos_scan_affine: .*singular"):
        translate({"init_params": {"probe_kv": 300, "meas_Npix": 32, "meas_params": {"path": "d.h5"},
                                   "pos_scan_affine": [1, 2, 0, 0]}}, cwd=tmp_path)


def test_an_untranslated_geometry_stops_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from phasestem.base.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    base = {"probe_kv": 300, "meas_Npix": 64, "meas_params": {"path": "d.h5"}}
    for change, field in (({"pos_source": "PtyRAD", "pos_params": "old/model_iter0200.hdf5"}, "init_params.pos_source"),
                          ({"meas_crop": [None, None, [0, 48], [8, 56]]}, "init_params.meas_crop"),
                          ({"pos_params": {"dx": 0.2}}, "init_params.pos_params.dx")):
        data = {"init_params": {**base, **change}}
        with pytest.raises(ConfigError, match=f"^x.yaml: {field}: .*changes the geometry") as err:
            translate(data, "x.yaml", cwd=tmp_path)
        assert "\n" not in str(err.value)
        lines = translate(data, "x.yaml", cwd=tmp_path, allow_untranslated=True).report_lines()  # the user goes on
        assert sum(x.startswith(f"not translated: {field}: ") for x in lines) == 1, lines
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["reconstruct", str(path), "--dump-config"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "init_params.pos_params.dx" in err[0], err
    assert main(["convert", "ptyrad", str(path), "--out-file", "p.yaml"]) == 1
    assert main(["convert", "ptyrad", str(path), "--out-file", "p.yaml", "--allow-untranslated"]) == 0
    assert "#   not translated: init_params.pos_params.dx" in (tmp_path / "p.yaml").read_text()


def _rotated_scan(path, affine) -> tuple[np.ndarray, np.ndarray]:
    """An independent NumPy multislice scan of 10 × 10 positions 0.6 Å apart placed as PtyRAD places them for
    ``pos_scan_affine`` (about the scan's centre, here the object's), written to ``path`` as a generic HDF5 ``dp``
    with its first position as ``scan_origin``. Returns the true phase (64², 0.3 Å pixels) and the positions."""
    import h5py
    from numpy_cases import atom_phase, simulate_patterns

    rng = np.random.default_rng(3)
    phase = atom_phase((64, 64), 0.3, rng, 8, 0.5)
    positions = _ptyrad_positions((10, 10), 0.6, affine) + 32 * 0.3
    patterns = simulate_patterns(phase[None], 0.3, positions, 32, 300e3, 20.0, 50.0)
    with h5py.File(path, "w") as f:
        f["dp"] = np.asarray(patterns, np.float32).reshape(10, 10, 32, 32)
        f.attrs["scan_origin"] = positions[0]
    return phase, positions


def _scanned(positions, rotation, shape, sampling=0.3, step=0.6, inset=1.0) -> np.ndarray:
    """Pixels (of ``shape``) inside the turned scan's field, ``inset`` positions in from its edge."""
    iy, ix = np.mgrid[: shape[0], : shape[1]] * sampling
    grid = np.stack([iy - positions[0, 0], ix - positions[0, 1]], -1) @ np.asarray(
        [[np.cos(np.radians(rotation)), -np.sin(np.radians(rotation))],
         [np.sin(np.radians(rotation)), np.cos(np.radians(rotation))]]) / step  # (y, x) → scan indices
    return ((grid > inset) & (grid < 9 - inset)).all(-1)


def test_a_rotated_ptyrad_file_reconstructs_as_the_same_scan_given_natively(tmp_path, monkeypatch):
    """A scan turned by 23.7° (positions by PtyRAD's own formula): the PtyRAD file with pos_scan_affine
    [1, 0, 23.7, 0] and a phasestem file with scan.rotation 23.7 build the same positions, PtyRAD's, and the same
    reconstruction; the same PtyRAD file read at rotation 0 (as before) reconstructs worse."""
    from numpy_cases import pearson

    from phasestem.recon.params import build_dataset
    from phasestem.recon.run import run_reconstruction

    monkeypatch.chdir(tmp_path)
    truth, positions = _rotated_scan(tmp_path / "scan.h5", [1, 0, 23.7, 0])
    rates = {"obja": {"start_iter": 1, "lr": 2e-2}, "objp": {"start_iter": 1, "lr": 2e-2},
             "probe": {"start_iter": None, "lr": 0}, "probe_pos_shifts": {"start_iter": None, "lr": 0}}
    ptyrad = {"init_params": {"probe_kv": 300, "probe_conv_angle": 20.0, "probe_aberrations": {"defocus": -50},
                              "meas_Npix": 32, "meas_calibration": {"mode": "dx", "value": 0.3},
                              "pos_N_scan_slow": 10, "pos_N_scan_fast": 10, "pos_scan_step_size": 0.6,
                              "pos_scan_affine": [1, 0, 23.7, 0], "pos_scan_rand_std": None,
                              "probe_pmode_max": 1, "obj_Nlayer": 1, "meas_params": {"path": "scan.h5", "key": "dp"}},
              "model_params": {"update_params": rates}, "constraint_params": {"obj_rblur": {"start_iter": None}},
              "recon_params": {"NITER": 5, "BATCH_SIZE": {"size": 20}}}
    unturned = {**ptyrad, "init_params": {**ptyrad["init_params"], "pos_scan_affine": None}}
    native = {"data": {"file": "scan.h5", "patterns_key": "dp"},
              "optics": {"energy": 300e3, "semiangle": 20.0, "sampling": 0.3, "aberrations": {"C10": 50.0}},
              "scan": {"shape": [10, 10], "step": 0.6, "rotation": 23.7},
              "model": {"learning_rates": {"obj_amplitude": 2e-2, "obj_phase": 2e-2, "probe": 0, "positions": 0,
                                           "tilt": 0, "slice_thickness": 0}},
              "run": {"optimizer": "adam", "n_epochs": 5, "batch_size": 20, "lr_decay": "none", "progress": False,
                      "checkpoint_every": 0}}
    mask = _scanned(positions, 23.7, truth.shape)
    phase, r = {}, {}
    for name, data in (("ptyrad", ptyrad), ("native", native), ("unturned", unturned)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        params = load_params(path)
        params.run.out_dir, params.run.progress, params.run.checkpoint_every = tmp_path / f"run_{name}", False, 0
        if name != "unturned":
            np.testing.assert_allclose(build_dataset(params).positions, positions, atol=1e-9, err_msg=name)
        phase[name] = run_reconstruction(params).phase_in_dataset_frame(truth.shape)  # pixel (0, 0) at 0 Å
        h, w = phase[name].shape  # the object's frame may end before the truth's
        r[name] = pearson(phase[name][mask[:h, :w]], truth[:h, :w][mask[:h, :w]])
    np.testing.assert_allclose(phase["ptyrad"], phase["native"], atol=1e-5)
    assert r["native"] > 0.8 and r["unturned"] < r["native"] - 0.1, r
    print(f"Pearson r of the phase over the scanned field: PtyRAD file {r['ptyrad']:.4f}, native "
          f"{r['native']:.4f}, PtyRAD file at rotation 0 {r['unturned']:.4f}")
