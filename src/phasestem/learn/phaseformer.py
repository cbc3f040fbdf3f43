"""Moved to :mod:`phasestem.learn.nets.phaseformer`; this older name imports the same module (every name, the
same objects), so code and models written against it keep working."""
import sys

from .nets import phaseformer as _module

sys.modules[__name__] = _module
