"""Moved to :mod:`phasestem.learn.nets.end2end`; this older name imports the same module (every name, the
same objects), so code and models written against it keep working."""
import sys

from .nets import end2end as _module

sys.modules[__name__] = _module
