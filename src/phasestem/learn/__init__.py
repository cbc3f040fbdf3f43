"""Learned phase retrieval (SPEC §3–5): five networks on one pipeline.

* :mod:`.registry` — the five networks by name (patch, stitch, end2end, autoencoder, phaseformer): run config,
  ``build_run`` / ``train_run``, ``build_network``, ``load_model``; :mod:`.meta` — the one metadata schema of
  saved models (older files converted when read).
* Networks, one per file with their settings and loss, in :mod:`.nets`: :mod:`.nets.patch`, :mod:`.nets.stitch`,
  :mod:`.nets.end2end` (the user's ``patchRecovery.py`` / ``PhaseStiching.py`` / ``End2End.py``),
  :mod:`.nets.autoencoder`, :mod:`.nets.phaseformer`; :mod:`.losses` — the loss components; :mod:`.backbones`
  — timm trunks with offline-safe pretrained loading.
* Runs: every run config (and ``make-pairs``'s) in :mod:`.config`; :mod:`.training` builds each run's data,
  network and loss for the one trainer, one module per network family (:mod:`.training.route` for patch, stitch
  and end2end, :mod:`.training.autoencoder`, :mod:`.training.phaseformer`); the trainer: :mod:`.trainer`,
  :mod:`.trainer_config`, :mod:`.trainer_state`, :mod:`.checkpoint`.
* Data: :mod:`.data` (geometry, preprocessing, augmentation, files, datasets, synthetic files), :mod:`.pairs`
  (Phaseformer pairs) and :mod:`.pair_sources` (the pairs files of ``make-pairs``); the seed-000 file format is
  :mod:`phasestem.io.seed`.
* Applying models: :mod:`.apply` — every kind, file to file (``predict_file``, ``embed_file``, ``refine_file``,
  ``apply_file`` by the model's kind) and the in-memory steps, one module per network family:
  :mod:`.apply.phase` (end2end, patch + stitch), :mod:`.apply.latent` (autoencoder), :mod:`.apply.refine`
  (Phaseformer); :mod:`.evaluate`, :mod:`.consistency`; the commands (``train <network>``, ``predict``,
  ``evaluate``, ``embed``, ``refine``, ``make-pairs``) in :mod:`.commands`.

Sub-modules are imported on demand so ``import phasestem.learn.trainer`` does not pull in timm.
"""
from __future__ import annotations
