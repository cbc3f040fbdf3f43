"""Moved to :mod:`phasestem.learn.nets.patch`. This older name is kept only while
``tests/test_learn_coords.py`` still imports it (``from phasestem.learn.patch_recovery import PatchRecoveryNet``);
delete it once that import names :mod:`phasestem.learn.nets.patch`. It imports the same module (every name, the
same objects)."""
import sys

from .nets import patch as _module

sys.modules[__name__] = _module
