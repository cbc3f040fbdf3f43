"""The ``data`` section of a reconstruction's parameter file: where the patterns come from."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ...base.configfile import ConfigPath, FiniteModel


class DataConfig(FiniteModel):
    """Where the patterns come from and how to adapt them to phasestem's conventions."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="4D-STEM file (HDF5, CXI, .mat, .npy/.npz, EMD, raw); relative to the YAML file's folder")
    format: str | None = Field(None, description="reader name (hdf5, numpy, cxi, mat, emd, raw); null: by extension")
    patterns_key: str | None = Field(None, description="dataset/array name of the patterns inside the file")
    reader_options: dict[str, Any] = Field(default_factory=dict,
                                           description="extra options for the reader (e.g. sample, shape, dtype)")
    flip_y: bool = Field(False, description="flip the detector rows")
    flip_x: bool = Field(False, description="flip the detector columns")
    transpose: bool = Field(False, description="swap the detector axes (before flips)")
    crop: tuple[int, int] | None = Field(None, description="keep the central (H, W) detector pixels")
    bin: int = Field(1, ge=1, description="sum detector pixels in bin × bin blocks")
    pad: tuple[int, int] | None = Field(None, description="zero-pad patterns to (H, W) (finer real-space pixel)")
    resample: tuple[int, int] | None = Field(None, description="resample patterns to (H, W) pixels (counts kept)")
    scan_subset: tuple[int, int, int, int] | None = Field(
        None, description="use scan rows [r0, r1) and columns [c0, c1): (r0, r1, c0, c1)")
    detector_shifts: Annotated[Path | None, ConfigPath()] = Field(
        None, description=".npy of (Sy, Sx, 2) or (N, 2) px: where each pattern's zero frequency (the bright-field "
        "disk centre) sits relative to the detector's central pixel (H//2, W//2), (row, col) in the file's detector "
        "axes; the model displaces its patterns alike instead of the counts being resampled (the descan; written by "
        "phasestem calibrate). Transposes, flips, subsets and binning of the data apply to it too")
    counts: bool | None = Field(
        None, description="whether the patterns are detector counts (Poisson: the counted data term, error bars); "
        "null: decided from the file (a dose recorded, integer storage or whole numbers: phasestem.io.counts). "
        "phasestem calibrate and --auto write it, since their corrected patterns need not show it")
    dose: float | None = Field(
        None, allow_inf_nan=False, description="e⁻/Å² of the acquisition as the data file records it (≤ 0: "
        "noise-free); null: the data file's record. phasestem calibrate and --auto copy it here from the original "
        "file")
    ground_truth_key: str | None = Field(
        None, description="name of a ground-truth phase (rad, 2-D, dataset frame) in the data file (.npy/.npz/HDF5): "
        "PSNR, SSIM, E_φ and FRC resolution per epoch in the log and at the end in results.h5. Its pixel size comes "
        "from the file (HDF5 attribute 'sampling' of the dataset or its group, a seed file's phase_sampling) and it "
        "is resampled to the reconstruction's pixel (logged); without one it is taken at the reconstruction's pixel "
        "and must cover the scanned field")

    @property
    def allow_external_links(self) -> bool:
        """Whether the data file, and the ground truth in it, may be read through HDF5 links, external storage and
        virtual sources outside its folder: ``reader_options.allow_external_links`` (``reconstruct
        --allow-external-links`` sets it; never honoured under ``PHASESTEM_READ_ROOT``)."""
        return bool(self.reader_options.get("allow_external_links", False))  # as the reader takes it
