"""YAML interface: schema errors name the field; CLI reconstruct/tune; dump-config; resume."""
import numpy as np
import pytest
import yaml

from phasestem.base.errors import ConfigError, InputFileError, PhasestemError
from phasestem.recon.params import (
    build_dataset,
    build_model,
    configured_scan,
    dump_params,
    load_params,
    parse_params,
)
from phasestem.recon.synthetic import write_npz
from phasestem.scan import GridScan

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny example config pointed at a freshly simulated 6×6 data file."""
    tmp = tmp_path_factory.mktemp("recon_yaml")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=21)
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(tmp / "tiny.npz")
    cfg["scan"]["shape"] = [6, 6]
    cfg["run"].update(out_dir=str(tmp / "out"), n_epochs=4, progress=False)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _write(tmp_path, cfg, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg) if not isinstance(cfg, str) else cfg)
    return path


def test_example_configs_validate():
    for path in sorted(CONFIGS.glob("reconstruct_*.yaml")):
        params = load_params(path)
        assert params.run.n_epochs >= 1
    ms = load_params(CONFIGS / "reconstruct_multislice.yaml")
    assert ms.model.n_slices == 8 and ms.constraints.rz_filter.enabled


def test_every_schema_field_has_a_description():
    from pydantic import BaseModel

    from phasestem.recon import params as P

    seen = set()

    def walk(cls):
        if cls in seen:
            return
        seen.add(cls)
        for name, f in cls.model_fields.items():
            assert f.description, f"{cls.__name__}.{name} lacks a description"
            for t in getattr(f.annotation, "__args__", ()) + (f.annotation,):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t)

    walk(P.ReconstructParams)
    assert len(seen) > 8


def test_malformed_yaml_names_the_place(tmp_path):
    path = _write(tmp_path, "data:\n  file: [a, b\noptics: {energy: 3}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: malformed YAML at line \d+"):
        load_params(path)


def test_unknown_key_names_the_field(tiny, tmp_path):
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["model"]["n_slicez"] = 3
    with pytest.raises(ConfigError, match=r"model\.n_slicez: unknown key") as exc:
        load_params(_write(tmp_path, cfg))
    assert "p.yaml" in str(exc.value)


def test_constraint_names_legacy_freq_and_unknown_names(tiny, tmp_path):
    """PtyRAD's normaliser maps the legacy ``freq`` to ``step`` (so do we) and passes unknown names on; we refuse
    an unknown constraint name in one line: a misspelt constraint silently dropped would run another
    reconstruction than the one asked for and still exit 0."""
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["constraints"] = {"obj_blur": {"enabled": True, "freq": 3, "sigma": 0.5}}
    assert load_params(_write(tmp_path, cfg)).constraints.obj_blur.step == 3
    cfg["constraints"] = {"obj_blurr": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"constraints\.obj_blurr: unknown key") as exc:
        load_params(_write(tmp_path, cfg))
    assert "\n" not in str(exc.value)


def test_wrong_shape_names_the_field(tiny, tmp_path):
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["scan"]["step"] = [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match=r"scan\.step: .*two \(y, x\), got 3 values"):
        load_params(_write(tmp_path, cfg))
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["data"]["crop"] = [16]
    with pytest.raises(ConfigError, match=r"data\.crop"):
        load_params(_write(tmp_path, cfg))


def test_missing_dataset_key_names_the_field(tiny, tmp_path):
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["data"]["patterns_key"] = "dp_nonexistent"
    params = load_params(_write(tmp_path, cfg))
    with pytest.raises(InputFileError, match=r"data\.patterns_key: .*dp_nonexistent"):
        build_dataset(params)


def test_scan_shape_pattern_count_mismatch_names_the_field(tiny, tmp_path):
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["scan"]["shape"] = [5, 5]
    with pytest.raises(ConfigError, match=r"scan\.shape: \(5, 5\) = 25 positions .*6×6 scan \(36 patterns\)"):
        build_dataset(parse_params(cfg))
    flat = np.load(cfg["data"]["file"])["patterns"].reshape(36, 32, 32)
    np.save(tmp_path / "flat.npy", flat)
    cfg["data"].update(file=str(tmp_path / "flat.npy"), patterns_key=None)
    with pytest.raises(ConfigError, match=r"scan\.shape: \(5, 5\) = 25 positions .*36 patterns"):
        build_dataset(parse_params(cfg))
    cfg["scan"]["shape"] = [6, 6]
    assert build_dataset(parse_params(cfg)).scan_shape == (6, 6)


def test_other_clear_errors(tiny, tmp_path):
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["model"]["learning_rates"]["obj_fase"] = 0.1
    with pytest.raises(ConfigError, match=r"model\.learning_rates: .*unknown parameter 'obj_fase'"):
        load_params(_write(tmp_path, cfg))
    cfg = yaml.safe_load(tiny[0].read_text())
    del cfg["optics"]["energy"]  # optional in the schema (the file's); this .npz holds none: one line at loading
    params = load_params(_write(tmp_path, cfg))
    with pytest.raises(ConfigError, match=r"^optics\.energy: not given, and .*tiny\.npz does not hold it \(the "
                       r"beam energy, eV\); give optics\.energy$"):
        build_dataset(params)
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["optics"]["aberrations"] = {"C99": 1.0}
    with pytest.raises(ConfigError, match="C99"):
        load_params(_write(tmp_path, cfg))
    with pytest.raises(InputFileError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_data_transforms_and_scan_geometry(tiny, tmp_path):
    cfg = yaml.safe_load(tiny[0].read_text())
    cfg["data"].update(crop=[24, 24], bin=2, pad=[16, 16], flip_x=True, transpose=True)
    cfg["scan"].update(rotation=90.0)
    ds = build_dataset(parse_params(cfg))
    assert ds.pattern_shape == (16, 16)
    pos = ds.positions_angstrom()
    # 90° counter-clockwise: the first row of the scan (along x) now runs along −y
    np.testing.assert_allclose(pos[1], [-1.0, 0.0], atol=1e-9)
    cfg["scan"].update(rotation=0.0, affine=[[2.0, 0.0], [0.0, 1.0]])
    p = configured_scan(parse_params(cfg).scan, GridScan((2, 2), (1.0, 1.0))).positions()
    np.testing.assert_allclose(p, [[0, 0], [0, 1], [2, 0], [2, 1]])
    cfg["data"].update(crop=None, bin=1, pad=None, flip_x=False, transpose=False, resample=[16, 16])
    ds = build_dataset(parse_params(cfg))
    assert ds.pattern_shape == (16, 16)
    assert float(ds.get_patterns().sum((-2, -1)).mean()) == pytest.approx(1.0, rel=0.05)


def test_detector_shifts_follow_the_data_transforms_and_bad_files_name_the_field(tiny, tmp_path):
    """data.detector_shifts is given in the file's detector axes; the dataset carries them through the subset,
    transpose, flips and binning (nothing re-reads those settings)."""
    cfg = yaml.safe_load(tiny[0].read_text())
    shifts = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0) / 10, indexing="ij"), -1)  # (6, 6, 2)
    np.save(tmp_path / "shifts.npy", shifts)
    cfg["data"].update(detector_shifts="shifts.npy", scan_subset=[1, 3, 2, 5], transpose=True, flip_y=True, bin=2)
    params = load_params(_write(tmp_path, cfg))
    ds = build_dataset(params)
    got = ds.detector_shifts
    sub = shifts[1:3, 2:5].reshape(-1, 2)
    np.testing.assert_allclose(got, np.stack([-sub[:, 1], sub[:, 0]], -1) / 2, rtol=1e-6)
    model = build_model(params, ds)
    np.testing.assert_allclose(model.detector_shifts.numpy(), got, rtol=1e-6)
    cfg["data"].update(scan_subset=None, transpose=False, flip_y=False, bin=1)
    np.save(tmp_path / "bad.npy", np.zeros((6, 6, 3)))
    for name, message in (("missing.npy", "data.detector_shifts: .*missing.npy not found"),
                          ("bad.npy", r"data.detector_shifts: .*\(Sy, Sx, 2\) or \(N, 2\)")):
        cfg["data"]["detector_shifts"] = name
        params = load_params(_write(tmp_path, cfg))
        with pytest.raises(PhasestemError, match=message):
            build_model(params, build_dataset(params))
    np.save(tmp_path / "short.npy", np.zeros((5, 2)))
    cfg["data"]["detector_shifts"] = "short.npy"
    params = load_params(_write(tmp_path, cfg))
    with pytest.raises(PhasestemError, match="data.detector_shifts: .*short.npy holds 5 shifts for 36 patterns"):
        build_model(params, build_dataset(params))


def test_build_model_from_params(tiny):
    params = load_params(tiny[0])
    ds = build_dataset(params)
    model = build_model(params, ds)
    assert model.schedules["probe"].start == 3 and model.schedules["positions"].lr == 0
    text = dump_params(params)
    assert yaml.safe_load(text)["model"]["n_slices"] == 1


def test_the_engine_takes_the_run_section_itself(tiny):
    """run_sections hands the engine the validated ``run`` section (every field, none copied: a field the file sets
    reaches the engine), keyword options replace its values, and an unknown one is one line naming it."""
    from phasestem.recon.callbacks import Callback
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import run_sections

    class Seen(Callback):
        def on_start(self, loop):
            self.run = loop.run

    params = load_params(tiny[0]).model_copy(deep=True)
    params.run.batch_size, params.run.backoff_factor, params.run.compile = 5, 1.25, "none"
    ds = build_dataset(params)
    seen = Seen()
    list(optimize_with_options(build_model(params, ds), ds, 1, callbacks=[seen], **run_sections(params)))
    assert seen.run is params.run
    list(optimize_with_options(build_model(params, ds), ds, 1, callbacks=[seen], seed=7, **run_sections(params)))
    assert (seen.run.seed, seen.run.batch_size, seen.run.backoff_factor) == (7, 5, 1.25) and params.run.seed != 7
    with pytest.raises(ConfigError, match="bogus"):
        next(optimize_with_options(build_model(params, ds), ds, 1, bogus=1, **run_sections(params)))


def _cli(capsys, *args):
    from phasestem.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse --help
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_reconstruct_dump_config_and_resume(tiny, tmp_path, capsys):
    path, _ = tiny
    code, out, err = _cli(capsys, "reconstruct", path, "--dump-config")
    assert code == 0, err
    assert yaml.safe_load(out)["run"]["n_epochs"] == 4
    run = tmp_path / "run"
    code, out, err = _cli(capsys, "reconstruct", path, "--out", run, "--epochs", "2")
    assert code == 0, err
    for name in ("results.h5", "config.yaml", "reconstruct.log", "checkpoint.pt", "reconstruction.png"):
        assert (run / name).exists(), name
    assert load_params(run / "config.yaml").run.n_epochs == 2  # the resolved config reproduces the run
    code, out, err = _cli(capsys, "reconstruct", path, "--out", run, "--epochs", "4", "--resume")
    assert code == 0, err
    from phasestem.recon.results import load_results

    res = load_results(run / "results.h5")
    assert list(res["loss"]["epoch"]) == [1, 2, 3, 4]  # epochs 3-4 continued from the checkpoint
    code, out, err = _cli(capsys, "reconstruct", tmp_path / "missing.yaml")
    assert code == 1 and "not found" in err and "Traceback" not in err
    code, out, err = _cli(capsys, "reconstruct", "--help")
    assert code == 0 and "examples:" in out and "--resume" in out
    code, out, err = _cli(capsys, "tune", "--help")
    assert code == 0 and "examples:" in out


def test_tune_study_is_stored_and_resumable(tiny, tmp_path):
    from phasestem.recon.tune import run_tuning

    params = load_params(tiny[0])
    params.tune.n_epochs = 2
    study = run_tuning(params, out_dir=tmp_path, n_trials=2)
    assert len(study.trials) == 2 and (tmp_path / "tune.db").exists()
    assert {"C10", "lr_obj_phase"} <= set(study.trials[0].params)
    study = run_tuning(params, out_dir=tmp_path, n_trials=1)
    assert len(study.trials) == 3  # resumed the stored study
    assert np.isfinite(study.best_value)
    params.tune = None
    with pytest.raises(PhasestemError, match="tune"):
        run_tuning(params, out_dir=tmp_path)
