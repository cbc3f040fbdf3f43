"""``phasestem simulate`` and ``phasestem probe-extent``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..base.cliargs import add_config, add_device, add_dump_config, add_out, add_set, config_argument
from ..base.errors import ConfigError

log = logging.getLogger("phasestem.simulate")


def register(sub, train_sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate 4D-STEM training data in the seed-000 HDF5 layout",
        description="Simulate samples (random specimens → projected potential → 4D-STEM scan) into "
        "<prefix>1.h5 … <prefix>N.h5, and simulation.png (the first sample: specimen phase with the scanned "
        "field, probe amplitude and phase, patterns). Resumable: rerun the same command after an interruption.",
        epilog="Examples:\n  phasestem simulate configs/simulate_tiny.yaml --out data/tiny\n"
        "  phasestem simulate configs/simulate_seed.yaml --out data/seed --workers 2\n"
        "  phasestem simulate configs/simulate_seed.yaml --out data/small --set scan.shape=[24,24] "
        "--set output.n_files=1\n"
        "  phasestem simulate --dump-config > my_sim.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(p, "YAML config (defaults = the seed-000 generator when omitted)", optional=True)
    add_out(p, None, "output folder (required here or as 'out' in the config)")
    p.add_argument("--yes", action="store_true",
                   help="accept the default output size (5 files × 700 samples) when the config does not set it")
    p.add_argument("--restart", action="store_true",
                   help="when --out holds an unfinished run with another config: delete that run's own files "
                   "(work samples and shards) and start this one")
    p.add_argument("--workers", type=int, help="local Dask worker processes (overrides compute.workers)")
    p.add_argument("--scheduler", help="Dask scheduler address for many machines (overrides compute.scheduler)")
    add_device(p, what="overrides compute.device")
    add_set(p, "scan.shape=[24,24]")
    add_dump_config(p)
    p.set_defaults(func=_simulate)

    q = sub.add_parser(
        "probe-extent", help="side of the area one 14×14 block of probe positions illuminates",
        description="Prints the probe's size as phasestem states it everywhere (phasestem plan too): radius "
        "√(r_aberr² + r_Airy²), with the share of the intensity inside it; then the side (pixels at "
        "--px-per-angstrom) of the square holding every pixel above --threshold × the maximum probe intensity over "
        "a --block × --block raster at --step Å (the seed's patch rule); with --fraction, of the square holding each "
        "probe's disk of that encircled intensity (the seed's 5 %% rule sees only the central peak of an aberrated "
        "probe and leaves its halo outside).",
        epilog="Examples:\n  phasestem probe-extent --energy 300e3 --semiangle 30 --C30 1e6\n"
        "  phasestem probe-extent configs/simulate_seed.yaml --step 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(q, "simulation config: take energy, semi-angle and aberrations from it", old_flag=True)
    q.add_argument("--energy", type=float, default=300e3, help="eV (default 300e3)")
    q.add_argument("--semiangle", type=float, default=30.0, help="mrad (default 30)")
    q.add_argument("--C10", type=float, default=0.0, help="C10 = -defocus in Å (default 0)")
    q.add_argument("--C30", type=float, default=1e6, help="spherical aberration in Å (default 1e6 = 0.1 mm)")
    q.add_argument("--block", type=int, default=14)
    q.add_argument("--step", type=float, default=2.0, help="scan step in Å")
    q.add_argument("--threshold", type=float, default=0.05, help="fraction of the peak intensity (seed: 0.05)")
    q.add_argument("--fraction", type=float, default=None,
                   help="size each probe by the disk holding this fraction of its intensity instead (e.g. 0.9)")
    q.add_argument("--px-per-angstrom", type=float, default=2.56)
    q.add_argument("--sampling", type=float, default=100 / 512, help="grid pixel for the probe in Å")
    q.set_defaults(func=_probe_extent)


def _simulate(args) -> int:
    from ..base.configfile import parse_set_options
    from ..simulate.budget import check_memory
    from ..simulate.config import load_config
    from ..simulate.writer import simulate_dataset

    overrides = parse_set_options(args.set)
    for key, name in (("workers", "compute.workers"), ("scheduler", "compute.scheduler"), ("device", "compute.device")):
        if getattr(args, key) is not None:
            overrides[name] = getattr(args, key)
    if args.out:
        overrides["out"] = args.out
    cfg = load_config(args.config, overrides)
    if args.dump_config:
        print(cfg.to_yaml(), end="")
        return 0
    if not cfg.out:
        raise ConfigError(f"{args.config or 'simulate'}: no output folder: give --out DIR or 'out: DIR' in the config")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    _confirm_default_size(cfg, args.yes)
    check_memory(cfg, processes=max(1, cfg.compute.workers) if cfg.compute.scheduler is None else 1,
                 source=str(args.config or "config"))
    out.mkdir(parents=True, exist_ok=True)
    from ..base.runtime import log_to_file

    with log_to_file("phasestem", out / "simulate.log", level=None):
        paths = simulate_dataset(cfg, out, restart=args.restart)
    for p in paths:
        print(p)
    if paths:
        from ..simulate.overview import write_overview

        print(write_overview(paths[0], out / "simulation.png"))
    return 0


#: output size (bytes, before compression) above which default file counts need --yes
DEFAULT_SIZE_LIMIT = 1e9


def _confirm_default_size(cfg, yes: bool) -> None:
    """Refuse a large run whose size comes from the defaults (output.n_files/samples_per_file not set) without --yes."""
    from ..simulate.budget import gb, output_bytes

    if yes or {"n_files", "samples_per_file"} & cfg.output.model_fields_set:
        return
    size = output_bytes(cfg)
    if size <= DEFAULT_SIZE_LIMIT:
        return
    o, s, d = cfg.output, cfg.scan, cfg.detector
    raise ConfigError(
        f"output: not set, so the defaults would write {o.n_files * o.samples_per_file:,} samples in {o.n_files} "
        f"files, about {gb(size)} before compression ({s.shape[0]}×{s.shape[1]} patterns of {d.shape[0]}×"
        f"{d.shape[1]} per sample); set output.n_files and output.samples_per_file, or pass --yes to accept")


def _probe_extent(args) -> int:
    from ..physics.optics import probe_size_text
    from ..simulate.probe_extent import illuminated_extent

    energy, semiangle, ab = args.energy, args.semiangle, {"C10": args.C10, "C30": args.C30}
    config = config_argument(args)
    if config:
        from ..simulate.config import load_config

        cfg = load_config(config)
        energy, semiangle, ab = cfg.optics.energy, cfg.optics.semiangle, cfg.optics.aberrations
    e = illuminated_extent(energy, semiangle, ab, sampling=args.sampling, block=args.block, step=args.step,
                           threshold=args.threshold, pixels_per_angstrom=args.px_per_angstrom, fraction=args.fraction)
    print(f"probe: {probe_size_text(energy, semiangle, ab)} (phasestem's probe size, as in phasestem plan): "
          f"{e.inside_probe_radius:.0%} of its intensity inside")
    what = (f"above {args.threshold:.0%} of its peak (the seed's patch rule: the central peak)" if args.fraction is None
            else f"holding {args.fraction:.0%} of its intensity")
    print(f"probe {what}: {e.probe_diameter_angstrom:.2f} Å across; over a "
          f"{args.block}×{args.block} block at {args.step:g} Å: {e.side_angstrom:.2f} Å = {e.side_px} px at "
          f"{args.px_per_angstrom:g} px/Å")
    return 0
