"""The pixelated detector: how a camera's raw frames become phasestem's patterns.

A :class:`PixelatedDetector` describes the camera (raw frame ``shape`` (H, W), ``angular_sampling``
mrad per raw pixel, the raw pixel ``centre`` (cy, cx) where the zero frequency (the bright-field
disk's centre) falls, how the camera is mounted: ``transpose``, ``flip_y``, ``flip_x``, ``rotation``)
and how frames are reduced (``crop``, ``binning``) and corrected (``bad_pixels``, ``dark``, ``gain``).

:meth:`PixelatedDetector.apply` maps raw frames (..., H, W) to patterns in phasestem's convention
(zero frequency at (h//2, w//2), axes (ky, kx) as the scan's (y, x)), in this order:

1. ``(frame − dark) · gain`` (each optional, (H, W) raw frames);
2. bad pixels (True in the (H, W) mask) replaced by the mean of their good 3×3 neighbours
   (``bad_pixel_fill='neighbours'``, 0 where none is good) or by 0 (``'zero'``);
3. ``transpose`` (swap the axes), then ``flip_y`` (reverse rows), then ``flip_x`` (reverse columns);
4. resampling so that ``centre`` lands on the central pixel, turned by ``rotation`` degrees
   counter-clockwise as displayed (y down; :func:`phasestem.scan.rotation_matrix`) about it —
   integer shifts are exact, otherwise bilinear with zeros outside the frame;
5. ``crop`` (h, w) central pixels around the zero frequency (the whole frame when None); with ``binning``, the
   h//binning × w//binning central bins of the frame (so the crop holds whole bins of the one bin rule);
6. ``binning`` × ``binning`` sums (:func:`bin_pixels`: the zero frequency stays in bin (h//2, w//2), at its
   centre for odd factors: :func:`bin_window`, the one bin rule, also the model's (:func:`detector_response`)).

:meth:`~PixelatedDetector.orient` (step 3) and :meth:`~PixelatedDetector.reduce` (steps 5–6 by slicing,
for frames already centred) are the same steps alone; :class:`phasestem.dataset.FourDSTEM`'s
``transformed``/``cropped``/``binned`` and the learning preprocessing use them.

``centre`` is given in raw pixels (before the flips), as a calibration measures it on raw frames;
None means the raw (H//2, W//2). Per-pattern centres (descan) go to ``apply(..., centres=...)``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .base.configfile import number_pair
from .base.errors import ConfigError, ShapeError
from .scan import rotation_matrix

_OFFSETS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])


@dataclass(frozen=True)
class PixelatedDetector:
    """A pixelated camera and the map from its raw frames to phasestem's patterns.

    Attributes
    ----------
    shape : (H, W) raw frame.
    angular_sampling : (dky, dkx) mrad per raw pixel (None when unknown).
    centre : (cy, cx) raw pixel of the zero frequency; None → (H//2, W//2).
    rotation : degrees the frames are turned, counter-clockwise as displayed (y down).
    transpose, flip_y, flip_x : camera mounting, applied in this order.
    binning : integer factor of the final pixel sums.
    crop : (h, w) pixels kept around the zero frequency (None: the whole frame); with ``binning``, the central
        h//binning × w//binning bins.
    bad_pixels : (H, W) bool mask, True = hot/dead pixel.
    dark : (H, W) dark frame subtracted first; gain : (H, W) gain multiplied after.
    bad_pixel_fill : 'neighbours' (mean of good 3×3 neighbours) or 'zero'.
    """

    shape: tuple[int, int]
    angular_sampling: tuple[float, float] | None = None
    centre: tuple[float, float] | None = None
    rotation: float = 0.0
    transpose: bool = False
    flip_y: bool = False
    flip_x: bool = False
    binning: int = 1
    crop: tuple[int, int] | None = None
    bad_pixels: np.ndarray | None = field(default=None, compare=False)
    dark: np.ndarray | None = field(default=None, compare=False)
    gain: np.ndarray | None = field(default=None, compare=False)
    bad_pixel_fill: Literal["neighbours", "zero"] = "neighbours"

    def __post_init__(self):
        shape = number_pair(self.shape, "detector.shape", cast=int)
        if shape is None or min(shape) <= 0:
            raise ConfigError(f"detector.shape must be two positive integers (H, W), got {self.shape!r}")
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("shape", shape)
        set_("angular_sampling", number_pair(self.angular_sampling, "detector.angular_sampling"))
        set_("centre", number_pair(self.centre, "detector.centre"))
        set_("crop", number_pair(self.crop, "detector.crop", cast=int))
        set_("rotation", float(self.rotation))
        if int(self.binning) < 1:
            raise ConfigError(f"detector.binning must be a positive integer, got {self.binning!r}")
        set_("binning", int(self.binning))
        if self.bad_pixel_fill not in ("neighbours", "zero"):
            raise ConfigError(f"detector.bad_pixel_fill must be 'neighbours' or 'zero', got {self.bad_pixel_fill!r}")
        for name in ("bad_pixels", "dark", "gain"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=bool if name == "bad_pixels" else np.float32)
            if arr.shape != shape:
                raise ShapeError(f"detector.{name}: shape {arr.shape} does not match the raw frame {shape}")
            set_(name, arr)
        oriented = self.oriented_shape
        if self.crop is not None and (self.crop[0] > oriented[0] or self.crop[1] > oriented[1] or min(self.crop) < 1):
            raise ConfigError(f"detector.crop {self.crop} must be positive and within the frame {oriented}")
        if self.rotation and self.angular_sampling is not None and not np.isclose(*self.angular_sampling, rtol=1e-6):
            raise ConfigError(f"detector.rotation needs square pixels; angular_sampling is {self.angular_sampling}")

    # ---- construction / serialisation -----------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PixelatedDetector:
        """From :meth:`to_dict` output; ``bad_pixels`` may be an (H, W) bool mask or a list of [y, x]."""
        allowed = set(cls.__dataclass_fields__)
        unknown = set(values) - allowed
        if unknown:
            raise ConfigError(f"detector: unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")
        if "shape" not in values:
            raise ConfigError("detector.shape: missing; give the raw frame (H, W)")
        kw = dict(values)
        bad = kw.get("bad_pixels")
        if bad is not None:
            arr = np.asarray(bad)
            if arr.size == 0:
                kw["bad_pixels"] = None
            elif arr.dtype != bool:  # a list of [y, x] pixels; a mask is boolean
                kw["bad_pixels"] = pixel_list_to_mask(arr, number_pair(kw["shape"], "detector.shape", cast=int))
        return cls(**kw)

    @classmethod
    def from_dataset(cls, dataset) -> PixelatedDetector:
        """The detector of a :class:`~phasestem.dataset.FourDSTEM`: ``metadata['detector']`` when a reader
        stored one (e.g. a Dectris pixel mask and beam centre), else its frame shape and angular sampling."""
        stored = dataset.metadata.get("detector")
        if isinstance(stored, Mapping) and tuple(stored.get("shape", ())) == tuple(dataset.pattern_shape):
            det = cls.from_dict(stored)
            if det.angular_sampling is None and dataset.angular_sampling is not None:
                det = det.replace(angular_sampling=dataset.angular_sampling)
            return det
        return cls(shape=dataset.pattern_shape, angular_sampling=dataset.angular_sampling)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for YAML: bad pixels as a list of [y, x]; dark/gain are left out (save them as .npy)."""
        out: dict[str, Any] = {"shape": list(self.shape), "rotation": self.rotation, "transpose": self.transpose,
                               "flip_y": self.flip_y, "flip_x": self.flip_x, "binning": self.binning,
                               "bad_pixel_fill": self.bad_pixel_fill}
        for name in ("angular_sampling", "centre", "crop"):
            v = getattr(self, name)
            out[name] = None if v is None else list(v)
        out["bad_pixels"] = [] if self.bad_pixels is None else np.argwhere(self.bad_pixels).tolist()
        return out

    def replace(self, **changes) -> PixelatedDetector:
        """A copy with some attributes changed."""
        return replace(self, **changes)

    # ---- geometry --------------------------------------------------------------------------
    @property
    def oriented_shape(self) -> tuple[int, int]:
        """(H, W) after the transpose."""
        return (self.shape[1], self.shape[0]) if self.transpose else self.shape

    @property
    def output_shape(self) -> tuple[int, int]:
        """(h, w) of the patterns :meth:`apply` returns."""
        h, w = self.crop if self.crop is not None else self.oriented_shape
        return h // self.binning, w // self.binning

    @property
    def output_angular_sampling(self) -> tuple[float, float] | None:
        """(dky, dkx) mrad per output pixel (transposed and binned)."""
        if self.angular_sampling is None:
            return None
        a = self.angular_sampling[::-1] if self.transpose else self.angular_sampling
        return (a[0] * self.binning, a[1] * self.binning)

    def raw_centre(self) -> tuple[float, float]:
        """(cy, cx) raw pixel of the zero frequency."""
        return self.centre if self.centre is not None else (float(self.shape[0] // 2), float(self.shape[1] // 2))

    def oriented_point(self, points) -> np.ndarray:
        """Raw (y, x) pixel coordinates (..., 2) → coordinates after transpose and flips."""
        p = np.asarray(points, dtype=np.float64)
        if self.transpose:
            p = p[..., ::-1]
        H, W = self.oriented_shape
        y = (H - 1) - p[..., 0] if self.flip_y else p[..., 0]
        x = (W - 1) - p[..., 1] if self.flip_x else p[..., 1]
        return np.stack([y, x], -1)

    def oriented_vectors(self, vectors) -> np.ndarray:
        """Raw-frame displacement vectors (..., 2) (e.g. centres of mass) → phasestem's (ky, kx) frame.

        Applies the transpose, flips and rotation (no shift): what :meth:`apply` does to a pattern's
        features, without resampling.
        """
        v = np.asarray(vectors, dtype=np.float64)
        if self.transpose:
            v = v[..., ::-1]
        v = v * np.array([-1.0 if self.flip_y else 1.0, -1.0 if self.flip_x else 1.0])
        return v @ rotation_matrix(self.rotation).T

    # ---- the map ---------------------------------------------------------------------------
    def apply(self, patterns, centres=None) -> np.ndarray:
        """Raw frames (..., H, W) → float32 patterns (..., h, w) in phasestem's convention.

        ``centres``: optional per-frame raw centres (..., 2) px (descan), overriding ``centre``.
        """
        p = np.asarray(patterns, dtype=np.float32)
        if p.ndim < 2 or tuple(p.shape[-2:]) != self.shape:
            raise ShapeError(f"detector: frames of shape {tuple(p.shape[-2:])} do not match the detector "
                             f"{self.shape} (H, W)")
        batch = p.shape[:-2]
        p = self.corrected(p).reshape(-1, *self.shape)
        if centres is not None:
            c = np.asarray(centres, dtype=np.float64)
            if c.shape != (*batch, 2):
                raise ShapeError(f"detector: centres must have shape {(*batch, 2)}, got {c.shape}")
            c = c.reshape(-1, 2)
        else:
            c = np.asarray(self.raw_centre(), dtype=np.float64)[None]
        out = self._bin(self._resample(self.orient(p), self.oriented_point(c)))
        return out.reshape(*batch, *out.shape[-2:])

    def corrected(self, patterns) -> np.ndarray:
        """Steps 1–2 only: dark, gain and bad pixels on raw frames (..., H, W) → float32, same frame."""
        p = np.array(patterns, dtype=np.float32)  # a copy: the caller's frames are never changed
        if self.dark is not None:
            p -= self.dark
        if self.gain is not None:
            p *= self.gain
        if self.bad_pixels is not None and self.bad_pixels.any():
            p = self._fill_bad(p)
        return p

    def valid_mask(self) -> np.ndarray:
        """(h, w) bool: output pixels computed only from good raw pixels inside the frame."""
        good = np.ones(self.shape, np.float32) if self.bad_pixels is None else (~self.bad_pixels).astype(np.float32)
        c = self.oriented_point(np.asarray(self.raw_centre())[None])
        out = self._bin(self._resample(self.orient(good[None]), c))[0]
        return out >= self.binning**2 - 1e-4

    def _fill_bad(self, p: np.ndarray) -> np.ndarray:
        bad = np.argwhere(self.bad_pixels)
        if self.bad_pixel_fill == "zero":
            p[..., bad[:, 0], bad[:, 1]] = 0.0
            return p
        H, W = self.shape
        nb = bad[:, None, :] + _OFFSETS[None]  # (K, 8, 2)
        inside = (nb[..., 0] >= 0) & (nb[..., 0] < H) & (nb[..., 1] >= 0) & (nb[..., 1] < W)
        ny, nx = np.clip(nb[..., 0], 0, H - 1), np.clip(nb[..., 1], 0, W - 1)
        weight = (inside & ~self.bad_pixels[ny, nx]).astype(np.float32)  # (K, 8)
        total = weight.sum(1)
        vals = (p[..., ny, nx] * weight).sum(-1) / np.maximum(total, 1.0)
        p[..., bad[:, 0], bad[:, 1]] = np.where(total > 0, vals, 0.0)
        return p

    def reduce(self, patterns):
        """Steps 5–6 only, on frames already oriented and centred on (H//2, W//2): the ``binning`` sums
        (:func:`bin_pixels`) and the central ``crop`` (:func:`centre_window`), by slicing (no resampling).

        (..., H, W) NumPy array or torch tensor, (H, W) = :attr:`oriented_shape` → (..., h, w) =
        :attr:`output_shape` of the same type (a crop keeps the dtype; the bins sum as ``.sum`` does).
        """
        if tuple(patterns.shape[-2:]) != self.oriented_shape:
            raise ShapeError(f"detector: frames of shape {tuple(patterns.shape[-2:])} do not match the oriented "
                             f"detector {self.oriented_shape} (H, W)")
        if self.binning == 1:
            return patterns if self.crop is None else centre_window(patterns, self.crop)
        return self._bin(patterns)

    def _bin(self, frames):
        """Step 6 on frames (..., H', W') centred on (H'//2, W'//2): the bins of :func:`bin_pixels`, the central
        :attr:`output_shape` of them kept."""
        out = bin_pixels(frames, self.binning)
        return out if tuple(out.shape[-2:]) == self.output_shape else centre_window(out, self.output_shape)

    def orient(self, patterns) -> np.ndarray:
        """Step 3 only: ``transpose``, then ``flip_y``, then ``flip_x`` of (..., H, W) frames (a view, any dtype).

        The flips reverse the axes; they do not re-centre (on an even axis the pixel H//2 goes to H//2 − 1;
        :meth:`apply` puts ``centre`` back on the central pixel).
        """
        p = patterns
        if self.transpose:
            p = np.swapaxes(p, -1, -2)
        if self.flip_y:
            p = p[..., ::-1, :]
        if self.flip_x:
            p = p[..., ::-1]
        return p

    def _resample(self, p: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """(B, H', W') oriented frames, (1 or B, 2) oriented centres → (B, hc, wc) about the centre."""
        B, H, W = p.shape
        hc, wc = self.crop if self.crop is not None else (H, W)
        if self.crop is not None and self.binning > 1:  # room for every bin of the crop, whole (zeros outside)
            hc, wc = hc + 2 * self.binning, wc + 2 * self.binning
        d = np.stack(np.meshgrid(np.arange(hc) - hc // 2, np.arange(wc) - wc // 2, indexing="ij"), -1)
        d = d.astype(np.float64) @ rotation_matrix(-self.rotation).T  # source offset of each output pixel
        src = centres[:, None, None, :] + d[None]  # (1 or B, hc, wc, 2)
        rounded = np.round(src)
        if np.allclose(src, rounded, atol=1e-9):
            iy, ix = rounded[..., 0].astype(np.int64), rounded[..., 1].astype(np.int64)
            inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            iy, ix = np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1)
            b = np.arange(B)[:, None, None]  # one centre for all frames broadcasts over the batch
            return np.where(inside, p[b, iy, ix], np.float32(0.0)).astype(np.float32)
        from scipy.ndimage import map_coordinates

        src = np.broadcast_to(src, (B, hc, wc, 2))
        coords = np.stack([np.broadcast_to(np.arange(B, dtype=np.float64)[:, None, None], (B, hc, wc)),
                           src[..., 0], src[..., 1]])
        out = map_coordinates(np.ascontiguousarray(p), coords, order=1, mode="grid-constant", cval=0.0)
        return out.astype(np.float32)

    def apply_dataset(self, dataset, chunk_rows: int = 8):
        """A :class:`~phasestem.dataset.FourDSTEM` with :meth:`apply` done on every pattern (in memory),
        read ``chunk_rows`` scan rows at a time; its angular sampling becomes :attr:`output_angular_sampling`
        when known."""
        out = dataset.map_rows(self.output_shape, self.apply, chunk_rows)
        ang = self.output_angular_sampling or dataset.angular_sampling
        ds = dataset._replace(patterns=out, angular_sampling=ang)
        ds.metadata["detector"] = self.to_dict()
        return ds


def centre_window(patterns, shape: tuple[int, int]):
    """The (h, w) pixels of (..., H, W) frames about (H//2, W//2): cropped where h < H, zero-padded where h > H.

    Pixel (H//2, W//2) (the zero frequency) lands on (h//2, w//2). A crop is a view (NumPy array or torch
    tensor); a pad is a new array of the same dtype.
    """
    H, W = patterns.shape[-2:]
    h, w = int(shape[0]), int(shape[1])
    y0, x0 = H // 2 - h // 2, W // 2 - w // 2  # input pixel of output pixel (0, 0)
    if y0 >= 0 and x0 >= 0 and h <= H - y0 and w <= W - x0:
        return patterns[..., y0 : y0 + h, x0 : x0 + w]
    p = np.asarray(patterns)
    out = np.zeros((*p.shape[:-2], h, w), dtype=p.dtype)
    sy, sx = slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w))
    out[..., sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = p[..., sy, sx]
    return out


def bin_window(n: int, factor: int) -> int:
    """First pixel (possibly < 0) of the ``(n // factor)·factor`` pixels that bins of ``factor`` sum along an axis
    of ``n`` pixels whose zero frequency is pixel n//2: THE bin-centring rule of phasestem.

    The zero frequency is pixel (f−1)//2 of bin h//2 (h = n//f): the bin's centre for an odd factor, the lower of
    its two central pixels for an even one (that bin's centre then lies half a fine pixel above the zero
    frequency). The detector (:func:`bin_pixels`), the reconstruction's oversampled model
    (:func:`detector_response`) and the simulator (``simulate.scan.DetectorGeometry``) all bin by it.
    """
    f = int(factor)
    return n // 2 - (n // f // 2) * f - (f - 1) // 2


def bin_pixels(patterns, factor: int | tuple[int, int]):
    """Sums of ``factor`` × ``factor`` pixels (or (fy, fx)) of (..., H, W) frames → (..., H//fy, W//fx).

    Bins laid out by :func:`bin_window` (the zero frequency (H//2, W//2) stays in bin (h//2, w//2), centred in it
    for odd factors); frame pixels outside the bins are dropped, and a bin that reaches past the frame's edge sums
    the pixels it holds (zeros beyond the edge). NumPy arrays or torch tensors.
    """
    fy, fx = (factor, factor) if np.ndim(factor) == 0 else factor
    fy, fx = int(fy), int(fx)
    if fy == fx == 1:
        return patterns
    H, W = patterns.shape[-2:]
    h, w = H // fy, W // fx
    y0, x0 = bin_window(H, fy), bin_window(W, fx)
    lo = (max(0, -y0), max(0, -x0))
    hi = (max(0, y0 + h * fy - H), max(0, x0 + w * fx - W))
    p = patterns
    if any(lo) or any(hi):  # bins past the edge: zeros beyond it
        if isinstance(p, np.ndarray):
            p = np.pad(p, [(0, 0)] * (p.ndim - 2) + [(lo[0], hi[0]), (lo[1], hi[1])])
        else:
            import torch.nn.functional as F

            p = F.pad(p, (lo[1], hi[1], lo[0], hi[0]))
        y0, x0 = y0 + lo[0], x0 + lo[1]
    return sum_bins(p[..., y0 : y0 + h * fy, x0 : x0 + w * fx], (fy, fx))


def sum_bins(window, factor: tuple[int, int]):
    """(..., h·fy, w·fx) pixels that are exactly the bins (laid out by :func:`bin_window`) → (..., h, w) sums."""
    fy, fx = int(factor[0]), int(factor[1])
    h, w = window.shape[-2] // fy, window.shape[-1] // fx
    return window.reshape(*window.shape[:-2], h, fy, w, fx).sum((-3, -1))


def detector_response(far_field, binning: int = 1, blur: float = 0.0, shape: tuple[int, int] | None = None):
    """Model far-field intensities (..., f·h, f·w) on a grid ``binning`` = f times finer than the detector, fftfreq
    order (torch) → detector patterns (..., h, w), fftfreq order: summed into detector pixels by :func:`bin_pixels`
    (the one bin rule, as the data are binned), the detector's ``shape`` (h, w) of them about the zero frequency
    kept when the binned far field extends beyond it (an upsampled model's: what falls outside the detector is not
    measured), and blurred by the detector's point spread, a periodic Gaussian of σ = ``blur`` detector pixels
    (0: none). Differentiable."""
    import torch

    out = far_field
    dims = (-2, -1)
    if binning > 1:
        out = torch.fft.ifftshift(bin_pixels(torch.fft.fftshift(out, dim=dims), binning), dim=dims)
    if shape is not None and tuple(out.shape[-2:]) != tuple(shape):
        out = torch.fft.ifftshift(centre_window(torch.fft.fftshift(out, dim=dims), shape), dim=dims)
    if blur > 0:
        u = torch.fft.fftfreq(out.shape[-2], device=out.device)[:, None]
        v = torch.fft.fftfreq(out.shape[-1], device=out.device)[None, :]
        mtf = torch.exp(-2 * math.pi**2 * blur**2 * (u**2 + v**2))
        out = torch.fft.ifft2(torch.fft.fft2(out) * mtf).real
    return out


def pixel_list_to_mask(pixels, shape: tuple[int, int]) -> np.ndarray:
    """(K, 2) integer (y, x) pixels → (H, W) bool mask (True = bad)."""
    pix = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    H, W = shape
    if len(pix) and (pix.min() < 0 or (pix[:, 0] >= H).any() or (pix[:, 1] >= W).any()):
        raise ShapeError(f"detector.bad_pixels: pixels outside the {H}×{W} frame")
    mask = np.zeros((H, W), dtype=bool)
    mask[pix[:, 0], pix[:, 1]] = True
    return mask
