"""One geometry check for ``restore`` and ``reconstruct --prior`` (issue 68, items 3 and 5): a run records the optics
it used in results.h5; both entry points refuse a restorer whose card differs in any recorded quantity in one line
naming it, refuse a results file without the record unless the user vouches for it, and stop on a non-finite phase
going in or coming out."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from test_restore_output import _tiny_run

from phasestem.base.errors import PhasestemError
from phasestem.cli import main

#: one wrong card value per recorded quantity, and the name the refusal gives it
WRONG = {"energy": (lambda g: {"energy": 200e3}, "energy 300000 eV (trained on 200000 eV)"),
         "semiangle": (lambda g: {"semiangle": g["semiangle"] * 1.5}, "semiangle"),
         "C10": (lambda g: {"aberrations": {**g["aberrations"], "C10": g["aberrations"]["C10"] + 20}}, "C10 50 Å"),
         "C30": (lambda g: {"aberrations": {**g["aberrations"], "C30": 1e5}}, "C30 0 Å (trained on 100000 Å)"),
         "step": (lambda g: {"scan_step": [2 * s for s in g["scan_step"]]}, "scan_step 1×1 Å (trained on 2×2 Å)"),
         "detector sampling": (lambda g: {"angular_sampling": [1.1 * s for s in g["angular_sampling"]]},
                               "angular_sampling"),
         "pixel": (lambda g: {"sampling": [1.1 * s for s in g["sampling"]]}, "pixel")}


def _card(path, geometry: dict, scale: float = 1.0) -> str:
    """An untrained (identity) restorer whose card records ``geometry``; ``scale`` multiplies every weight."""
    from phasestem.learn.meta import make_meta
    from phasestem.learn.nets.restorer import Restorer, RestorerConfig
    from phasestem.learn.trainer.checkpoint import save_weights

    net = Restorer(RestorerConfig(width=4))
    state = {k: v * scale if v.is_floating_point() else v for k, v in net.state_dict().items()}
    return str(save_weights(state, path, make_meta("restorer", net.config, {"optics": geometry})))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from phasestem.recon.results import load_results

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("geometry")
    results = _tiny_run(folder)
    return folder, results, load_results(results)["geometry"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_reconstruct_records_the_optics_it_used_and_a_matching_card_restores(run, capsys):
    folder, results, geometry = run
    assert geometry["energy"] == 300e3 and geometry["semiangle"] == 15.0 and geometry["aberrations"]["C10"] == 50.0
    assert geometry["scan_step"] == [1.0, 1.0] and len(geometry["angular_sampling"]) == 2
    with h5py.File(results) as f:
        assert np.allclose(geometry["sampling"], f.attrs["sampling"])
    model = _card(folder / "match.safetensors", geometry)
    assert main(["restore", results, "--model", model, "--out-file", str(folder / "ok.h5")]) == 0


@pytest.mark.parametrize("quantity", list(WRONG))
def test_restore_and_prior_refuse_a_card_of_another_value_naming_it(run, quantity, capsys, tmp_path):
    folder, results, geometry = run
    change, words = WRONG[quantity]
    model = _card(tmp_path / "wrong.safetensors", {**geometry, **change(geometry)})
    capsys.readouterr()
    assert main(["restore", results, "--model", model, "--out-file", str(tmp_path / "r.h5")]) == 1
    err = _one_line(capsys)
    assert words in err and "(trained on" in err and model in err, err
    assert not (tmp_path / "r.h5").exists()
    assert main(["reconstruct", str(folder / "params.yaml"), "--out", str(tmp_path / "prior"), "--prior", model]) == 1
    err = _one_line(capsys)
    assert words in err and "(trained on" in err and model in err, err


def test_a_results_file_without_the_record_is_refused_unless_vouched_for(run, capsys, tmp_path, caplog):
    folder, results, geometry = run
    old = tmp_path / "old.h5"
    shutil.copy(results, old)
    with h5py.File(old, "r+") as f:
        del f["geometry"]
    model = _card(tmp_path / "m.safetensors", geometry)
    capsys.readouterr()
    assert main(["restore", str(old), "--model", model, "--out-file", str(tmp_path / "r.h5")]) == 1
    err = _one_line(capsys)
    assert f"{old}: records no geometry" in err and "--trust-geometry" in err, err
    with caplog.at_level("WARNING", logger="phasestem"):
        assert main(["restore", str(old), "--model", model, "--out-file", str(tmp_path / "r.h5"),
                     "--trust-geometry"]) == 0
    assert "--trust-geometry: only energy, sampling checked" in caplog.text
    wrong = _card(tmp_path / "w.safetensors", {**geometry, "energy": 200e3})  # what it holds is still checked
    assert main(["restore", str(old), "--model", wrong, "--out-file", str(tmp_path / "w.h5"), "--trust-geometry"]) == 1


def test_a_non_finite_phase_in_or_out_of_restore_is_one_line_naming_the_file(run, capsys, tmp_path):
    folder, results, geometry = run
    bad = tmp_path / "nan.h5"
    shutil.copy(results, bad)
    with h5py.File(bad, "r+") as f:
        phase = f["object/phase_sum"][...]
        phase[phase.shape[0] // 2, :] = np.nan
        phase[:, phase.shape[1] // 2] = np.inf
        f["object/phase_sum"][...] = phase
    model = _card(tmp_path / "m.safetensors", geometry)
    capsys.readouterr()
    assert main(["restore", str(bad), "--model", model, "--out-file", str(tmp_path / "r.h5")]) == 1
    err = _one_line(capsys)
    assert f"{bad}:object/phase_sum: the phase holds" in err and "non-finite" in err, err
    huge = _card(tmp_path / "huge.safetensors", geometry, scale=1e30)  # finite weights, a non-finite restoration
    assert main(["restore", results, "--model", huge, "--out-file", str(tmp_path / "h.h5")]) == 1
    err = _one_line(capsys)
    assert f"{huge}: its prediction for {results} holds" in err and "non-finite" in err, err
    assert not (tmp_path / "r.h5").exists() and not (tmp_path / "h.h5").exists()


def test_a_non_finite_phase_in_or_out_of_the_prior_stops_the_run_naming_the_file(run, capsys, tmp_path):
    folder, results, geometry = run
    huge = _card(tmp_path / "huge.safetensors", geometry, scale=1e30)
    capsys.readouterr()
    assert main(["reconstruct", str(folder / "params.yaml"), "--out", str(tmp_path / "p"), "--prior", huge,
                 "--prior-start", "1", "--prior-every", "1"]) == 1
    err = _one_line(capsys)
    assert f"restorer {huge}: its prediction for the reconstruction after epoch 1 holds" in err, err
    from phasestem.learn.hybrid import prior_hook
    from phasestem.recon.params import build_dataset, build_model, load_params

    params = load_params(folder / "params.yaml")
    dataset = build_dataset(params, warn=False)
    model = build_model(params, dataset)
    prior = prior_hook(_card(tmp_path / "m.safetensors", geometry))(model, dataset)  # the same check as restore's
    with torch.no_grad():
        ny, nx = model.obj_phase.shape[-2:]
        model.obj_phase[..., ny // 2, nx // 2] = float("nan")  # a run whose phase went NaN
    with pytest.raises(PhasestemError) as err:
        prior.target_fn(model)
    assert str(err.value).startswith(f"restorer {tmp_path / 'm.safetensors'}: the reconstruction after epoch 0: the "
                                     "phase holds 1 of") and "\n" not in str(err.value)
