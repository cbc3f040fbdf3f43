"""A job from the page's request: the command line of one of phasestem's own commands, every path confined to
the workspace root, and the validated parameter file for its run folder (:func:`build_job`)."""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from ..base.configfile import (
    ConfigError,
    apply_overrides,
    map_config_paths,
    parse_set_options,
    read_yaml_mapping,
    relative_to,
    resolve_config_paths,
)
from .config_keys import check_config_keys, check_set_keys, option_rule
from .jobstore import COMMANDS, FILES_FOLLOW, RESERVED, RUNS_DIR, STREAMED, Job, JobStore
from .restored import CALIBRATION, RESTORED, check_restore
from .security import Refused, confine, public_message, relative

#: what a job's device and network fields may be
DEVICE_NAME = re.compile(r"^(cpu|auto|mps|cuda(:\d{1,2})?)$")
NETWORK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
#: a live job's detector host (``--host``): a host name, an IPv4 or an IPv6 address, nothing else
HOST_NAME = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?|[0-9A-Fa-f:.]{2,45})$")
#: the most frames per second a rehearsal (``--replay``) may ask of the simulator
MAX_FPS = 100_000


def _text(value, what: str, limit: int = 1000) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise Refused(f"{what}: expected a string, got {type(value).__name__}", 400)
    text = str(value)
    if "\x00" in text or len(text) > limit:
        raise Refused(f"{what}: a NUL character or more than {limit} characters", 400)
    return text


#: per command, the options a job may add to it (each by its full name; the command's own parser checks them);
#: everything else is set by the job (the run folder, device, resume) or has no place in a workspace (``--scheduler``:
#: a Dask address elsewhere). ``--set`` and ``--auto`` are taken apart into the job's ``set`` and ``auto``. An option
#: that sets a key of :data:`~.config_keys.KEY_RULES` is held to that key's rule (refused, whatever this list says).
ALLOWED_OPTIONS = {
    "reconstruct": ("--epochs", "--init", "--key", "--patterns-key", "--format", "--scan-shape", "--reader-option",
                    "--energy", "--semiangle", "--angular-sampling", "--scan-step", "--c10", "--c10-sign",
                    "--rotation", "--edge-threshold", "--set", "--auto", "--prior", "--prior-weight", "--prior-every",
                    "--prior-start"),
    "tune": ("--n-trials", "--set"),
    "simulate": ("--yes", "--workers", "--set"),
    "plan": ("--set", "--quantities-only"),
    "train": ("--set", "--epochs", "--lr"),
    "calibrate": ("--key", "--patterns-key", "--format", "--scan-shape", "--reader-option", "--energy", "--semiangle",
                  "--angular-sampling", "--scan-step", "--transpose", "--no-parallax", "--c10", "--c10-sign",
                  "--rotation", "--edge-threshold", "--resample-descan"),
    "live": ("--detector", "--host", "--data-port", "--replay", "--fps", "--arm-timeout", "--stall-timeout",
             "--epochs", "--set"),
    "restore": ("--model", "--data", "--verdict", "--fdr", "--calibration-samples", "--calibration-cell"),
}
_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
#: the options a job sets that its command's parser requires (a restore job's output in its run folder)
_SET_BY_JOB = {"restore": ["--out-file", RESTORED]}


class _RefusingParser:
    """The command's own parser (:func:`phasestem.cli.build_parser`), its errors raised as :class:`Refused`."""

    _cache: dict[str, Any] = {}

    @classmethod
    def get(cls, command: str, network: str | None):
        key = f"{command}/{network}"
        if key not in cls._cache:
            from ..cli import build_parser

            parser = build_parser()
            node = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001 - argparse has no API
            if command == "train":
                choices = node._subparsers._group_actions[0].choices  # noqa: SLF001
                if network not in choices:
                    raise Refused(f"network {network!r}: not one of {', '.join(choices)}", 400)
                node = choices[network]

            def error(message, prog=node.prog):
                raise Refused(f"args: {prog}: {message}", 400)

            node.error = error
            cls._cache[key] = node
        return cls._cache[key]


def _confine_value(root: Path, value: str, what: str) -> None:
    """A value that names a path (a '/', '~' or '..' in it, or a file of that name under the root) stays inside."""
    for part in (value, value.split("=", 1)[-1]):
        if "/" in part or "\\" in part or part.startswith(("~", "..")) or os.path.lexists(Path(root) / part):
            try:
                confine(root, part)
            except Refused as exc:
                raise Refused(f"{what}: {exc}", exc.status) from None


def check_arguments(root: Path, command: str, args, network: str | None = None
                    ) -> tuple[list[str], dict[str, Any], bool]:
    """A job's extra arguments, checked: (the arguments, less ``--set`` and ``--auto``; their ``--set`` values as
    overrides; whether ``--auto`` was among them). Each option must be one of :data:`ALLOWED_OPTIONS` by its full
    name, the command's own parser must accept them, and every path-like value stays inside the root."""
    if not isinstance(args, list) or len(args) > 100:
        raise Refused("args: expected a list of at most 100 strings", 400)
    allowed = ALLOWED_OPTIONS[command]
    texts = [_text(a, f"args[{i}]") for i, a in enumerate(args)]
    out: list[str] = []
    sets: list[str] = []
    auto = False
    i = 0
    while i < len(texts):
        a = texts[i]
        if a.startswith("-") and not _NUMBER.match(a):
            option, eq, value = a.partition("=")
            if option in RESERVED:
                raise Refused(f"args[{i}] {a!r}: {option} is set by the job itself (its run folder)", 403)
            rule = option_rule(option)
            if option not in allowed or rule is not None:
                why = f"; {option} sets {rule.key}, which names {rule.names}: {rule.why}" if rule is not None else ""
                raise Refused(f"args[{i}] {a!r}: {command} jobs take only {', '.join(allowed)} (each by its full "
                              f"name){why}", 403)
            if option == "--auto":
                if eq:
                    raise Refused(f"args[{i}] {a!r}: --auto takes no value", 400)
                auto = True
                i += 1
                continue
            if option == "--set":
                if not eq:
                    i += 1
                    if i >= len(texts):
                        raise Refused("args: --set needs KEY=VALUE", 400)
                    value = texts[i]
                sets.append(value)
                i += 1
                continue
        _confine_value(root, a, f"args[{i}]")
        out.append(a)
        i += 1
    parser = _RefusingParser.get(command, network)
    parser.parse_args(["placeholder"] + out + (["--auto"] if auto else []) + _SET_BY_JOB.get(command, []))
    try:
        overrides = parse_set_options(sets, "--set")
    except ConfigError as exc:
        raise Refused(f"args: {exc}", 400) from None
    return out, overrides, auto


def check_form_paths(root: Path, path: Path, values: Any) -> None:
    """The parameter form's ``values`` ({"section.key": YAML text}) over the file at ``path``: every path, glob and
    database the saved file would name stays inside the root (the params page writes what later runs read), by the
    rules of a job's ``set`` values (:func:`confine_config_paths`)."""
    from ..recon.params import ReconstructParams

    scalar = str | int | float | bool | None
    if not isinstance(values, dict) or not values or len(values) > 1000 \
            or not all(isinstance(k, str) and isinstance(v, scalar) for k, v in values.items()):
        raise Refused("values: expected the form's fields, an object of dotted keys and their values", 400)
    try:
        overrides = parse_set_options([f"{k}={v}" for k, v in values.items()], "field")
        data = apply_overrides(read_yaml_mapping(path, "parameter file"), overrides)
        data = resolve_config_paths(ReconstructParams, data, path.parent)
    except ConfigError as exc:
        raise Refused(public_message(exc, root), 400) from None
    check_config_keys(root, ReconstructParams, data, relative(root, path))


def _config_schema(command: str, network: str | None):
    if command in ("reconstruct", "tune", "live"):
        from ..recon.params import ReconstructParams

        return ReconstructParams
    if command == "simulate":
        from ..simulate.config import SimulationConfig

        return SimulationConfig
    if command == "plan":
        from ..plan.config import PlanConfig

        return PlanConfig
    if command == "train":
        try:
            from ..learn.registry import run_config_class
        except ImportError:
            raise Refused("train: the learned route needs pip install 'phasestem[learn]'", 400) from None
        return run_config_class(network)
    return None


def check_config(root: Path, command: str, config: Path, overrides: dict[str, Any], network: str | None) -> None:
    """The job's config file with its ``set`` values: every path it names (the file's own relative to its folder,
    the overrides' relative to the root, the job's working directory) inside the root."""
    schema = _config_schema(command, network)
    if schema is None:
        return
    source = relative(root, config)
    try:
        data = resolve_config_paths(schema, read_yaml_mapping(config, "config file"), config.parent.resolve())
        data = map_config_paths(schema, apply_overrides(data, overrides), relative_to(Path(root).resolve()))
    except ConfigError as exc:
        raise Refused(public_message(exc, root), 400) from None
    check_config_keys(root, schema, data, source)


def _live_options(args: list[str]):
    """A live job's command line (the arguments after ``phasestem live``, its parameter file among them), read by
    the command's own parser: its defaults where they are not given."""
    return _RefusingParser.get("live", None).parse_args(args)


def live_endpoint(args: list[str]) -> tuple[str, int] | None:
    """(host, data port) of a live job's command line (:func:`_live_options`); None for a rehearsal (``--replay``),
    which follows the simulator it starts on 127.0.0.1 (:func:`rehearses`)."""
    ns = _live_options(args)
    return None if ns.replay is not None else (ns.host, ns.data_port)


def detector_ports(job: Job) -> list[int]:
    """The TCP ports ``job`` connects to on another machine: a live job's detector data port (its command line,
    read as :func:`live_endpoint` reads it); none for a rehearsal, for every other job, and for a command line that
    does not parse (the job then fails on its page)."""
    if job.command not in STREAMED:
        return []
    try:
        endpoint = live_endpoint(job.argv[2:])
    except Refused:
        return []
    return [] if endpoint is None else [endpoint[1]]


def rehearses(job: Job) -> bool:
    """Whether ``job`` is a live job's rehearsal (``--replay``): ``phasestem live`` starts LiberTEM-live's simulator,
    which binds ports of the ephemeral range on 127.0.0.1, and connects to them (its confinement:
    :func:`~.job_isolation.uses_local_processes`)."""
    if job.command not in STREAMED:
        return False
    try:
        return live_endpoint(job.argv[2:]) is None
    except Refused:
        return False


def _replay_file(root: Path, value: str) -> str:
    """``--replay``'s file, checked: inside the root, an existing ``.mib`` (a ``.hdr`` names the ``.mib`` beside it,
    :data:`phasestem.io.COMPANIONS`); returned as the job replays it (relative to the root)."""
    from ..io import COMPANIONS

    data_of = {companion: data for data, companion in COMPANIONS.items()}
    path, suffix = confine(root, value, must_exist=True), Path(value).suffix.lower()
    if suffix == ".hdr":
        value = Path(value).with_suffix(data_of[".hdr"]).as_posix()
        if not confine(root, value).is_file():
            raise Refused(f"--replay: no {Path(value).name} beside its .hdr (a rehearsal replays the .mib)", 400)
    elif suffix != ".mib" or not path.is_file():
        raise Refused(f"--replay {value[:60]!r}: expected a Merlin .mib file (or its .hdr)", 400)
    return value


def check_live(root: Path, config: Path, overrides: dict[str, Any], args: list[str]) -> list[str]:
    """A live job: its parameter file (with ``overrides``) has no ``data.file`` (the job records the stream into
    its run folder) and is valid for ``phasestem live``; its detector host is a host name or address and its data
    port a TCP port, or it rehearses (``--replay``: :func:`_replay_file`, ``--fps`` frames/s above 0 and at most
    :data:`MAX_FPS`; no ``--host`` nor ``--data-port``); its timeouts positive. Returns ``args`` with ``--replay``'s
    file as the job replays it."""
    from ..live.session import live_params

    try:
        live_params(config, overrides)
    except ConfigError as exc:
        raise Refused(public_message(exc, root), 400) from None
    ns = _live_options(["placeholder", *args])
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if ns.replay is not None:
        detector = sorted(given & {"--host", "--data-port"})
        if detector:
            raise Refused(f"--replay with {' and '.join(detector)}: a rehearsal follows the simulator it starts on "
                          "this machine; give either --replay or the detector's --host and --data-port", 400)
        if not (math.isfinite(ns.fps) and 0 < ns.fps <= MAX_FPS):
            raise Refused(f"--fps {ns.fps}: expected frames per second, more than 0 and at most {MAX_FPS}", 400)
        args = list(args)
        for i, a in enumerate(args):
            if a == "--replay" and i + 1 < len(args):
                args[i + 1] = _replay_file(root, args[i + 1])
            elif a.startswith("--replay="):
                args[i] = "--replay=" + _replay_file(root, a.split("=", 1)[1])
    elif "--fps" in given:
        raise Refused("--fps: the frame rate of a rehearsal; give it with --replay", 400)
    if not HOST_NAME.match(ns.host):
        raise Refused(f"--host {ns.host[:60]!r}: expected the detector's host name or address", 400)
    if not 1 <= ns.data_port <= 65535:
        raise Refused(f"--data-port {ns.data_port}: expected a TCP port from 1 to 65535", 400)
    for name, value in (("--arm-timeout", ns.arm_timeout), ("--stall-timeout", ns.stall_timeout)):
        if not (math.isfinite(value) and 0 < value <= 86400):
            raise Refused(f"{name} {value}: expected seconds, more than 0 and at most 86400", 400)
    if ns.epochs is not None and ns.epochs < 1:
        raise Refused(f"--epochs {ns.epochs}: expected at least 1", 400)
    return args


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
    from ..recon.params import ReconstructParams, dump_params, parse_params

    data = apply_overrides(read_yaml_mapping(config, "parameter file"), overrides)
    source = relative(root, config)
    check_config_keys(root, ReconstructParams, resolve_config_paths(ReconstructParams, data, config.parent), source)
    params = parse_params(data, source, config.parent)
    params.run.out_dir = run_dir.resolve()
    return params, dump_params(params, base=run_dir)  # paths relative to the run folder, run.out_dir: .


def _new_run_dir(root: Path, job_id: int, command: str) -> Path:
    """``runs/NNNN-COMMAND`` for job ``NNNN``; where a folder of that name is already there (copied in, or left by
    a queue that was deleted) ``runs/NNNN-COMMAND-2``, ``-3``, …: a job never writes into a folder it did not make."""
    for k in range(1, 1000):
        run_dir = confine(root, f"{RUNS_DIR}/{job_id:04d}-{command}" + (f"-{k}" if k > 1 else ""))
        if not os.path.lexists(run_dir):
            return run_dir
    raise Refused(f"{RUNS_DIR}/{job_id:04d}-{command}: 999 folders of that name are there already", 409)


def build_job(root: Path, store: JobStore, spec: dict[str, Any]) -> Job:
    """A :class:`Job` (not yet stored) from the page's request ``spec``::

        {"command": "reconstruct", "config": "configs/reconstruct_tiny.yaml", "set": {"run.n_epochs": 5},
         "args": ["--init", "ssb"], "device": "cpu", "processes": 1, "name": "first try"}

    (``network`` too for ``train``; for ``calibrate`` ``config`` is the data file, and for ``reconstruct`` with
    ``"auto": true`` too: ``phasestem reconstruct DATA --auto``; for ``live`` the parameter file without
    ``data.file``, the detector among ``args``: ``["--host", "10.0.0.5", "--data-port", "6342"]``, or a rehearsal:
``["--replay", "mib/scan.mib", "--fps", "100"]``; for ``restore`` the run's results.h5, the model and the verdict
among ``args``: ``["--model", "restore-seed-fine", "--verdict", "--fdr", "0.05"]``). Its run
    folder is created and receives the validated parameter file. Refusals (:class:`Refused`) say which field and
    why."""
    if not isinstance(spec, dict):
        raise Refused("expected a JSON object describing the job", 400)
    unknown = set(spec) - {"command", "config", "set", "args", "device", "processes", "name", "network", "auto"}
    if unknown:
        raise Refused(f"unknown job field(s): {', '.join(sorted(map(str, unknown)))[:300]}", 400)
    command = spec.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise Refused(f"command {str(command)[:40]!r}: only phasestem's own commands can be run here: "
                      f"{', '.join(COMMANDS)}", 403)
    network = spec.get("network")
    if command == "train" and (not isinstance(network, str) or not NETWORK_NAME.match(network)):
        raise Refused("network: give the network to train (patch, stitch, end2end, autoencoder, phaseformer)", 400)
    device, processes = _device(spec)
    overrides = spec.get("set") or {}
    if isinstance(overrides, list):  # ["section.key=value", ...]: values are YAML, as with --set
        if len(overrides) > 100:
            raise Refused("set: at most 100 values", 400)
        try:
            overrides = parse_set_options([_text(x, "set") for x in overrides], "set")
        except ConfigError as exc:
            raise Refused(str(exc), 400) from None
    if not isinstance(overrides, dict) or len(overrides) > 100 \
            or not all(isinstance(k, str) and k and len(k) <= 200 for k in overrides):
        raise Refused("set: expected an object of at most 100 dotted keys (section.key) and their values", 400)
    args, arg_overrides, auto = check_arguments(root, command, spec.get("args") or [],
                                                network if command == "train" else None)
    overrides = {**overrides, **arg_overrides}
    check_set_keys(overrides)
    auto = auto or spec.get("auto", False)
    if not isinstance(auto, bool):
        raise Refused("auto: expected true or false", 400)
    if auto and command != "reconstruct":
        raise Refused("auto: only reconstruct runs from a data file (--auto)", 400)
    name = _text(spec.get("name", ""), "name", 200)
    config_rel = spec.get("config")
    if not config_rel:
        raise Refused("config: give the parameter file (for calibrate and reconstruct --auto: the data file; for "
                      "restore: the run's results.h5)", 400)
    config = confine(root, _text(config_rel, "config"), must_exist=True)
    if not config.is_file():
        raise Refused(f"config {relative(root, config)!r}: not a file", 400)
    if not auto and command != "calibrate":
        check_config(root, command, config, overrides, network)
    run_dir = _new_run_dir(root, store.next_id(), command)
    rel_run, rel_config = relative(root, run_dir), relative(root, config)
    files: dict[str, str] = {}
    if auto:
        if overrides:
            raise Refused("set: reconstruct --auto takes its settings from the file and the args (--energy, "
                          "--semiangle, --scan-step, --epochs, ...); edit the params.yaml it writes to change more",
                          400)
        argv = ["phasestem", "reconstruct", "--auto", "--out", rel_run, "--device", device]
    elif command in ("reconstruct", "tune"):
        if command == "tune":
            overrides = {**overrides, "run.device": device}
        params, text = reconstruct_params(root, config, overrides, run_dir)
        files["params.yaml"] = text
        rel_config = f"{rel_run}/params.yaml"
        argv = ["phasestem", command, "--out", rel_run]
        if command == "reconstruct":
            argv += ["--device", device]
            if processes > 1 and params.run.n_processes > 1:
                raise Refused("processes > 1 and run.n_processes > 1: choose one way to start processes", 400)
    elif command == "live":  # the stream recorded and reconstructed in the run folder; the file read as it is
        args = check_live(root, config, overrides, args)
        argv = ["phasestem", "live", "--out", rel_run, "--device", device] + _set_options(overrides)
    elif command == "plan":  # the expected result's figures and plan.json go to the run folder
        argv = ["phasestem", "plan", "--out", rel_run, "--device", device] + _set_options(overrides)
    elif command == "train":
        argv = ["phasestem", "train", network, "--out", rel_run, "--device", device]
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
        argv = ["phasestem", "simulate", "--out", f"{rel_run}/data", "--device", device]
    elif command == "restore":  # the run's results.h5 read; the restoration, its figure, log, calibration written
        if overrides:  # in the run folder (--replace: a previous restoration of this job's own, when it runs again)
            raise Refused("set: restore takes its options as args (--model NAME, --verdict, --fdr 0.05, ...)", 400)
        argv = ["phasestem", "restore", "--out-file", f"{rel_run}/{RESTORED}", "--replace", "--device", device]
        ns = _RefusingParser.get("restore", None).parse_args(["placeholder", *args, *_SET_BY_JOB["restore"]])
        argv += ["--calibration", f"{rel_run}/{CALIBRATION}"] if check_restore(root, ns, args) else []
    else:  # calibrate: the data file and the reader options among args
        if overrides:
            raise Refused("set: calibrate takes its options as args (e.g. --energy 300e3)", 400)
        argv = ["phasestem", "calibrate", "--out", rel_run]
    argv += args + [FILES_FOLLOW, rel_config]  # the file last, after '--': a name beginning with '-' is no option
    if processes > 1:
        if command not in ("reconstruct", "train"):
            raise Refused(f"processes > 1: {command} does not run under torchrun", 400)
        argv = ["torchrun", "--standalone", f"--nproc_per_node={processes}", "-m", "phasestem.cli"] + argv[1:]
    run_dir.mkdir(parents=True, exist_ok=False)  # submissions are one at a time (JobRunner.submit)
    for fname, text in files.items():
        (run_dir / fname).write_text(text, encoding="utf-8")
    return Job(id=0, command=command, argv=argv, run_dir=rel_run, name=name, device=device, processes=processes,
               spec=spec, created=time.time())
