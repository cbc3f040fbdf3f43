"""Issue 86, "defaults that never get worse": every setting and flag a user types acts or is refused in one line,
and parameter problems are reported before slow work starts.

* ``off``/``on``/``yes``/``no``/``true``/``false`` (YAML booleans) read as the word wherever a field takes 'off' or
  'on' (``run.uncertainty: off`` was refused as ``got False``), in a file and in ``--set``; a boolean stays one
  where the field takes booleans;
* ``reconstruct PARAMS --allow-external-links`` reads the data file and its ground truth through links out of its
  folder (it was ignored), and ``data.reader_options.allow_external_links`` opens the ground truth as it opens the
  data; ``PHASESTEM_READ_ROOT`` still refuses both;
* the reader and calibration flags of ``--auto`` given with a parameter file are refused in one line;
* a bad ``--set`` with ``--auto`` is refused before anything is read or calibrated.
"""
from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from phasestem.base.configfile import parse_set_options
from phasestem.base.errors import ConfigError
from phasestem.base.hdf5_links import READ_ROOT_VARIABLE
from phasestem.cli import main
from phasestem.recon.params import load_params, parse_params
from phasestem.recon.synthetic import synthetic_scan, write_npz

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err
    return err


# ---- 1. off / on as YAML writes them ----------------------------------------------------------------------------
def test_uncertainty_off_loads_from_a_parameter_file_and_from_set(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "reconstruct_tiny.yaml").read_text())
    text = yaml.safe_dump(cfg).replace("run:\n", "run:\n  uncertainty: off\n", 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert "  uncertainty: off\n" in path.read_text()  # written as the docs spell it, read by YAML as False
    assert load_params(path).run.uncertainty == "off"
    for word in ("off", "no", "false", "Off", "'off'", "'no'"):
        params = load_params(ROOT / "configs" / "reconstruct_tiny.yaml",
                             parse_set_options([f"run.uncertainty={word}"]))
        assert params.run.uncertainty == "off", word
    assert parse_params({"data": {"file": "x.npy"}, "run": {"uncertainty": "fisher"}}).run.uncertainty == "fisher"


@pytest.mark.parametrize("value", ["maybe", "on", "yes", "1", "[off]"])
def test_a_value_that_is_no_allowed_word_stays_refused_in_one_line_naming_the_field(value):
    """'on' is not among run.uncertainty's words (auto, fisher, off): a boolean true stays refused there."""
    with pytest.raises(ConfigError) as err:
        load_params(ROOT / "configs" / "reconstruct_tiny.yaml", parse_set_options([f"run.uncertainty={value}"]))
    message = str(err.value)
    assert "\n" not in message and "run.uncertainty: Input should be 'auto', 'fisher' or 'off'" in message, message


def test_on_and_off_in_the_trainer_and_booleans_stay_booleans(capsys):
    from phasestem.learn.config import load_train_config

    cfg = load_train_config(ROOT / "configs" / "train_patch_tiny.yaml", "patch",
                            parse_set_options(["trainer.amp=off", "trainer.accelerate=on"]))
    assert (cfg.trainer.amp, cfg.trainer.accelerate) == ("off", "on")
    cfg = load_train_config(ROOT / "configs" / "train_patch_tiny.yaml", "patch",
                            parse_set_options(["trainer.amp=no", "trainer.accelerate=yes"]))
    assert (cfg.trainer.amp, cfg.trainer.accelerate) == ("off", "on")
    refused = r"trainer\.amp: Input should be 'off', 'bf16', 'fp16' or 'auto' \(got True\)"  # no 'on' among them
    with pytest.raises(ConfigError, match=refused):
        load_train_config(ROOT / "configs" / "train_patch_tiny.yaml", "patch", parse_set_options(["trainer.amp=on"]))
    # bool | Literal['auto'] and Literal['auto', True, False]: a boolean is valid there and stays one
    params = load_params(ROOT / "configs" / "reconstruct_tiny.yaml",
                         parse_set_options(["constraints.obj_clamp.enabled=off", "run.data_in_memory=on"]))
    assert params.constraints.obj_clamp.enabled is False and params.run.data_in_memory is True
    # the same through the command line: `train --set trainer.amp=off` validates
    assert main(["train", "patch", str(ROOT / "configs" / "train_patch_tiny.yaml"), "--set", "trainer.amp=off",
                 "--set", "trainer.accelerate=off", "--dump-config"]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    assert dumped["trainer"]["amp"] == "off" and dumped["trainer"]["accelerate"] == "off"


# ---- 2. --allow-external-links on the parameter-file path, one permission for data and ground truth ------------
@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """data/linked.h5 (patterns: an external link, truth: external storage, both in outside/) and data/own.h5
    (its own patterns, truth in outside/), each with a parameter file reading the truth."""
    root = tmp_path_factory.mktemp("links")
    data, outside = root / "data", root / "outside"
    data.mkdir()
    outside.mkdir()
    ds = synthetic_scan(window=(16, 16), sampling=0.4, scan_shape=(4, 4), scan_step=1.0, c10=50.0, seed=3)
    patterns = np.asarray(ds.patterns, dtype=np.float32)
    truth = np.ascontiguousarray(ds.truth["phase"], dtype=np.float32)
    with h5py.File(outside / "other_disk.h5", "w") as f:
        f["x"] = patterns
    (outside / "truth.raw").write_bytes(truth.tobytes())
    for name, own in (("linked.h5", False), ("own.h5", True)):
        with h5py.File(data / name, "w") as f:
            if own:
                f["patterns"] = patterns
            else:
                f["patterns"] = h5py.ExternalLink("../outside/other_disk.h5", "/x")
            t = f.create_dataset("truth", shape=truth.shape, dtype="<f4",
                                 external=[(str(outside / "truth.raw"), 0, truth.nbytes)])
            t.attrs["sampling"] = [0.4, 0.4]
    files = {}
    for name in ("linked.h5", "own.h5"):
        cfg = {"data": {"file": name, "patterns_key": "patterns", "ground_truth_key": "truth"},
               "optics": {"energy": 300e3, "semiangle": 15.0, "sampling": 0.4, "aberrations": {"C10": 50.0}},
               "scan": {"shape": [4, 4], "step": 1.0},
               "run": {"n_epochs": 1, "batch_size": 16, "progress": False, "uncertainty": "off",
                       "out_dir": "../run"}}
        files[name] = data / name.replace(".h5", ".yaml")
        files[name].write_text(yaml.safe_dump(cfg))
    return root, files, truth


def _reconstruct(params: Path, out: Path, *flags: str) -> int:
    return main(["reconstruct", str(params), "--out", str(out), *flags])


def _truth_was_read(out: Path) -> None:
    from phasestem.recon.results import load_results

    metrics = load_results(out / "results.h5")["metrics"]
    assert np.isfinite(metrics["psnr"]) and np.isfinite(metrics["phase_error"]), metrics
    assert "final comparison with truth" in (out / "reconstruct.log").read_text()


def test_allow_external_links_reads_data_and_ground_truth_of_a_parameter_file(linked, tmp_path, monkeypatch,
                                                                              capsys):
    root, files, _ = linked
    monkeypatch.delenv(READ_ROOT_VARIABLE, raising=False)
    assert _reconstruct(files["linked.h5"], tmp_path / "refused") == 1
    _one_line(capsys, "linked.h5:patterns", "outside", "--allow-external-links")
    assert _reconstruct(files["linked.h5"], tmp_path / "run", "--allow-external-links") == 0, capsys.readouterr().err
    _truth_was_read(tmp_path / "run")
    capsys.readouterr()
    monkeypatch.setenv(READ_ROOT_VARIABLE, str(root / "data"))  # phasestem serve: never outside its root
    assert _reconstruct(files["linked.h5"], tmp_path / "served", "--allow-external-links") == 1
    err = _one_line(capsys, "linked.h5:patterns", "outside")
    assert "--allow-external-links" not in err


def test_reader_option_opens_the_ground_truth_as_it_opens_the_data(linked, tmp_path, monkeypatch, capsys):
    """own.h5's patterns are its own, its truth is stored outside: the reader option that opens the file for the
    data opens it for the truth too (before: the truth was refused naming a flag that did nothing)."""
    _, files, _ = linked
    monkeypatch.delenv(READ_ROOT_VARIABLE, raising=False)
    assert _reconstruct(files["own.h5"], tmp_path / "refused") == 1
    _one_line(capsys, "own.h5:truth", "outside")
    assert _reconstruct(files["own.h5"], tmp_path / "run", "--set", "data.reader_options.allow_external_links=true"
                        ) == 0, capsys.readouterr().err
    _truth_was_read(tmp_path / "run")


def test_ground_truth_reader_takes_the_permission(linked, monkeypatch):
    from phasestem.base.errors import InputFileError
    from phasestem.recon.inputs import load_phase_image

    root, _, truth = linked
    monkeypatch.delenv(READ_ROOT_VARIABLE, raising=False)
    with pytest.raises(InputFileError, match="own.h5:truth: its data are stored in the external file"):
        load_phase_image(root / "data" / "own.h5", "truth")
    np.testing.assert_array_equal(load_phase_image(root / "data" / "own.h5", "truth", allow_external_links=True),
                                  truth)


# ---- 3. flags that only --auto (or --prior) reads ------------------------------------------------------------------
@pytest.mark.parametrize("flags, needles", [
    (["--energy", "3e5"], ["--energy:", "optics.energy"]),
    (["--semiangle", "20", "--scan-step", "0.5", "--c10", "100", "--rotation", "10"],
     ["--semiangle, --scan-step, --c10, --rotation:", "optics.semiangle", "scan.step", "optics.aberrations.C10",
      "scan.rotation"]),
    (["--key", "data", "--format", "hdf5", "--scan-shape", "4", "4", "--reader-option", "a=1",
      "--angular-sampling", "1"], ["--key, --format, --scan-shape, --reader-option, --angular-sampling:",
                                   "data.patterns_key", "data.format", "scan.shape", "data.reader_options.KEY"]),
    (["--edge-threshold", "0.5"], ["--edge-threshold:", "phasestem calibrate FILE"]),
    (["--fit-detector-pixel"], ["--fit-detector-pixel:", "phasestem calibrate FILE"]),
    (["--prior-every", "2"], ["--prior-every: the learned prior's schedule, read only with --prior MODEL"]),
    (["--prior-weight", "0.3", "--prior-start", "2"], ["--prior-weight, --prior-start:", "--prior MODEL"]),
], ids=lambda v: v[0] if isinstance(v[0], str) and v[0].startswith("--") else None)
def test_a_flag_that_would_do_nothing_is_refused_in_one_line(flags, needles, tmp_path, capsys):
    rc = main(["reconstruct", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--out", str(tmp_path / "o"),
               "--dump-config", *flags])
    assert rc == 1
    err = _one_line(capsys, *needles)
    if "--prior" not in needles[0]:
        assert "read only with --auto" in err, err
    assert not (tmp_path / "o").exists()


def test_the_flags_a_parameter_file_takes_still_act(tmp_path, capsys):
    assert main(["reconstruct", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--out", str(tmp_path / "o"),
                 "--epochs", "3", "--device", "cpu", "--allow-external-links", "--dump-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["run"]["n_epochs"] == 3 and cfg["run"]["out_dir"] == str(tmp_path / "o")
    assert cfg["data"]["reader_options"] == {"allow_external_links": True}
    assert main(["reconstruct", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--epochs", "0",
                 "--dump-config"]) == 1  # validated as run.n_epochs (was: ignored)
    _one_line(capsys, "run.n_epochs: Input should be greater than or equal to 1 (got 0)")


def test_dump_config_with_auto_is_refused_rather_than_running_everything(tmp_path, capsys):
    np.save(tmp_path / "scan.npy", np.ones((4, 4, 8, 8), np.float32))
    assert main(["reconstruct", str(tmp_path / "scan.npy"), "--auto", "--dump-config", "--out",
                 str(tmp_path / "o")]) == 1
    _one_line(capsys, "--dump-config cannot be combined with --auto")
    assert not (tmp_path / "o").exists()


# ---- 4. --auto: --set checked before any reading or calibration ------------------------------------------------
@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "scan.npz"
    write_npz(path, scan_shape=(6, 6), seed=2)
    return path


@pytest.mark.parametrize("overrides, needles", [
    (["run.uncertainty=maybe"], ["--set: run.uncertainty: Input should be 'auto', 'fisher' or 'off' (got 'maybe')"]),
    (["run.n_epoch=3"], ["--set: run.n_epoch: unknown key"]),
    (["model.n_slices=0", "optics.energy=-1"], ["model.n_slices", "optics.energy"]),
], ids=["bad-value", "unknown-key", "two-bad"])
def test_a_bad_override_of_auto_fails_before_calibration(scan_file, overrides, needles, tmp_path, capsys):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    rc = main(["reconstruct", str(scan_file), "--auto", "--key", "patterns", "--energy", "300e3", "--semiangle",
               "15", "--scan-step", "1", "--out", str(out), *sum((["--set", o] for o in overrides), [])])
    assert rc == 1
    _one_line(capsys, *needles)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # no calibration/ (nor anything) written
    assert time.perf_counter() - t0 < 10


def test_the_early_check_takes_every_override_auto_takes(tmp_path):
    """Overrides of the sections calibration fills, and the spelled-out switch words, pass the early check."""
    from phasestem.recon.auto import check_overrides

    good = parse_set_options(["run.uncertainty=off", "optics.aberrations.C10=-120", "scan.rotation=12",
                              "data.counts=true", "model.learning_rates.positions={lr: 0.01, start: 2}",
                              "constraints.obj_ramp.enabled=false", "losses.poisson=1"])
    check_overrides(tmp_path / "scan.npy", tmp_path / "out", 5, "cpu", good)
    with pytest.raises(ConfigError, match=r"^--auto: run\.n_epochs: Input should be greater than or equal to 1"):
        check_overrides(tmp_path / "scan.npy", tmp_path / "out", -2)
    assert not (tmp_path / "out").exists()
