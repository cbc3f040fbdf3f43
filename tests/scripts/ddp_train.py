"""Worker of tests/test_learn_distributed.py: one rank of a data-parallel End2End run.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_train.py CONFIG.yaml OUT_DIR

Builds the run exactly as ``phasestem train`` does, trains it, then saves what the test compares
(initial and final weights, the summary, this rank's shard length) to ``OUT_DIR/rank{R}.pt``.
"""
import sys
from pathlib import Path

import torch

from phasestem.learn.config import load_train_config
from phasestem.learn.training.route import build_run

cfg = load_train_config(sys.argv[1])
trainer = build_run(cfg)
init = {k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()}
patch_changed = []  # per epoch: did any patch-net weight move from its initial value?


class RecordPatchNet:
    def on_epoch_end(self, trainer, epoch, logs):
        state = trainer.unwrapped_model.patch_net.state_dict()
        patch_changed.append(any(not torch.equal(v, init[f"patch_net.{k}"]) for k, v in state.items()
                                 if v.is_floating_point() and "running" not in k))


trainer.callbacks.append(RecordPatchNet())
summary = trainer.fit()
acc = trainer.accelerator
torch.save({"init": init, "final": trainer.unwrapped_model.state_dict(), "global_step": trainer.global_step,
            "steps_per_epoch": trainer.steps_per_epoch, "world": acc.num_processes if acc else 1,
            "epochs_run": summary["epochs_run"], "patch_changed": patch_changed},
           Path(sys.argv[2]) / f"rank{acc.process_index if acc else 0}.pt")
