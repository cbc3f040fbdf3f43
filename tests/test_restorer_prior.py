"""The restorer inside AD and after it (issue 48, build 4), with an untrained (identity) restorer on a tiny scan:
a learned prior of weight 0 leaves AD exactly as without it; model files of another geometry or corrupted are one
line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phasestem.base.errors import PhasestemError
from phasestem.learn.meta import make_meta
from phasestem.learn.nets.restorer import Restorer, RestorerConfig
from phasestem.learn.trainer.checkpoint import save_weights


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
    from phasestem.recon.params import build_model, run_sections

    params = ad_recipe(epochs)
    torch.manual_seed(0)
    model = build_model(params, ds)
    for _ in optimize_with_options(model, ds, epochs, prior=prior, **run_sections(params)):
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
    assert [r["prior_weight"] for r in pulled.loss_history] == [0.5, 0.5, 0.45, 0.45]  # × 0.9 per refresh (issue 68)


def test_restorer_files_of_another_geometry_or_corrupted_are_refused_in_one_line(ds, tmp_path):
    from phasestem.learn.apply.phase import dataset_optics
    from phasestem.learn.apply.restorer import load_restorer, restore_channels

    net = Restorer(RestorerConfig(width=4))
    optics = {**dataset_optics(ds), "sampling": list(ds.sampling)}
    optics = {k: list(v) if isinstance(v, tuple) else v for k, v in optics.items()}
    good = save_weights(net.state_dict(), tmp_path / "r.safetensors",
                        make_meta("restorer", net.config, {"optics": optics}))
    loaded, meta = load_restorer(good, ds, ds.sampling)
    ch = {"phase": np.random.default_rng(0).standard_normal((20, 20)).astype(np.float32),
          "amplitude": np.ones((20, 20), np.float32), "illumination": np.ones((20, 20), np.float32)}
    np.testing.assert_array_equal(restore_channels(loaded, ch), ch["phase"])  # untrained: the identity
    other = save_weights(net.state_dict(), tmp_path / "o.safetensors",
                         make_meta("restorer", net.config, {"optics": {**optics, "energy": 200e3}}))
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


def test_channels_from_results_equal_the_models_own(ds, tmp_path):
    """phasestem restore reads what the model held: phase, amplitude, illumination and field of results.h5 equal
    restorer_channels of the model that wrote it."""
    from phasestem.recon.channels import channels_from_results, restorer_channels

    model = _run(ds, epochs=2)
    model.save_results(tmp_path / "results.h5")
    mine = restorer_channels(model, ds)
    read, info = channels_from_results(tmp_path / "results.h5")
    assert info["sampling"] == tuple(model.sampling)
    for k in ("phase", "amplitude", "field"):
        np.testing.assert_allclose(read[k], mine[k], atol=1e-6, err_msg=k)
    np.testing.assert_allclose(read["illumination"], mine["illumination"], atol=1e-5)


def _tiny_params(tmp_path) -> str:
    import yaml

    from phasestem.recon.synthetic import write_npz

    write_npz(tmp_path / "tiny.npz")
    params = {"data": {"file": str(tmp_path / "tiny.npz"), "patterns_key": "patterns"},
              "optics": {"energy": 300e3, "semiangle": 15.0, "aberrations": {"C10": 50.0}, "sampling": 0.4},
              "scan": {"shape": [8, 8], "step": 1.0},
              "run": {"n_epochs": 4, "batch_size": 16, "progress": False, "check_optics": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return str(tmp_path / "params.yaml")


def _restorer_file(path, params_file, **change):
    from phasestem.learn.apply.phase import dataset_optics
    from phasestem.recon.params import build_dataset, build_model, load_params

    params = load_params(params_file)
    data = build_dataset(params, warn=False)
    optics = {**dataset_optics(data), "sampling": list(build_model(params, data).sampling)}
    optics = {k: list(v) if isinstance(v, tuple) else v for k, v in {**optics, **change}.items()}
    net = Restorer(RestorerConfig(width=4))
    return save_weights(net.state_dict(), path, make_meta("restorer", net.config, {"optics": optics}))


def test_reconstruct_with_prior_and_restore_through_the_cli(tmp_path, capsys):
    import h5py

    from phasestem.cli import main

    params = _tiny_params(tmp_path)
    model = _restorer_file(tmp_path / "restorer.safetensors", params)
    assert main(["reconstruct", params, "--out", str(tmp_path / "plain")]) == 0
    assert main(["reconstruct", params, "--out", str(tmp_path / "zero"), "--prior", str(model),
                 "--prior-weight", "0"]) == 0
    with h5py.File(tmp_path / "plain" / "results.h5") as a, h5py.File(tmp_path / "zero" / "results.h5") as b:
        np.testing.assert_array_equal(a["object/phase_sum"][...], b["object/phase_sum"][...])
    assert main(["reconstruct", params, "--out", str(tmp_path / "pulled"), "--prior", str(model),
                 "--prior-weight", "0.5", "--prior-every", "1", "--prior-start", "1"]) == 0
    with h5py.File(tmp_path / "pulled" / "results.h5") as f:
        assert list(f["loss/prior_weight"][...]) == [0.5] * 4  # no decay: the network restores a plain-AD twin
        assert list(f["loss/prior_active"][...]) == [1.0] * 4
    capsys.readouterr()
    # another geometry, a corrupted file: one line each, before any epoch
    other = _restorer_file(tmp_path / "other.safetensors", params, energy=200e3)
    assert main(["reconstruct", params, "--out", str(tmp_path / "o"), "--prior", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert "energy" in err and len(err.splitlines()) == 1, err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model.read_bytes()[:300])
    assert main(["reconstruct", params, "--out", str(tmp_path / "b"), "--prior", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and len(err.splitlines()) == 1, err
    # restore: an untrained restorer gives the run's own phase back
    out = tmp_path / "restored.h5"
    assert main(["restore", str(tmp_path / "plain" / "results.h5"), "--model", str(model), "--out-file",
                 str(out)]) == 0
    with h5py.File(out) as f, h5py.File(tmp_path / "plain" / "results.h5") as r:
        phase, inp = f["phase"][...], f["input"][...]
        np.testing.assert_array_equal(phase, inp)
        oy, ox = (round(o / s) for o, s in zip(r.attrs["origin"], r.attrs["sampling"], strict=True))
        np.testing.assert_array_equal(inp, r["object/phase_sum"][oy:, ox:])
    assert main(["restore", str(tmp_path / "plain" / "results.h5"), "--model", str(other), "--out-file",
                 str(tmp_path / "x.h5")]) == 1
    assert "energy" in capsys.readouterr().err


def test_optimize_methods_take_a_prior_for_that_call_only(ds):
    from phasestem.learn.hybrid import ad_recipe
    from phasestem.recon.params import build_model
    from phasestem.recon.prior import RefreshedPrior

    model = build_model(ad_recipe(2), ds)
    calls = []
    prior = RefreshedPrior(lambda m: calls.append(m.epoch) or m.phase_in_dataset_frame(), every=1, weight=0.2,
                           start=1)
    for _ in model.LSQ_optimize(2, ds, prior=prior, progress=False):
        pass
    for _ in model.LSQ_optimize(1, ds, progress=False):  # the next call runs without it
        pass
    assert calls == [1, 2]
    assert [r.get("prior_weight") for r in model.loss_history] == [0.2, pytest.approx(0.18), None]


def test_learned_prior_pulls_only_inside_the_scanned_field(ds):
    """The restorer is trained over the field only: outside it the prior's target is the phase itself (no pull)."""
    from phasestem.learn.hybrid import ad_recipe, restorer_prior
    from phasestem.recon.channels import restorer_channels
    from phasestem.recon.params import build_model

    net = Restorer(RestorerConfig(width=4)).eval()
    with torch.no_grad():
        net.body.out.bias.fill_(1.0)  # a restorer that adds 1 rad everywhere
    model = build_model(ad_recipe(2), ds)
    ch = restorer_channels(model, ds)
    target = restorer_prior(net, ds).target_fn(model)
    inside = ch["field"] > 0
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(target[inside], ch["phase"][inside] + 1, atol=1e-6)
    np.testing.assert_array_equal(target[~inside], ch["phase"][~inside])
