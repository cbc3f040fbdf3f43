"""Training runs of the learned route, one module per network family, each building a run's data, network and
loss for the one :class:`~phasestem.learn.trainer.Trainer` from its run config (:mod:`phasestem.learn.config`):

* :mod:`.route` — patch, stitch and end2end (the scan → phase route of the seed): ``build_run``, ``load_model``,
  ``network_from_config``;
* :mod:`.autoencoder` — the diffraction-pattern autoencoder (pattern loading, ``build_autoencoder_trainer``);
* :mod:`.phaseformer` — Phaseformer (``PhaseformerTrainable``, ``build_phaseformer_trainer``).

:mod:`phasestem.learn.registry` names these builders by network. Here: the train/validation split they share.
"""
from __future__ import annotations

import numpy as np

from ...base.errors import ConfigError

__all__ = ["split_indices"]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of ``n`` items: a seeded random ``val_fraction`` held out, each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if n - n_val < 1:
        raise ConfigError(f"the split leaves no training items ({n} items, val_fraction {val_fraction})")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
