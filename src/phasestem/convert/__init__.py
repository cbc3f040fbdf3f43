"""``phasestem convert``: other tools' parameter files as phasestem ``reconstruct`` YAML (:mod:`.ptyrad`)."""
