"""An untrained tiny End2End model file for a seed-000 file (the predict tests: seconds, no training)."""
from __future__ import annotations

from pathlib import Path

import h5py
import torch


def end2end_for(sim: Path, folder: Path, block: int = 6, stride: int = 3, patch: int = 24) -> Path:
    """A tiny End2End (seeded, untrained) saved in ``folder`` as a run (``folder/best/model.safetensors``) with the
    geometry of ``sim``'s samples; returns ``folder`` (what ``predict --model`` takes)."""
    from phasestem.learn.data import Preprocess, SampleIndex
    from phasestem.learn.nets.end2end import End2End
    from phasestem.learn.nets.patch import PatchRecoveryConfig, PatchRecoveryNet
    from phasestem.learn.nets.stitch import PhaseStitchingConfig, PhaseStitchingNet
    from phasestem.learn.trainer import save_weights

    torch.manual_seed(0)
    index = SampleIndex.from_paths([sim], block=block, stride=stride, patch=patch)
    g = index.geometry
    e2e = End2End(PatchRecoveryNet(PatchRecoveryConfig(size="tiny", block=block, patch=patch)),
                  PhaseStitchingNet(PhaseStitchingConfig(size="tiny", vit_patch=8, image_size=g.phase_shape[0],
                                                         patch=patch)))
    with h5py.File(sim, "r") as f:
        pattern_shape = [int(n) for n in f["dp_set_0"].shape[-2:]]
    meta = {"model": {"kind": "end2end", "config": e2e.config},
            "data": {"geometry": g.to_dict(), "preprocess": Preprocess().model_dump(), "target": "phase",
                     "target_description": "phase (rad)", "pattern_shape": pattern_shape, "files": [str(sim)],
                     "split_seed": 0, "val_fraction": 0.0, "test_fraction": 0.5, "max_samples": None}}
    save_weights(e2e.state_dict(), Path(folder) / "best" / "model.safetensors", meta)
    return Path(folder)
