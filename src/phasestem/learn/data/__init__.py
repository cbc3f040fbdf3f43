"""Data for the learned route (SPEC §3), one module per job: :mod:`.geometry` (blocks, centres, targets),
:mod:`.preprocess` (pattern preprocessing), :mod:`.augment` (exact symmetries), :mod:`.files` (training files
and the sample index), :mod:`.datasets` (lazy HDF5 datasets) and :mod:`.synthetic` (test files). The Phaseformer's
paired images are in :mod:`phasestem.learn.pairs`; the file format itself in :mod:`phasestem.io.seed`.

Geometry (seed 000 defaults: 50 × 50 scan, 2 Å step, 256² phase over 100 Å)
------------------------------------------------------------------------------
* Blocks of ``block × block`` patterns with ``stride`` on the scan grid: start indices
  0, 9, 18, 27, 36 per axis → 25 blocks per sample, row-major.
* Bright centre of a block (phase pixels, per axis):
  ``round((origin + step·start + step·(block − 1)/2) · px_per_Å)`` — with the seed's numbers
  ``round((2·start + 13) · 2.56)``: 0 → 33, 9 → 79, 18 → 125, 27 → 172, 36 → 218.
* Patch target: the central ``patch × patch`` (76 × 76) crop of
  ``np.roll(phase, probe_gpts // 2 − centre, axis=(0, 1))``, computed as a periodic index crop
  ``phase[(centre + (N − patch)//2 − probe_gpts//2 + a) mod N]`` (:func:`patch_indices`).
  The 76 px are the area the probe illuminates over one block
  (:func:`phasestem.simulate.probe_extent.illuminated_extent` computes it from the probe).

Files
-----
Our generator's files (root attr ``format = "phasestem-seed000"``; geometry from attrs) and the
user's original files (only ``dp_set_{i}`` and ``phase_{i}``, the latter abTEM's projected
potential in V·Å, no attrs; geometry from :class:`OriginalLayout`). ``target="phase"`` trains on
σ·V_proj in rad (σ from the file's energy, or the user-given energy for original files);
``target="potential"`` on V·Å. :attr:`SampleIndex.target_description` says which was used.

Augmentation
------------
The symmetry group of the square (transpose, flip y, flip x; 8 elements) applied to the *sample*:
a real-space flip y → −y of the specimen about the origin of the periodic cell is the same
flip of every pattern about zero frequency (ky → −ky, pixel ``(2·(H//2) − i) mod H``) together
with the scan flip ``i → (−i − 2·origin/step) mod S`` — exact for a probe whose aberrations are
round (C10, C30, C50 …) and a scan that spans the periodic cell (S·step = cell), which our
simulator guarantees. A transpose swaps (y, x) of scan, patterns and phase. Blocks and targets
are then cut from the transformed sample with the usual geometry, so a block may wrap across
the cell edge (its probe positions are still contiguous on the periodic specimen).

Workers
-------
Datasets hold file *paths*; each process opens its own ``h5py.File`` handles on first use
(re-opened after a fork), so any number of DataLoader workers is safe. Only the needed scan
rectangle(s) of ``dp_set_{i}`` are read.
"""
from __future__ import annotations

from .augment import (
    Symmetry,
    check_augmentable,
    detector_flip_index,
    flip_index,
    scan_source_indices,
    transform_patterns,
    transform_phase,
)
from .datasets import PatchDataset, SampleDataset, StitchDataset, read_scan_grid
from .files import FileInfo, OriginalLayout, SampleIndex, expand_paths, inspect_file, with_geometry
from .geometry import BlockGeometry, check_coverage, extract_patches, place_indices
from .preprocess import Preprocess, blocks_from_scan
from .synthetic import blob_phase, write_synthetic_file

__all__ = ["Symmetry", "check_augmentable", "detector_flip_index", "flip_index", "scan_source_indices",
           "transform_patterns", "transform_phase", "PatchDataset", "SampleDataset", "StitchDataset",
           "read_scan_grid", "FileInfo", "OriginalLayout", "SampleIndex", "expand_paths",
           "inspect_file", "with_geometry", "BlockGeometry", "check_coverage", "extract_patches", "place_indices",
           "Preprocess", "blocks_from_scan", "blob_phase", "write_synthetic_file"]
