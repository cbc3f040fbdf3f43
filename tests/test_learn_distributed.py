"""Data-parallel training through torch.distributed (gloo on CPU) and HF Accelerate, two real processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from phasestem.learn.data import write_synthetic_file

HERE = Path(__file__).resolve().parent
GEO = dict(extent=24.0, phase_px=48, scan=12, window=8, c10=100.0, n_blobs=8)
DATA = {"block": 6, "stride": 3, "patch": 24, "preprocess": {"normalize": "pattern", "scale": "sqrt"}}


def test_two_process_end2end_with_frozen_patch_net(tmp_path):
    """Two ranks, each on its own shard, end with identical weights (gradients were all-reduced); the patch net
    stays fixed while frozen (epoch 1) and trains after (epoch 2) without DDP's unused-parameter error."""
    write_synthetic_file(tmp_path / "simulation_data1.h5", 5, 0, **GEO)
    cfg = {
        "stage": "end2end", "out_dir": str(tmp_path / "run"), "freeze_patch_epochs": 1,
        "data": {"files": [str(tmp_path / "simulation_data1.h5")], **DATA, "val_fraction": 0.2, "test_fraction": 0.0,
                 "augment": True, "batch_size": 1, "num_workers": 0},
        "model": {"size": "tiny"}, "stitch_model": {"size": "tiny", "vit_patch": 8},
        "trainer": {"epochs": 2, "lr": 1e-3, "warmup_steps": 0, "progress": False, "tensorboard": False,
                    "device": "cpu"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    # a fresh launch: no rank variables inherited from whatever started pytest
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(HERE / "scripts" / "ddp_train.py"), str(tmp_path / "cfg.yaml"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # 4 training samples, batch 1, 2 ranks → 2 steps per epoch on each rank (the single-process run takes 4)
    assert r0["steps_per_epoch"] == 2 and r0["global_step"] == r1["global_step"] == 4
    for k, v in r0["final"].items():
        torch.testing.assert_close(v, r1["final"][k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
    patch_w = [k for k in r0["final"] if k.startswith("patch_net.") and r0["final"][k].is_floating_point()
               and "running" not in k]
    stitch_w = [k for k in r0["final"] if k.startswith("stitch_net.") and r0["final"][k].is_floating_point()]
    assert r0["patch_changed"] == [False, True]  # frozen in epoch 1, trained in epoch 2
    assert any(not torch.equal(r0["init"][k], r0["final"][k]) for k in patch_w)
    assert any(not torch.equal(r0["init"][k], r0["final"][k]) for k in stitch_w)
    # one checkpoint folder, written by rank 0 only
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()

