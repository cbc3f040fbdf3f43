"""The first code a serve job's process runs: phasestem's command line (or torchrun's), with a ``sys.path`` that
holds neither the job's working directory (the workspace root) nor this file's folder.

``python -m phasestem.cli`` started in the root would put the root first on ``sys.path``, so a ``yaml.py`` or
``numpy.py`` uploaded there would be imported in place of the real module and run as the server's user. A script
started by its path puts its own folder there instead, which this file then removes with every entry that names
the working directory; Python 3.11's ``PYTHONSAFEPATH`` (set by the runner too) does the same for what torchrun
starts. ``python job_main.py ARGS`` runs ``phasestem ARGS``; ``python job_main.py --torchrun ARGS`` runs
``torchrun ARGS`` (whose workers start this file again by its path).
"""
import os
import runpy
import sys


def _clean_path() -> None:
    unsafe = {os.path.dirname(os.path.abspath(__file__)), os.getcwd()}
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) not in unsafe]


if __name__ == "__main__":
    _clean_path()
    if sys.argv[1:2] == ["--torchrun"]:
        sys.argv = ["torchrun", *sys.argv[2:]]
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["phasestem", *sys.argv[1:]]
        runpy.run_module("phasestem.cli", run_name="__main__", alter_sys=True)
