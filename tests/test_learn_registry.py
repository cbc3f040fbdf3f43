"""The learned route as one pipeline (issue 14, item 1): the seed-000 format in one module, one registry for the
five networks, ``--dump-config`` for every kind, small files, and models saved before the restructuring."""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from phasestem.io import seed as seedfile
from phasestem.physics.optics import interaction_constant

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "legacy_models"
KINDS = ("patch", "stitch", "end2end", "autoencoder", "phaseformer")


def _original_file(path: Path, n: int = 2) -> tuple[Path, list[np.ndarray]]:
    """A file of the user's original generator: dp_set_{i} and phase_{i} = projected potential (V·Å), no attrs."""
    rng = np.random.default_rng(0)
    pots = [rng.uniform(0, 50, (16, 16)).astype(np.float32) for _ in range(n)]
    with h5py.File(path, "w") as f:
        for i, v in enumerate(pots):
            f[seedfile.patterns_key(i)] = rng.uniform(0, 1, (6, 6, 8, 8)).astype(np.float32)
            f[seedfile.phase_key(i)] = v
    return path, pots


def test_seed_format_keys_and_sigma(tmp_path):
    assert seedfile.file_name(3) == "simulation_data3.h5"
    assert seedfile.parse_key("dp_set_12") == ("dp_set", 12) and seedfile.parse_key("phase_x2") is None
    assert seedfile.sample_ids(["dp_set_10", "dp_set_2", "phase_2", "dp_set_x"]) == [2, 10]
    assert seedfile.phase_scale(True) == 1.0
    assert seedfile.phase_scale(False) == pytest.approx(interaction_constant(300e3))


def test_every_reader_gives_the_original_phase_in_rad(tmp_path):
    """The σ question, answered once: an original file's phase_{i} is V_proj; io, learn data and pairs all
    give σ(300 keV)·V_proj in rad."""
    from phasestem import io
    from phasestem.learn.data import Preprocess, SampleDataset, SampleIndex
    from phasestem.learn.pair_sources import make_pairs
    from phasestem.learn.pairs import SimulationPairs

    path, pots = _original_file(tmp_path / "orig.h5")
    sigma = interaction_constant(300e3)
    truth = [v * np.float32(sigma) for v in pots]
    ds = io.load(path, sample=1)
    np.testing.assert_allclose(ds.truth["phase"], truth[1], rtol=1e-6)
    index = SampleIndex.from_paths([path], block=6, stride=3, patch=8)
    item = SampleDataset(index, Preprocess())[0]
    np.testing.assert_allclose(item["phase"].numpy()[0] if item["phase"].ndim == 3 else item["phase"].numpy(),
                               truth[0], rtol=1e-6)
    pairs = SimulationPairs(path, augment=False, fixed=True)
    np.testing.assert_allclose(pairs[1]["target"][0].numpy(), truth[1], rtol=1e-6)
    out = make_pairs([str(path)], tmp_path / "pairs.h5", progress=False)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["gt"][0], truth[0], rtol=1e-6)


TINY = {
    "patch": {"size": "tiny", "block": 6, "patch": 24},
    "stitch": {"size": "tiny", "image_size": 48, "patch": 24, "vit_patch": 8},
    "end2end": None,  # built from the two above
    "autoencoder": {"latent_dim": 4, "channels": 4, "decoder_blocks": 1},
    "phaseformer": {"dim": 2, "blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1], "refinement_blocks": 0},
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_network_builds_through_the_registry(kind):
    from torch import nn

    from phasestem.learn import registry

    assert registry.names() == (*KINDS, "restorer")  # the restorer: tests/test_restorer.py
    config = TINY[kind]
    if kind == "end2end":
        from phasestem.learn.nets.patch import PatchRecoveryConfig
        from phasestem.learn.nets.stitch import PhaseStitchingConfig

        config = {"patch": PatchRecoveryConfig(**TINY["patch"]).model_dump(mode="json"),
                  "stitch": PhaseStitchingConfig(**TINY["stitch"]).model_dump(mode="json")}
    net = registry.build_network(kind, config)
    assert isinstance(net, nn.Module) and sum(p.numel() for p in net.parameters()) > 0
    with pytest.raises(Exception, match="unknown network"):
        registry.build_network("resnet", {})


@pytest.mark.parametrize("kind", KINDS)
def test_dump_config_for_every_kind(kind, tmp_path, capsys):
    import yaml

    from phasestem.cli import main

    data = {"train": ["x.h5"]} if kind == "phaseformer" else {"files": ["x.h5"]}
    cfg = tmp_path / f"{kind}.yaml"
    cfg.write_text(yaml.safe_dump({"network": kind, "data": data}))
    assert main(["train", kind, str(cfg), "--dump-config", "--epochs", "3", "--lr", "0.01", "--device", "cpu",
                 "--set", "trainer.seed=7", "--out", str(tmp_path / "run")]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    assert dumped["network"] == kind and dumped["out_dir"] == str(tmp_path / "run")
    assert dumped["trainer"]["epochs"] == 3 and dumped["trainer"]["lr"] == 0.01
    assert dumped["trainer"]["device"] == "cpu" and dumped["trainer"]["seed"] == 7
    # the older key is read too; a file for another network is refused in one line
    cfg.write_text(yaml.safe_dump({"stage": kind, "data": data}))
    assert main(["train", kind, str(cfg), "--dump-config"]) == 0
    other = "patch" if kind != "patch" else "stitch"
    assert main(["train", other, str(cfg), "--dump-config"]) == 1
    assert f"is for stage '{kind}'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_models_saved_before_the_restructuring_load(kind):
    """tests/data/legacy_models holds models written by the code before one pipeline (older metadata)."""
    import json

    import torch

    from phasestem.learn.meta import SCHEMA
    from phasestem.learn.registry import load_model

    old = json.loads((LEGACY / kind / "meta.json").read_text())
    assert "schema" not in old  # really the older layout
    model, meta = load_model(LEGACY / kind)
    assert meta["schema"] == SCHEMA and meta["model"]["kind"] == kind
    assert isinstance(meta["data"], dict)
    if kind == "autoencoder":
        from phasestem.learn.apply.latent import embed_patterns, load_autoencoder

        ae, meta = load_autoencoder(LEGACY / kind, "cpu")
        assert meta["data"]["preprocess"]["scaling"] == "log"
        z = embed_patterns(ae, np.random.default_rng(0).random((3, 32, 32)), meta, progress=False)
        assert z.shape == (3, 4) and np.isfinite(z).all()
    elif kind == "phaseformer":
        from phasestem.learn.apply.refine import load_phaseformer

        net, _ = load_phaseformer(LEGACY / kind, "cpu")
        with torch.no_grad():
            low, high = net(torch.rand(1, 1, 16, 16))
        assert low.shape == (1, 1, 16, 16) and high.shape == (1, 1, 32, 32)
    else:
        assert sum(p.numel() for p in model.parameters()) > 0
    if kind == "end2end":
        from phasestem.learn.apply.phase import load_predictor

        e2e, meta = load_predictor(LEGACY / kind, device="cpu")
        assert meta["data"]["geometry"]["block"] == 6


def test_legacy_patch_and_stitch_models_chain(tmp_path):
    from phasestem.learn.apply.phase import load_predictor

    model, meta = load_predictor(LEGACY / "patch", LEGACY / "stitch", device="cpu")
    assert meta["model"]["kind"] == "patch" and model.patch_net.config.block == 6


def test_a_file_without_metadata_gets_the_conversion_message(tmp_path):
    import torch

    from phasestem.base.errors import InputFileError
    from phasestem.learn.registry import load_model
    from phasestem.learn.trainer import save_weights

    path = save_weights({"w": torch.zeros(2)}, tmp_path / "bare.safetensors")
    with pytest.raises(InputFileError, match="bare.safetensors: not a .* model written by phasestem train: its "
                                             "metadata names no network .*make_meta"):
        load_model(path)


def test_no_file_in_learn_is_over_400_lines():
    learn = ROOT / "src" / "phasestem" / "learn"
    sizes = {str(p.relative_to(learn)): len(p.read_text().splitlines()) for p in learn.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_networks_live_one_per_file():
    """learn/nets/<network>.py holds each network with its settings and loss; the run configs module exports the
    same objects, and the autoencoder's printed summary is learn.apply.latent.show."""
    from phasestem.learn import config
    from phasestem.learn.apply import latent
    from phasestem.learn.nets import autoencoder, end2end, patch, phaseformer, stitch

    assert callable(latent.show)
    assert config.PhaseformerModelConfig is phaseformer.PhaseformerModelConfig
    assert config.AutoencoderLossConfig is autoencoder.AutoencoderLossConfig
    for module, names in ((patch, ("PatchRecoveryNet", "PatchRecoveryConfig", "patch_loss_fn")),
                          (stitch, ("PhaseStitchingNet", "PhaseStitchingConfig", "stitch_loss_fn")),
                          (end2end, ("End2End", "end2end_loss_fn")),
                          (autoencoder, ("Autoencoder", "AutoencoderModelConfig", "AutoencoderLossConfig")),
                          (phaseformer, ("Phaseformer", "PhaseformerModelConfig", "PhaseformerLoss"))):
        assert all(hasattr(module, n) for n in names), module.__name__


def test_one_apply_module_applies_every_kind(tmp_path):
    """learn.apply: model_kind reads any saved model's kind; apply_file runs the autoencoder (latent maps) and
    the Phaseformer (refined phase) of tests/data/legacy_models by that kind, and refuses a stitch model alone;
    the commands' entry points are the same functions as in apply.phase / apply.latent."""
    from phasestem.base.errors import ConfigError
    from phasestem.learn import apply
    from phasestem.learn.apply import latent, phase
    from phasestem.learn.data.synthetic import write_synthetic_file

    assert apply.predict_file is phase.predict_file and apply.embed_scan is latent.embed_scan
    for kind in ("patch", "stitch", "end2end", "autoencoder", "phaseformer"):
        assert apply.model_kind(LEGACY / kind) == kind
    scan = write_synthetic_file(tmp_path / "scan.h5", 1, scan=4, window=32, phase_px=32, extent=16.0)
    res = apply.apply_file(LEGACY / "autoencoder", scan, tmp_path / "latent.h5", png=False, device="cpu")
    with h5py.File(res["out"]) as f:
        assert f["latent_maps"].shape == (4, 4, 4) and np.isfinite(f["latent_maps"][()]).all()
    np.save(tmp_path / "coarse.npy", np.random.default_rng(0).random((16, 16)).astype(np.float32))
    res = apply.apply_file(LEGACY / "phaseformer", tmp_path / "coarse.npy", tmp_path / "refined.h5", png=False,
                           device="cpu", size=0)
    assert res["shape"] == (16, 16) and res["shape_x2"] == (32, 32)
    with pytest.raises(ConfigError, match="stitch"):
        apply.apply_file(LEGACY / "stitch", scan, tmp_path / "x.h5")


def test_loading_a_model_first_leaves_module_tensors_on_the_real_device():
    """The memory check builds networks on PyTorch's meta device; the modules they import must not create their
    module-level tensors there (a Phaseformer loaded first broke every later Laplacian in the process)."""
    import subprocess

    code = ("from phasestem.learn.registry import load_model; import torch; "
            f"load_model({str(LEGACY / 'phaseformer')!r}); "
            "from phasestem.learn.losses import laplacian; print(float(laplacian(torch.ones(1, 1, 4, 4)).sum()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "0.0", proc.stderr[-2000:]
