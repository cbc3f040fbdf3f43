"""The one trainer of the learned route: the loop (:mod:`.loop`), its settings (:mod:`.config`), its run folder and
resume state (:mod:`.state`) and its weight files and checkpoint folders (:mod:`.checkpoint`). The public names are
the loop's (``from phasestem.learn.trainer import Trainer``)."""
from .loop import *  # noqa: F403  (the loop's public names, its __all__)
from .loop import __all__  # noqa: F401
