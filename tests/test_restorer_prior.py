"""The restorer inside AD and after it (issue 48, build 4), with an untrained (identity) restorer on a tiny scan:
a learned prior of weight 0 leaves AD exactly as without it; model files of another geometry or corrupted are one
line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phasestem.errors import PhasestemError
from phasestem.learn.checkpoint import save_weights
from phasestem.learn.meta import make_meta
from phasestem.learn.nets.restorer import Restorer, RestorerConfig


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    from phasestem import io
    from phasestem.learn.data import write_synthetic_file

    torch.set_num_threads(1)
    path = write_synthetic_file(tmp_path_factory.mktemp("rp") / "simulation_data1.h5", 1, scan=6, window=32,
                                phase_px=64, extent=32.0)
    return io.load(str(path), sample=0)


def _run(ds, prior=None, epochs=4):
    from phasestem.learn.hybrid import ad_recipe
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import build_model, optimizer_options

    params = ad_recipe(epochs)
    torch.manual_seed(0)
    model = build_model(params, ds)
    if prior is not None:
        prior.attach(model)
    for _ in optimize_with_options(model, ds, epochs, **optimizer_options(params)):
        pass
    return model


def test_learned_prior_of_weight_zero_equals_plain_ad_and_pulls_otherwise(ds):
    from phasestem.learn.hybrid import restorer_prior

    net = Restorer(RestorerConfig(width=4)).eval()
    plain = _run(ds).phase_in_dataset_frame()
    zero = _run(ds, restorer_prior(net, ds, every=2, weight=0.0, start=1)).phase_in_dataset_frame()
    np.testing.assert_array_equal(zero, plain)
    calls = []

    def target(model):  # a stand-in network: the phase made flat, so the pull must change the run
        calls.append(int(model.epoch))
        return np.zeros_like(model.phase_in_dataset_frame())

    from phasestem.recon.prior import RefreshedPrior

    pulled = _run(ds, RefreshedPrior(target, every=2, weight=0.5, start=1))
    assert calls == [1, 3]  # after epoch start, then every 2
    assert pulled.phase_in_dataset_frame().std() < plain.std()
    assert pulled.loss_history[-1]["prior_weight"] == 0.5


def test_restorer_files_of_another_geometry_or_corrupted_are_refused_in_one_line(ds, tmp_path):
    from phasestem.learn.apply.phase import dataset_optics
    from phasestem.learn.restore import load_restorer, restore_channels

    net = Restorer(RestorerConfig(width=4))
    optics = {**dataset_optics(ds), "sampling": list(ds.sampling)}
    optics = {k: list(v) if isinstance(v, tuple) else v for k, v in optics.items()}
    good = save_weights(net.state_dict(), tmp_path / "r.safetensors",
                        make_meta("restorer", net.config.to_dict(), {"optics": optics}))
    loaded, meta = load_restorer(good, ds, ds.sampling)
    ch = {"phase": np.random.default_rng(0).standard_normal((20, 20)).astype(np.float32),
          "amplitude": np.ones((20, 20), np.float32), "illumination": np.ones((20, 20), np.float32)}
    np.testing.assert_array_equal(restore_channels(loaded, ch), ch["phase"])  # untrained: the identity
    other = save_weights(net.state_dict(), tmp_path / "o.safetensors",
                         make_meta("restorer", net.config.to_dict(), {"optics": {**optics, "energy": 200e3}}))
    with pytest.raises(PhasestemError) as err:
        load_restorer(other, ds)
    assert "energy" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PhasestemError) as err:
        load_restorer(good, None, (0.1, 0.1))
    assert "pixel" in str(err.value) and "\n" not in str(err.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(PhasestemError) as err:
        load_restorer(bad)
    assert "\n" not in str(err.value)
