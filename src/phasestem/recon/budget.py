"""Memory of a reconstruction, checked before the object is allocated."""
from __future__ import annotations

from ..base.errors import ConfigError
from ..base.safety import available_memory

#: float32 copies of the object (amplitude and phase) an optimisation holds: values, gradients, two Adam
#: moments, the best-state and the epoch snapshot
OBJECT_COPIES = 2 * 6


class ObjectSizeError(ConfigError):
    """The object a scan needs would not fit in memory; ``size`` says how large it would be."""

    def __init__(self, message: str, size: str = ""):
        super().__init__(message)
        self.size = size


def check_object_memory(obj_shape: tuple[int, int], n_slices: int, n_object_modes: int) -> None:
    """Refuse an object whose optimisation would not fit in the memory available now (before allocating)."""
    need = OBJECT_COPIES * 4 * n_slices * n_object_modes * obj_shape[0] * obj_shape[1]
    have = available_memory()
    if need > have:
        size = (f"the object would be {obj_shape[0]}×{obj_shape[1]} px × {n_slices} slices × {n_object_modes} "
                f"modes, about {need / 1e9:.3g} GB to optimise, but {have / 1e9:.3g} GB is available")
        raise ObjectSizeError(f"{size}: check scan.step and scan.shape (Å, px?) and the detector sampling, or use "
                              "fewer model.n_slices", size)
