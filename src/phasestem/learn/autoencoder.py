"""Moved: the network, its loss and settings are :mod:`phasestem.learn.nets.autoencoder`, its printed
summary ``show`` is in :mod:`phasestem.learn.apply.latent`; this older name still exports them."""
from .apply.latent import show  # noqa: F401
from .nets.autoencoder import *  # noqa: F403
from .nets.autoencoder import (  # noqa: F401
    DEFAULT_DIV_EPS,
    DEFAULT_LAMBDA_ACT,
    DEFAULT_LAMBDA_DIV,
    DEFAULT_LAMBDA_SIM,
    DEFAULT_MARGIN,
    MAX_SIZE,
    MIN_SIZE,
)
