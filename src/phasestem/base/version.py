"""The release of phasestem (the one copy besides ``pyproject.toml``'s ``version``)."""
__version__ = "0.1.0"
