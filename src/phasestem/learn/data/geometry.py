"""Block geometry of the learned route: block start indices, bright centres, 76-px targets, coverage."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...base.errors import ShapeError
from ...scan import GridScan

log = logging.getLogger("phasestem.learn")


# =============================================================================================
# geometry
# =============================================================================================
@dataclass(frozen=True)
class BlockGeometry:
    """Blocks of a scan and the phase pixels they map to.

    ``scan_step``/``scan_origin`` in Å, ``phase_sampling`` in Å/px, ``probe_gpts`` the grid of
    the seed's ``np.roll`` (defaults to ``phase_shape``).
    """

    scan_shape: tuple[int, int] = (50, 50)
    scan_step: tuple[float, float] = (2.0, 2.0)
    scan_origin: tuple[float, float] = (0.0, 0.0)
    phase_shape: tuple[int, int] = (256, 256)
    phase_sampling: tuple[float, float] = (100 / 256, 100 / 256)
    block: int = 14
    stride: int = 9
    patch: int = 76
    probe_gpts: tuple[int, int] | None = None

    def __post_init__(self):
        for ax in (0, 1):
            if self.scan_shape[ax] < self.block:
                raise ShapeError(f"scan shape {self.scan_shape} is smaller than the block size {self.block}")
        if self.patch > min(self.phase_shape):
            raise ShapeError(f"patch {self.patch} px is larger than the phase image {self.phase_shape}")

    @property
    def gpts(self) -> tuple[int, int]:
        return tuple(self.probe_gpts) if self.probe_gpts is not None else tuple(self.phase_shape)

    @property
    def pixels_per_angstrom(self) -> tuple[float, float]:
        return (1.0 / self.phase_sampling[0], 1.0 / self.phase_sampling[1])

    def start_indices(self, axis: int = 0) -> list[int]:
        """Scan start indices of the blocks along ``axis`` (0, 9, 18, 27, 36 for the seed)."""
        return list(range(0, self.scan_shape[axis] - self.block + 1, self.stride))

    def blocks(self) -> list[tuple[int, int]]:
        """(start_y, start_x) of every block, row-major."""
        return [(y, x) for y in self.start_indices(0) for x in self.start_indices(1)]

    @property
    def n_blocks(self) -> int:
        return len(self.start_indices(0)) * len(self.start_indices(1))

    def block_centre_angstrom(self, start: int, axis: int) -> float:
        """Centre (Å) of the block starting at scan index ``start`` along ``axis``."""
        step = self.scan_step[axis]
        return self.scan_origin[axis] + step * start + step * (self.block - 1) / 2

    def bright_centre(self, start: int, axis: int = 0) -> int:
        """Bright centre (phase pixel) of a block: ``round((start_position + 13) · 2.56)`` for the seed."""
        return int(round(self.block_centre_angstrom(start, axis) * self.pixels_per_angstrom[axis]))

    def centres(self) -> np.ndarray:
        """(n_blocks, 2) int64 bright centres, row-major like :meth:`blocks`."""
        return np.array([(self.bright_centre(y, 0), self.bright_centre(x, 1)) for y, x in self.blocks()], np.int64)

    def block_coords(self) -> np.ndarray:
        """(block², 2) float32 scan positions (Å) of a block's patterns relative to the block centre: the
        block's :class:`~phasestem.scan.GridScan` with its centre at 0 Å (the same for every block; the
        coordinates of models trained before the patch frame, ``coords: block_centre``)."""
        origin = tuple(-(self.block - 1) / 2 * s for s in self.scan_step)
        return GridScan((self.block, self.block), self.scan_step, origin=origin).positions().astype(np.float32)

    def exact_centres(self) -> np.ndarray:
        """(n_blocks, 2) float64 block centres in phase pixels before rounding (:meth:`centres` rounds them)."""
        ppa = self.pixels_per_angstrom
        return np.array([(self.block_centre_angstrom(y, 0) * ppa[0], self.block_centre_angstrom(x, 1) * ppa[1])
                         for y, x in self.blocks()], np.float64)

    def frame_offsets(self) -> np.ndarray:
        """(n_blocks, 2) float64 Å: each block's centre relative to its bright-centre pixel, the centre of its
        target patch (|offset| ≤ half a phase pixel: the rounding of ``bright_center``)."""
        return (self.exact_centres() - self.centres()) * np.asarray(self.phase_sampling)

    def frame_coords(self) -> np.ndarray:
        """(n_blocks, block², 2) float32 scan positions (Å) of each block's patterns relative to the pixel frame
        of its target patch (0 Å = the bright-centre pixel): :meth:`block_coords` + :meth:`frame_offsets`.
        Unlike :meth:`block_coords` they differ between blocks by the rounding of their bright centres, the
        sub-pixel offset between the patterns and the patch a network has to predict."""
        return (self.block_coords()[None].astype(np.float64) + self.frame_offsets()[:, None]).astype(np.float32)

    def patch_indices(self, centre: int, axis: int = 0) -> np.ndarray:
        """Phase pixel indices (patch,) of the target crop around ``centre`` (periodic)."""
        N, G = self.phase_shape[axis], self.gpts[axis]
        return (centre + (N - self.patch) // 2 - G // 2 + np.arange(self.patch)) % N

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockGeometry:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def extract_patches(phase: torch.Tensor | np.ndarray, geometry: BlockGeometry,
                    centres: np.ndarray | None = None) -> torch.Tensor:
    """Patch targets (..., n_blocks, patch, patch) cut periodically from ``phase`` (..., Ny, Nx)."""
    phase = torch.as_tensor(phase)
    centres = geometry.centres() if centres is None else np.asarray(centres)
    iy = torch.as_tensor(np.stack([geometry.patch_indices(c, 0) for c in centres[:, 0]]))  # (n, p)
    ix = torch.as_tensor(np.stack([geometry.patch_indices(c, 1) for c in centres[:, 1]]))
    return phase[..., iy[:, :, None], ix[:, None, :]]


def place_indices(centres: torch.Tensor, geometry: BlockGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Periodic row/col indices (B, n, patch) of patches with bright ``centres`` (B, n, 2) on the phase grid."""
    N = torch.tensor(geometry.phase_shape, device=centres.device)
    G = torch.tensor(geometry.gpts, device=centres.device)
    off = (N - geometry.patch) // 2 - G // 2
    a = torch.arange(geometry.patch, device=centres.device)
    iy = (centres[..., 0:1].long() + off[0] + a) % N[0]
    ix = (centres[..., 1:2].long() + off[1] + a) % N[1]
    return iy, ix


def check_coverage(geometry: BlockGeometry) -> float:
    """Fraction of phase pixels covered by at least one patch (1.0 for the seed geometry)."""
    cover = np.zeros(geometry.phase_shape, bool)
    for cy, cx in geometry.centres():
        cover[np.ix_(geometry.patch_indices(cy, 0), geometry.patch_indices(cx, 1))] = True
    return float(cover.mean())
