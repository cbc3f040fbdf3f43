"""The one trainer: resume reproduces the next step, schedules, accumulation, best/early stop, files."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from phasestem.base.errors import InputFileError
from phasestem.learn.trainer import Trainer, TrainerConfig, load_weights, lr_lambda, save_weights


class NoisyLinear(Dataset):
    """y = x·w + noise drawn per item from the global RNG (a stand-in for random augmentations)."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i] + 0.01 * torch.randn(4), "y": self.y[i]}


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def loss_fn(model, batch):
    mse = (model(batch["x"]).squeeze(-1) - batch["y"]).square().mean()
    return {"loss": mse, "mse": mse}


def make_trainer(tmp_path, **cfg):
    ds = NoisyLinear()
    train = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator())
    val = DataLoader(ds, batch_size=8)
    base = dict(epochs=3, lr=1e-2, progress=False, checkpoint_every_steps=4, log_every_steps=1, tensorboard=False,
                warmup_steps=2)
    base.update(cfg)
    return Trainer(make_model(), loss_fn, train, val, config=TrainerConfig(**base), out_dir=tmp_path,
                   metrics_fn=lambda m, b: {"abs": (m(b["x"]).squeeze(-1) - b["y"]).abs().mean()},
                   meta={"kind": "toy"})


class Recorder:
    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, logs):
        self.losses.append((logs["step"], logs["train/loss"]))


def test_resume_reproduces_next_step(tmp_path):
    # uninterrupted reference: 3 epochs × 6 batches = 18 steps
    rec_a = Recorder()
    a = make_trainer(tmp_path / "a", checkpoint_every_steps=0)
    a.callbacks.append(rec_a)
    a.fit()
    # interrupted run: stop after step 8 (mid-epoch 2), checkpoint taken at step 8
    class Crash(Exception):
        pass

    class CrashAt8:
        def on_step_end(self, trainer, logs):
            if logs["step"] == 8:
                raise Crash

    b = make_trainer(tmp_path / "b")
    b.callbacks.append(CrashAt8())
    with pytest.raises(Crash):
        b.fit()
    # resume with the full schedule in a fresh trainer
    rec_c = Recorder()
    c = make_trainer(tmp_path / "b")
    c.callbacks.append(rec_c)
    c.fit(resume=True)
    assert rec_c.losses[0][0] == 9
    ref = dict(rec_a.losses)
    for step, loss in rec_c.losses:
        assert loss == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step
    for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pc, rtol=1e-6, atol=1e-7)


def test_outputs_best_and_logs(tmp_path):
    t = make_trainer(tmp_path, monitor="val/abs", monitor_mode="min")
    summary = t.fit()
    assert summary["epochs_run"] == 3 and summary["global_step"] == 18
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert len(rows) == 3 and {"train/loss", "val/loss", "val/abs", "lr"} <= set(rows[0])
    assert (tmp_path / "steps.csv").exists()
    state, meta = load_weights(tmp_path)  # run folder → best/
    assert meta == {"kind": "toy"} and "0.weight" in state
    best_epoch = min(range(3), key=lambda i: float(rows[i]["val/abs"])) + 1
    assert summary["best_epoch"] == best_epoch
    assert json.loads((tmp_path / "summary.json").read_text())["monitor"] == "val/abs"


def test_early_stop_and_accumulation(tmp_path):
    t = make_trainer(tmp_path, epochs=20, lr=1e-9, early_stop_patience=1, early_stop_min_delta=1.0, grad_accum=3)
    s = t.fit()
    assert s["epochs_run"] == 2  # epoch 2 does not improve by ≥ 1.0 → stop
    assert t.steps_per_epoch == 2 and s["global_step"] == 4


def test_schedule_shape():
    vals = [lr_lambda(s, 100, 10, "cosine", 0.1) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(vals[9:], vals[10:], strict=False))


def test_weights_roundtrip_pt_and_errors(tmp_path):
    sd = {"w": torch.randn(3, 2)}
    save_weights(sd, tmp_path / "m.pt", {"a": 1})
    got, meta = load_weights(tmp_path / "m.pt")
    torch.testing.assert_close(got["w"], sd["w"])
    assert meta == {"a": 1}
    with pytest.raises(InputFileError, match="no model weights"):
        load_weights(tmp_path / "nothing")


def test_accelerate_single_process(tmp_path):
    t = make_trainer(tmp_path, accelerate="on", device="cpu", epochs=1)
    s = t.fit()
    assert s["global_step"] == 6 and t.accelerator is not None


def test_callbacks_hear_the_engines_hook_names_in_order(tmp_path):
    """The trainer calls on_start, on_epoch_end and on_end, as the reconstruction engine does (one set of names)."""
    heard = []

    class Listener:
        def on_start(self, trainer):
            heard.append("on_start")

        def on_epoch_end(self, trainer, epoch, logs):
            heard.append(f"on_epoch_end {epoch} {'train/loss' in logs}")

        def on_end(self, trainer, summary):
            heard.append(f"on_end {summary['epochs_run']}")

    t = make_trainer(tmp_path, epochs=2)
    t.callbacks.append(Listener())
    t.fit()
    assert heard == ["on_start", "on_epoch_end 0 True", "on_epoch_end 1 True", "on_end 2"]


def test_the_run_folder_is_held_for_the_whole_fit_not_per_callback(tmp_path):
    """Trainer.fit holds out_dir from start to end: its lock file is there inside every training step (where no
    callback runs), and gone when fit returns."""
    from phasestem.base.lock import folder_lock_path

    seen = []

    def probing_loss(model, batch):
        seen.append(folder_lock_path(tmp_path).exists())
        return loss_fn(model, batch)

    t = make_trainer(tmp_path, epochs=1)
    t.loss_fn = probing_loss
    t.fit()
    assert seen and all(seen)
    assert not folder_lock_path(tmp_path).exists()
