"""Property-based test of every YAML config loader (issue 12): random values for any field of a valid config
give either a valid config or one PhasestemError line naming the field — never a traceback or a hang.

Each example starts from a shipped config, replaces one to three fields (any depth, sections included) with
random YAML values, writes the file and calls the command's loader. Only loading and validation run.
Issue 24: values nested deeper than the loaders' limit (100 levels) — lists, mappings, or lists of YAML
aliases each holding the previous one, up to 50,000 levels — give one line too (before: a RecursionError of
~3000 lines in every loader)."""
from __future__ import annotations

import math
import os
import signal
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from phasestem.base.errors import PhasestemError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

#: per loader; keep the file under ~20 s on a loaded 2-core machine (PHASESTEM_PROPERTY_EXAMPLES for a deeper search)
EXAMPLES = int(os.environ.get("PHASESTEM_PROPERTY_EXAMPLES", 40))


def _submodels(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _submodels(arg)]


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of a schema, sections and their fields alike, as key paths."""
    out = []
    for name, field in model.model_fields.items():
        out.append((*prefix, name))
        for sub in _submodels(field.annotation):
            out += field_paths(sub, (*prefix, name))
    return out


SPECIAL_NUMBERS = [0, -1, 1, 2, 7, 64, 65, 10**6, 2**31, 2**63, 10**30, -(10**30), 0.5, -0.5, 1e-300, 1e6, 1e300,
                   -1e300, math.inf, -math.inf, math.nan]
NUMBER = st.sampled_from(SPECIAL_NUMBERS) | st.integers() | st.floats()
SCALAR = (st.none() | st.booleans() | NUMBER | st.text(max_size=12)
          | st.sampled_from(["", ".", "..", "../x", "/", "a/b", "-", "auto", "cuda:99", "nan", "inf", "1e6", "~",
                             "data/*.h5", "phase", "mse", "adam", "crystal", "C10", "a\x00b", "x" * 300]))
PAIR = st.lists(NUMBER, min_size=0, max_size=5)
YAML_VALUE = st.recursive(SCALAR | PAIR,
                          lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8) | st.sampled_from(["lr", "C10", "low", "high"]),
                                            inner, max_size=3),
                          max_leaves=10)


class Deep:
    """A value nested ``depth`` levels deep, written into the YAML text as is (PyYAML's dumper would recurse):
    ``[[…]]``, ``{a: {a: …}}``, or a flow list of ``depth`` anchored lists each holding the previous one."""

    def __init__(self, depth: int, kind: str):
        self.depth, self.kind = depth, kind

    def __repr__(self) -> str:
        return f"Deep({self.depth}, {self.kind!r})"

    def text(self) -> str:
        n = self.depth
        if self.kind == "list":
            return "[" * n + "]" * n
        if self.kind == "map":
            return "{a: " * n + "1" + "}" * n
        n = min(n, 5000)  # PyYAML parses ≈ 5000 anchors a second: the chain's length costs time, not its depth
        return "[&d0 []" + "".join(f", &d{i} [*d{i - 1}]" for i in range(1, n)) + f", *d{n - 1}]"


DEEP = st.builds(Deep, st.sampled_from([99, 101, 150, 1000, 50000]), st.sampled_from(["list", "map", "alias"]))


def _set(data: dict, path: tuple[str, ...], value) -> None:
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang("a config loader ran for more than 10 s")


def _check(load, base: dict, changes: list[tuple[tuple[str, ...], object]], path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(base))
    deep = {}
    for keys, value in changes:
        if isinstance(value, Deep):
            deep[f"deep_value_{len(deep)}"] = value.text()
            value = f"deep_value_{len(deep) - 1}"
        _set(data, keys, value)
    text = yaml.safe_dump(data, allow_unicode=True)
    for name, value in deep.items():
        text = text.replace(name, value)
    path.write_text(text)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(10)
    try:
        load(path)
    except PhasestemError as exc:
        msg = str(exc)
        assert "\n" not in msg, msg
        assert (any(k in msg for keys, _ in changes for k in keys) or "YAML" in msg
                or "nested more than 100 levels deep" in msg), (changes, msg)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _loaders():
    from phasestem.base.configfile import load_yaml_config
    from phasestem.cli.demo import DemoConfig, load_demo_config
    from phasestem.learn.config import (
        AutoencoderRunConfig,
        MakePairsConfig,
        PhaseformerRunConfig,
        TrainRunConfig,
        load_train_config,
    )
    from phasestem.learn.registry import load_run_config
    from phasestem.recon.params import ReconstructParams, load_params
    from phasestem.simulate.config import SimulationConfig, load_config

    demo_file = Path(__import__("phasestem.cli.demo", fromlist=["BUILTIN_DEMO"]).BUILTIN_DEMO)
    return {
        "simulate": (SimulationConfig, CONFIGS / "simulate_tiny.yaml", load_config),
        "reconstruct": (ReconstructParams, CONFIGS / "reconstruct_tiny.yaml", load_params),
        "train patch": (TrainRunConfig, CONFIGS / "train_patch_tiny.yaml", lambda p: load_train_config(p, "patch")),
        "train stitch": (TrainRunConfig, CONFIGS / "train_stitch_tiny.yaml", lambda p: load_train_config(p, "stitch")),
        "train end2end": (TrainRunConfig, CONFIGS / "train_end2end_tiny.yaml",
                          lambda p: load_train_config(p, "end2end")),
        "train autoencoder": (AutoencoderRunConfig, CONFIGS / "train_autoencoder_tiny.yaml",
                              lambda p: load_run_config(p, "autoencoder")),
        "train phaseformer": (PhaseformerRunConfig, CONFIGS / "train_phaseformer_tiny.yaml",
                              lambda p: load_run_config(p, "phaseformer")),
        "make-pairs": (MakePairsConfig, CONFIGS / "make_pairs.yaml", lambda p: load_yaml_config(MakePairsConfig, p)),
        "demo": (DemoConfig, demo_file, load_demo_config),
    }


LOADERS = _loaders()


@pytest.mark.parametrize("name", list(LOADERS))
def test_random_field_values_give_a_config_or_one_line_naming_the_field(name, tmp_path_factory):
    schema, base_file, load = LOADERS[name]
    base = yaml.safe_load(base_file.read_text()) or {}
    paths = field_paths(schema)
    path = tmp_path_factory.mktemp("prop") / "config.yaml"
    change = st.tuples(st.sampled_from(paths), YAML_VALUE)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(change, min_size=1, max_size=3))
    def prop(changes):
        _check(load, base, changes, path)

    prop()


@pytest.mark.parametrize("name", list(LOADERS))
def test_deep_nesting_at_any_field_gives_one_line(name, tmp_path_factory):
    """Deeply nested values (see :class:`Deep`) at one or two random fields: a valid config or one line."""
    schema, base_file, load = LOADERS[name]
    base = yaml.safe_load(base_file.read_text()) or {}
    paths = field_paths(schema)
    path = tmp_path_factory.mktemp("deep") / "config.yaml"

    @settings(max_examples=max(4, EXAMPLES // 8), deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(st.sampled_from(paths), DEEP), min_size=1, max_size=2))
    def prop(changes):
        _check(load, base, changes, path)

    prop()


def test_the_base_configs_are_valid():
    for schema, base_file, load in LOADERS.values():
        assert isinstance(load(base_file), schema)


def test_a_yaml_alias_bomb_is_refused_in_one_line(tmp_path):
    from phasestem.simulate.config import load_config

    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PhasestemError, match="more than 100,000 values once YAML aliases are expanded"):
        load_config(path)
