"""How tests/data/legacy_models/ was made: tiny models of the five networks, trained one epoch on synthetic data by
the code before the learned route became one pipeline (commit 4d2528c), each folder a copy of its run's ``best/``
(floating-point weights stored as float16 to keep the fixture small, data paths made relative).

Run from the repository root at that commit: ``python make_legacy_models.py WORK_DIR OUT_DIR``.
Kept for the record; the current code writes the new metadata schema.
"""
import json
import sys
from pathlib import Path

import torch
import yaml

from phasestem.cli import main
from phasestem.learn.data import write_synthetic_file
from phasestem.learn.trainer import load_weights, save_weights

GEO = dict(extent=24.0, phase_px=48, scan=12, window=16, c10=100.0, n_blobs=8)
DATA = {"block": 6, "stride": 3, "patch": 24, "preprocess": {"normalize": "pattern", "scale": "sqrt"}}
TRAINER = {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False}
PATCH = {"size": "tiny", "decoder_channels": [8, 8, 8], "pos_frequencies": 2}
STITCH = {"size": "tiny", "vit_patch": 8, "decoder_channels": [8, 8, 8, 8, 8]}


def _yaml(tmp: Path, name: str, **cfg) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def make(tmp: Path, out: Path) -> None:
    torch.set_num_threads(1)
    tmp.mkdir(parents=True, exist_ok=True)
    write_synthetic_file(tmp / "sim.h5", 4, 0, **GEO)
    d = {"files": [str(tmp / "sim.h5")], **DATA, "val_fraction": 0.25, "test_fraction": 0.0, "batch_size": 4}
    runs = {
        "patch": _yaml(tmp, "patch", stage="patch", out_dir=str(tmp / "patch"), data=d, model=PATCH,
                       trainer=TRAINER),
        "stitch": _yaml(tmp, "stitch", stage="stitch", out_dir=str(tmp / "stitch"), data=d, stitch_model=STITCH,
                        trainer=TRAINER),
        "end2end": _yaml(tmp, "e2e", stage="end2end", out_dir=str(tmp / "end2end"), data=d, model=PATCH,
                         stitch_model=STITCH, trainer=TRAINER),
    }
    sim2 = write_synthetic_file(tmp / "sim2.h5", 2, scan=4, window=32, phase_px=32, extent=16.0)
    runs["autoencoder"] = _yaml(
        tmp, "ae", network="autoencoder", out_dir=str(tmp / "autoencoder"),
        data={"files": [str(sim2)], "patterns_per_scan": 8, "batch_size": 4, "val_fraction": 0.25},
        model={"latent_dim": 4, "channels": 4, "decoder_blocks": 1}, trainer=TRAINER)
    runs["phaseformer"] = _yaml(
        tmp, "pf", network="phaseformer", out_dir=str(tmp / "phaseformer"),
        data={"train": [str(sim2)], "crop": 16, "batch_size": 1, "val_fraction": 0.5},
        model={"dim": 2, "blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1], "refinement_blocks": 0},
        loss={"components": ["charbonnier", "gradient"]}, trainer=TRAINER)
    for kind, cfg in runs.items():
        assert main(["train", kind, cfg]) == 0
        state, meta = load_weights(tmp / kind / "best")
        meta = json.loads(json.dumps(meta).replace(str(tmp) + "/", ""))
        state = {n: (v.half() if v.is_floating_point() else v) for n, v in state.items()}
        (out / kind).mkdir(parents=True, exist_ok=True)
        save_weights(state, out / kind / "model.safetensors", meta)
        (out / kind / "meta.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    make(Path(sys.argv[1]), Path(sys.argv[2]))
