"""phasestem reconstruct: divergence stops with exit 1 and the last good state; the parameter file's learning
rates win on --resume; an output folder never overwrites the parameter file; the defocus-sign check warns.

These are plumbing tests: the data come from phasestem's own simulator (``recon.synthetic``), which is fine
for behaviour, never for accuracy claims (see ``test_independent_accuracy.py`` for those).
"""
import pytest
import torch
import yaml

from phasestem.recon.synthetic import write_npz

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recon_rel")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=5)
    return tmp / "tiny.npz"


def _params(tmp_path, data, **run):
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(data)
    cfg["scan"]["shape"] = [6, 6]
    cfg["run"].update({"out_dir": str(tmp_path / "out"), "n_epochs": 3, "progress": False, "check_optics": False,
                       **run})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _cli(capsys, *args):
    from phasestem.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_divergence_exits_1_in_one_line_and_keeps_the_last_good_state(data, tmp_path, capsys):
    path, cfg = _params(tmp_path, data, checkpoint_every=1)
    cfg["model"]["learning_rates"].update(obj_phase=1e6, obj_amplitude=1e6)
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = _cli(capsys, "reconstruct", path)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "restored the state after epoch" in err, err
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    phase = state["params"]["obj_phase"]
    assert torch.isfinite(phase).all() and float(phase.abs().max()) < 10  # not ±1e7 rad
    assert not (tmp_path / "out" / "results.h5").exists()  # no diverged result written as if it were one


def test_resume_takes_the_learning_rates_of_the_parameter_file(data, tmp_path, capsys, caplog):
    path, cfg = _params(tmp_path, data, checkpoint_every=1, n_epochs=2)
    assert _cli(capsys, "reconstruct", path)[0] == 0
    cfg["model"]["learning_rates"]["obj_phase"] = 0.002
    cfg["run"]["n_epochs"] = 3
    path.write_text(yaml.safe_dump(cfg))
    caplog.set_level("INFO", logger="phasestem.recon")
    from phasestem.recon.params import load_params
    from phasestem.recon.run import run_reconstruction

    model = run_reconstruction(load_params(path), resume=True)
    assert model.epoch == 3
    assert model.schedules["obj_phase"].lr == pytest.approx(0.002)
    assert any("obj_phase" in r.message and "0.002" in r.message for r in caplog.records)


def test_out_over_the_parameter_file_is_refused(data, tmp_path, capsys):
    path, cfg = _params(tmp_path, data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    own = run_dir / "config.yaml"
    own.write_text(path.read_text())
    before = own.read_text()
    code, out, err = _cli(capsys, "reconstruct", own, "--out", run_dir)
    assert code == 1 and "would overwrite" in err and "config.yaml" in err
    assert own.read_text() == before


def test_flipped_defocus_sign_warns(data, tmp_path, capsys):
    path, cfg = _params(tmp_path, data, check_optics=True, n_epochs=1, optimizer="lsq")
    cfg["model"]["learning_rates"] = {"positions": 0}
    cfg["optics"]["aberrations"] = {"C10": -cfg["optics"]["aberrations"]["C10"]}
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = _cli(capsys, "reconstruct", path)
    assert code == 0
    assert "defocus sign is probably flipped" in err, err


def test_calibrate_out_over_its_input_is_refused(tmp_path, capsys):
    import numpy as np

    folder = tmp_path / "calib"
    folder.mkdir()
    data = folder / "calibrated.npy"
    np.save(data, np.ones((4, 4, 8, 8), dtype=np.float32))
    before = data.read_bytes()
    code, out, err = _cli(capsys, "calibrate", data, "--energy", "300e3", "--semiangle", "20", "--scan-step", "1",
                          "--out", folder)
    assert code == 1 and "would overwrite" in err
    assert data.read_bytes() == before


def test_an_object_larger_than_memory_is_refused_before_allocating(monkeypatch):
    import numpy as np

    from phasestem.base.errors import ConfigError
    from phasestem.dataset import FourDSTEM
    from phasestem.physics.optics import angular_sampling_for
    from phasestem.recon import Ptychography, budget

    monkeypatch.setattr(budget, "available_memory", lambda: 50 << 20)  # 50 MB
    ds = FourDSTEM(patterns=np.ones((2, 2, 32, 32), np.float32), energy=300e3, scan_step=(1e4, 1e4),
                   angular_sampling=angular_sampling_for(300e3, 0.4, (32, 32)), semiangle=15.0)
    with pytest.raises(ConfigError, match="scan.step|object"):
        Ptychography.from_dataset(ds)
