"""phasestem reconstruct --resume is a continuation: a run killed between mini-batches, at an epoch boundary or
while its checkpoint is being written, then resumed, ends bit-identical (torch.equal) to the uninterrupted run on
the CPU (object, probe, positions, every parameter and the loss history), for the lsq solver and Adam, with the
patterns in memory and streamed; a checkpoint.pt that is not a reconstruction checkpoint is one line.

The kills are real interruptions at exact points: a global forward pre-hook (``torch.nn.modules.module.
register_module_forward_pre_hook``) counts the model's training passes and raises (in-process) or SIGKILLs its
process (through the CLI); a write that fails part-way is a real one, the file-size limit (RLIMIT_FSIZE) lowered
below the checkpoint's size just before it is written.
"""
import os
import pickle
import signal
import subprocess
import sys
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.recon.callbacks import Checkpoints
from phasestem.recon.engine import optimize, optimize_with_options
from phasestem.recon.model import Ptychography
from phasestem.recon.params import build_dataset, build_model, load_params
from phasestem.recon.results import load_results
from phasestem.recon.run import run_reconstruction
from phasestem.recon.synthetic import write_npz

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EPOCHS, BATCHES = 6, 3  # 36 positions in batches of 16: 16, 16 and 4
CHECK_PASSES = 2 * 3 * BATCHES  # a fresh run's optics check first fits the scan with ±C10 for 3 epochs each

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Killed(BaseException):
    """An interruption no ``except Exception`` catches (as a KeyboardInterrupt)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny scan as .npz (read into memory) and as HDF5 (read per batch when streamed)."""
    tmp = tmp_path_factory.mktemp("resume")
    ds = write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=5)
    with h5py.File(tmp / "tiny.h5", "w") as f:
        f.create_dataset("patterns", data=np.asarray(ds.patterns, np.float32), chunks=(1, 1, *ds.pattern_shape))
    return tmp


def _params(folder: Path, data: Path, optimizer: str, streamed: bool, out: str = "out") -> Path:
    """A run touching everything that carries from epoch to epoch: cosine decay, Adam moments (positions from
    epoch 2, also under lsq), the probe switched on at epoch 3, the lsq whole-scan curvature (a Poisson term makes
    precondition_batches 'auto' 16), the optics check, a checkpoint every 2 epochs."""
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"] = {"file": str(data / ("tiny.h5" if streamed else "tiny.npz")), "patterns_key": "patterns"}
    cfg["scan"]["shape"] = [6, 6]
    rates = {"positions": {"lr": 1e-3, "start": 2}}
    if optimizer == "lsq":
        rates["probe"] = {"lr": 0.2, "start": 3}
    else:
        rates.update(obj_phase=0.01, obj_amplitude=0.01, probe={"lr": 0.005, "start": 3})
    cfg["model"]["learning_rates"] = rates
    cfg["losses"] = {"gaussian": 1.0, "poisson": 0.1, "power": 0.5}
    cfg["run"] = {"optimizer": optimizer, "n_epochs": EPOCHS, "batch_size": 16, "out_dir": str(folder / out),
                  "checkpoint_every": 2, "lr_decay": "cosine", "check_optics": True, "progress": False, "seed": 3,
                  "data_in_memory": not streamed}
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextmanager
def _on_training_pass(number: int, action):
    """Call ``action()`` at the model's ``number``-th training forward pass (1-based) from now."""
    count = 0

    def hook(module, args):
        nonlocal count
        if isinstance(module, Ptychography) and torch.is_grad_enabled():
            count += 1
            if count == number:
                action()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _kill():
    raise Killed


def _run(path: Path, resume: bool, seed: int):
    """``phasestem reconstruct PATH [--resume]`` in this process; returns the model."""
    torch.manual_seed(seed)  # the engine must not depend on the global generators
    np.random.seed(seed)
    return run_reconstruction(load_params(path), resume=resume)


def _optimize(path: Path, resume: bool, seed: int):
    """The same run through the engine's own interface (``optimize(..., resume=True)``), without the figures."""
    params = load_params(path)
    dataset = build_dataset(params)
    model = build_model(params, dataset)
    ckpt = Path(params.run.out_dir) / "checkpoint.pt"
    done = torch.load(ckpt, weights_only=True)["epoch"] if resume else 0
    torch.manual_seed(seed)
    np.random.seed(seed)
    for _ in optimize(model, dataset, EPOCHS - done, params.run, params.losses, params.constraints,
                      [Checkpoints(ckpt, params.run.checkpoint_every, resume=resume)]):
        pass
    return model


def _history(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _assert_same_state(ref, got) -> None:
    """Every parameter of ``got`` torch.equal to ``ref``'s (the message names the first that differs)."""
    for name, value in ref.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name


def _resumed_from_now(gen, ckpt: Path, ds, run, remaining: int):
    """Keep the checkpoint the run ``gen`` has written so far, let that run finish, put the kept checkpoint back,
    and resume a new model from it for its ``remaining`` epochs (``run(model, epochs)``); returns that model."""
    from phasestem.recon.engine import load_checkpoint

    saved = ckpt.read_bytes()
    list(gen)
    ckpt.write_bytes(saved)
    model = Ptychography.from_dataset(ds)
    list(run(model, remaining, state=load_checkpoint(ckpt, model)))  # the checkpoint's run state continues
    return model


def _assert_identical(ref, got) -> None:
    """Every parameter torch.equal and the same loss history; the message names the first epoch that differs."""
    for a, b in zip(_history(ref.loss_history), _history(got.loss_history), strict=True):
        assert a == b, f"the resumed run departs from the uninterrupted one at epoch {a['epoch']}: {b} vs {a}"
    _assert_same_state(ref, got)
    assert got.epoch == ref.epoch == EPOCHS


@pytest.mark.parametrize("streamed", [False, True], ids=["in_memory", "streamed"])
@pytest.mark.parametrize("optimizer", ["lsq", "adam"])
def test_killed_anywhere_and_resumed_is_bit_identical(data, tmp_path, caplog, optimizer, streamed):
    resource = pytest.importorskip("resource")
    caplog.set_level("INFO", logger="phasestem.recon")
    ref = _optimize(_params(tmp_path, data, optimizer, streamed, "ref"), False, 0)
    assert ("streamed from the data file" in caplog.text) == streamed
    path = _params(tmp_path, data, optimizer, streamed)
    ckpt = tmp_path / "out" / "checkpoint.pt"

    # 1. between two mini-batches of epoch 3: the epoch-2 checkpoint is resumed
    with _on_training_pass(2 * BATCHES + 2, _kill), pytest.raises(Killed):
        _optimize(path, False, 1)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2

    # 2. during the epoch-4 checkpoint's write: the write fails part-way, the epoch-2 checkpoint survives
    good = ckpt.read_bytes()
    limit = len(good) // 2  # the checkpoint is the only file the engine writes
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        with _on_training_pass(2 * BATCHES, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))), \
                pytest.raises((OSError, RuntimeError)):
            _optimize(path, True, 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
    assert ckpt.read_bytes() == good

    # 3. at the epoch boundary after the epoch-4 checkpoint, before epoch 5's first step
    with _on_training_pass(2 * BATCHES + 1, _kill), pytest.raises(Killed):
        _optimize(path, True, 3)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 4

    _assert_identical(ref, _optimize(path, True, 4))


KILLER = """
import os, signal, sys, torch
from phasestem.recon.model import Ptychography
count = 0
def hook(module, args):
    global count
    if isinstance(module, Ptychography) and torch.is_grad_enabled():
        count += 1
        if count == int(os.environ["KILL_AT_PASS"]):
            os.kill(os.getpid(), signal.SIGKILL)
torch.nn.modules.module.register_module_forward_pre_hook(hook)
from phasestem.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args, code: str | None = None, **env):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "phasestem.cli"]
    return subprocess.run([*cmd, *[str(a) for a in args]], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_cli_run_sigkilled_mid_epoch_resumes_bit_identical(data, tmp_path):
    ref_path, path = (_params(tmp_path, data, "lsq", True, name) for name in ("ref", "out"))
    _run(ref_path, False, 0)  # in this process, also on one thread
    killed = _cli("reconstruct", path, code=KILLER, KILL_AT_PASS=str(CHECK_PASSES + 3 * BATCHES + 2))  # epoch 4
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "out" / "results.h5").exists()
    resumed = _cli("reconstruct", path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    ref, got = load_results(tmp_path / "ref" / "results.h5"), load_results(tmp_path / "out" / "results.h5")
    for key, values in ref["loss"].items():
        if key != "seconds":
            diff = np.flatnonzero(values != got["loss"][key])
            assert not len(diff), f"loss/{key} departs at epoch {diff[0] + 1}: {got['loss'][key]} vs {values}"
    for key in ("obj_phase", "obj_amplitude", "probe", "positions", "tilt", "slice_thickness"):
        assert np.array_equal(ref[key], got[key]), key


class Foreign:
    """A class a checkpoint must never be unpickled into."""


@pytest.mark.parametrize("content", ["pickle", "text", "foreign_class", "fraction", "tensors", "empty"])
def test_resume_from_a_file_that_is_no_checkpoint_is_one_line(data, tmp_path, capsys, content):
    from phasestem.cli import main

    path = _params(tmp_path, data, "lsq", False)
    out = tmp_path / "out"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    if content == "pickle":
        ckpt.write_bytes(pickle.dumps(Foreign()))
    elif content == "text":
        ckpt.write_text("epoch: 3\nthis is not a checkpoint\n")
    elif content == "foreign_class":
        torch.save({"params": {"obj_phase": torch.zeros(2)}, "epoch": 1, "thing": Foreign()}, ckpt)
    elif content == "fraction":
        torch.save({"params": {}, "epoch": Fraction(1, 2)}, ckpt)
    elif content == "tensors":  # a torch file of tensors, but not a reconstruction checkpoint
        torch.save({"weight": torch.zeros(3)}, ckpt)
    else:
        ckpt.write_bytes(b"")
    code = main(["reconstruct", str(path), "--resume"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert str(ckpt) in lines[0] and "checkpoint" in lines[0].replace(str(ckpt), ""), lines[0]
    assert "weights_only" not in err


def test_a_checkpoint_of_another_scan_is_one_line_naming_the_mismatch(tmp_path):
    from phasestem.base.errors import InputFileError
    from phasestem.recon.engine import load_checkpoint, save_checkpoint
    from phasestem.recon.synthetic import synthetic_scan

    save_checkpoint(tmp_path / "c.pt", Ptychography.from_dataset(synthetic_scan(scan_shape=(3, 3), seed=1)))
    model = Ptychography.from_dataset(synthetic_scan(scan_shape=(6, 6), seed=5))
    with pytest.raises(InputFileError, match=r"c\.pt: the checkpoint does not fit this reconstruction.*shape") as err:
        load_checkpoint(tmp_path / "c.pt", model)
    assert len(str(err.value).splitlines()) == 1


def test_a_divergence_after_a_resume_restores_the_best_epoch_as_the_uninterrupted_run(tmp_path):
    """The divergence check's references (the first mini-batch's loss, the best loss and the best epoch's state,
    here epoch 2, one before the checkpoint) come back with the checkpoint."""
    from phasestem.recon.engine import DivergenceError, load_checkpoint
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(5, 5), seed=11, max_phase=0.4)
    ckpt = tmp_path / "checkpoint.pt"

    def run(model, epochs, **resumed):  # no back-off: the stop itself is under test
        return optimize_with_options(model, ds, epochs, optimizer="adam", batch_size=10, progress=False,
                                     checkpoint_path=ckpt, checkpoint_every=1, backoff_factor=0, **resumed)

    ref = Ptychography.from_dataset(ds)
    gen = run(ref, 4)
    next(gen), next(gen)
    ref.set_learning_rates(obj_phase=0.1)  # epoch 3: the loss doubles, the best stays epoch 2's
    next(gen)
    after3 = ckpt.read_bytes()
    ref.set_learning_rates(obj_phase=1.0)  # epoch 4 diverges
    with pytest.raises(DivergenceError, match="restored the state after epoch 2") as first:
        next(gen)
    ckpt.write_bytes(after3)
    model = Ptychography.from_dataset(ds)
    state = load_checkpoint(ckpt, model)
    model.set_learning_rates(obj_phase=1.0)
    with pytest.raises(DivergenceError) as again:
        list(run(model, 1, state=state))
    assert str(again.value) == str(first.value)  # the same epoch restored, the same best and start losses
    assert model.epoch == 2 and _history(model.loss_history) == _history(ref.loss_history)
    _assert_same_state(ref, model)


def test_a_run_resumed_after_a_step_size_back_off_continues_at_the_halved_rates(tmp_path):
    """The back-off (best state restored, every learning rate halved: ``RunState.lr_backoff``) comes back with the
    checkpoint: resumed after the epoch that backed off, the run ends bit-identical to the uninterrupted one."""
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(5, 5), seed=11, max_phase=0.4)
    ckpt = tmp_path / "checkpoint.pt"

    def run(model, epochs, **resumed):
        return optimize_with_options(model, ds, epochs, optimizer="adam", batch_size=10, progress=False,
                                     checkpoint_path=ckpt, checkpoint_every=1, lr_decay="cosine", **resumed)

    ref = Ptychography.from_dataset(ds)
    gen = run(ref, 5)
    next(gen), next(gen)
    ref.set_learning_rates(obj_phase=0.3)  # epoch 3: the loss rises past 1.5 × its best: back-off
    next(gen)
    assert torch.load(ckpt, weights_only=True)["run"]["lr_backoff"] == 0.5
    model = _resumed_from_now(gen, ckpt, ds, run, 2)
    assert model.epoch == 5 and _history(model.loss_history) == _history(ref.loss_history)
    _assert_same_state(ref, model)


def test_a_run_resumed_with_held_out_positions_ends_as_the_uninterrupted_one(tmp_path):
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(6, 6), seed=4, max_phase=0.4)
    ckpt = tmp_path / "checkpoint.pt"

    def run(model, epochs, **resumed):
        return optimize_with_options(model, ds, epochs, optimizer="lsq", batch_size=8, progress=False,
                                     checkpoint_path=ckpt, checkpoint_every=1, holdout=0.1, holdout_patience=50,
                                     lr_decay="cosine", **resumed)

    ref = Ptychography.from_dataset(ds)
    gen = run(ref, 6)
    next(gen), next(gen), next(gen)
    model = _resumed_from_now(gen, ckpt, ds, run, 3)
    assert model.epoch == ref.epoch
    assert [h["heldout"] for h in model.loss_history] == [h["heldout"] for h in ref.loss_history]
    _assert_same_state(ref, model)
