"""The scan grid of a dataset as an affine map, and resampling of scan-grid images into the dataset frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..scan import GridScan


@dataclass
class PhaseImage:
    """A phase image in the dataset frame: pixel (0, 0) at 0 Å, ``sampling`` (dy, dx) Å per pixel."""

    phase: np.ndarray  # (Ny, Nx) rad
    sampling: tuple[float, float]
    method: str = ""
    scan_grid: np.ndarray | None = None  # the image on the (possibly up-sampled) scan grid

    def save(self, path) -> None:
        """Write the phase (float32 .npy) to ``path`` atomically (:func:`phasestem.base.safety.atomic_file`)."""
        from ..base.safety import atomic_file

        with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.save adds no suffix
            np.save(fh, self.phase.astype(np.float32))


def scan_map(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(L, origin): least-squares affine map position = origin + L·(iy, ix) Å of the dataset's scan."""
    index = GridScan(dataset.scan_shape).indices()  # (N, 2) (iy, ix)
    design = np.column_stack([index, np.ones(len(index))])
    coef, *_ = np.linalg.lstsq(design, dataset.positions_angstrom(), rcond=None)
    return coef[:2].T, coef[2]


def to_dataset_frame(image: np.ndarray, dataset, sampling: tuple[float, float], upsample: int = 1,
                     order: int = 1) -> np.ndarray:
    """Resample a scan-grid image (Sy·u, Sx·u) into the dataset frame at ``sampling`` Å.

    The image's pixel (i, j) is scan index (i/u, j/u). The output covers 0 Å to the farthest
    position; points outside the scan get the image mean.
    """
    L, origin = scan_map(dataset)
    pos = dataset.positions_angstrom()
    shape = (int(np.ceil(pos[:, 0].max() / sampling[0])) + 1, int(np.ceil(pos[:, 1].max() / sampling[1])) + 1)
    py, px = np.meshgrid(np.arange(shape[0]) * sampling[0], np.arange(shape[1]) * sampling[1], indexing="ij")
    g = np.linalg.solve(L, np.stack([py.ravel() - origin[0], px.ravel() - origin[1]]))
    out = ndimage.map_coordinates(image, g * upsample, order=order, mode="constant", cval=np.nan)
    out = out.reshape(shape)
    return np.where(np.isfinite(out), out, float(np.mean(image)))
