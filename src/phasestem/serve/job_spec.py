"""A job from the page's request: the command line of one of phasestem's own commands, every path confined to
the workspace root, and the validated parameter file for its run folder (:func:`build_job`)."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml

from ..configfile import (
    apply_overrides,
    map_config_paths,
    parse_set_options,
    read_yaml_mapping,
    relative_to,
    resolve_config_paths,
)
from .jobstore import COMMANDS, RESERVED, RUNS_DIR, Job, JobStore
from .security import Refused, confine, relative

#: what a job's device and network fields may be
DEVICE_NAME = re.compile(r"^(cpu|auto|mps|cuda(:\d{1,2})?)$")
NETWORK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def _text(value, what: str, limit: int = 1000) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise Refused(f"{what}: expected a string, got {type(value).__name__}", 400)
    text = str(value)
    if "\x00" in text or len(text) > limit:
        raise Refused(f"{what}: a NUL character or more than {limit} characters", 400)
    return text


def check_arguments(root: Path, args) -> list[str]:
    """A job's extra arguments: strings, none of :data:`RESERVED`, every path-like one inside the root."""
    if not isinstance(args, list) or len(args) > 100:
        raise Refused("args: expected a list of at most 100 strings", 400)
    out = []
    for i, a in enumerate(args):
        a = _text(a, f"args[{i}]")
        option = a.split("=", 1)[0]
        if option in RESERVED:
            raise Refused(f"args[{i}] {a!r}: {option} is set by the job itself (its run folder)", 403)
        for part in (a, a.split("=", 1)[-1]):
            if "/" in part or "\\" in part or part.startswith(("~", "..")):
                confine(root, part)
        out.append(a)
    return out


def _device(spec: dict) -> tuple[str, int]:
    device = _text(spec.get("device", "cpu"), "device", 20)
    if not DEVICE_NAME.match(device):
        raise Refused(f"device {device!r}: expected cpu, cuda, cuda:N, mps or auto", 400)
    processes = spec.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or not 1 <= processes <= 64:
        raise Refused("processes: expected an integer from 1 to 64", 400)
    return device, processes


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _set_options(overrides: dict[str, Any]) -> list[str]:
    """The changed settings as ``--set key=value`` options of a command that takes them (train, plan)."""
    out: list[str] = []
    for key, value in overrides.items():
        out += ["--set", f"{_text(key, 'set key', 200)}={_yaml_value(value)}"]
    return out


def reconstruct_params(root: Path, config: Path, overrides: dict[str, Any], run_dir: Path):
    """The reconstruction parameters of ``config`` with ``overrides`` (dotted keys), validated by the YAML's own
    schema (:class:`~phasestem.recon.params.ReconstructParams`), every file it reads inside the root, and the text
    of ``run_dir/params.yaml`` (paths relative to the run folder, ``run.out_dir: .``)."""
    from ..recon.params import dump_params, parse_params

    data = apply_overrides(read_yaml_mapping(config, "parameter file"), overrides)
    params = parse_params(data, relative(root, config), config.parent)
    for name in ("data.file", "data.detector_shifts", "scan.positions_file", "model.initial_phase.file",
                 "model.initial_probe.file"):
        section, *rest = name.split(".")
        node = getattr(params, section)
        for part in rest[:-1]:
            node = getattr(node, part) if node is not None else None
        if node is None or getattr(node, rest[-1]) is None:
            continue
        path = Path(getattr(node, rest[-1])).resolve()
        try:
            confine(root, relative(root, path))
        except ValueError:
            raise Refused(f"{relative(root, config)}: {name} {path.name} lies outside the workspace root", 403) \
                from None
        setattr(node, rest[-1], path)
    params.run.out_dir = run_dir.resolve()
    return params, dump_params(params, base=run_dir)  # paths relative to the run folder, run.out_dir: .


def build_job(root: Path, store: JobStore, spec: dict[str, Any]) -> Job:
    """A :class:`Job` (not yet stored) from the page's request ``spec``::

        {"command": "reconstruct", "config": "configs/reconstruct_tiny.yaml", "set": {"run.n_epochs": 5},
         "args": ["--init", "ssb"], "device": "cpu", "processes": 1, "name": "first try"}

    (``network`` too for ``train``; for ``calibrate`` ``config`` is the data file). Its run folder is created and
    receives the validated parameter file. Refusals (:class:`Refused`) say which field and why."""
    if not isinstance(spec, dict):
        raise Refused("expected a JSON object describing the job", 400)
    unknown = set(spec) - {"command", "config", "set", "args", "device", "processes", "name", "network"}
    if unknown:
        raise Refused(f"unknown job field(s): {', '.join(sorted(unknown))}", 400)
    command = spec.get("command")
    if command not in COMMANDS:
        raise Refused(f"command {command!r}: only phasestem's own commands can be run here: {', '.join(COMMANDS)}",
                      403)
    device, processes = _device(spec)
    overrides = spec.get("set") or {}
    if isinstance(overrides, list):  # ["section.key=value", ...]: values are YAML, as with --set
        overrides = parse_set_options([_text(x, "set") for x in overrides], "set")
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and k for k in overrides):
        raise Refused("set: expected an object of dotted keys (section.key) and values", 400)
    args = check_arguments(root, spec.get("args") or [])
    name = _text(spec.get("name", ""), "name", 200)
    config_rel = spec.get("config")
    if not config_rel:
        raise Refused("config: give the parameter file (for calibrate: the data file)", 400)
    config = confine(root, _text(config_rel, "config"), must_exist=True)
    if not config.is_file():
        raise Refused(f"config {config_rel!r}: not a file", 400)
    job_id = store.next_id()
    run_dir = confine(root, f"{RUNS_DIR}/{job_id:04d}-{command}")
    rel_run, rel_config = relative(root, run_dir), relative(root, config)
    files: dict[str, str] = {}
    if command in ("reconstruct", "tune"):
        if command == "tune":
            overrides = {**overrides, "run.device": device}
        params, text = reconstruct_params(root, config, overrides, run_dir)
        files["params.yaml"] = text
        argv = ["phasestem", command, f"{rel_run}/params.yaml", "--out", rel_run]
        if command == "reconstruct":
            argv += ["--device", device]
            if processes > 1 and params.run.n_processes > 1:
                raise Refused("processes > 1 and run.n_processes > 1: choose one way to start processes", 400)
    elif command == "plan":  # the expected result's figures and plan.json go to the run folder
        argv = ["phasestem", "plan", rel_config, "--out", rel_run, "--device", device] + _set_options(overrides)
    elif command == "train":
        network = spec.get("network")
        if not isinstance(network, str) or not NETWORK_NAME.match(network):
            raise Refused("network: give the network to train (patch, stitch, end2end, autoencoder, phaseformer)",
                          400)
        argv = ["phasestem", "train", network, rel_config, "--out", rel_run, "--device", device]
        argv += _set_options(overrides)
    elif command == "simulate":
        if overrides:
            from ..simulate.config import SimulationConfig

            # the copy lives in the run folder: the original's relative paths (from its folder) and those of the
            # overrides (from the root, the job's working directory) are written absolute
            data = resolve_config_paths(SimulationConfig, read_yaml_mapping(config), config.parent.resolve())
            data = map_config_paths(SimulationConfig, apply_overrides(data, overrides), relative_to(root.resolve()))
            files["simulate.yaml"] = yaml.safe_dump(data, sort_keys=False)
            rel_config = f"{rel_run}/simulate.yaml"
        argv = ["phasestem", "simulate", rel_config, "--out", f"{rel_run}/data", "--device", device]
    else:  # calibrate: the data file and the reader options among args
        if overrides:
            raise Refused("set: calibrate takes its options as args (e.g. --energy 300e3)", 400)
        argv = ["phasestem", "calibrate", rel_config, "--out", rel_run]
    argv += args
    if processes > 1:
        if command not in ("reconstruct", "train"):
            raise Refused(f"processes > 1: {command} does not run under torchrun", 400)
        argv = ["torchrun", "--standalone", f"--nproc_per_node={processes}", "-m", "phasestem.cli"] + argv[1:]
    run_dir.mkdir(parents=True, exist_ok=False)
    for fname, text in files.items():
        (run_dir / fname).write_text(text, encoding="utf-8")
    return Job(id=0, command=command, argv=argv, run_dir=rel_run, name=name, device=device, processes=processes,
               spec=spec, created=time.time())
