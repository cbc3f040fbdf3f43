"""The six networks of the learned route by name: run config, network, trainer, loading — one registry.

===========  =========================================  ========================================
name         network                                    trained from
===========  =========================================  ========================================
patch        PatchRecoveryNet (14×14 blocks → patches)  seed-000 files
stitch       PhaseStitchingNet (patches → full phase)   seed-000 files (ground-truth patches)
end2end      End2End (the two chained)                  seed-000 files (+ the two trained models)
autoencoder  diffraction-pattern autoencoder            any 4D-STEM files
phaseformer  Phaseformer (coarse → refined phase)       pairs (folders, pairs files, seed-000 files)
restorer     U-Net or Phaseformer restoring AD's phase  pairs files of AD epochs (make-pairs ad)
===========  =========================================  ========================================

``load_run_config(path, name)`` reads a training YAML (key ``network:``; ``stage:`` is accepted as its older
spelling), ``build_run(cfg)`` returns the shared :class:`~phasestem.learn.trainer.Trainer` of one run,
``train_run(cfg)`` writes the config into the run folder and trains, ``build_network(name, config)`` makes a
network with random weights, and ``load_model(path)`` rebuilds any saved model from its file alone
(metadata: :mod:`phasestem.learn.meta`). Entries name their modules as strings so that nothing heavy
(timm) is imported until a network is used: every run config is in :mod:`phasestem.learn.config`, the builders
in :mod:`phasestem.learn.training` (``route`` for patch / stitch / end2end, ``autoencoder``, ``phaseformer``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.configfile import apply_overrides, read_yaml_mapping, resolve_config_paths
from ..base.errors import ConfigError, InputFileError


@dataclass(frozen=True)
class Entry:
    name: str
    help: str
    run_config: str  #: "module:Class" of the YAML run config
    builder: str  #: "module:function" (run config) → Trainer
    network: str  #: "module:function" (config dict) → network with random weights


NETWORKS: dict[str, Entry] = {e.name: e for e in (
    Entry("patch", "PatchRecoveryNet (14×14 pattern blocks → 76×76 phase patches)",
          "config:TrainRunConfig", "training.route:build_run", "training.route:network_from_config"),
    Entry("stitch", "PhaseStitchingNet (25 ground-truth patches → 256² phase)",
          "config:TrainRunConfig", "training.route:build_run", "training.route:network_from_config"),
    Entry("end2end", "End2End: both trained nets chained and trained together",
          "config:TrainRunConfig", "training.route:build_run", "training.route:network_from_config"),
    Entry("autoencoder", "the 4D-STEM diffraction-pattern autoencoder (patterns → latent → patterns)",
          "config:AutoencoderRunConfig", "training.autoencoder:build_autoencoder_trainer",
          "training.autoencoder:autoencoder_from_config"),
    Entry("phaseformer", "Phaseformer, a transformer restoring phase images (coarse → refined)",
          "config:PhaseformerRunConfig", "training.phaseformer:build_phaseformer_trainer",
          "training.phaseformer:phaseformer_from_config"),
    Entry("restorer", "the restorer: AD's phase (+ amplitude, illumination) → restored phase on AD's grid",
          "config:RestorerRunConfig", "training.restorer:build_restorer_trainer",
          "training.restorer:restorer_from_config"),
)}


def names() -> tuple[str, ...]:
    return tuple(NETWORKS)


def entry(name: str) -> Entry:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ConfigError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}") from None


def _resolve(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def run_config_class(name: str):
    return _resolve(entry(name).run_config)


def build_network(name: str, config: dict[str, Any] | None = None):
    """A ``name`` network with random weights from its settings (``config``: the ``model`` block of a run
    config, or a saved model's ``meta["model"]["config"]``; ``None``: the defaults)."""
    return _resolve(entry(name).network)(name, dict(config or {}))


#: bytes a parameter takes while it is trained: float32 weight, gradient and two Adam moments
TRAINING_BYTES_PER_PARAMETER = 16

#: where each network's settings sit in its run config (the error names ``<section>.<field>``)
MODEL_SECTION = {"patch": "model", "stitch": "stitch_model", "autoencoder": "model", "phaseformer": "model",
                 "restorer": "model"}


def check_network_memory(name: str, config: dict[str, Any], section: str = "model", source: str = "") -> int:
    """Refuse, before anything is allocated, a ``name`` network whose training state (weights, gradients, two Adam
    moments: :data:`TRAINING_BYTES_PER_PARAMETER` per parameter) would exceed the memory available now, naming the
    largest size fields of ``config``. The parameters are counted on PyTorch's ``meta`` device (shapes only).
    Returns the parameter count (−1 when the network cannot be built without real tensors)."""
    import torch

    from ..base.errors import PhasestemError
    from ..base.safety import available_memory

    try:
        builder = _resolve(entry(name).network)  # imported on the real device: module-level tensors stay real
        with torch.device("meta"):
            net = builder(name, dict(config or {}))
    except PhasestemError:
        raise
    except Exception:  # noqa: BLE001 - sizing is best effort; the real build reports its own errors
        return -1
    n = sum(p.numel() for p in net.parameters())
    need, have = n * TRAINING_BYTES_PER_PARAMETER, available_memory()
    if need > have:
        sizes = sorted(((k, v) for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool)),
                       key=lambda kv: -kv[1])[:3]
        fields = ", ".join(f"{section}.{k} = {v}" for k, v in sizes) or f"the {section} settings"
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}the {name} network would have {n:.3g} parameters, about {need / 1e9:.3g} GB to "
                          f"train (weights, gradients, Adam moments) but {have / 1e9:.3g} GB is available: lower "
                          f"{fields}")
    return n


def load_run_config(path: str | Path, name: str, overrides: dict[str, Any] | None = None):
    """Read and validate the training YAML of ``name``; ``network:`` (or the older ``stage:``) must agree."""
    from ..base.configfile import validate

    entry(name)
    path = Path(path)
    data = read_yaml_mapping(path)
    if "stage" in data and "network" in data and data["stage"] != data["network"]:
        raise ConfigError(f"{path}: 'stage: {data['stage']}' and 'network: {data['network']}' disagree")
    key = "stage" if "stage" in data else "network"
    said = data.pop("stage", None) or data.get("network")
    if said is not None and said != name:
        raise ConfigError(f"{path}: file is for {key} '{said}', command asked for '{name}'")
    data["network"] = name
    data = resolve_config_paths(run_config_class(name), data, path.parent)  # relative to the file's folder
    return validate(run_config_class(name), apply_overrides(data, overrides), str(path))


def build_run(cfg):
    """The trainer of one run (data, network, loss; not started) for any network's run config; a network too
    large for the memory is refused first (:func:`check_network_memory`)."""
    section = MODEL_SECTION.get(cfg.network)
    settings = getattr(cfg, section, None) if section else None
    if settings is not None:
        check_network_memory(cfg.network, settings.model_dump(), section)
    return _resolve(entry(cfg.network).builder)(cfg)


def train_run(cfg) -> dict[str, Any]:
    """Train one run as configured; ``config.yaml`` is written into the run folder first. The run folder is held
    from before the data are read to the end (:func:`phasestem.base.lock.hold_output`; FolderBusyError when another
    run holds it)."""
    from ..base.lock import hold_output

    with hold_output(cfg.out_dir, f"phasestem train {cfg.network}"):
        trainer = build_run(cfg)
        dump_config(cfg, Path(cfg.out_dir) / "config.yaml")
        return trainer.fit(resume=cfg.resume)


def load_model(path: str | Path, kinds: tuple[str, ...] | None = None, map_location: str = "cpu"):
    """Any saved model (file or run folder) → (network in eval mode, meta); ``kinds`` limits what is accepted."""
    from .meta import require_kind
    from .trainer.checkpoint import load_weights, state_dict_mismatch

    state, meta = load_weights(path, map_location)
    kind = require_kind(meta, path, kinds or names())
    try:
        check_network_memory(kind, dict(meta["model"]["config"]), "model.config", str(path))
        model = build_network(kind, meta["model"]["config"])
    except (TypeError, KeyError, ValueError) as exc:  # a config in the metadata that this version cannot build
        if isinstance(exc, InputFileError | ConfigError):
            raise
        detail = " ".join(str(exc).split())[:300]
        raise InputFileError(f"{path}: its model metadata cannot be rebuilt ({type(exc).__name__}: {detail})") from exc
    if kind == "phaseformer" and any(k.startswith("net.") for k in state):  # saved with its trainable loss
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise InputFileError(f"{path}: the weights do not fit the network its metadata describes ({problem})")
    model.load_state_dict(state)
    return model.eval(), meta


def dump_config(cfg, path: str | Path) -> Path:
    """Write a run config into its run folder (atomically): documented, paths absolute, so the copy repeats the
    run from wherever it is loaded (:func:`phasestem.base.configdump.write_config`)."""
    from ..base.configdump import write_config

    network = getattr(cfg, "network", None)
    return write_config(cfg, path, f"phasestem train {network}" if network else None)
