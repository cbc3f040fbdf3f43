"""The flag conventions every ``phasestem`` command shares (docs/cli.md), defined once.

* ``CONFIG``: the YAML config is a positional argument (:func:`add_config`); ``--dump-config`` prints it
  resolved (:func:`add_dump_config`);
* ``--out DIR``: the output folder, everywhere. A command that writes one result file names it inside DIR and
  takes ``--out-file FILE`` for a name of your own (:func:`add_out_file`, :func:`result_file`);
* ``--key``: the dataset (array) that holds the patterns, or the image, inside a file (:func:`add_key`);
* ``--device``: the torch device of the work (:func:`add_device`).

An old spelling keeps working and prints one line on stderr (:func:`deprecation`, :class:`Deprecated`).
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from .errors import ConfigError, PhasestemError

#: suffixes that mark an ``--out`` value as the older "result file" form (predict, embed, refine, make-pairs)
RESULT_SUFFIXES = (".h5", ".hdf5")


class Parser(argparse.ArgumentParser):
    """Every ``phasestem`` parser (sub-commands' included: ``add_subparsers`` makes its own class): options only by
    their full names. argparse's default takes any unambiguous prefix (``--o`` for ``--out``), which lets an
    abbreviation slip past a check that refuses an option by its name (``phasestem serve``'s jobs)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but arguments nobody takes are refused by the sub-command they were given to, with its
        usage: ``phasestem reconstruct: error: unrecognized arguments: --foo`` (argparse reports them from the
        top-level parser, with the top-level usage)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            chosen_parser(self, parsed).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost sub-command parser that parsed ``args`` (``phasestem train patch``'s), else ``parser``."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def deprecation(prog: str, old: str, new: str) -> None:
    """The one line an old spelling prints on stderr: ``PROG: deprecated: OLD; use NEW``."""
    print(f"{prog}: deprecated: {old}; use {new} (the old spelling still works for now)", file=sys.stderr)


class Deprecated(argparse.Action):
    """An option with an old spelling: stores its value like the new one and prints :func:`deprecation` when the
    old spelling is used. ``new``: what to write instead; ``old``: the deprecated option strings of this action
    (default: all of them, for a hidden alias of its own)."""

    def __init__(self, option_strings, dest, new: str, old: tuple[str, ...] | None = None, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new
        self.old = tuple(option_strings) if old is None else tuple(old)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string in self.old:
            deprecation(parser.prog, option_string, self.new)
        setattr(namespace, self.dest, values)


def add_config(p: argparse.ArgumentParser, help: str, optional: bool = False, old_flag: bool = False) -> None:
    """The positional ``config`` (``optional``: may be left out); ``old_flag``: ``--config FILE`` still works
    (deprecated)."""
    p.add_argument("config", nargs="?" if optional or old_flag else None, help=help)
    if old_flag:
        p.add_argument("--config", dest="config_option", action=Deprecated, new="the positional CONFIG",
                       help=argparse.SUPPRESS)


def config_argument(args: argparse.Namespace) -> str | None:
    """The config given positionally or by the deprecated ``--config`` (both: ConfigError)."""
    pos, opt = getattr(args, "config", None), getattr(args, "config_option", None)
    if pos is not None and opt is not None and pos != opt:
        raise ConfigError(f"two configs given: {pos} and --config {opt}; give one, positionally")
    return pos if pos is not None else opt


def config_among(inputs: list[str], config_option: str | None = None) -> tuple[str | None, list[str]]:
    """Positional ``[CONFIG.yaml] FILE …`` (make-pairs): the one ``.yaml``/``.yml`` among ``inputs`` (or the
    deprecated ``--config``) is the config, the others are input files."""
    configs = [a for a in inputs if Path(a).suffix.lower() in (".yaml", ".yml")]
    files = [a for a in inputs if a not in configs]
    configs += [config_option] if config_option else []
    if len(configs) > 1:
        raise ConfigError(f"one YAML config expected, got {len(configs)}: {', '.join(configs)}")
    return (configs[0] if configs else None), files


def add_dump_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dump-config", action="store_true",
                   help="print the resolved config (every field, its description as a comment, paths absolute, so "
                        "the text works saved anywhere) and exit")


def add_set(p: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable, dest ``set``): a config field by its dotted key, the value read as YAML
    (:func:`phasestem.base.configfile.parse_set_options`); ``example`` e.g. ``trainer.lr=3e-4``."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"override a config field (dotted key, YAML value), e.g. {example}; repeatable")


def add_out(p: argparse.ArgumentParser, default: str | None, help: str, old: tuple[str, ...] = ()) -> None:
    """``--out DIR`` (dest ``out``); ``old``: older spellings (hidden, deprecated)."""
    p.add_argument("--out", default=default, metavar="DIR", help=help)
    for name in old:
        p.add_argument(name, dest="out", action=Deprecated, new="--out", help=argparse.SUPPRESS)


def add_out_file(p: argparse.ArgumentParser, name: str) -> None:
    """``--out DIR`` (default: the working directory) and ``--out-file FILE`` for a command that writes one result
    file, by default ``name`` inside DIR (e.g. ``INPUT_phase.h5``)."""
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"output folder (default: the working directory); the result is {name} in it")
    p.add_argument("--out-file", metavar="FILE", help="the result file itself, another name than the default")


def result_file(args: argparse.Namespace, name: str, inputs: tuple = ()) -> Path:
    """The result file of :func:`add_out_file`'s flags: ``--out-file FILE``, else ``name`` inside ``--out DIR``.
    An ``--out`` ending in .h5/.hdf5 that is not an existing folder is the older meaning (the file itself): it
    still works, with a deprecation line; one with a figure suffix is taken as that file too, and refused (the
    result is HDF5; a PNG is written beside it)."""
    from .safety import FIGURE_SUFFIXES

    out, out_file = getattr(args, "out", None), getattr(args, "out_file", None)
    if out_file is not None:
        if out is not None:
            raise ConfigError(f"--out {out} and --out-file {out_file}: give the folder or the file, not both")
        return _checked(Path(out_file), "--out-file", inputs)
    folder = Path(out if out is not None else ".")
    suffix = folder.suffix.lower()
    if suffix in RESULT_SUFFIXES + FIGURE_SUFFIXES and not folder.is_dir():
        if suffix in RESULT_SUFFIXES:
            deprecation(f"phasestem {getattr(args, 'command', '')}".strip(), f"--out {folder} (a file name)",
                        f"--out-file {folder} (--out is the output folder)")
        return _checked(folder, "--out", inputs)
    return _checked(folder / name, "--out", inputs)


def _checked(result: Path, field: str, inputs) -> Path:
    """``result`` after the checks that name the flag it came from: no figure suffix (the result is HDF5; its PNG
    goes beside it) and not one of ``inputs`` (the commands repeat both checks where they write)."""
    from .safety import check_result_name, refuse_output_over_inputs

    refuse_output_over_inputs(check_result_name(result, field), list(inputs), field=field)
    return result


def add_key(p, help: str = "dataset/array holding the patterns inside the file", old: bool = True) -> None:
    """``--key`` (dest ``patterns_key``) and its older spelling ``--patterns-key`` (hidden, deprecated)."""
    p.add_argument("--key", dest="patterns_key", help=help)
    if old:
        p.add_argument("--patterns-key", dest="patterns_key", action=Deprecated, new="--key",
                       help=argparse.SUPPRESS)


def add_device(p, default: str | None = None, what: str = "") -> None:
    """``--device``: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    text = "torch device: 'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1'"
    text += f" (default {default})" if default else ""
    p.add_argument("--device", default=default, help=text + (f"; {what}" if what else ""))


def stem_name(path: str | Path, suffix: str) -> str:
    """``INPUT-STEM<suffix>`` (``scan.h5``, ``_phase.h5`` → ``scan_phase.h5``); a Dectris ``_master`` is kept."""
    return Path(path).with_suffix("").name + suffix

def denial_behind(exc: BaseException) -> str:
    """`` (because: [Errno 13] Permission denied)`` where ``exc`` was raised over a refusal by the system (EACCES,
    EPERM: a file's permissions, or the kernel's confinement of a ``phasestem serve`` job) that its own message
    does not show, as a library's "timed out trying to connect" over a connect that was denied; else ""."""
    seen, cause = set(), exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM):
            return "" if cause.strerror and cause.strerror in str(exc) else f" (because: {cause})"
        cause = cause.__cause__ or cause.__context__
    return ""


def run_with_errors(fn, prefix: str, debug: bool = False) -> int:
    """``fn()`` as a command: its return code, or 1 after one line ``PREFIX: error: …`` on a user error (with the
    refusal by the system behind it, :func:`denial_behind`)."""
    try:
        return int(fn() or 0)
    except (PhasestemError, OSError, ValueError, KeyError) as exc:
        if debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prefix}: error: {msg}{denial_behind(exc)}", file=sys.stderr)
        return 1
