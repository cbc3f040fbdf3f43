"""Learned phase retrieval (SPEC §3–5): six networks on one pipeline.

* :mod:`.registry` — the six networks by name (patch, stitch, end2end, autoencoder, phaseformer, restorer): run
  config, ``build_run`` / ``train_run``, ``build_network``, ``load_model``; :mod:`.meta` — the one metadata schema
  of saved models (older files converted when read).
* Networks, one per file with their settings and loss, in :mod:`.nets`: :mod:`.nets.patch`, :mod:`.nets.stitch`,
  :mod:`.nets.end2end` (the user's ``patchRecovery.py`` / ``PhaseStiching.py`` / ``End2End.py``),
  :mod:`.nets.autoencoder`, :mod:`.nets.phaseformer`, :mod:`.nets.restorer`; :mod:`.losses` — the loss
  components; :mod:`.backbones` — timm trunks with offline-safe pretrained loading.
* Runs: every run config (and ``make-pairs``'s) in :mod:`.config`; :mod:`.training` builds each run's data,
  network and loss for the one trainer, one module per network family (:mod:`.training.route` for patch, stitch
  and end2end, :mod:`.training.autoencoder`, :mod:`.training.phaseformer`, :mod:`.training.restorer`); the
  trainer: :mod:`.trainer` (its loop, settings, run folder and checkpoints).
* Data: :mod:`.data` (geometry, preprocessing, augmentation, files, datasets, synthetic files, the restorer's
  pairs), :mod:`.pairs` (Phaseformer pairs) and :mod:`.pair_sources` (the pairs files of ``make-pairs``); the
  seed-000 file format is :mod:`phasestem.io.seed`.
* Applying models: :mod:`.apply` — every kind, file to file (``predict_file``, ``embed_file``, ``refine_file``,
  ``apply_file`` by the model's kind) and the in-memory steps, one module per network family:
  :mod:`.apply.phase` (end2end, patch + stitch), :mod:`.apply.latent` (autoencoder), :mod:`.apply.refine`
  (Phaseformer), :mod:`.apply.restorer` and :mod:`.apply.restorer_output` (the restorer, ``phasestem restore``);
  :mod:`.evaluate`, :mod:`.consistency`; the commands (``train <network>``, ``predict``,
  ``evaluate``, ``embed``, ``refine``, ``make-pairs``) in :mod:`phasestem.cli.learn`.

Sub-modules are imported on demand so ``import phasestem.learn.trainer`` does not pull in timm. The public names
below load their module on first use (PEP 562), so ``import phasestem.learn`` stays light::

    from phasestem.learn import Autoencoder, load_model, predict_file
"""
from __future__ import annotations

from ..base.lazy import lazy_exports

#: public name -> "module:attribute" (README "Python API")
API = {
    "PatchRecoveryNet": "phasestem.learn.nets.patch:PatchRecoveryNet",
    "PhaseStitchingNet": "phasestem.learn.nets.stitch:PhaseStitchingNet",
    "End2End": "phasestem.learn.nets.end2end:End2End",
    "Autoencoder": "phasestem.learn.nets.autoencoder:Autoencoder",
    "Phaseformer": "phasestem.learn.nets.phaseformer:Phaseformer",
    "Restorer": "phasestem.learn.nets.restorer:Restorer",
    "NETWORKS": "phasestem.learn.registry:NETWORKS",
    "load_model": "phasestem.learn.registry:load_model",
    "load_run_config": "phasestem.learn.registry:load_run_config",
    "build_network": "phasestem.learn.registry:build_network",
    "train_run": "phasestem.learn.registry:train_run",
    "predict_file": "phasestem.learn.apply:predict_file",
    "embed_file": "phasestem.learn.apply:embed_file",
    "refine_file": "phasestem.learn.apply:refine_file",
    "apply_file": "phasestem.learn.apply:apply_file",
    "load_predictor": "phasestem.learn.apply:load_predictor",
    "predict_phase": "phasestem.learn.apply:predict_phase",
    "load_autoencoder": "phasestem.learn.apply:load_autoencoder",
    "embed_scan": "phasestem.learn.apply:embed_scan",
    "load_phaseformer": "phasestem.learn.apply:load_phaseformer",
    "refine_phase": "phasestem.learn.apply:refine_phase",
    "make_pairs": "phasestem.learn.pair_sources:make_pairs",
}

__all__ = list(API)


__getattr__, __dir__ = lazy_exports(API, __name__)
