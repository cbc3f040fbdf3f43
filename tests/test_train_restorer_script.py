"""benchmarks/learned/train_restorer.py (issue 48) on a tiny geometry: simulate → pairs → train in chunks (a rerun
continues) → score → ship into a model folder of the test's own, then the name resolves with its checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_make_pairs_sources import SIM  # the tiny scan of the pairs tests

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "learned"


def _script():
    from bench_scripts import load_bench

    return load_bench("train_restorer")


def test_train_restorer_script_end_to_end(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    mod = _script()
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(SIM))
    out = tmp_path / "out"
    common = ["--out", str(out), "--sim-config", str(tmp_path / "sim.yaml"), "--kinds", "synthetic", "--n-train", "4",
              "--part", "2", "--phonons", "1", "--electrons", "none", "--ad-epochs", "2", "--epochs", "2", "--chunk",
              "1", "--crop", "16", "--batch", "2"]
    # the pairs first, two parts at once (each simulated then paired in its own subprocess)
    assert mod.main([*common, "--steps", "simulate", "pairs", "--jobs", "2"]) == 0
    assert len(list((out / "pairs").glob("*.h5"))) == 2
    assert {"simulate_synthetic_part_001", "pairs_synthetic_part_001"} <= set(json.loads((out / "seconds.json")
                                                                                       .read_text()))
    cpu = json.loads((out / "seconds.json").read_text())["cpu_seconds"]
    assert set(cpu) == {"training"} and cpu["training"] > 0  # its subprocesses' CPU seconds counted
    assert mod.main(common) == 0
    grown = json.loads((out / "seconds.json").read_text())["cpu_seconds"]["training"]
    assert grown > cpu["training"]  # every invocation adds its own
    rows = (out / "runs" / "restorer_unet" / "epochs.csv").read_text().splitlines()
    assert len(rows) == 3  # two chunks of one epoch, the second resumed from the first
    assert mod.main(common) == 0  # everything exists: nothing is redone
    pairs = sorted((out / "pairs").glob("*.h5"))
    monkeypatch.setenv("PHASESTEM_MODEL_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    assert mod.main([*common, "--steps", "score", "ship", "--score-pairs", str(pairs[0]), "--name", "restore-test",
                     "--card-dir", str(tmp_path / "cards")]) == 0
    assert "other" in json.loads((out / "seconds.json").read_text())["cpu_seconds"]
    score = json.loads((out / "score.json").read_text())
    assert set(score["mean"]) == {"ad_2", "restored_2", "ad_aligned_2", "restored_aligned_2", "seconds_2",
                                  "new_peaks_2", "ad_new_peaks_2", "restore_seconds"} and len(score["rows"]) == 2
    assert len(score["groups"]) == 1 and score["rows"][0]["electrons"] is None
    card = (tmp_path / "cards" / "restore-test.md").read_text()
    assert "restore-test" in card and "sha256" in card
    from phasestem.learn.apply.restorer import load_restorer

    net, meta = load_restorer("restore-test")
    assert meta["model"]["kind"] == "restorer" and meta["pretrained"]["name"] == "restore-test"
    with pytest.raises(Exception) as err:  # a corrupted shipped file: one line
        weights = tmp_path / "models" / "restore-test.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        load_restorer("restore-test")
    assert "\n" not in str(err.value)


def test_heldout_step_makes_abtem_halves_and_scores_them_per_dose(tmp_path):
    """--steps heldout: ASE specimens simulated by abTEM (never phasestem's simulator), the even ones the
    development half; their pairs of AD epochs scored per half and dose. A held-out cell that would move the
    detector's angular sampling is refused."""
    pytest.importorskip("abtem")
    torch.set_num_threads(1)
    mod = _script()
    seed = yaml.safe_load((BENCH.parents[1] / "configs" / "simulate_seed.yaml").read_text())
    assert mod.heldout_cell(seed, 60.0)["grid"]["sim_gpts"] == [308, 308]
    with pytest.raises(SystemExit, match="angular sampling"):
        mod.heldout_cell(seed, 50.0)
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump({**SIM, "specimen": {"kind": "crystal", "depth": [4.0, 6.0]}}))
    out = tmp_path / "out"
    common = ["--out", str(out), "--sim-config", str(tmp_path / "sim.yaml"), "--phonons", "1", "--ad-epochs", "2"]
    train = ["--kinds", "synthetic", "--n-train", "2", "--part", "2", "--electrons", "none", "--epochs", "1",
             "--chunk", "1", "--crop", "16", "--batch", "2"]
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(SIM))
    assert mod.main(["--out", str(out), "--sim-config", str(tmp_path / "train.yaml"), "--phonons", "1",
                     "--ad-epochs", "2", *train]) == 0
    assert mod.main([*common, "--steps", "heldout", "score", "--n-heldout", "2", "--heldout-electrons", "none",
                     "1e4"]) == 0
    kinds = json.loads((out / "heldout" / "kinds.json").read_text())
    assert kinds == {"dev": ["crystal"], "val": ["crystal"]}
    import h5py

    with h5py.File(out / "heldout" / "dev.h5") as f:
        assert f.attrs["simulator"] == "abtem"
    score = json.loads((out / "score.json").read_text())
    assert set(score["groups"]) == {"pairs_dev|none", "pairs_dev|1e+04", "pairs_val|none", "pairs_val|1e+04"}
    assert all(r["kind"] == "crystal" for r in score["rows"])
    assert "| kind, e⁻/pattern |" in mod.score_table(score)


def test_prior_study_and_ad_sweep_on_a_tiny_file(tmp_path):
    """restorer_prior.study: every candidate on the development file, the lowest mean E_φ chosen and run on the
    validation file (resumable from its JSON); ad_best.sweep_one: E_φ every few epochs and the best epoch's seconds;
    restorer_speed.time_one: AD's seconds per epoch and the restorer's.
    An untrained restorer (the identity) on a tiny scan: plumbing, not accuracy."""
    from phasestem.cli import main as phasestem
    from phasestem.learn.apply.phase import dataset_optics
    from phasestem.learn.hybrid import ad_recipe
    from phasestem.learn.meta import make_meta
    from phasestem.learn.nets.restorer import Restorer, RestorerConfig
    from phasestem.learn.trainer.checkpoint import save_weights
    from phasestem.recon.params import build_model

    torch.set_num_threads(1)
    _script()
    import ad_best
    import restorer_prior

    (tmp_path / "sim.yaml").write_text(yaml.safe_dump({**SIM, "output": {"n_files": 1, "samples_per_file": 2}}))
    assert phasestem(["simulate", str(tmp_path / "sim.yaml"), "--out", str(tmp_path / "data")]) == 0
    sim = tmp_path / "data" / "simulation_data1.h5"
    name, ds, truth, ts = next(restorer_prior.samples(sim, [None]))
    assert name == "simulation_data1:0|none"
    optics = {**dataset_optics(ds), "sampling": list(build_model(ad_recipe(2), ds).sampling)}
    optics = {k: list(v) if isinstance(v, tuple) else v for k, v in optics.items()}
    net = Restorer(RestorerConfig(width=4))
    model = save_weights(net.state_dict(), tmp_path / "r.safetensors",
                         make_meta("restorer", net.config, {"optics": optics}))
    out = tmp_path / "prior.json"
    result = restorer_prior.study(str(model), sim, sim, [None], candidates=[(2, 0.5, 2), (1, 1.0, 1)], out=out)
    assert set(result["dev"]) == {"every=2 weight=0.5 start=2", "every=1 weight=1 start=1"}
    assert result["chosen"] in result["dev"] and len(result["val"][result["chosen"]]) == 2
    row = next(iter(result["val"][result["chosen"]].values()))
    assert 0 < row["prior"] < 2 and row["prior_restored"] == pytest.approx(row["prior"], abs=1e-6)  # identity net
    import restorer_speed

    from phasestem.learn.apply.restorer import load_restorer

    timed = restorer_speed.time_one(load_restorer(model)[0], ds, epochs=3)
    assert timed["seconds_per_epoch"] > 0 and timed["restore_seconds"] > 0
    sweep = ad_best.sweep_one(ds, truth, ts, 0.7, "gaussian", epochs=4, every=2)
    assert set(sweep["curve"]) == {"2", "4"} and sweep["best"] == min(v[0] for v in sweep["curve"].values())
