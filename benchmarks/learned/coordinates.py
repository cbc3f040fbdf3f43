"""Coordinates that carry information (issue 14, item 2): does PatchRecoveryNet use the sub-pixel offset
between a block's scan positions and the pixel frame of its target patch?

The seed crops every block's target patch around ``bright_center = round(block centre in px)``, so the
patterns of a block sit up to half a phase pixel off the patch's pixel frame (up to 0.92 px between the
seed's blocks). Block-centred coordinates (``coords: block_centre``, the models saved before) are the same
for every block and cannot say so; patch-frame coordinates (``coords: patch_frame``, now the default,
:meth:`phasestem.learn.data.BlockGeometry.frame_coords`) can.

Data (made here, one block per item; an internal plumbing check, not an accuracy claim): a periodic
phase of Gaussian blobs (``blob_phase``), a block of ``block``² scan positions whose centre sits at a
random sub-pixel offset (uniform in ±0.5 px per axis) from the pixel that its target patch is centred on;
the target is the ``patch``² crop in that pixel frame. Patterns are either ``windows`` (the phase seen
through a ``window``² window centred on each scan position, Fourier-interpolated: an idealised detector
that isolates the coordinate question) or ``simulated`` (phasestem's forward model: over-focused probe,
sub-pixel positions, the default pattern preprocessing).

Two identical tiny PatchRecoveryNets (same seed, same batches) are trained, one given the patch-frame
coordinates and one with the coordinates zeroed (``coords: none``); both are scored on held-out blocks.
The shift test moves the coordinates of held-out blocks by a known sub-pixel amount and measures how far
the predicted patch moves (normalised cross-correlation of the patch interiors, sub-pixel by cubic-spline
shifts, :func:`measure_shift`).

Measured (CPU, 1 thread; ``python benchmarks/learned/coordinates.py``), see docs/benchmarks.md:
windows, 3000 steps of batch 32 on 4000 blocks, 100 held-out blocks, 40 blobs of σ 0.6–1.0 Å, 0.5 Å pixels:

- held-out RMSE (rad; target std 0.166): with coordinates 0.0325, the same net with them zeroed 0.0443 (−26 %);
  the net trained with them but fed block-centred coordinates (the rounding hidden) 0.0426;
- coordinates moved by ±0.40 px: the predicted patch moves by a median of +0.341 / −0.342 px along y and
  +0.343 / −0.343 px along x (85 % of the applied shift, right sign; interquartile range 0.15–0.23 px over
  blocks); the zeroed net does not move (0.000 px); the estimator on exactly shifted patches: 0.4004 px for 0.40;
- 309 s / 172 s training on one CPU thread. Shorter training uses them less: 2500 steps with 10 blobs gave
  0.0195 vs 0.0244 and a 0.17–0.19 px response; 400 steps none at all.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from phasestem.learn.data.preprocess import Preprocess
from phasestem.learn.data.synthetic import blob_phase
from phasestem.learn.nets.patch import PatchRecoveryNet

SETUP = dict(block=4, step=2.0, ps=0.5, n_px=48, window=12, patch=16)
BLOBS = dict(n_blobs=40, sigma=(0.6, 1.0), amplitude=(0.3, 0.6))  # σ 1.2-2 px: half a pixel matters


def make_blocks(n: int, seed: int, measurement: str = "windows", block: int = 4, step: float = 2.0,
                ps: float = 0.5, n_px: int = 48, window: int = 12, patch: int = 16, offsets: np.ndarray | None = None
                ) -> dict[str, torch.Tensor]:
    """``n`` blocks: ``patterns`` (n, block², w, w), ``coords`` (n, block², 2) Å in the patch frame, ``target``
    (n, patch, patch) rad, ``offset`` (n, 2) Å (block centre − patch-frame centre pixel)."""
    rng = np.random.default_rng(seed)
    c0 = n_px // 2
    g = (np.arange(block) - (block - 1) / 2) * step
    local = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # (T, 2) Å about the block centre
    k = np.fft.fftfreq(n_px, ps)
    h = window // 2
    if measurement == "simulated":
        from phasestem.physics.operator import ForwardModel, transmission_function
        from phasestem.physics.optics import make_probe

        probe = make_probe((window, window), (ps, ps), 300e3, 12.0, {"C10": 60.0})
        fm = ForwardModel((window, window), (ps, ps), 300e3)
        pre = Preprocess()
    pats, coords, targets, offs = [], [], [], []
    for i in range(n):
        phase = blob_phase(n_px, ps, rng, **BLOBS)
        off = rng.uniform(-0.5, 0.5, 2) * ps if offsets is None else np.asarray(offsets[i], float)
        pos = c0 * ps + off + local  # scan positions, Å (pixel m sits at m·ps)
        if measurement == "windows":
            f = np.fft.fft2(phase)
            ey = np.exp(2j * np.pi * k[None, :] * pos[:, :1])  # (T, n_px): f(x + r) ↔ F(k) e^{2πi k r}
            ex = np.exp(2j * np.pi * k[None, :] * pos[:, 1:])
            shifted = np.fft.ifft2(f[None] * ey[:, :, None] * ex[:, None, :]).real  # value at m = phase(m·ps + r)
            p = np.roll(shifted, (h, h), axis=(1, 2))[:, :window, :window]
            pats.append(torch.from_numpy(p.astype(np.float32)))
        else:
            obj = transmission_function(torch.from_numpy(phase))[None, None]
            with torch.no_grad():
                p = fm(obj, probe, torch.tensor(pos, dtype=torch.float32))
            pats.append(pre(p.float()))
        coords.append(off + local)
        targets.append(phase[c0 - patch // 2:c0 + patch // 2, c0 - patch // 2:c0 + patch // 2])
        offs.append(off)
    return {"patterns": torch.stack(pats), "coords": torch.tensor(np.array(coords), dtype=torch.float32),
            "target": torch.tensor(np.array(targets), dtype=torch.float32),
            "offset": torch.tensor(np.array(offs), dtype=torch.float32)}


def tiny_net(coords: str, block: int = 4, patch: int = 16, seed: int = 0) -> PatchRecoveryNet:
    torch.manual_seed(seed)
    return PatchRecoveryNet({"size": "tiny", "block": block, "patch": patch, "coords": coords,
                             "pos_wavelengths": (0.5, 32.0)})


def train(net: PatchRecoveryNet, data: dict[str, torch.Tensor], steps: int, batch: int = 32, lr: float = 2e-3,
          seed: int = 0) -> list[float]:
    """Adam with a cosine schedule on random batches of ``data`` (the same batches for the same seed)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    n = len(data["target"])
    losses = []
    net.train()
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=gen)
        loss = (net(data["patterns"][idx], data["coords"][idx]) - data["target"][idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def predict(net: PatchRecoveryNet, patterns: torch.Tensor, coords: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    net.eval()
    return torch.cat([net(patterns[i:i + chunk], coords[i:i + chunk]) for i in range(0, len(patterns), chunk)])


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).square().mean().sqrt())


def measure_shift(ref: np.ndarray, moved: np.ndarray, margin: int = 3) -> np.ndarray:
    """(dy, dx) px by which ``moved`` is ``ref`` shifted (moved(x) ≈ ref(x − d)): the maximum of the normalised
    cross-correlation of ``moved``'s interior (``margin`` px in from the edges) with ``ref`` shifted by d (cubic
    spline interpolation), first on a 0.25 px grid within ±2 px, then refined to ~0.001 px (Nelder–Mead).
    The interior-only correlation is what keeps the estimate unbiased: the zero-padded correlation of two
    finite crops peaks near d = 0 whatever their shift (their supports correlate best unshifted)."""
    from scipy import ndimage, optimize

    ref = np.asarray(ref, float)
    inner = (slice(margin, ref.shape[0] - margin), slice(margin, ref.shape[1] - margin))
    b = np.asarray(moved, float)[inner]
    b = (b - b.mean()) / (b.std() + 1e-12)

    def ncc(d):
        a = ndimage.shift(ref, d, order=3, mode="nearest")[inner]
        return -float(np.mean(b * (a - a.mean()) / (a.std() + 1e-12)))

    grid = np.arange(-2, 2 + 1e-9, 0.25)
    start = min(((y, x) for y in grid for x in grid), key=ncc)
    res = optimize.minimize(ncc, np.array(start), method="Nelder-Mead",
                            options={"xatol": 1e-3, "fatol": 1e-9, "initial_simplex": np.array(start) + np.array(
                                [[0, 0], [0.1, 0], [0, 0.1]])})
    return np.asarray(res.x)


def shift_response(net: PatchRecoveryNet, data: dict[str, torch.Tensor], shift_px: float, ps: float,
                   axis: int = 0) -> np.ndarray:
    """Measured shift (px, per block; along ``axis``) of the predicted patch when the block's coordinates move
    by ``shift_px`` phase pixels along ``axis`` (the patterns unchanged)."""
    moved = data["coords"].clone()
    moved[..., axis] += shift_px * ps
    a = predict(net, data["patterns"], data["coords"]).numpy()
    b = predict(net, data["patterns"], moved).numpy()
    return np.array([measure_shift(x, y)[axis] for x, y in zip(a, b, strict=True)])


def run(steps: int = 3000, n_train: int = 2000, n_test: int = 200, measurement: str = "windows", shift_px: float = 0.4,
        seed: int = 0) -> dict[str, float]:
    ps = SETUP["ps"]
    t0 = time.perf_counter()
    train_data = make_blocks(n_train, seed, measurement)
    test_data = make_blocks(n_test, seed + 1, measurement)
    t_data = time.perf_counter() - t0
    out: dict[str, float] = {"measurement": measurement, "steps": steps, "n_train": n_train, "n_test": n_test,
                             "data_s": round(t_data, 1)}
    nets = {}
    for mode in ("patch_frame", "none"):
        t0 = time.perf_counter()
        net = tiny_net(mode, seed=seed)
        losses = train(net, train_data, steps, seed=seed)
        nets[mode] = net
        out[f"train_s_{mode}"] = round(time.perf_counter() - t0, 1)
        out[f"final_train_mse_{mode}"] = float(np.mean(losses[-50:]))
        out[f"test_rmse_{mode}"] = rmse(predict(net, test_data["patterns"], test_data["coords"]), test_data["target"])
    out["test_rmse_target_std"] = float(test_data["target"].std())
    # the same trained net fed zero coordinates / block-centred coordinates (what it loses without them)
    net = nets["patch_frame"]
    centred = test_data["coords"] - test_data["coords"].mean(-2, keepdim=True)
    out["test_rmse_patch_frame_net_fed_block_centred"] = rmse(predict(net, test_data["patterns"], centred),
                                                              test_data["target"])
    for axis in (0, 1):
        for s in (shift_px, -shift_px):
            m = shift_response(net, test_data, s, ps, axis)
            out[f"shift_{'yx'[axis]}_{s:+.2f}_median"] = float(np.median(m))
            out[f"shift_{'yx'[axis]}_{s:+.2f}_iqr"] = float(np.subtract(*np.percentile(m, [75, 25])))
    m = shift_response(nets["none"], test_data, shift_px, ps, 0)
    out["shift_y_no_coords_net_median"] = float(np.median(m))
    # the estimator itself, on exactly known shifts of ground-truth patches (Fourier-shifted crops)
    out["estimator_check_px"] = estimator_check(shift_px)
    return out


def estimator_check(shift_px: float, n: int = 20, seed: int = 5) -> float:
    """Median shift that :func:`measure_shift` reports for target patches moved by exactly ``shift_px`` (y)."""
    ps, n_px, patch = SETUP["ps"], SETUP["n_px"], SETUP["patch"]
    rng = np.random.default_rng(seed)
    c0 = n_px // 2
    k = np.fft.fftfreq(n_px)
    got = []
    for _ in range(n):
        phase = blob_phase(n_px, ps, rng, **BLOBS)
        moved = np.fft.ifft2(np.fft.fft2(phase) * np.exp(-2j * np.pi * k[:, None] * shift_px)).real
        sl = slice(c0 - patch // 2, c0 + patch // 2)
        got.append(measure_shift(phase[sl, sl], moved[sl, sl])[0])
    return float(np.median(got))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--measurement", choices=("windows", "simulated"), default="windows")
    ap.add_argument("--shift", type=float, default=0.4, help="coordinate shift in phase pixels")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args.steps, args.n_train, args.n_test, args.measurement, args.shift)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
