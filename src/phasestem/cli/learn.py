"""The learned route's sub-commands: ``phasestem train patch|stitch|end2end|autoencoder|phaseformer``, ``predict``,
``evaluate``, ``embed``, ``refine`` and ``make-pairs``, and the seed's training scripts (:func:`stage_script`).
Thin: parse, call the library (:mod:`phasestem.learn.registry`, :mod:`phasestem.learn.apply`,
:mod:`phasestem.learn.evaluate`, :mod:`phasestem.learn.pair_sources`), report. Every network is trained by the same
command with the same flags (its registry entry)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..base import cliargs
from ..base.configfile import parse_set_options, read_yaml_mapping, resolve_config_paths, validate

log = logging.getLogger("phasestem.learn")

_FMT = argparse.RawDescriptionHelpFormatter


def _device_flag(p) -> None:
    cliargs.add_device(p, "auto")


def _model_flag(p) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", required=True, action=cliargs.Deprecated, new="--model",
                   old=("--checkpoint",), help="model file, run folder (best/, last/) or shipped name (seed-tiny)")


def _bad_pixels_flag(p, what: str) -> None:
    p.add_argument("--bad-pixels", choices=["refuse", "mask"], default="refuse",
                   help=f"NaN/Inf {what}: refuse them (default) or replace them by the median of their finite "
                        "neighbours (the count is logged)")


def register(subparsers, train_subparsers) -> None:
    """Add the learned-route sub-commands to the ``phasestem`` parser."""
    from ..learn.registry import NETWORKS

    for name, e in NETWORKS.items():
        example = f"train_{name}_tiny.yaml"
        p = train_subparsers.add_parser(
            name, help=f"train {e.help}", description=f"Train {e.help}. Settings come from a YAML file "
            "(see configs/; key 'network:'); flags override it; a copy is written to the run folder.",
            formatter_class=_FMT,
            epilog=f"Examples:\n  phasestem train {name} configs/{example}\n"
                   f"  phasestem train {name} configs/{example} --epochs 2 --out runs/try --resume\n"
                   f"  phasestem train {name} configs/{example} --set trainer.lr=3e-4 --dump-config",
        )
        cliargs.add_config(p, "training YAML (network, data, model, loss, trainer, out_dir); relative paths in it are "
                      "taken from its folder")
        cliargs.add_set(p, "trainer.lr=3e-4")
        cliargs.add_out(p, None, "run folder (overrides out_dir)", old=("--out-dir",))
        p.add_argument("--epochs", type=int, help="override trainer.epochs")
        p.add_argument("--lr", type=float, help="override trainer.lr")
        cliargs.add_device(p, what="overrides trainer.device")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last")
        cliargs.add_dump_config(p)
        p.set_defaults(func=_train, stage=name)

    p = subparsers.add_parser(
        "predict", help="learned phase of a 4D-STEM scan (HDF5 + PNG)", formatter_class=_FMT,
        description="Apply a trained End2End model (or a patch model + a stitching model) to one 4D-STEM scan "
                    "and write the 256² phase as HDF5 and PNG. The model's stored preprocessing is reapplied.",
        epilog="Examples:\n  phasestem predict data/simulation_data1.h5 --sample 3 --model runs/e2e --out results\n"
               "  phasestem predict scan.h5 --key /entry/data --model runs/patch --stitch-model runs/stitch "
               "--out-file phase.h5",
    )
    p.add_argument("input", help="4D-STEM file (any format phasestem.io reads)")
    p.add_argument("--model", required=True, help="end2end (or patch) model: weights file or run folder")
    p.add_argument("--stitch-model", help="stitching model, when --model is a patch model")
    cliargs.add_out_file(p, "INPUT_phase.h5 (INPUT_sampleN_phase.h5 with --sample; a PNG beside it)")
    cliargs.add_key(p, old=False)
    p.add_argument("--sample", type=int, help="sample index in a seed-000 training file")
    p.add_argument("--energy", type=float, help="beam energy (eV) when the file lacks it")
    _device_flag(p)
    p.add_argument("--no-png", action="store_true", help="skip the PNG")
    _bad_pixels_flag(p, "pattern values")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "evaluate", help="PSNR / SSIM / phase error of a learned model on its test split", formatter_class=_FMT,
        description="Evaluate an End2End model on the held-out test split it was trained with (or on other "
                    "files): per-sample CSV, a Markdown table against the training-mean baseline, and a figure.",
        epilog="Examples:\n  phasestem evaluate --model runs/e2e --out runs/e2e/eval\n"
               "  phasestem evaluate --model runs/e2e --files data/simulation_data5.h5 --max-samples 20",
    )
    p.add_argument("--model", required=True, help="end2end model: weights file or run folder")
    p.add_argument("--stitch-model", help="stitching model, when --model is a patch model")
    p.add_argument("--files", nargs="+", help="evaluate on these files instead of the stored test split")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="stored split to use")
    p.add_argument("--max-samples", type=int, help="evaluate at most N samples")
    p.add_argument("--batch-size", type=int, default=2, help="samples per batch")
    p.add_argument("--json", action="store_true", help="end with the written files as one JSON line (for scripts) "
                   "instead of the sentence")
    _device_flag(p)
    cliargs.add_out(p, "evaluation", "output folder (metrics.csv, summary.md, examples.png)")
    _bad_pixels_flag(p, "values in the data")
    p.set_defaults(func=_evaluate)

    _register_embed_refine_pairs(subparsers)


def _register_embed_refine_pairs(subparsers) -> None:
    """``embed`` (autoencoder), ``refine`` (Phaseformer) and ``make-pairs`` (Phaseformer's training pairs)."""
    p = subparsers.add_parser(
        "embed", help="latent maps of a 4D-STEM scan with a trained autoencoder", formatter_class=_FMT,
        description="Encode every diffraction pattern of a scan; write each latent channel as an image over "
                    "the scan grid (HDF5 'latent_maps' (D, Sy, Sx) + a PNG grid).",
        epilog="Examples:\n  phasestem embed data/simulation_data1.h5 --sample 0 --model runs/autoencoder\n"
               "  phasestem embed scan.npy --model runs/ae/best --out-file ae_latent.h5 --report 16 --summary")
    p.add_argument("data", help="4D-STEM file (any format phasestem.io reads)")
    _model_flag(p)
    cliargs.add_out_file(p, "DATA_latent.h5 (DATA_sampleN_latent.h5 with --sample; a PNG grid beside it)")
    p.add_argument("--sample", type=int, help="sample index in a simulation file (default: the first)")
    cliargs.add_key(p, "dataset holding the patterns (HDF5/npz of other layouts); --patterns-key: older name")
    p.add_argument("--batch-size", type=int, default=256, help="patterns per forward pass")
    _device_flag(p)
    p.add_argument("--report", type=int, default=0, metavar="N",
                   help="also reconstruct N random patterns: PSNR/SSIM/MSE and a comparison PNG")
    p.add_argument("--summary", action="store_true", help="print the model summary (parameters, shapes per size)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG grid")
    _bad_pixels_flag(p, "pattern values")
    p.set_defaults(func=_embed)

    p = subparsers.add_parser(
        "refine", help="restore a coarse phase image with a trained Phaseformer (256² and 512² outputs)",
        formatter_class=_FMT,
        description="Resize a coarse phase image (stitched or reconstructed) to SIZE², run Phaseformer and write "
                    "'phase' (SIZE²) and 'phase_x2' ((2·SIZE)²) in rad to HDF5 (+ a PNG).",
        epilog="Examples:\n  phasestem refine stitched_phase.npy --model runs/phaseformer\n"
               "  phasestem refine recon.h5 --key object_phase --model runs/pf/best --size 0 --out-file pf.h5")
    p.add_argument("image", help="coarse phase: .npy, .png, .tif or HDF5 (--key)")
    _model_flag(p)
    p.add_argument("--key", help="HDF5 dataset of the phase (default: 'phase' or the only 2-D dataset)")
    p.add_argument("--size", type=int, default=256, help="working size in px (0: keep the input size)")
    cliargs.add_out_file(p, "IMAGE_refined.h5 (a PNG beside it)")
    _device_flag(p)
    p.add_argument("--no-png", action="store_true", help="skip the comparison PNG")
    _bad_pixels_flag(p, "pixels")
    p.set_defaults(func=_refine)

    p = subparsers.add_parser(
        "make-pairs", help="coarse → true phase training pairs for Phaseformer from simulation files",
        formatter_class=_FMT,
        description="Write a pairs file with datasets 'input' and 'gt' (N, H, W) from the samples of simulation "
                    "files, usable in data.train of a Phaseformer config. gt is the true phase phase_{i}; the input "
                    "is, with --inputs-from: 'degrade' (default) the true phase degraded (blur, binning, noise; "
                    "--copies versions each); 'stitch:MODEL' the phase a trained end2end model (or a patch model "
                    "with --stitch-model) predicts from the sample's own patterns, as `phasestem predict` does; "
                    "'ad' phasestem's AD with reconstruct's defaults on its own grid, epochs 2, 4, 8 and the end "
                    "(the restorer's pairs: phasestem.learn.ad_pairs). The last two train on real errors. "
                    "(Training configs may also list simulation files directly: degraded pairs are then made on "
                    "the fly.)",
        epilog="Examples:\n  phasestem make-pairs data/simulation_data*.h5 --out pairs --copies 4\n"
               "  phasestem make-pairs data/simulation_data1.h5 --inputs-from stitch:runs/end2end "
               "--out-file pairs/e2e.h5\n"
               "  phasestem make-pairs data/simulation_data1.h5 --inputs-from ad --out-file pairs/ad.h5\n"
               "  phasestem make-pairs configs/make_pairs.yaml\n"
               "  phasestem make-pairs configs/make_pairs.yaml --dump-config")
    p.add_argument("inputs", nargs="*", metavar="[CONFIG.yaml] FILE",
                   help="a YAML config (files, out, copies, seed, degradation; a .yaml/.yml name, at most one) "
                        "and/or simulation HDF5 files (they replace the config's 'files')")
    p.add_argument("--config", dest="config_option", action=cliargs.Deprecated, new="the positional CONFIG.yaml",
                   help=argparse.SUPPRESS)
    p.add_argument("--out", metavar="DIR", help="output folder: the pairs file keeps its name (the config's 'out', "
                   "default pairs.h5) inside DIR")
    p.add_argument("--out-file", metavar="FILE", help="the pairs file itself (replaces the config's 'out')")
    p.add_argument("--copies", type=int, help="degraded versions per phase image")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--inputs-from", dest="inputs_from", metavar="SOURCE",
                   help="'degrade' (default), 'stitch:MODEL' (network predictions) or 'ad' (fast AD reconstructions)")
    p.add_argument("--stitch-model", dest="stitch_model", help="stitching model when MODEL of stitch:MODEL is a "
                   "patch model")
    p.add_argument("--ad-epochs", dest="ad_epochs", type=int, help="the AD recipe's epochs (default reconstruct's)")
    p.add_argument("--ad-electrons", dest="ad_electrons", nargs="+", type=_electrons, metavar="E", help="--inputs-from "
                   "ad: a copy per value, Poisson counts of E e⁻/pattern or 'none' noise-free (default: none)")
    cliargs.add_device(p, what="of the stitch / AD inputs (default cpu)")
    cliargs.add_dump_config(p)
    p.set_defaults(func=_make_pairs)


def _train(args) -> int:
    from ..learn.registry import load_run_config, train_run

    overrides = parse_set_options(args.set)
    if args.out:
        overrides["out_dir"] = args.out
    if args.epochs is not None:  # 0 is refused by the config, not ignored
        overrides["trainer.epochs"] = args.epochs
    if args.lr is not None:  # 0 is refused by the config, not ignored
        overrides["trainer.lr"] = args.lr
    if args.device:
        overrides["trainer.device"] = args.device
    if args.resume:
        overrides["resume"] = True
    cfg = load_run_config(args.config, args.stage, overrides)
    if args.dump_config:
        from ..base.configdump import config_yaml

        sys.stdout.write(config_yaml(cfg, f"phasestem train {args.stage}"))
        return 0
    summary = train_run(cfg)
    best = summary["best"] if summary["best"] is None else round(summary["best"], 5)
    if summary["main_process"]:  # one line per run, not one per data-parallel process
        print(f"{args.stage}: {summary['epochs_run']} epochs, {summary['global_step']} steps, "
              f"best {summary['monitor']} = {best} (epoch {summary['best_epoch']}); "
              f"model: {Path(cfg.out_dir) / 'best'} (run folder {cfg.out_dir})")
    return 0


def _predict(args) -> int:
    from ..learn.apply import predict_file

    out = cliargs.result_file(args, cliargs.stem_name(args.input, _sample_part(args.sample) + "_phase.h5"),
                              (args.input, args.model, args.stitch_model))
    path = predict_file(args.input, args.model, out, stitch_path=args.stitch_model, device=args.device,
                        png=not args.no_png, sample=args.sample, energy=args.energy, bad_pixels=args.bad_pixels,
                        patterns_key=args.patterns_key)
    print(f"phase written to {path}" + ("" if args.no_png else f" and {path.with_suffix('.png')}"))
    return 0


def _evaluate(args) -> int:
    from ..base.safety import refuse_output_over_inputs
    from ..learn.apply import load_predictor
    from ..learn.evaluate import REPORT_FILES, evaluate_model, format_table, test_index, write_report

    refuse_output_over_inputs(args.out, [args.model, args.stitch_model, *(args.files or [])], written=REPORT_FILES)
    from ..base.lock import hold_output

    with hold_output(args.out, "phasestem evaluate"):
        model, meta = load_predictor(args.model, args.stitch_model, args.device)
        index, train_index = test_index(meta, args.files, args.split)
        refuse_output_over_inputs(args.out, [fi.path for fi in index.files], written=REPORT_FILES)
        result = evaluate_model(model, meta, index, train_index, args.batch_size, args.device, args.max_samples,
                                bad_pixels=args.bad_pixels)
        paths = write_report(result, args.out)
    print(format_table(result))
    if result.get("bad_pixels_masked"):
        print(f"replaced {result['bad_pixels_masked']} non-finite values by the median of their finite neighbours")
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        print(f"wrote {paths['csv']} (per sample), {paths['table']} (this table) and {paths['figure']} (examples)")
    return 0


def _sample_part(sample: int | None) -> str:
    return "" if sample is None else f"_sample{sample}"


def _embed(args) -> int:
    from ..learn.apply import embed_file

    out = cliargs.result_file(args, cliargs.stem_name(args.data, _sample_part(args.sample) + "_latent.h5"),
                              (args.data, args.model))
    res = embed_file(args.data, args.model, out, png=not args.no_png, device=args.device,
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
    from ..learn.apply import refine_file

    out = cliargs.result_file(args, cliargs.stem_name(args.image, "_refined.h5"), (args.image, args.model))
    res = refine_file(args.image, args.model, out, png=not args.no_png, device=args.device,
                      size=None if args.size == 0 else args.size, key=args.key, bad_pixels=args.bad_pixels)
    print(f"refined phase {res['shape']} and ×2 {res['shape_x2']} (rad) → {res['out']}"
          + (f" and {res['png']}" if res["png"] else ""))
    return 0


def _electrons(text: str) -> float | None:  # --ad-electrons: e⁻ per pattern, or 'none' (noise-free)
    return None if text.strip().lower() in ("none", "null", "clean") else float(text)


def _make_pairs(args) -> int:
    from ..learn.config import MakePairsConfig

    config, files = cliargs.config_among(args.inputs, args.config_option)
    data = resolve_config_paths(MakePairsConfig, read_yaml_mapping(config), Path(config).parent) if config else {}
    if files:
        data["files"] = files
    if args.out or args.out_file:  # the pairs file keeps its name inside --out DIR; --out-file replaces it
        data["out"] = str(cliargs.result_file(args, Path(str(data.get("out") or "pairs.h5")).name, (config, *files)))
    if args.copies is not None:
        data["copies"] = args.copies
    if args.seed is not None:
        data["seed"] = args.seed
    for key in ("inputs_from", "stitch_model", "ad_epochs", "ad_electrons", "device"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    cfg = validate(MakePairsConfig, data, config or "make-pairs")
    if args.dump_config:
        from ..base.configdump import config_yaml

        sys.stdout.write(config_yaml(cfg, "phasestem make-pairs"))
        return 0
    from ..base.safety import refuse_output_over_inputs
    from ..learn.data import expand_paths

    refuse_output_over_inputs(cfg.out, [config, *expand_paths(cfg.files)])
    from ..learn.pair_sources import make_measured_pairs, make_pairs, parse_inputs_from

    kind, _ = parse_inputs_from(cfg.inputs_from)
    if kind == "degrade":
        path = make_pairs(cfg.files, cfg.out, cfg.degradation, cfg.copies, cfg.seed)
    else:
        path = make_measured_pairs(cfg.files, cfg.out, cfg.inputs_from, cfg.stitch_model, cfg.ad_epochs, cfg.device,
                                   electrons=tuple(cfg.ad_electrons), seed=cfg.seed)
    import h5py

    with h5py.File(path, "r") as f:
        n, shape = f["gt"].shape[0], f["gt"].shape[1:]
    what = {"degrade": "degraded phase", "stitch": "network prediction", "ad": "AD reconstruction"}[kind]
    print(f"{n} pairs of {shape} (input = {what}, gt = true phase) → {path}")
    print(json.dumps(cfg.degradation.model_dump() if kind == "degrade" else {"inputs_from": cfg.inputs_from}))
    return 0


#: the seed's three training scripts (scripts/<name>.py): stage, default config, what it trains
STAGE_SCRIPTS = {
    "patchRecovery": ("patch", "train_patch.yaml", "PatchRecoveryNet (14×14 pattern blocks → 76×76 phase patches)"),
    "PhaseStiching": ("stitch", "train_stitch.yaml", "PhaseStitchingNet on ground-truth patches (25 patches → "
                      "256² phase)"),
    "End2End": ("end2end", "train_end2end.yaml", "End2End (the two trained networks joined, then trained together)"),
}


def stage_script(name: str, argv: list[str] | None = None, configs: Path | None = None) -> int:
    """``scripts/<name>.py``: train one stage of the learned route through the one pipeline (``phasestem train``).

    The flags of ``phasestem train``: ``--config`` (default: the repository's ``configs/<stage>.yaml``),
    ``--set KEY=VALUE`` (repeatable), ``--out`` (the run folder), ``--epochs``, ``--lr``, ``--device`` (default
    auto), ``--resume``, ``--dump-config``; ``--data`` seed-000 files or globs (replace ``data.files``); for
    End2End the two trained networks as in ``phasestem predict``: ``--model`` (the patch model) and
    ``--stitch-model``. The seed's spelling ``--patch-model`` (= ``--model``) stays; ``--out-dir`` still works
    (deprecated). Explicit flags win over ``--set``, which wins over the YAML.
    """
    stage, default_config, text = STAGE_SCRIPTS[name]
    p = cliargs.Parser(
        prog=f"{name}.py", description=f"Train {text}: `phasestem train {stage}` with the same flags (and the "
        "seed's --data, --out).",
        epilog=f"Examples:\n  python scripts/{name}.py --data 'data/seed/simulation_data*.h5' --out runs/{stage}"
               + (" --model runs/patch --stitch-model runs/stitch" if stage == "end2end" else "")
               + f"\n  python scripts/{name}.py --set trainer.lr=3e-4 --epochs 2 --dump-config",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", help="seed-000 HDF5 files or globs (default: the config's data.files)")
    p.add_argument("--config", help=f"training YAML (default: configs/{default_config})")
    cliargs.add_set(p, "trainer.lr=3e-4")
    cliargs.add_out(p, None, "run folder (default: the config's out_dir)", old=("--out-dir",))
    p.add_argument("--epochs", type=int, help="override trainer.epochs")
    p.add_argument("--lr", type=float, help="override trainer.lr")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto (default, unless --set trainer.device=…)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    cliargs.add_dump_config(p)
    if stage == "end2end":
        p.add_argument("--model", "--patch-model", dest="patch_model", metavar="MODEL",
                       help="trained patch model: run folder of patchRecovery.py or weights file (patch_checkpoint)")
        p.add_argument("--stitch-model", metavar="MODEL",
                       help="trained stitching model: run folder of PhaseStiching.py or weights file "
                            "(stitch_checkpoint)")
    args = p.parse_args(argv)
    from ..base.cliargs import run_with_errors
    from ..learn.config import load_train_config
    from ..learn.training.route import train_run

    config = Path(args.config) if args.config else (configs or Path.cwd() / "configs") / default_config

    def run() -> int:
        overrides = parse_set_options(args.set)
        if args.device or "trainer.device" not in overrides:
            overrides["trainer.device"] = args.device or "auto"
        for key, value in (("data.files", args.data), ("out_dir", args.out), ("trainer.epochs", args.epochs),
                           ("trainer.lr", args.lr), ("resume", args.resume or None),
                           ("patch_checkpoint", getattr(args, "patch_model", None)),
                           ("stitch_checkpoint", getattr(args, "stitch_model", None))):
            if value is not None:
                overrides[key] = value
        cfg = load_train_config(config, stage, overrides)
        if args.dump_config:
            from ..base.configdump import config_yaml

            sys.stdout.write(config_yaml(cfg, f"{name}.py (phasestem train {stage})"))
            return 0
        summary = train_run(cfg)
        if summary["main_process"]:
            print(f"{name}: {summary['epochs_run']} epochs, best {summary['monitor']} = {summary['best']}")
        return 0

    return run_with_errors(run, f"{name}.py")
