"""``predict`` with a model whose weights hold NaN/Inf, or whose prediction is not finite, stops non-zero with one
line naming the file and writes nothing (issue 50, defect 3: it wrote a 4096/4096 NaN phase and exited 0)."""
from __future__ import annotations

import numpy as np
import pytest

from phasestem.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sim_and_model(tmp_path_factory):
    from tiny_models import end2end_for

    from phasestem.learn.data import write_synthetic_file

    tmp = tmp_path_factory.mktemp("finite")
    sim = write_synthetic_file(tmp / "simulation_data1.h5", 1, extent=24.0, phase_px=48, scan=12, window=16,
                               n_blobs=8)
    return sim, end2end_for(sim, tmp / "e2e")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused_naming_the_file(sim_and_model, tmp_path, capsys, bad):
    from phasestem.learn.trainer.checkpoint import load_weights, save_weights

    sim, model = sim_and_model
    state, meta = load_weights(model)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = bad
    broken = save_weights(state, tmp_path / "broken.safetensors", meta)
    out = tmp_path / "p.h5"
    assert main(["predict", str(sim), "--sample", "0", "--model", str(broken), "--out-file", str(out)]) == 1
    err = _one_line(capsys)
    assert f"phasestem predict: error: {broken}: 1 of {len(state)} weight tensors hold NaN or Inf (first: '{name}'" \
           in err, err
    assert not out.exists() and not list(tmp_path.glob("p*.png"))


def test_a_non_finite_prediction_is_refused_and_nothing_is_written(sim_and_model, tmp_path, capsys, monkeypatch):
    import phasestem.learn.apply.phase as phase_module

    sim, model = sim_and_model
    real = phase_module.predict_phase

    def with_nan(*args, **kwargs):  # finite weights, a non-finite output (an overflow, data of another kind)
        out = real(*args, **kwargs)
        out[:2] = np.nan
        return out

    monkeypatch.setattr(phase_module, "predict_phase", with_nan)
    out = tmp_path / "p.h5"
    assert main(["predict", str(sim), "--sample", "0", "--model", str(model), "--out-file", str(out)]) == 1
    err = _one_line(capsys)
    assert err.startswith(f"phasestem predict: error: {model}: its prediction for {sim} holds ") and \
        "non-finite pixels (NaN or Inf)" in err, err
    assert not out.exists()
    assert main(["predict", str(sim), "--sample", "0", "--model", str(model), "--out-file", str(out), "--no-png"]) \
        == 1  # still refused without the figure
    monkeypatch.setattr(phase_module, "predict_phase", real)
    assert main(["predict", str(sim), "--sample", "0", "--model", str(model), "--out-file", str(out)]) == 0
    assert out.exists()
