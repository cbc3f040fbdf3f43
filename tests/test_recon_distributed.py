"""Data-parallel reconstruction: 2-process gloo runs (spawn and the CLI under torchrun) match a 1-process run; rank 0
alone writes; a 2-process checkpoint resumes in 1 process; L-BFGS is refused with several processes.

Plumbing tests on phasestem's own simulated data (``recon.synthetic``).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from phasestem.recon import Ptychography
from phasestem.recon.distributed import data_parallel_optimize
from phasestem.recon.losses import TERMS, LossTerm, register_term
from phasestem.recon.settings.losses import LossConfig
from phasestem.recon.synthetic import synthetic_scan, write_npz


def test_two_process_gloo_run_matches_one_process():
    ds = synthetic_scan(scan_shape=(5, 5), seed=31, max_phase=0.4)
    model_options = {"n_probe_modes": 2}
    opts = {"batch_size": 10, "seed": 5}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Ptychography.from_dataset(ds, **model_options)
        single.set_learning_rates(positions={"lr": 0.01, "start": 2})
        ref_loss = list(single.Adam_optimize(3, ds, progress=False, **opts))
    finally:
        torch.set_num_threads(n)
    out = data_parallel_optimize(ds, 2, 3, model_options, {"batch_size": 10, "seed": 5},
                                 learning_rates={"positions": {"lr": 0.01, "start": 2}})
    state = out["state"]
    start = Ptychography.from_dataset(ds, **model_options).state_dict()
    for name in ("obj_phase", "obj_amplitude", "probe", "positions"):
        step_1 = single.state_dict()[name] - start[name]
        step_2 = state[name] - start[name]
        rel = float((step_2 - step_1).norm() / step_1.norm())
        assert rel < 1e-3, (name, rel)  # same updates up to float32 summation order (~1e-5 measured)
    twin = Ptychography.from_dataset(ds, **model_options)
    twin.load_state_dict(state)
    torch.testing.assert_close(twin.simulate(), single.simulate(), rtol=1e-3, atol=1e-7)  # same predictions
    assert not torch.equal(state["positions"], single.initial_positions)  # positions were refined
    assert [round(v, 6) for v in out["loss"]] == [round(v, 6) for v in ref_loss] or all(
        abs(a - b) <= 1e-4 * abs(b) for a, b in zip(out["loss"], ref_loss, strict=True))


def total_variation(cfg, batch):
    """A loss term the package does not have (module level: the spawned ranks unpickle it by name)."""
    phase = batch.phase
    return (phase.diff(dim=-1).abs().mean() + phase.diff(dim=-2).abs().mean()) * (batch.model_i.shape[0]
                                                                                  / batch.n_total)


def test_a_loss_term_added_here_is_recorded_per_term_by_a_two_process_run():
    ds = synthetic_scan(scan_shape=(5, 5), seed=31, max_phase=0.4)
    register_term(LossTerm("total_variation", total_variation, needs_phase=True))
    try:
        losses = LossConfig(gaussian=1.0, total_variation=0.05)
        assert losses.active() == ["gaussian", "total_variation"]
        opts = {"batch_size": 10, "seed": 5, "losses": losses}
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            single = Ptychography.from_dataset(ds)
            list(single.Adam_optimize(2, ds, progress=False, **opts))
        finally:
            torch.set_num_threads(n)
        out = data_parallel_optimize(ds, 2, 2, {}, opts)
    finally:
        TERMS.pop("total_variation")
    for two, one in zip(out["history"], single.loss_history, strict=True):
        assert two["total_variation"] > 0 and two["gaussian"] > 0
        assert abs(two["total_variation"] - one["total_variation"]) <= 1e-4 * one["total_variation"]
        assert abs(two["loss"] - (two["gaussian"] + 0.05 * two["total_variation"])) <= 1e-5 * two["loss"]


def test_a_registered_term_named_in_the_parameter_file_runs():
    """docs/architecture.md's one place to touch: register_term alone, then the YAML's losses section names it (no
    schema field); a name no term has is refused naming the registered ones, a weight that is not a number too."""
    register_term(LossTerm("total_variation", total_variation, needs_phase=True))
    try:
        section = LossConfig.model_validate(yaml.safe_load("gaussian: 1\ntotal_variation: 0.05\n"))
        resolved = section  # the section is the loss the engine takes
        assert resolved.active() == ["gaussian", "total_variation"] and resolved.weight("total_variation") == 0.05
        ds = synthetic_scan(scan_shape=(4, 4), seed=31, max_phase=0.4)
        model = Ptychography.from_dataset(ds)
        list(model.LSQ_optimize(1, ds, batch_size=8, losses=resolved, progress=False))
        assert model.loss_history[-1]["total_variation"] > 0
        with pytest.raises(ValueError, match="losses.total_variation: a weight must be a finite number"):
            LossConfig.model_validate({"gaussian": 1, "total_variation": "lots"})
    finally:
        TERMS.pop("total_variation")
    with pytest.raises(ValueError, match=r"losses.total_variation: no such loss term \(registered: gaussian, "):
        LossConfig.model_validate({"gaussian": 1, "total_variation": 0.05})


def test_a_loss_term_is_registered_once_and_an_unknown_one_is_one_line():
    with pytest.raises(ValueError, match="already registered"):
        register_term(LossTerm("poisson", total_variation))
    with pytest.raises(Exception, match="losses.tv: no such loss term"):
        LossConfig(gaussian=1.0, tv=1.0)


# ---- the CLI under torchrun (two real processes, gloo) ---------------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_FILES = {"config.yaml", "checkpoint.pt", "results.h5", "results.emd", "reconstruction.png", "compare.png",
             "reconstruct.log", "live.npz"}


def _params(tmp, data, out, **run):
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(data)
    cfg["scan"]["shape"] = [6, 6]
    cfg["model"]["learning_rates"]["positions"] = {"lr": 0.005, "start": 1}  # per-position parameters refine too
    cfg["run"].update({"out_dir": str(out), "n_epochs": 2, "batch_size": 12, "progress": False,
                       "checkpoint_every": 1, **run})
    cfg.pop("tune", None)
    path = tmp / f"params_{Path(out).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(*args, n=2):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                           "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           "-m", "phasestem.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def torchrun_case(tmp_path_factory):
    """A 2-process torchrun reconstruction (2 epochs) and the same run in this one process."""
    from phasestem.recon.params import load_params
    from phasestem.recon.run import run_reconstruction

    tmp = tmp_path_factory.mktemp("torchrun")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=7)
    two = _params(tmp, tmp / "tiny.npz", tmp / "two")
    proc = _torchrun("reconstruct", two)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_reconstruction(load_params(_params(tmp, tmp / "tiny.npz", tmp / "one")))
    finally:
        torch.set_num_threads(n)
    return tmp, proc


def test_torchrun_cli_two_processes_match_one_process(torchrun_case):
    tmp, proc = torchrun_case
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the CLI joined the group torchrun described: two ranks, gloo on CPU
    assert "rank 0 of 2 on cpu" in proc.stderr and "rank 1 of 2 on cpu" in proc.stderr, proc.stderr[-4000:]
    assert proc.stdout.count("reconstruction: 2 epochs") == 1  # rank 0 alone reports
    two = torch.load(tmp / "two" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp / "one" / "checkpoint.pt", weights_only=True)
    assert two["epoch"] == one["epoch"] == 2
    start = torch.load(tmp / "one" / "checkpoint.pt", weights_only=True)["params"]["initial_positions"]
    assert not torch.equal(two["params"]["positions"], start)  # positions refined, and global in the checkpoint
    for name in ("obj_phase", "obj_amplitude", "probe", "positions"):
        a, b = one["params"][name], two["params"][name]
        scale = float(a.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= 1e-4 * scale, name  # same steps up to float32 summation order
    for h1, h2 in zip(one["loss_history"], two["loss_history"], strict=True):
        assert abs(h1["loss"] - h2["loss"]) <= 1e-4 * abs(h1["loss"])


def test_torchrun_rank_0_alone_writes(torchrun_case):
    tmp, proc = torchrun_case
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {p.name for p in (tmp / "two").iterdir()} == RUN_FILES  # one of each, no per-rank or temporary files
    assert {p.name for p in tmp.iterdir()} >= {"two", "one"}
    assert len([p for p in tmp.iterdir() if p.is_dir()]) == 2


def test_two_process_checkpoint_resumes_in_one_process(torchrun_case):
    from phasestem.recon.params import load_params
    from phasestem.recon.run import run_reconstruction

    tmp, proc = torchrun_case
    assert proc.returncode == 0, proc.stderr[-4000:]
    before = torch.load(tmp / "two" / "checkpoint.pt", weights_only=True)
    params = load_params(_params(tmp, tmp / "tiny.npz", tmp / "two", n_epochs=4))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = run_reconstruction(params, resume=True)
    finally:
        torch.set_num_threads(n)
    assert model.epoch == 4
    after = torch.load(tmp / "two" / "checkpoint.pt", weights_only=True)
    assert after["epoch"] == 4 and [h["epoch"] for h in after["loss_history"]] == [1, 2, 3, 4]
    assert after["loss_history"][:2] == before["loss_history"]  # the history continues
    assert after["loss_history"][3]["loss"] < before["loss_history"][0]["loss"]


def test_torchrun_lbfgs_is_refused_in_one_line(tmp_path):
    write_npz(tmp_path / "tiny.npz", scan_shape=(6, 6), seed=7)
    path = _params(tmp_path, tmp_path / "tiny.npz", tmp_path / "out", optimizer="lbfgs")
    proc = _torchrun("reconstruct", path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "phasestem reconstruct: error" in ln]
    assert len(lines) == 1 and "run.optimizer" in lines[0] and "2 processes" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_n_processes_lbfgs_is_refused_in_one_line(tmp_path, capsys):
    from phasestem.cli import main

    path = _params(tmp_path, tmp_path / "none.npz", tmp_path / "out", optimizer="lbfgs", n_processes=3)
    assert main(["reconstruct", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.optimizer" in err[0] and "3 processes" in err[0], err


def test_shards_are_compact_blocks_and_compact_batches_draw_from_every_block():
    from phasestem.recon.batches import make_batches, shard_owners

    yy, xx = np.meshgrid(np.arange(6.0), np.arange(6.0), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    owner = shard_owners(pos, 2)
    assert np.bincount(owner).tolist() == [18, 18]
    assert np.ptp(pos[owner == 0], 0).min() < 3 and np.ptp(pos[owner == 1], 0).min() < 3  # two halves of the scan
    batches = make_batches(36, 8, "compact", torch.Generator().manual_seed(0), pos, owner)
    assert sorted(torch.cat(batches).tolist()) == list(range(36))
    assert all(set(owner[b.numpy()]) == {0, 1} for b in batches)  # every rank has work in every step
    assert shard_owners(pos, 1).tolist() == [0] * 36


def test_n_processes_shortcut_spawns_the_ranks_and_rank_0_alone_writes(tmp_path):
    """run.n_processes: 2 through spawn, with compact batches drawn from both ranks' blocks."""
    from phasestem.recon.params import load_params
    from phasestem.recon.run import run_reconstruction

    write_npz(tmp_path / "tiny.npz", scan_shape=(6, 6), seed=7)
    path = _params(tmp_path, tmp_path / "tiny.npz", tmp_path / "out", n_processes=2, batch_mode="compact",
                   check_optics=False)
    assert run_reconstruction(load_params(path)) is None  # the parent only waits
    assert {p.name for p in (tmp_path / "out").iterdir()} == RUN_FILES
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["loss_history"][1]["loss"] < state["loss_history"][0]["loss"]


def test_a_cuda_device_that_is_not_there_is_refused_in_one_line(monkeypatch):
    from phasestem.base.errors import ConfigError
    from phasestem.recon.distributed import rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"run.device: 'cuda' but torch sees no CUDA GPU"):
        rank_device("cuda")
    assert rank_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:1' but this machine has 1 GPU"):
        rank_device("cuda:1")
    assert rank_device("cuda:0") == "cuda:0"
