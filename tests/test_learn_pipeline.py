"""Learned route end to end: CLI training of all three stages, learning test, predict, evaluate, notebook."""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.base.errors import ConfigError
from phasestem.cli import main
from phasestem.learn.config import load_train_config
from phasestem.learn.data import write_synthetic_file

ROOT = Path(__file__).resolve().parents[1]
GEO = dict(extent=24.0, phase_px=48, scan=12, window=16, c10=100.0, n_blobs=8)
DATA = {"block": 6, "stride": 3, "patch": 24, "preprocess": {"normalize": "pattern", "scale": "sqrt"}}


def _geo(**kw):
    return dict(GEO, **kw)


def _write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Train the tiny End2End from scratch on a small simulated set through the CLI (the learning test)."""
    tmp = tmp_path_factory.mktemp("learn")
    t0 = time.perf_counter()
    write_synthetic_file(tmp / "simulation_data1.h5", 32, 0, **_geo())
    write_synthetic_file(tmp / "heldout.h5", 8, 1000, **_geo())
    cfg = _write_config(
        tmp / "e2e.yaml", stage="end2end", out_dir=str(tmp / "e2e"),
        data={"files": [str(tmp / "simulation_data1.h5")], **DATA, "val_fraction": 0.125, "test_fraction": 0.0,
              "augment": True, "batch_size": 4},
        model={"size": "tiny"}, stitch_model={"size": "tiny", "vit_patch": 8},
        loss={"patch_weight": 1.0, "image_weight": 1.0},
        trainer={"epochs": 4, "lr": 3e-3, "warmup_steps": 5, "progress": False, "monitor": "val/psnr",
                 "monitor_mode": "max", "tensorboard": False},
    )
    assert main(["train", "end2end", str(cfg)]) == 0
    return tmp, time.perf_counter() - t0


def test_learning_beats_training_mean_by_3db(learned):
    from phasestem.learn.apply.phase import load_predictor
    from phasestem.learn.evaluate import evaluate_model, test_index

    tmp, seconds = learned
    model, meta = load_predictor(tmp / "e2e")
    index, train_index = test_index(meta, [str(tmp / "heldout.h5")])
    result = evaluate_model(model, meta, index, train_index)
    m = result["mean"]
    print(f"held-out PSNR {m['psnr']:.2f} dB vs training-mean {m['baseline_psnr']:.2f} dB; {seconds:.0f} s")
    assert m["psnr"] >= m["baseline_psnr"] + 3.0
    assert m["phase_error"] < m["baseline_phase_error"]


def test_predict_and_evaluate_cli(learned, capsys):
    tmp, _ = learned
    out = tmp / "pred" / "phase.h5"
    assert main(["predict", str(tmp / "heldout.h5"), "--sample", "1003", "--model", str(tmp / "e2e"),
                 "--out-file", str(out)]) == 0
    with h5py.File(out) as f:
        phase = f["phase"][...]
        assert phase.shape == (48, 48) and phase.dtype == np.float32
        assert "rad" in f["phase"].attrs["target"]
        np.testing.assert_allclose(f["phase"].attrs["sampling"], [0.5, 0.5])
    assert out.with_suffix(".png").stat().st_size > 1000
    # prediction reapplies the stored preprocessing: same result as the model on a training-style item
    from phasestem.learn.apply.phase import load_predictor
    from phasestem.learn.data import Preprocess, SampleDataset, SampleIndex

    model, meta = load_predictor(tmp / "e2e")
    idx = SampleIndex.from_paths([tmp / "heldout.h5"], block=6, stride=3, patch=24)
    item = SampleDataset(idx, Preprocess(**meta["data"]["preprocess"]))[3]
    with torch.no_grad():
        ref = model(item["patterns"][None], item["coords"][None], item["centres"][None])["phase"][0]
    np.testing.assert_allclose(phase, ref.numpy(), atol=1e-4)
    assert main(["evaluate", "--model", str(tmp / "e2e"), "--files", str(tmp / "heldout.h5"), "--max-samples", "4",
                 "--out", str(tmp / "eval")]) == 0
    text = capsys.readouterr().out
    assert "| model |" in text and "training-mean image" in text
    assert (tmp / "eval" / "examples.png").exists() and (tmp / "eval" / "metrics.csv").exists()
    # the run folder is reproducible: config copy, logs, meta with preprocessing and target
    meta = json.loads((tmp / "e2e" / "best" / "meta.json").read_text())
    assert meta["data"]["preprocess"]["scale"] == "sqrt" and meta["model"]["kind"] == "end2end"
    assert (tmp / "e2e" / "config.yaml").exists() and (tmp / "e2e" / "epochs.csv").exists()


def test_three_stage_cli_chain(tmp_path, capsys):
    """patch → stitch (ground-truth patches) → end2end from both checkpoints, one short epoch each."""
    write_synthetic_file(tmp_path / "simulation_data1.h5", 4, 0, **_geo(window=8))
    data = {"files": [str(tmp_path / "simulation_data1.h5")], **DATA, "val_fraction": 0.25, "test_fraction": 0.0}
    trainer = {"epochs": 1, "progress": False, "tensorboard": False}
    p = _write_config(tmp_path / "p.yaml", stage="patch", out_dir=str(tmp_path / "p"), model={"size": "tiny"},
                      data={**data, "batch_size": 9}, trainer=trainer)
    s = _write_config(tmp_path / "s.yaml", stage="stitch", out_dir=str(tmp_path / "s"),
                      stitch_model={"size": "tiny", "vit_patch": 8},
                      data={**data, "batch_size": 2, "stitch_noise": 0.05}, trainer=trainer)
    e = _write_config(tmp_path / "e.yaml", stage="end2end", out_dir=str(tmp_path / "e"),
                      patch_checkpoint=str(tmp_path / "p"), stitch_checkpoint=str(tmp_path / "s"),
                      freeze_patch_epochs=1, data={**data, "batch_size": 1}, trainer=trainer)
    for stage, cfg in (("patch", p), ("stitch", s), ("end2end", e)):
        assert main(["train", stage, str(cfg)]) == 0, stage
    out = capsys.readouterr().out
    assert "end2end: 1 epochs" in out
    assert (tmp_path / "e" / "best" / "model.safetensors").exists()
    # --dump-config prints the resolved config; a stage mismatch is a one-line error
    assert main(["train", "patch", str(p), "--dump-config"]) == 0
    assert "network: patch" in capsys.readouterr().out  # the one YAML key (stage: is read too)
    assert main(["train", "stitch", str(p)]) == 1
    assert "is for stage 'patch'" in capsys.readouterr().err


def test_config_errors_name_the_field(tmp_path):
    bad = _write_config(tmp_path / "bad.yaml", stage="patch", data={"files": ["x.h5"], "batchsize": 3})
    with pytest.raises(ConfigError, match="data.batchsize"):
        load_train_config(bad)


def test_shipped_configs_validate():
    seen = 0
    for path in sorted((ROOT / "configs").glob("train_*.yaml")):
        data = yaml.safe_load(path.read_text())
        stage = data.get("network", data.get("stage"))
        if stage in ("patch", "stitch", "end2end"):  # other train_*.yaml belong to other networks
            cfg = load_train_config(path)
            assert cfg.stage == stage
            seen += 1
    assert seen == 6  # tiny and full-size configs of the three stages


def test_every_config_field_is_described():
    from phasestem.learn import config as c
    from phasestem.learn.data import OriginalLayout, Preprocess
    from phasestem.learn.nets.patch import PatchRecoveryConfig
    from phasestem.learn.nets.stitch import PhaseStitchingConfig
    from phasestem.learn.trainer import TrainerConfig

    for model in (c.TrainDataConfig, c.TrainLossConfig, c.TrainRunConfig, OriginalLayout, Preprocess,
                  PatchRecoveryConfig, PhaseStitchingConfig, TrainerConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_notebook_runs(tmp_path):
    from notebook_run import execute_notebook

    nb, _ = execute_notebook("test.ipynb", tmp_path, timeout=120)
    assert all(c.get("outputs") is not None for c in nb.cells if c.cell_type == "code")


def test_the_seeds_three_scripts_train_through_the_one_pipeline(tmp_path, capsys):
    """scripts/patchRecovery.py → PhaseStiching.py → End2End.py with the seed's flags (--data, --out, --epochs,
    --patch-model, --stitch-model) on configs written like the shipped ones."""
    import subprocess
    import sys

    from phasestem.cli.learn import stage_script

    for name in ("patchRecovery", "PhaseStiching", "End2End"):  # each file runs as a script
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), "--help"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "--data" in proc.stdout, name
    write_synthetic_file(tmp_path / "simulation_data1.h5", 4, 0, **_geo(window=8))
    data = {"files": ["nowhere/*.h5"], **DATA, "val_fraction": 0.25, "test_fraction": 0.0}  # replaced by --data
    trainer = {"epochs": 3, "progress": False, "tensorboard": False}
    cfgs = {"patch": dict(stage="patch", model={"size": "tiny"}, data={**data, "batch_size": 9}),
            "stitch": dict(stage="stitch", stitch_model={"size": "tiny", "vit_patch": 8},
                           data={**data, "batch_size": 2, "stitch_noise": 0.05}),
            "end2end": dict(stage="end2end", freeze_patch_epochs=1, data={**data, "batch_size": 1})}
    for stage, cfg in cfgs.items():
        _write_config(tmp_path / f"train_{stage}.yaml", out_dir="unused", trainer=trainer, **cfg)
    common = ["--data", str(tmp_path / "simulation_data*.h5"), "--epochs", "1", "--device", "cpu"]
    configs = tmp_path
    assert stage_script("patchRecovery", [*common, "--out", str(tmp_path / "p")], configs) == 0
    assert stage_script("PhaseStiching", [*common, "--out", str(tmp_path / "s")], configs) == 0
    assert stage_script("End2End", [*common, "--out", str(tmp_path / "e"), "--patch-model", str(tmp_path / "p"),
                                    "--stitch-model", str(tmp_path / "s")], configs) == 0
    assert "End2End: 1 epochs" in capsys.readouterr().out
    assert (tmp_path / "e" / "best" / "model.safetensors").exists()
    # a missing checkpoint folder is one line naming it, exit 1
    assert stage_script("End2End", [*common, "--out", str(tmp_path / "e2"), "--patch-model",
                                    str(tmp_path / "none"), "--stitch-model", str(tmp_path / "s")], configs) == 1
    assert "End2End.py: error:" in capsys.readouterr().err


def test_the_seeds_scripts_take_the_flags_of_phasestem_train(tmp_path, capsys):
    """scripts/*.py accept --set, --dump-config, --out, --device auto (the default) like `phasestem train`, and
    End2End.py names its two networks --model / --stitch-model like `phasestem predict`; --out-dir and
    --patch-model still work and give the same config; paths given on the command line are from the working
    directory (absolute in the dump)."""
    import os

    from phasestem.cli.learn import stage_script

    data = {"files": ["nowhere/*.h5"], **DATA}
    for stage in ("patch", "stitch", "end2end"):
        _write_config(tmp_path / f"train_{stage}.yaml", stage=stage, out_dir="unused", data=data,
                      trainer={"epochs": 3, "device": "cpu"})
    files = str(tmp_path / "simulation_data*.h5")

    def dump(name, *flags):
        assert stage_script(name, ["--data", files, "--dump-config", *flags], tmp_path) == 0
        return yaml.safe_load(capsys.readouterr().out)

    for name, stage in (("patchRecovery", "patch"), ("PhaseStiching", "stitch"), ("End2End", "end2end")):
        cfg = dump(name, "--set", "trainer.lr=0.002", "--set", "data.stride=2", "--out", str(tmp_path / "r"))
        assert cfg["network"] == stage and cfg["trainer"]["lr"] == 0.002 and cfg["data"]["stride"] == 2
        assert cfg["trainer"]["device"] == "auto" and cfg["out_dir"] == str(tmp_path / "r")
        assert cfg["data"]["files"] == [files] and not (tmp_path / "r").exists()  # printed, nothing trained
        assert dump(name, "--out-dir", str(tmp_path / "r"), "--set", "trainer.lr=0.002", "--set", "data.stride=2"
                    ) == cfg
        assert dump(name, "--set", "trainer.device=cpu")["trainer"]["device"] == "cpu"
        assert dump(name, "--set", "trainer.device=cpu", "--device", "auto")["trainer"]["device"] == "auto"
    new = dump("End2End", "--model", "runs/p", "--stitch-model", "runs/s")
    assert (new["patch_checkpoint"], new["stitch_checkpoint"]) == (os.path.abspath("runs/p"), os.path.abspath("runs/s"))
    assert dump("End2End", "--patch-model", "runs/p", "--stitch-model", "runs/s") == new
    # a bad --set is one line naming the script, exit 1
    assert stage_script("patchRecovery", ["--set", "trainer.lr"], tmp_path) == 1
    assert "patchRecovery.py: error:" in capsys.readouterr().err
