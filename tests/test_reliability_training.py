"""Issue 12, training: atomic checkpoints, finiteness, resume semantics, reproducibility, one-line errors."""
from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from phasestem.base.errors import InputFileError, PhasestemError
from phasestem.cli import main
from phasestem.learn.trainer import (
    CheckpointError,
    Trainer,
    TrainerConfig,
    TrainingDivergedError,
    load_weights,
    save_weights,
)
from phasestem.learn.trainer import loop as trainer_mod

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NoisyLinear(Dataset):
    """y = x·w, with per-item noise drawn from the global RNG (a stand-in for augmentations)."""

    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i] + 0.01 * torch.randn(4), "y": self.y[i]}


def mse_loss(model, batch):
    mse = (model(batch["x"]).squeeze(-1) - batch["y"]).square().mean()
    return {"loss": mse}


def make_trainer(out, hidden: int = 16, batch_size: int = 4, meta=None, loss_fn=mse_loss, **cfg) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    ds = NoisyLinear()
    base = dict(epochs=3, lr=1e-2, progress=False, checkpoint_every_steps=4, log_every_steps=1, tensorboard=False,
                warmup_steps=0, schedule="constant")
    base.update(cfg)
    train = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator())
    return Trainer(model, loss_fn, train, DataLoader(ds, batch_size=8), config=TrainerConfig(**base), out_dir=out,
                   meta=meta if meta is not None else {"kind": "toy"})


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()}


class Crash(Exception):
    pass


class CrashAt:
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, logs):
        if logs["step"] == self.step:
            raise Crash


class Record:
    def __init__(self):
        self.steps: list[int] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, trainer, logs):
        self.steps.append(int(logs["step"]))
        self.weights[int(logs["step"])] = weights(trainer)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- item 4: a checkpoint is one unit -------------------------------------------------------
def test_kill_between_weights_and_state_resumes_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """A kill after model.safetensors and before trainer_state.pt (step 8) must leave step 4 whole."""
    rec = Record()
    t = make_trainer(tmp_path, checkpoint_every_epochs=0)  # checkpoints at steps 4, 8, 12, 16 and the end
    t.callbacks.append(rec)
    real_save, calls = torch.save, []

    def killed_on_second_state_write(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:  # the step-8 checkpoint: weights are written, the state write never happens
            raise Crash
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(trainer_mod.torch, "save", killed_on_second_state_write)
    with pytest.raises(Crash):
        t.fit()
    monkeypatch.undo()
    assert len(calls) == 2 and rec.steps[-1] == 7  # killed while checkpointing step 8
    resumed = make_trainer(tmp_path, checkpoint_every_epochs=0)
    resumed.load_checkpoint(tmp_path / "last")
    assert resumed.global_step == 4  # never step-8 weights with step-4 state
    assert_same(weights(resumed), rec.weights[4])
    summary = resumed.fit(resume=True)
    assert summary["global_step"] == 18
    assert not (tmp_path / "last.tmp").exists() and not (tmp_path / "last.prev").exists()


def test_torn_checkpoint_is_refused_with_one_line(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    state, meta = load_weights(tmp_path / "last")
    save_weights({k: v + 1 for k, v in state.items()}, tmp_path / "last" / "model.safetensors", meta)  # torn
    with pytest.raises(CheckpointError, match=r"last: torn or corrupted checkpoint: model\.safetensors") as err:
        make_trainer(tmp_path, epochs=2).fit(resume=True)
    assert "\n" not in str(err.value) and isinstance(err.value, PhasestemError)


def test_resume_finds_the_previous_checkpoint_after_a_kill_between_renames(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()  # 6 steps
    (tmp_path / "last").rename(tmp_path / "last.prev")  # killed after moving the old folder aside
    rec = Record()
    t = make_trainer(tmp_path, epochs=2)
    t.callbacks.append(rec)
    t.fit(resume=True)
    assert rec.steps[0] == 7  # continued, not restarted


# ---- item 7: nothing non-finite is trained on or saved ---------------------------------------
class BlowUpInEpoch2:
    """What lr 3000 without clipping does, made deterministic: the first step of epoch 2 overflows the weights."""

    def on_epoch_start(self, trainer, epoch):
        if epoch == 1:
            trainer.scheduler.base_lrs = [1e38 for _ in trainer.scheduler.base_lrs]
            for g in trainer.optimizer.param_groups:
                g["lr"] = 1e38


def test_nonfinite_weights_stop_training_and_keep_the_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, epochs=2, batch_size=24, optimizer="sgd", grad_clip=None, checkpoint_every_steps=0)
    t.callbacks.append(BlowUpInEpoch2())
    with pytest.raises(TrainingDivergedError) as err:  # the last step of the run: no later loss would catch it
        t.fit()
    msg = str(err.value)
    assert isinstance(err.value, PhasestemError) and "\n" not in msg
    assert "epoch 2, step 2" in msg and "weights" in msg and "lower trainer.lr" in msg and "step 1" in msg
    for folder in ("last", "best"):
        state, _ = load_weights(tmp_path / folder / "model.safetensors")
        assert all(torch.isfinite(v).all() for v in state.values()), folder
    resumed = make_trainer(tmp_path, epochs=2, batch_size=24, optimizer="sgd", grad_clip=None)
    resumed.load_checkpoint(tmp_path / "last")
    assert resumed.global_step == 1


def test_nonfinite_gradients_are_caught_before_the_step(tmp_path):
    def finite_loss_nan_grad(model, batch):  # sqrt at 0: the loss is 0, its gradient NaN
        pred = model(batch["x"])
        return {"loss": (pred - pred.detach()).square().mean().sqrt()}

    t = make_trainer(tmp_path, loss_fn=finite_loss_nan_grad, grad_clip=1.0)
    before = weights(t)
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 1: the gradients are NaN/Inf"):
        t.fit()
    assert_same(weights(t), before)  # the optimizer never applied them
    assert not (tmp_path / "last").exists() and not (tmp_path / "best").exists()


# ---- item 8: the user's settings win on resume -----------------------------------------------
def test_resume_uses_the_new_learning_rate_and_logs_the_change(tmp_path, caplog):
    make_trainer(tmp_path, epochs=1, lr=1e-2).fit()
    t = make_trainer(tmp_path, epochs=2, lr=1e-3, weight_decay=0.0)
    with caplog.at_level(logging.INFO, logger="phasestem.learn"):
        summary = t.fit(resume=True)
    assert summary["history"][0]["lr"] == pytest.approx(1e-2)
    assert summary["history"][1]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] in (0.0,) for g in t.optimizer.param_groups)
    assert "trainer.lr: 0.01 → 0.001" in caplog.text and "trainer.weight_decay: 0.01 → 0.0" in caplog.text


def test_resume_keeps_the_schedule_position(tmp_path):
    """Same config: the resumed lr is the one the uninterrupted schedule has at that step."""
    cfg = dict(schedule="cosine", warmup_steps=3, epochs=3)
    ref = make_trainer(tmp_path / "a", checkpoint_every_steps=0, **cfg).fit()
    b = make_trainer(tmp_path / "b", **cfg)
    b.callbacks.append(CrashAt(8))
    with pytest.raises(Crash):
        b.fit()
    resumed = make_trainer(tmp_path / "b", **cfg).fit(resume=True)
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in ref["history"]]


# ---- item 15: steps.csv after resume --------------------------------------------------------
def test_steps_csv_has_each_step_once_after_resume(tmp_path):
    t = make_trainer(tmp_path)
    t.callbacks.append(CrashAt(6))  # steps 5 and 6 are logged after the step-4 checkpoint
    with pytest.raises(Crash):
        t.fit()
    make_trainer(tmp_path).fit(resume=True)
    with open(tmp_path / "steps.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 19))


# ---- item 14: one line naming the file ------------------------------------------------------
@pytest.fixture
def bad_files(tmp_path):
    good = save_weights({"w": torch.randn(64, 64)}, tmp_path / "good.safetensors", {"a": 1})
    data = good.read_bytes()
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "empty.pt").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("name", ["empty.safetensors", "truncated.safetensors", "garbage.pt", "empty.pt"])
def test_unreadable_weights_are_one_line_errors(bad_files, name, capsys):
    path = bad_files / name
    with pytest.raises(InputFileError, match=name.replace(".", r"\.")):
        load_weights(path)
    from phasestem.learn.backbones import read_state_dict  # the `pretrained:` files

    with pytest.raises(InputFileError, match=name.replace(".", r"\.")):
        read_state_dict(path)
    assert main(["evaluate", "--model", str(path), "--out", str(bad_files / "eval")]) == 1
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "weights_only" not in err  # never the advice to unpickle


def test_wrong_kind_of_model_file_names_it(tmp_path, capsys):
    path = save_weights({"w": torch.zeros(2)}, tmp_path / "ae.safetensors", {"network": "autoencoder"})
    from phasestem.learn.training.route import load_model

    with pytest.raises(InputFileError, match="ae.safetensors: not a patch, stitch or end2end model"):
        load_model(path)
    assert main(["evaluate", "--model", str(path)]) == 1
    err = capsys.readouterr().err
    assert "ae.safetensors" in err and "autoencoder" in err and "None" not in err
    from phasestem.learn.nets.patch import PatchRecoveryConfig

    config = PatchRecoveryConfig(size="tiny", block=6, patch=24).model_dump(mode="json")
    meta = {"model": {"kind": "patch", "config": config}}
    path = save_weights({"w": torch.zeros(2)}, tmp_path / "p.safetensors", meta)
    with pytest.raises(InputFileError, match=r"p.safetensors: the weights do not fit .* 1 unexpected, e.g. w"):
        load_model(path)


def test_garbage_trainer_state_is_one_line(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    (tmp_path / "last" / "checkpoint.json").unlink(missing_ok=True)  # an older checkpoint: nothing to verify
    (tmp_path / "last" / "trainer_state.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputFileError, match=r"trainer_state\.pt: not a trainer state") as err:
        make_trainer(tmp_path, epochs=2).fit(resume=True)
    assert "\n" not in str(err.value)


def test_resume_with_another_network_is_refused(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    with pytest.raises(CheckpointError, match="weights do not fit this run's network") as err:
        make_trainer(tmp_path, hidden=8, epochs=2).fit(resume=True)
    assert "\n" not in str(err.value)


def test_resume_with_another_geometry_is_refused(tmp_path):
    make_trainer(tmp_path, epochs=1, meta={"data": {"geometry": {"scan_step": 0.5}}}).fit()
    with pytest.raises(CheckpointError, match=r"different data\.geometry\.scan_step \(0\.5; this run: 0\.4\)"):
        make_trainer(tmp_path, epochs=2, meta={"data": {"geometry": {"scan_step": 0.4}}}).fit(resume=True)


def test_divergence_through_the_cli_is_one_line(tmp_path, capsys):
    """`phasestem train autoencoder` with lr 1e38 and no clipping: exit 1, one line, no non-finite last/."""
    from phasestem.learn.data import write_synthetic_file

    patterns = write_synthetic_file(tmp_path / "simulation_data1.h5", 1, scan=4, window=32, phase_px=64, extent=32.0)
    cfg = tmp_path / "ae.yaml"
    cfg.write_text(yaml.safe_dump({
        "network": "autoencoder", "out_dir": str(tmp_path / "ae"),
        "data": {"files": [str(patterns)], "patterns_per_scan": 16, "batch_size": 8, "val_fraction": 0.25},
        "model": {"channels": 4, "decoder_blocks": 1},
        "trainer": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False, "lr": 1e38,
                    "grad_clip": None, "optimizer": "sgd", "warmup_steps": 0},
    }))
    assert main(["train", "autoencoder", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert "training diverged at epoch 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ae" / "last").exists()


# ---- item 9: same seed, same training --------------------------------------------------------
def test_same_seed_gives_bit_identical_training_autoencoder(tmp_path):
    from phasestem.learn.config import AutoencoderRunConfig
    from phasestem.learn.training.autoencoder import build_autoencoder_trainer

    patterns = np.random.default_rng(0).random((12, 32, 32), dtype=np.float32)
    cfg = AutoencoderRunConfig(
        network="autoencoder", out_dir=str(tmp_path / "ae"),
        data={"files": ["unused.npy"], "batch_size": 4, "val_fraction": 0.25},
        model={"channels": 4, "decoder_blocks": 1},
        trainer={"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False, "seed": 3})
    runs = []
    for i in range(2):
        t = build_autoencoder_trainer(cfg, patterns, out_dir=tmp_path / f"ae{i}")
        init = weights(t)
        torch.rand(7)  # whatever ran in between must not matter
        runs.append((init, t.fit()["history"][0]["train/loss"], weights(t)))
    assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert_same(runs[0][2], runs[1][2])


@pytest.fixture(scope="module")
def patch_config(tmp_path_factory):
    """A tiny patch-stage config on a tiny simulated file (two 2-step epochs take about a second)."""
    from phasestem.learn.data import write_synthetic_file

    tmp = tmp_path_factory.mktemp("patch")
    write_synthetic_file(tmp / "simulation_data1.h5", 3, 0, extent=24.0, phase_px=48, scan=12, window=8,
                         c10=100.0, n_blobs=8)
    path = tmp / "p.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "patch", "out_dir": str(tmp / "p"), "model": {"size": "tiny"},
        "data": {"files": [str(tmp / "simulation_data1.h5")], "block": 6, "stride": 3, "patch": 24,
                 "val_fraction": 0.0, "test_fraction": 0.0, "batch_size": 9, "max_samples": 2},
        "trainer": {"epochs": 1, "progress": False, "tensorboard": False, "device": "cpu", "max_steps": 2,
                    "schedule": "constant", "warmup_steps": 0, "lr": 1e-3},
    }))
    return path


def test_same_seed_gives_bit_identical_training_pipeline(tmp_path, patch_config):
    from phasestem.learn.config import load_train_config
    from phasestem.learn.training.route import build_run

    runs = []
    for i in range(2):
        t = build_run(load_train_config(patch_config, overrides={"out_dir": str(tmp_path / f"p{i}")}))
        torch.rand(7)
        runs.append((t.fit()["history"][0]["train/loss"], weights(t)))
    assert runs[0][0] == runs[1][0]
    assert_same(runs[0][1], runs[1][1])


def test_cli_resume_takes_the_new_lr(tmp_path, patch_config, caplog):
    out = str(tmp_path / "run")
    assert main(["train", "patch", str(patch_config), "--out", out]) == 0
    with caplog.at_level(logging.INFO, logger="phasestem.learn"):
        assert main(["train", "patch", str(patch_config), "--out", out, "--resume", "--epochs", "2",
                     "--lr", "1e-4"]) == 0
    with open(tmp_path / "run" / "epochs.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert lrs == pytest.approx([1e-3, 1e-4])
    assert "trainer.lr: 0.001 → 0.0001" in caplog.text
    assert (tmp_path / "run" / "last" / "checkpoint.json").is_file()
