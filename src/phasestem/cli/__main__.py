"""``python -m phasestem.cli …`` (and ``torchrun … -m phasestem.cli``): the ``phasestem`` command."""
import sys

from .main import main

sys.exit(main())
