"""Sub-commands that apply the autoencoder and Phaseformer: ``embed``, ``refine`` and ``make-pairs``. Thin: parse,
call :mod:`.restore_apply`, report. (They are trained by ``phasestem train autoencoder|phaseformer``.)"""
from __future__ import annotations

import argparse
import json
import logging

from ..configfile import parse_set_options, read_yaml_mapping, validate

log = logging.getLogger("phasestem.learn")

_FMT = argparse.RawDescriptionHelpFormatter


def _overrides(items: list[str] | None) -> dict:
    return parse_set_options(items)


class _ModelFlag(argparse.Action):
    """``--model`` (``--checkpoint``, its older name, still works with a warning)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.old_model_flag = option_string == "--checkpoint"  # warned once logging is set up
        setattr(namespace, self.dest, values)


def _warn_old_flags(args) -> None:
    if getattr(args, "old_model_flag", False):
        log.warning("--checkpoint is deprecated: use --model (same meaning)")


def _embed(args) -> int:
    from .apply import embed_file

    _warn_old_flags(args)
    res = embed_file(args.data, args.model, args.out, png=not args.no_png, device=args.device,
                     batch_size=args.batch_size, report=args.report, summary=args.summary,
                     patterns_key=args.patterns_key, sample=args.sample, bad_pixels=args.bad_pixels)
    if res["masked"]:
        print(f"{args.data}: replaced {res['masked']} non-finite values by the median of their finite neighbours")
    print(f"latent maps {res['shape']} (latent, scan_y, scan_x) → {res['out']}"
          + (f" and {res['png']}" if res["png"] else ""))
    if res["report"]:
        print("reconstruction of {n} patterns: PSNR {psnr:.2f} dB, SSIM {ssim:.4f}, MSE {mse:.3g}".format(
            **res["report"]))
    return 0


def _refine(args) -> int:
    from .apply import refine_file

    _warn_old_flags(args)
    res = refine_file(args.image, args.model, args.out, png=not args.no_png, device=args.device,
                      size=None if args.size == 0 else args.size, key=args.key, bad_pixels=args.bad_pixels)
    print(f"refined phase {res['shape']} and ×2 {res['shape_x2']} (rad) → {res['out']}"
          + (f" and {res['png']}" if res["png"] else ""))
    return 0


def _make_pairs(args) -> int:
    from .apply import make_pairs
    from .config import MakePairsConfig

    data = read_yaml_mapping(args.config) if args.config else {}
    if args.files:
        data["files"] = args.files
    if args.out:
        data["out"] = args.out
    if args.copies is not None:
        data["copies"] = args.copies
    if args.seed is not None:
        data["seed"] = args.seed
    for key in ("inputs_from", "stitch_model", "ad_epochs", "device"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    cfg = validate(MakePairsConfig, data, args.config or "make-pairs")
    from ..safety import refuse_output_over_inputs
    from .data import expand_paths

    refuse_output_over_inputs(cfg.out, [args.config, *expand_paths(cfg.files)])
    from .pair_sources import make_measured_pairs, parse_inputs_from

    kind, _ = parse_inputs_from(cfg.inputs_from)
    if kind == "degrade":
        path = make_pairs(cfg.files, cfg.out, cfg.degradation, cfg.copies, cfg.seed)
    else:
        path = make_measured_pairs(cfg.files, cfg.out, cfg.inputs_from, cfg.stitch_model, cfg.ad_epochs, cfg.device)
    import h5py

    with h5py.File(path, "r") as f:
        n, shape = f["gt"].shape[0], f["gt"].shape[1:]
    what = {"degrade": "degraded phase", "stitch": "network prediction", "ad": "AD reconstruction"}[kind]
    print(f"{n} pairs of {shape} (input = {what}, gt = true phase) → {path}")
    print(json.dumps(cfg.degradation.model_dump() if kind == "degrade" else {"inputs_from": cfg.inputs_from}))
    return 0


def register(subparsers, train_subparsers) -> None:
    """Add ``embed``, ``refine`` and ``make-pairs`` (``train autoencoder|phaseformer`` are in :mod:`.commands`)."""
    p = subparsers.add_parser(
        "embed", help="latent maps of a 4D-STEM scan with a trained autoencoder", formatter_class=_FMT,
        description="Encode every diffraction pattern of a scan; write each latent channel as an image over "
                    "the scan grid (HDF5 'latent_maps' (D, Sy, Sx) + a PNG grid).",
        epilog="Examples:\n  phasestem embed data/simulation_data1.h5 --sample 0 --model runs/autoencoder\n"
               "  phasestem embed scan.npy --model runs/ae/best --out ae_latent.h5 --report 16 --summary")
    p.add_argument("data", help="4D-STEM file (any format phasestem.io reads)")
    p.add_argument("--model", "--checkpoint", dest="model", required=True, action=_ModelFlag,
                   help="model file or run folder (best/ then last/); --checkpoint: older name")
    p.add_argument("--out", help="output HDF5 (default: DATA_latent.h5 in the current folder)")
    p.add_argument("--sample", type=int, help="sample index in a simulation file (default: the first)")
    p.add_argument("--patterns-key", help="dataset holding the patterns (HDF5/npz of other layouts)")
    p.add_argument("--batch-size", type=int, default=256, help="patterns per forward pass")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--report", type=int, default=0, metavar="N",
                   help="also reconstruct N random patterns: PSNR/SSIM/MSE and a comparison PNG")
    p.add_argument("--summary", action="store_true", help="print the model summary (parameters, shapes per size)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG grid")
    p.add_argument("--bad-pixels", choices=["refuse", "mask"], default="refuse",
                   help="NaN/Inf pattern values: refuse the file (default) or replace them by the median of their "
                        "finite neighbours (the count is printed)")
    p.set_defaults(func=_embed)

    p = subparsers.add_parser(
        "refine", help="restore a coarse phase image with a trained Phaseformer (256² and 512² outputs)",
        formatter_class=_FMT,
        description="Resize a coarse phase image (stitched or reconstructed) to SIZE², run Phaseformer and write "
                    "'phase' (SIZE²) and 'phase_x2' ((2·SIZE)²) in rad to HDF5 (+ a PNG).",
        epilog="Examples:\n  phasestem refine stitched_phase.npy --model runs/phaseformer\n"
               "  phasestem refine recon.h5 --key object_phase --model runs/pf/best --size 0 --out pf.h5")
    p.add_argument("image", help="coarse phase: .npy, .png, .tif or HDF5 (--key)")
    p.add_argument("--model", "--checkpoint", dest="model", required=True, action=_ModelFlag,
                   help="model file or run folder (best/ then last/); --checkpoint: older name")
    p.add_argument("--key", help="HDF5 dataset of the phase (default: 'phase' or the only 2-D dataset)")
    p.add_argument("--size", type=int, default=256, help="working size in px (0: keep the input size)")
    p.add_argument("--out", help="output HDF5 (default: IMAGE_refined.h5 in the current folder)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--no-png", action="store_true", help="skip the comparison PNG")
    p.add_argument("--bad-pixels", choices=["refuse", "mask"], default="refuse",
                   help="NaN/Inf pixels: refuse the image (default) or replace them by the median of their finite "
                        "neighbours (the count is logged)")
    p.set_defaults(func=_refine)

    p = subparsers.add_parser(
        "make-pairs", help="coarse → true phase training pairs for Phaseformer from simulation files",
        formatter_class=_FMT,
        description="Write a pairs file with datasets 'input' and 'gt' (N, H, W) from the samples of simulation "
                    "files, usable in data.train of a Phaseformer config. gt is the true phase phase_{i}; the input "
                    "is, with --inputs-from: 'degrade' (default) the true phase degraded (blur, binning, noise; "
                    "--copies versions each); 'stitch:MODEL' the phase a trained end2end model (or a patch model "
                    "with --stitch-model) predicts from the sample's own patterns, as `phasestem predict` does; "
                    "'ad' a fast AD reconstruction of the patterns (--ad-epochs epochs of the lsq solver from a "
                    "flat object, nominal probe). The last two train Phaseformer on the route's real errors. "
                    "(Training configs may also list simulation files directly: degraded pairs are then made on "
                    "the fly.)",
        epilog="Examples:\n  phasestem make-pairs data/simulation_data*.h5 --out pairs/train_pairs.h5 --copies 4\n"
               "  phasestem make-pairs data/simulation_data1.h5 --inputs-from stitch:runs/end2end --out pairs/e2e.h5\n"
               "  phasestem make-pairs data/simulation_data1.h5 --inputs-from ad --ad-epochs 4 --out pairs/ad.h5\n"
               "  phasestem make-pairs --config configs/make_pairs.yaml")
    p.add_argument("files", nargs="*", help="simulation HDF5 files (or set 'files' in --config)")
    p.add_argument("--config", help="YAML with files, out, copies, seed and degradation settings")
    p.add_argument("--out", help="output pairs file (default pairs.h5)")
    p.add_argument("--copies", type=int, help="degraded versions per phase image")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--inputs-from", dest="inputs_from", metavar="SOURCE",
                   help="'degrade' (default), 'stitch:MODEL' (network predictions) or 'ad' (fast AD reconstructions)")
    p.add_argument("--stitch-model", dest="stitch_model", help="stitching model when MODEL of stitch:MODEL is a "
                   "patch model")
    p.add_argument("--ad-epochs", dest="ad_epochs", type=int, help="lsq epochs of --inputs-from ad (default 4)")
    p.add_argument("--device", help="torch device of the stitch / AD inputs (default cpu)")
    p.set_defaults(func=_make_pairs)
