"""The command-line front: the ``phasestem`` entry point (:mod:`.main`), ``inspect`` and ``demo``
(:mod:`.commands`, :mod:`.demo`), every route's sub-commands (:mod:`.reconstruct`, :mod:`.calibrate`,
:mod:`.learn`, :mod:`.restore`, :mod:`.simulate`, :mod:`.convert`, :mod:`.plan`, :mod:`.sigma`) and the generated
reference pages (:mod:`.docgen`). ``python -m phasestem.cli`` runs the command, as ``torchrun … -m phasestem.cli``
does."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
