"""Resampling of images and patterns: the one place phasestem interpolates a 2-D grid onto another.

Two mappings over the last two axes:

* :func:`resize` / :func:`resample_image` keep the **field of view**: the H × W pixel areas of the input are
  spread over the h × w of the output (pixel edges, not centres, line up: ``align_corners=False``);
* :func:`sample_on_grid` samples an image whose pixel (0, 0) sits at 0 Å at the points ``j·target`` Å of
  a new grid (phasestem's frame convention).

Three orders (``order=``):

* ``"linear"`` (the default of :func:`resize` and :func:`sample_on_grid`): bilinear; beyond the last pixel the edge
  value is repeated. Cheap, but it low-passes: on lattice phase images at 0.2–0.4 Å it costs E_φ 0.04–0.08 on the
  way down alone (``benchmarks/learned/README.md``);
* ``"cubic"``: cubic B-spline interpolation (``scipy.ndimage``; half-sample mirror at the edges for ``resize``,
  the edge value repeated for ``sample_on_grid``);
* ``"fourier"``: band-limited trigonometric interpolation of the image taken as one period of a periodic image
  (a periodic sinc kernel; down-sampling keeps only the output grid's band, so it does not alias). Exact for a
  band-limited periodic image, e.g. a cosine with a whole number of periods over the field; an image that is not
  periodic rings near its edges. :data:`BAND_LIMITED` is this order: phasestem uses it wherever a **phase
  image** changes grid (simulated phases are periodic over their cell; a reconstruction's field edges are the
  weakly lit margin).

Torch tensors stay tensors (differentiable, on their device and dtype, every order: ``cubic`` and ``fourier`` are
applied as separable matrices); NumPy arrays come back as float32 arrays.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from ..base.errors import ConfigError

Order = Literal["linear", "cubic", "fourier"]
#: how the cubic spline reads beyond the edges (scipy.ndimage's modes)
SplineEdge = Literal["reflect", "nearest", "mirror", "wrap", "grid-wrap", "constant", "grid-constant"]
ORDERS: tuple[str, ...] = get_args(Order)
#: the order phasestem uses wherever a phase image changes grid
BAND_LIMITED: Order = "fourier"

__all__ = ["ORDERS", "BAND_LIMITED", "resize", "resample_image", "sample_on_grid", "interpolation_matrix"]


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise ConfigError(f"resampling order must be one of {', '.join(ORDERS)}, got {order!r}")
    return order


def _fourier_matrix(n_in: int, u: np.ndarray, n_band: int) -> np.ndarray:
    """(len(u), n_in) weights of the periodic trigonometric interpolant of ``n_in`` samples (sample i at u = i,
    period n_in) at positions ``u`` (input-pixel units), keeping ``n_band`` frequencies (≤ n_in; an even band's
    highest frequency as a cosine, half weight)."""
    n_band = max(1, min(int(n_band), n_in))
    d = 2 * np.pi * (u[:, None] - np.arange(n_in)[None, :]) / n_in  # (n_out, n_in)
    kmax = (n_band - 1) // 2
    # Σ_{|k| ≤ kmax} e^{ikd} in closed form (the Dirichlet kernel), 2·kmax + 1 where d is a whole period
    half = np.sin(d / 2)
    at_period = np.abs(half) < 1e-12
    out = np.where(at_period, 2 * kmax + 1.0, np.sin((kmax + 0.5) * d) / np.where(at_period, 1.0, half))
    if n_band % 2 == 0:
        out += np.cos((n_band // 2) * d)
    return out / n_in


def _cubic_matrix(n_in: int, u: np.ndarray, mode: SplineEdge) -> np.ndarray:
    """(len(u), n_in) weights of cubic B-spline interpolation (scipy.ndimage, ``mode`` at the edges) at ``u``."""
    from scipy import ndimage

    eye = np.eye(n_in)
    coords = [np.repeat(u[:, None], n_in, 1), np.repeat(np.arange(n_in, dtype=float)[None, :], len(u), 0)]
    return ndimage.map_coordinates(eye, coords, order=3, mode=mode)


@lru_cache(maxsize=64)
def _matrix(n_in: int, u: tuple[float, ...], order: str, n_band: int, mode: SplineEdge) -> np.ndarray:
    ua = np.asarray(u, dtype=np.float64)
    return _fourier_matrix(n_in, ua, n_band) if order == "fourier" else _cubic_matrix(n_in, ua, mode)


def interpolation_matrix(n_in: int, positions: np.ndarray, order: Order, n_band: int | None = None,
                         mode: SplineEdge = "reflect") -> np.ndarray:
    """The 1-D resampling of ``order`` ('cubic' or 'fourier') as a float64 matrix (len(positions), n_in):
    ``out = M @ x`` samples x (sample i at position i) at ``positions`` (input-pixel units). ``n_band``: the
    Fourier order's band in frequencies per ``n_in`` samples (default n_in); ``mode``: the spline's edges."""
    order = _check_order(order)
    if order == "linear":
        raise ConfigError("interpolation_matrix: 'linear' is applied directly, not as a matrix")
    pos = tuple(float(p) for p in np.asarray(positions, dtype=np.float64).ravel())
    return _matrix(int(n_in), pos, order, int(n_band if n_band is not None else n_in), mode)


def _apply_separable(x: np.ndarray | torch.Tensor, my: np.ndarray, mx: np.ndarray) -> np.ndarray | torch.Tensor:
    """(…, H, W) → (…, h, w) = My · x · Mxᵀ, torch tensors differentiably in their own dtype and device."""
    if torch.is_tensor(x):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        a = torch.as_tensor(my, dtype=dtype, device=x.device)
        b = torch.as_tensor(mx, dtype=dtype, device=x.device)
        return torch.matmul(torch.matmul(a, x.to(dtype)), b.T)
    arr = np.asarray(x, dtype=np.float64)
    return (my @ arr @ mx.T).astype(np.float32)


def resize(x: np.ndarray | torch.Tensor, shape: tuple[int, int], order: Order = "linear"
           ) -> np.ndarray | torch.Tensor:
    """(…, H, W) → (…, h, w) = ``shape`` over the same field of view, interpolated by ``order`` (module doc);
    the input itself when the size does not change. Values are interpolated, not summed: scale by (H·W)/(h·w) to
    keep totals."""
    order = _check_order(order)
    shape = (int(shape[0]), int(shape[1]))
    if tuple(x.shape[-2:]) == shape:
        return x
    if order == "linear":
        t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x, dtype=np.float32))
        lead = t.shape[:-2]
        out = F.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=shape, mode="bilinear", align_corners=False)
        out = out.reshape(*lead, *shape)
        return out if torch.is_tensor(x) else out.numpy()
    (H, W), (h, w) = x.shape[-2:], shape
    uy = (np.arange(h) + 0.5) * H / h - 0.5  # output pixel centres in input-pixel units
    ux = (np.arange(w) + 0.5) * W / w - 0.5
    my = interpolation_matrix(H, uy, order, min(H, h))
    mx = interpolation_matrix(W, ux, order, min(W, w))
    return _apply_separable(x, my, mx)


def resample_image(img: torch.Tensor, sampling: tuple[float, float], target: tuple[float, float],
                   order: Order = "linear") -> torch.Tensor:
    """A 2-D image on pixels of ``sampling`` Å → the same field of view on pixels of ``target`` Å (``order``;
    differentiable). Unchanged when the grid size would not change."""
    new = tuple(max(1, round(n * s / t)) for n, s, t in zip(img.shape[-2:], sampling, target, strict=True))
    return resize(img, new, order)


def sample_on_grid(image: np.ndarray | torch.Tensor, sampling: tuple[float, float],
                   target_sampling: tuple[float, float], shape: tuple[int, int],
                   start: tuple[float, float] = (0.0, 0.0), order: Order = "linear") -> np.ndarray | torch.Tensor:
    """``image`` (H, W) with pixel (0, 0) at 0 Å and pixels of ``sampling`` Å, sampled at the points
    (start_y + i·dy', start_x + j·dx') Å of a ``shape`` grid of ``target_sampling`` Å by ``order``. Beyond the
    image: the edge value ('linear', 'cubic') or the periodic continuation ('fourier'); zeros where the samplings
    are equal and ``start`` is 0, where the image is copied. Returns float32 (h, w) for arrays, a tensor for a
    tensor ('cubic' and 'fourier' differentiable)."""
    order = _check_order(order)
    same = all(abs(a - b) < 1e-9 for a, b in zip(sampling, target_sampling, strict=True))
    if same and not any(start):
        h, w = min(shape[0], image.shape[0]), min(shape[1], image.shape[1])
        if torch.is_tensor(image):
            out_t = image.new_zeros(shape)
            out_t[:h, :w] = image[:h, :w]
            return out_t
        out = np.zeros(shape, np.float32)
        out[:h, :w] = image[:h, :w]
        return out
    yy = (start[0] + np.arange(shape[0]) * target_sampling[0]) / sampling[0]
    xx = (start[1] + np.arange(shape[1]) * target_sampling[1]) / sampling[1]
    if order != "linear":
        H, W = image.shape[-2:]
        by = min(H, int(np.floor(H * sampling[0] / target_sampling[0] + 1e-9)))
        bx = min(W, int(np.floor(W * sampling[1] / target_sampling[1] + 1e-9)))
        my = interpolation_matrix(H, yy, order, by, mode="nearest")
        mx = interpolation_matrix(W, xx, order, bx, mode="nearest")
        return _apply_separable(image, my, mx)
    is_t = torch.is_tensor(image)
    img = image.detach().cpu().numpy() if is_t else np.asarray(image)
    y0 = np.clip(np.floor(yy).astype(int), 0, img.shape[0] - 2)
    x0 = np.clip(np.floor(xx).astype(int), 0, img.shape[1] - 2)
    fy = np.clip(yy - y0, 0, 1)[:, None]
    fx = np.clip(xx - x0, 0, 1)[None, :]
    a, b = img[np.ix_(y0, x0)], img[np.ix_(y0, x0 + 1)]
    c, d = img[np.ix_(y0 + 1, x0)], img[np.ix_(y0 + 1, x0 + 1)]
    res = ((1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)).astype(np.float32)
    return torch.as_tensor(res) if is_t else res
