"""The smaller dead ends of issue 50 (defect 8) that are behaviour: a moved --auto run folder reruns; a parameter
file without scan:/optics: takes every value from the data file; no help text names the internal SPEC; a model's
repr says what it is; evaluate ends with a sentence (JSON on request); predict says when a sample was trained on."""
from __future__ import annotations

import argparse
import json
import logging
import shutil

import pytest
import yaml

from phasestem.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sim_and_model(tmp_path_factory):
    from tiny_models import end2end_for

    from phasestem.learn.data import write_synthetic_file

    tmp = tmp_path_factory.mktemp("first_hour")
    sim = write_synthetic_file(tmp / "simulation_data1.h5", 2, extent=24.0, phase_px=48, scan=12, window=16,
                               n_blobs=8, c10=100.0)
    return sim, end2end_for(sim, tmp / "e2e")


def test_a_moved_auto_run_folder_reruns(sim_and_model, tmp_path, capsys):
    sim, _ = sim_and_model
    run = tmp_path / "run"
    assert main(["reconstruct", str(sim), "--auto", "--rotation", "0", "--epochs", "1", "--out", str(run)]) == 0
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["data"]["file"] == "calibration/calibrated.npy"  # was the absolute path
    assert params["model"]["initial_phase"]["file"] == "init_ssb.npy" and params["run"]["out_dir"] == "."
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    (moved / "results.h5").unlink()
    assert main(["reconstruct", str(moved / "params.yaml"), "--epochs", "1"]) == 0, capsys.readouterr().err
    assert (moved / "results.h5").exists() and not run.exists()


def test_a_parameter_file_without_scan_or_optics_takes_the_files_values(tmp_path):
    from phasestem.io import numpy as io_numpy
    from phasestem.recon.params import build_dataset, parse_params
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(4, 4), scan_step=1.5, seed=2)
    io_numpy.write(tmp_path / "scan.npz", ds)  # energy, step, origin, pixel, semi-angle and C10 in the file
    got = build_dataset(parse_params({"data": {"file": str(tmp_path / "scan.npz")}}))  # was: scan required
    assert got.scan_step == (1.5, 1.5) and got.semiangle == ds.semiangle and got.aberrations == ds.aberrations
    assert {s.field: s.source for s in got.metadata["settings"]}["optics.semiangle"] == "file"


def _parsers(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*prefix, name))


def test_no_help_text_names_the_internal_spec():
    for path, parser in _parsers(build_parser()):
        assert "SPEC" not in parser.format_help(), path  # 'train --help' named "SPEC §4" and "SPEC §5"


def test_the_models_repr_says_what_it_is():
    from phasestem.recon.model import Ptychography
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(4, 4), seed=1)
    model = Ptychography.from_dataset(ds, n_probe_modes=2)
    assert repr(model).startswith("Ptychography(object 1 mode(s) × 1 slice(s) × ")
    assert "probe 2 mode(s) × 32×32 px, 16 positions, 300 keV, solver none yet, device cpu, 0 epoch(s) run)" in \
        repr(model)
    list(model.LSQ_optimize(1, ds, progress=False))
    assert "solver lsq, device cpu, 1 epoch(s) run, loss " in repr(model)


def test_evaluate_ends_with_a_sentence_and_json_on_request(sim_and_model, tmp_path, capsys):
    _, model = sim_and_model
    assert main(["evaluate", "--model", str(model), "--out", str(tmp_path / "eval")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"wrote {tmp_path / 'eval' / 'metrics.csv'} (per sample), {tmp_path / 'eval' / 'summary.md'} "
                    f"(this table) and {tmp_path / 'eval' / 'examples.png'} (examples)")
    assert main(["evaluate", "--model", str(model), "--out", str(tmp_path / "eval2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["csv"] == str(tmp_path / "eval2" /
                                                                                      "metrics.csv")


def test_predict_says_when_the_sample_was_in_the_training_set(sim_and_model, tmp_path, caplog):
    from phasestem.learn.apply.seen import split_of
    from phasestem.learn.trainer.checkpoint import read_meta

    sim, model = sim_and_model
    meta = read_meta(model)
    roles = {i: split_of(meta, sim, i)[0] for i in (0, 1)}
    assert sorted(roles.values()) == ["test", "train"]  # 2 samples, test_fraction 0.5
    trained = next(i for i, r in roles.items() if r == "train")
    held = next(i for i, r in roles.items() if r == "test")
    for sample, warned in ((trained, True), (held, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="phasestem"):
            assert main(["predict", str(sim), "--sample", str(sample), "--model", str(model), "--out",
                         str(tmp_path), "--no-png"]) == 0
        said = [r.message for r in caplog.records if "was in the model's training set" in r.message]
        assert bool(said) is warned, caplog.records
    assert said == [] and f"its test samples of this file: {held})" in _last_warning(sim, model, trained)


def _last_warning(sim, model, sample) -> str:
    from phasestem.learn.apply.seen import note_seen
    from phasestem.learn.trainer.checkpoint import read_meta

    return note_seen(read_meta(model), sim, sample)
