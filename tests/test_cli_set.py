"""``--set KEY=VALUE`` on reconstruct, tune and simulate as on train and plan; an argument nobody takes is refused by
the sub-command it was given to, with that sub-command's usage (issue 50, defect 5)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from phasestem.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [("reconstruct", "p.yaml"), ("simulate", "s.yaml"), ("tune", "p.yaml"),
                                     ("train", "patch", "t.yaml"), ("calibrate", "scan.npy")], ids=lambda c: c[0])
def test_an_unknown_flag_is_refused_by_its_sub_command_with_its_usage(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--foo", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    prog = "phasestem " + " ".join(command[:-1])
    assert err.startswith(f"usage: {prog} "), err  # not the top-level usage
    assert err.rstrip().endswith(f"{prog}: error: unrecognized arguments: --foo 1"), err


def test_abbreviations_stay_refused(capsys):
    with pytest.raises(SystemExit):
        main(["reconstruct", "p.yaml", "--epo", "3"])  # allow_abbrev=False kept: no prefix of --epochs
    assert "phasestem reconstruct: error: unrecognized arguments: --epo 3" in capsys.readouterr().err


def test_reconstruct_set_overrides_fields_and_takes_relative_paths_from_the_working_directory(tmp_path, monkeypatch,
                                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--set", "run.n_epochs=7",
                 "--set", "model.n_slices=2", "--set", "data.file=here.npz", "--dump-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["run"]["n_epochs"] == 7 and cfg["model"]["n_slices"] == 2
    assert cfg["data"]["file"] == str(tmp_path / "here.npz")  # the working directory's, not the config's folder


def test_reconstruct_set_of_an_unknown_field_is_one_line_naming_it(capsys):
    rc = main(["reconstruct", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--set", "run.n_epoch=7",
               "--dump-config"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "phasestem reconstruct: error:" in err and "n_epoch" in err, err
    assert main(["reconstruct", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--set", "run.n_epochs"]) == 1
    assert "phasestem reconstruct: error: --set expects KEY=VALUE" in capsys.readouterr().err


def test_simulate_and_tune_take_set(tmp_path, capsys):
    assert main(["simulate", str(ROOT / "configs" / "simulate_tiny.yaml"), "--set", "scan.shape=[4, 4]",
                 "--set", "output.n_files=1", "--dump-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["scan"]["shape"] == [4, 4] and cfg["output"]["n_files"] == 1
    assert main(["tune", str(ROOT / "configs" / "reconstruct_tiny.yaml"), "--set", "tune.n_trials=3",
                 "--dump-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["tune"]["n_trials"] == 3
