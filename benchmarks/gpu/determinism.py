"""Is the eager GPU step deterministic, and does the CUDA-graph step change its arithmetic? (issue 52, item 3)

    python benchmarks/gpu/determinism.py [--repeats 4] [--json OUT.json]

The flaky equality test (``tests/test_recon_compiled.py``, lsq, 1 slice, 2 probe modes, Poisson loss, 36 positions in
batches of 16) is rerun here case by case: the eager step ``--repeats`` times from the same start, the same with
``torch.use_deterministic_algorithms(True)``, then the ``cuda_graph`` and ``auto`` steps. Eager runs that differ
among themselves mean the eager step is not deterministic (atomic scatter-adds sum in a varying order); graph runs
that differ from every eager run by more than the eager runs among themselves mean capture changes the arithmetic.
Writes per mode the loss per epoch of each repeat, and the largest relative loss and absolute object difference
against the first eager run.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from phasestem.recon.model import Ptychography  # noqa: E402
from phasestem.recon.settings.losses import LossConfig  # noqa: E402
from phasestem.recon.synthetic import synthetic_scan  # noqa: E402


def dataset():
    """The test's scan: 6 × 6 positions at 1 Å, 32² patterns, one slice, noise-free."""
    return synthetic_scan(window=(32, 32), sampling=0.2, scan_shape=(6, 6), scan_step=1.0, energy=300e3,
                            semiangle=20.0, c10=-100.0, n_slices=1, slice_thickness=10.0, max_phase=0.3, seed=0)


def run(ds, mode: str, deterministic: bool = False, device: str = "cuda") -> tuple[list[float], torch.Tensor]:
    """Loss per epoch and the final object of the test's 3 lsq epochs (positions refined from epoch 2)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        model = Ptychography.from_dataset(ds, n_slices=1, slice_thickness=10.0, n_probe_modes=2).to(device)
        model.set_learning_rates(positions={"lr": 1e-3, "start": 2})
        loss = list(model._optimize("lsq", 3, ds, batch_size=16, progress=False, losses=LossConfig(poisson=1.0),
                                    compile=mode))
        return [float(v) for v in loss], model.get_object().detach().cpu()
    finally:
        torch.use_deterministic_algorithms(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (eager modes only)")
    args = ap.parse_args()
    ds = dataset()
    ref_loss, ref_obj = run(ds, "none", device=args.device)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "modes": {}}
    modes = [("eager", "none", False), ("eager_deterministic", "none", True)]
    if args.device == "cuda":
        modes += [("cuda_graph", "cuda_graph", False), ("auto", "auto", False)]
    for name, mode, det in modes:
        rows = []
        for _ in range(args.repeats):
            try:
                loss, obj = run(ds, mode, det, args.device)
            except Exception as exc:  # a mode that fails is reported, the others still run
                rows.append({"error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            rel = max(abs(a - b) / abs(b) for a, b in zip(loss, ref_loss, strict=True))
            rows.append({"loss": loss, "max_rel_loss_diff": rel,
                         "max_abs_object_diff": float((obj - ref_obj).abs().max()),
                         "bit_identical": bool(torch.equal(obj, ref_obj) and loss == ref_loss)})
        result["modes"][name] = rows
        print(name, json.dumps([{k: v for k, v in r.items() if k != "loss"} for r in rows]), flush=True)
    result["reference_loss"] = ref_loss
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
