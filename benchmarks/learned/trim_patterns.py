"""A smaller copy of a simulation file for a lent GPU, whose working tree travels with at most 64 MiB: every
``dp_set_*`` rounded to ``--bits`` mantissa bits (relative change ≤ 2^-bits per value; 12: 2.4e-4, the spread of
Poisson counts at 1.7e7 e⁻ per detector pixel) and stored byte-shuffled with gzip 9; the rest copied as it is.
It is what ``ad_best.py`` read on the GPU; ``--check`` prints the largest relative change.

    python benchmarks/learned/trim_patterns.py IN.h5 OUT.h5 --bits 12
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np


def trimmed(a: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``a`` rounded to nearest with ``bits`` of the 23 mantissa bits kept."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    drop = 23 - bits
    half = np.uint64(1 << (drop - 1))
    mask = np.uint64((0xFFFFFFFF >> drop) << drop)
    return ((u + half) & mask).astype(np.uint32).view(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--bits", type=int, default=12)
    args = p.parse_args(argv)
    if not 1 <= args.bits <= 22:
        p.error("--bits must be 1 … 22")
    worst = 0.0
    with h5py.File(args.src, "r") as src, h5py.File(args.dst, "w") as dst:
        dst.attrs.update(src.attrs)
        for name in src:
            if name.startswith("dp_set_"):
                a = src[name][...]
                b = trimmed(a, args.bits)
                nz = a != 0
                worst = max(worst, float(np.max(np.abs(b[nz] - a[nz]) / np.abs(a[nz]))))
                d = dst.create_dataset(name, data=b, chunks=(1,) + b.shape[1:], shuffle=True, compression="gzip",
                                       compression_opts=9)
                d.attrs.update(src[name].attrs)
            else:
                src.copy(name, dst)
    print(f"{args.dst}: {args.dst.stat().st_size / 2**20:.1f} MiB, largest relative change {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
