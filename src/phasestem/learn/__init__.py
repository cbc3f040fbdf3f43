"""Learned phase retrieval (SPEC §3): 14×14 pattern blocks → phase patches → full phase image.

Modules, one job each (the user's ``patchRecovery.py`` / ``PhaseStiching.py`` / ``End2End.py``
correspond to :mod:`.patch_recovery`, :mod:`.phase_stitching` and :mod:`.end2end`):

* :mod:`.data` — block geometry (start indices, bright centres, 76-px targets), lazy HDF5
  datasets, physically consistent augmentations, pattern preprocessing.
* :mod:`.backbones` — timm ResNet / ViT trunks with offline-safe pretrained loading.
* :mod:`.patch_recovery`, :mod:`.phase_stitching`, :mod:`.end2end` — the three networks.
* :mod:`.trainer` — the one trainer used by every network in phasestem.
* :mod:`.config`, :mod:`.pipeline` — YAML run configs, and their assembly into datasets, networks and
  a trainer (``train_run``; ``load_model`` rebuilds a network from its weights file alone).
* :mod:`.predict`, :mod:`.evaluate`, :mod:`.commands` — inference, test-split evaluation and the
  ``phasestem train patch|stitch|end2end`` / ``predict`` / ``evaluate`` sub-commands.

Sub-modules are imported on demand so ``import phasestem.learn.trainer`` does not pull in timm.
"""
from __future__ import annotations
