"""The first look at a 4D-STEM scan, before any calibration: mean pattern, bright-field disk, virtual bright and
annular dark field and centre of mass (``phasestem inspect``, ``phasestem.inspect(dataset)``: :func:`inspect`).

Nothing here needs the energy, the scan step or the detector pixel: the disk is found in the mean pattern
(:func:`phasestem.calibrate.disk.disk_of_mean`) and the virtual detectors are drawn about it, in pixels. Two
passes over the data (the mean, then the virtual images and centre of mass together), row chunk by row chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .disk import NoDiskError, disk_of_mean
from .reading import row_chunks

#: the virtual annular dark field starts this many disk radii from the disk centre
ADF_INNER = 1.3


@dataclass
class FirstLook:
    """What :func:`first_look` measures (detector px of the file's axes, (y, x))."""

    mean: np.ndarray  # (H, W) mean pattern
    centre: tuple[float, float]  # disk centre px (the detector centre (H//2, W//2) when no disk was found)
    radius: float | None  # disk radius px; None when no disk was found (``note`` says why)
    note: str  # '' or why no disk was found
    bf_radius: float  # px, virtual bright field: within this distance of ``centre``
    adf_inner: float  # px, virtual annular dark field: beyond this distance
    bf: np.ndarray  # (Sy, Sx) counts
    adf: np.ndarray  # (Sy, Sx) counts
    com: np.ndarray  # (Sy, Sx, 2) px (y, x): centre of mass relative to ``centre``, descan plane removed
    descan: np.ndarray  # (3, 2) px: the plane c0 + a·iy + b·ix removed from ``com``
    pixel_mrad: float | None  # detector pixel (mrad) when known
    pixel_source: str  # where ``pixel_mrad`` comes from ('' when unknown)
    adf_outer: float = math.inf  # px, virtual annular dark field: up to this distance

    def describe(self) -> str:
        """One line: the disk (or why there is none) and the detector pixel."""
        if self.radius is None:
            return f"no bright-field disk ({self.note}); virtual detectors about the detector centre"
        text = (f"bright-field disk: centre (y, x) = ({self.centre[0]:.2f}, {self.centre[1]:.2f}) px, "
                f"radius {self.radius:.2f} px")
        if self.pixel_mrad is not None:
            text += f" = {self.radius * self.pixel_mrad:.3g} mrad ({self.pixel_mrad:.4g} mrad/px, {self.pixel_source})"
        return text


def detector_pixel(dataset, radius: float | None) -> tuple[float | None, str]:
    """The detector pixel (mrad) and its source: the dataset's angular sampling, else its semi-angle over the
    fitted disk ``radius`` px, else unknown (None, '')."""
    if dataset.angular_sampling is not None and all(math.isfinite(a) for a in dataset.angular_sampling):
        return float(np.mean(dataset.angular_sampling)), "given"
    if dataset.semiangle and radius:
        return float(dataset.semiangle) / radius, "semi-angle / fitted disk radius"
    return None, ""


def first_look(dataset, bf_radius: float | None = None, adf_inner: float | None = None,
               adf_outer: float | None = None) -> FirstLook:
    """Mean pattern, bright-field disk, virtual BF/ADF and centre of mass of ``dataset`` (no calibration
    needed). Without a disk (:class:`~phasestem.calibrate.disk.NoDiskError`) the virtual detectors are centred
    on the detector with radii of 1/8 and 1/4 of its size. ``bf_radius``, ``adf_inner`` and ``adf_outer`` (px from
    the disk centre) replace the detectors' default radii (the disk radius, :data:`ADF_INNER` × it, no outer
    edge)."""
    mean = dataset.mean_pattern().astype(np.float64)
    H, W = mean.shape
    try:
        centre, radius = disk_of_mean(mean)
        note = ""
        bf_r, adf_r = radius, ADF_INNER * radius
    except NoDiskError as exc:
        centre, radius, note = (float(H // 2), float(W // 2)), None, str(exc).removeprefix("no bright-field disk: ")
        bf_r, adf_r = min(H, W) / 8, min(H, W) / 4
    yy, xx = np.indices((H, W), dtype=np.float64)
    bf_r = bf_r if bf_radius is None else float(bf_radius)
    adf_r = adf_r if adf_inner is None else float(adf_inner)
    r = np.hypot(yy - centre[0], xx - centre[1])
    adf_out = np.inf if adf_outer is None else float(adf_outer)
    bf_mask, adf_mask = (r <= bf_r).astype(np.float32), ((r > adf_r) & (r <= adf_out)).astype(np.float32)
    sy, sx = dataset.scan_shape
    bf, adf, com = np.zeros((sy, sx)), np.zeros((sy, sx)), np.zeros((sy, sx, 2))
    for rows, block in row_chunks(dataset):
        total = block.sum((-2, -1), dtype=np.float64)
        bf[rows] = (block * bf_mask).sum((-2, -1), dtype=np.float64)
        adf[rows] = (block * adf_mask).sum((-2, -1), dtype=np.float64)
        safe = np.where(total > 0, total, 1.0)
        com[rows, :, 0] = (block.sum(-1, dtype=np.float64) * yy[:, 0]).sum(-1) / safe - centre[0]
        com[rows, :, 1] = (block.sum(-2, dtype=np.float64) * xx[0]).sum(-1) / safe - centre[1]
    com, plane = minus_descan_plane(com)
    pixel, source = detector_pixel(dataset, radius)
    return FirstLook(mean=mean, centre=centre, radius=radius, note=note, bf_radius=bf_r, adf_inner=adf_r, bf=bf,
                     adf=adf, com=com, descan=plane, pixel_mrad=pixel, pixel_source=source, adf_outer=adf_out)


def inspect(dataset, index: tuple[int, int] | None = None, path=None):
    """The first look at ``dataset`` (a :class:`~phasestem.dataset.FourDSTEM`), no calibration needed
    (``phasestem.inspect(dataset)``, ``phasestem inspect FILE``): mean pattern (log) with the fitted bright-field
    disk, virtual bright and annular dark field about it, centre of mass and the pattern at ``index`` (row, col); Å
    and mrad where known, pixels otherwise (:func:`first_look`, :func:`phasestem.plot.inspect_dataset`). In a
    notebook or desktop window a click on a scan image shows that position's pattern.

    Saves a PNG when ``path`` is given; returns the matplotlib figure (``fig.first_look``: the numbers).
    """
    from ..plot import inspect_dataset

    return inspect_dataset(dataset, first_look(dataset), index=index, path=path)


def minus_descan_plane(com: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``com`` (Sy, Sx, 2) px less its least-squares plane c0 + a·iy + b·ix over the scan (the descan), and that
    plane's (3, 2) coefficients."""
    sy, sx = com.shape[:2]
    iy, ix = np.indices((sy, sx))
    design = np.column_stack([np.ones(sy * sx), iy.ravel(), ix.ravel()])
    plane, *_ = np.linalg.lstsq(design, com.reshape(-1, 2), rcond=None)
    return com - (design @ plane).reshape(sy, sx, 2), plane


def virtual_image(ds, kind: str, cy: float, cx: float, r: float, outer: float | None = None) -> np.ndarray:
    """The virtual image of detector ``kind`` about (``cy``, ``cx``) px over the scan ``ds``: ``bf`` the counts within
    ``r``, ``adf`` the counts from ``r`` (the inner radius) to ``outer`` (None: the edge), ``com`` the centre of mass
    (Sy, Sx, 2) px of the counts within ``r``, relative to the centre, its plane over the scan (the descan)
    removed (:func:`minus_descan_plane`). One pass over the data, row chunk by row chunk: a detector placed by
    hand (``phasestem serve``'s dataset page), where :func:`first_look` draws them about the fitted disk."""
    H, W = ds.pattern_shape
    yy, xx = np.indices((H, W), dtype=np.float64)
    dist = np.hypot(yy - cy, xx - cx)
    if kind == "adf":
        mask = (dist > r) & (dist <= (np.inf if outer is None else outer))
    else:
        mask = dist <= r
    weights = [mask.ravel().astype(np.float64)]
    if kind == "com":
        weights += [(mask * yy).ravel(), (mask * xx).ravel()]
    sy, sx = ds.scan_shape
    sums = np.zeros((sy, sx, len(weights)))
    matrix = np.stack(weights, axis=1)
    for rows, block in row_chunks(ds):
        flat = block.reshape(-1, H * W).astype(np.float64)
        sums[rows] = (flat @ matrix).reshape(-1, sx, len(weights))
    if kind != "com":
        return sums[..., 0]
    total = np.where(sums[..., 0] > 0, sums[..., 0], 1.0)
    return minus_descan_plane(np.stack([sums[..., 1] / total - cy, sums[..., 2] / total - cx], axis=-1))[0]
