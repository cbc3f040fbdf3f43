"""docs/architecture.md's "one place to touch" table, every row performed on a copy of the source: each test copies
``src/phasestem`` to a temporary folder, makes the change the table names there (and nowhere else), and runs the
copy in a fresh interpreter to show the new piece working end to end. An anchor the table relies on that moved
fails the test by name, so the table and the code cannot drift apart (as the layer test plants an import).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "phasestem"

#: what every snippet starts with: the copy is the phasestem it imports, and a tiny counted-free scan to run on
PRELUDE = '''
import pathlib, sys
import phasestem
assert pathlib.Path(phasestem.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()), phasestem.__file__
from phasestem.recon.synthetic import write_npz

def tiny_params(**sections):
    """A parameter file's sections over a fresh 6 x 6 scan (the tiny example's optics), validated."""
    from phasestem.recon.params import parse_params
    write_npz("tiny.npz", scan_shape=(6, 6), seed=3)
    data = {"data": {"file": "tiny.npz", "patterns_key": "patterns"},
            "optics": {"energy": 300e3, "semiangle": 15.0, "aberrations": {"C10": 50.0}, "sampling": 0.4},
            "scan": {"shape": [6, 6], "step": 1.0},
            "run": {"optimizer": "adam", "batch_size": 12, "progress": False, "check_optics": False}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_params(data, "planted params", pathlib.Path.cwd())

def run_params(params, epochs, callbacks=()):
    """The parameter file's run of ``epochs`` epochs through the engine; the model."""
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import build_dataset, build_model, run_sections
    ds = build_dataset(params)
    model = build_model(params, ds)
    for _ in optimize_with_options(model, ds, epochs, callbacks=list(callbacks), **run_sections(params)):
        pass
    return model
'''


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of ``src/phasestem`` under ``tmp_path/src`` (the folder the snippets run in)."""
    shutil.copytree(SRC, tmp_path / "src" / "phasestem", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def insert(root: Path, module: str, anchor: str, text: str, before: bool = False) -> None:
    """Put ``text`` after (or ``before``) the one line of ``module`` (a path under phasestem/) that is ``anchor``; a
    block that starts on a new line is dedented, a line is put in as it is (with its indentation)."""
    path = root / "src" / "phasestem" / module
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.rstrip("\n") == anchor]
    assert len(found) == 1, f"{module}: the table's anchor {anchor!r} is not one line there any more"
    at = found[0] + (0 if before else 1)
    lines[at:at] = [(textwrap.dedent(text) if text.startswith("\n") else text).strip("\n") + "\n"]
    path.write_text("".join(lines), encoding="utf-8")


def add_module(root: Path, module: str, text: str) -> None:
    (root / "src" / "phasestem" / module).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def run_copy(root: Path, code: str, timeout: int = 300) -> str:
    """``code`` (after :data:`PRELUDE`) in a fresh interpreter on the copy; its stdout (it must exit 0)."""
    env = dict(os.environ, PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_loss_term_is_one_function_and_one_registration(copy):
    """recon/losses.py: a function and register_term; the parameter file's losses section names it, and it runs
    (its column in every epoch's record)."""
    insert(copy, "recon/losses.py", "#: the terms that are fields of the parameter file's ``losses`` section "
           "(:class:`~.settings.losses.LossConfig`)", '''
        def _planted(cfg, b):
            return (b.model_i * 0).sum() + 0.25


        register_term(LossTerm("planted", _planted))
    ''', before=True)
    out = run_copy(copy, '''
        model = run_params(tiny_params(losses={"gaussian": 1.0, "planted": 0.5}), 2)
        print([round(h["planted"], 4) for h in model.loss_history])
    ''')
    assert out.strip() == "[0.25, 0.25]"


def test_a_constraint_is_its_settings_and_one_row(copy):
    """recon/settings/constraints.py: a Schedule subclass as a field of Constraints; recon/constraints.py: its
    function and one row of ACTIONS. The parameter file's constraints section turns it on with its schedule."""
    insert(copy, "recon/settings/constraints.py", "class Constraints(StrictModel):", '''
        class PlantedMark(Schedule):
            """A planted constraint: marks the epochs it ran at."""

            label: str = Field("mark", description="what it writes")


    ''', before=True)
    insert(copy, "recon/settings/constraints.py", '    tv: TotalVariation = Field(default_factory=TotalVariation, '
           'description="total-variation regularisation")',
           '    planted: PlantedMark = Field(default_factory=PlantedMark, description="a planted constraint")')
    insert(copy, "recon/constraints.py", '    "tv": lambda model, s, epoch: tv_regularize(model, s),',
           '    "planted": lambda model, s, epoch: setattr(model, "marks", [*getattr(model, "marks", []), '
           '(s.label, epoch)]),')
    out = run_copy(copy, '''
        model = run_params(tiny_params(constraints={"planted": {"enabled": True, "step": 2, "label": "x"}}), 4)
        print(model.marks)
    ''')
    assert out.strip() == "[('x', 1), ('x', 3)]"


def test_a_detector_format_is_a_reader_and_its_extension(copy):
    """io/NAME.py with read(path, **options); its extension in io.EXTENSIONS: io.load reads it, the help line
    names it."""
    add_module(copy, "io/planted.py", '''
        """A planted format: an .npz by another name."""
        from . import numpy as npz_reader


        def read(path, **options):
            return npz_reader.read(path, **options)
    ''')
    insert(copy, "io/__init__.py", '    ".cxi": "cxi",', '    ".pst": "planted",')
    out = run_copy(copy, '''
        import shutil
        from phasestem import io
        write_npz("scan.npz", scan_shape=(4, 5), seed=1)
        shutil.copy("scan.npz", "scan.pst")
        ds = io.load("scan.pst", energy=300e3, scan_step=1.0)
        print(ds.scan_shape, ".pst" in io.formats_line())
    ''')
    assert out.strip() == "(4, 5) True"


def test_a_network_is_its_module_and_one_registry_entry(copy):
    """learn/nets/NAME.py (the network, its run config and builder); one Entry in learn/registry.py: the network is
    built by name, its run config read, and ``phasestem train`` lists it."""
    add_module(copy, "learn/nets/planted.py", '''
        """A planted network: one 1x1 convolution."""
        from typing import Literal

        from pydantic import Field
        from torch import nn

        from ...base.configfile import StrictModel


        class PlantedRunConfig(StrictModel):
            network: Literal["planted"] = "planted"
            out_dir: str = Field("runs/planted", description="run folder")
            model: dict = Field(default_factory=dict, description="settings")


        def network(name, config):
            return nn.Conv2d(1, 1, 1)


        def build(cfg):
            raise NotImplementedError("the planted network is never trained")
    ''')
    insert(copy, "learn/registry.py", '          "training.restorer:restorer_from_config"),', '''
        Entry("planted", "a planted network", "nets.planted:PlantedRunConfig", "nets.planted:build",
              "nets.planted:network"),
    ''')
    out = run_copy(copy, '''
        import contextlib, io as text_io, yaml
        from phasestem.learn.registry import build_network, load_run_config
        from phasestem.cli import main
        pathlib.Path("planted.yaml").write_text(yaml.safe_dump({"network": "planted"}))
        cfg = load_run_config("planted.yaml", "planted")
        err = text_io.StringIO()
        with contextlib.redirect_stderr(err):
            main(["train"])
        print(type(build_network("planted")).__name__, cfg.out_dir.endswith("planted"), "planted" in err.getvalue())
    ''')
    assert out.strip() == "Conv2d True True"


def test_a_restorer_body_is_one_row_of_its_table(copy):
    """learn/nets/restorer.py: the body and one row of BODIES; the run config takes its name and the restorer
    builds it (an untrained restorer returns its input phase)."""
    insert(copy, "learn/nets/restorer.py", "#: the restorer's bodies by ``arch``: (input channels, "
           ":class:`RestorerConfig`) → a module (B, C, H, W) → (B, 1, H, W)", '''
        class PlantedBody(nn.Module):
            def __init__(self, channels):
                super().__init__()
                self.out = nn.Conv2d(channels, 1, 1)
                nn.init.zeros_(self.out.weight)
                nn.init.zeros_(self.out.bias)

            def forward(self, x):
                return self.out(x)


    ''', before=True)
    insert(copy, "learn/nets/restorer.py", '    "unet": lambda channels, cfg: UNetBody(channels, cfg.width),',
           '    "planted": lambda channels, cfg: PlantedBody(channels),')
    out = run_copy(copy, '''
        import torch
        from phasestem.learn.config import RestorerModelConfig
        from phasestem.learn.nets.restorer import Restorer, RestorerConfig
        arch = RestorerModelConfig(arch="planted").arch
        net = Restorer(RestorerConfig(arch=arch))
        x = torch.randn(1, 3, 12, 16)
        print(type(net.body).__name__, torch.allclose(net(x), x[:, :1]))
    ''')
    assert out.strip() == "PlantedBody True"


def test_a_serve_page_is_its_endpoint_and_one_route(copy):
    """serve/endpoints.py: the endpoint and one line of ROUTES: the application answers it behind the token (a
    request without the token is refused)."""
    pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
    insert(copy, "serve/endpoints.py", "ROUTES = (", '''
        def planted(ws, request):
            return {"planted": True}


    ''', before=True)
    insert(copy, "serve/endpoints.py", '    ("/api/info", info, "json", ("GET",)),',
           '    ("/api/planted", planted, "json", ("GET",)),')
    out = run_copy(copy, '''
        import asyncio
        from phasestem.serve.app import create_app
        pathlib.Path("root").mkdir()
        app = create_app(pathlib.Path("root").resolve(), "t" * 32)

        def get(path, token):
            headers = [(b"host", b"127.0.0.1:8888")] + ([(b"authorization", f"token {token}".encode())] if token
                                                        else [])
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                     "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8888), "headers": headers}
            out = {"body": b""}

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                if message["type"] == "http.response.start":
                    out["status"] = message["status"]
                elif message["type"] == "http.response.body":
                    out["body"] += message.get("body", b"")

            asyncio.run(app(scope, receive, send))
            return out["status"], out["body"].decode()

        print(get("/api/planted", "t" * 32), get("/api/planted", None)[0])
    ''')
    assert out.strip().startswith("(200, '{\"planted\": true}')") or out.strip().startswith(
        "(200, '{\"planted\":true}')"), out
    assert int(out.split()[-1]) in (401, 403)


def test_a_setting_is_one_field_of_its_section(copy):
    """recon/settings/run.py: one field of the run section (and the line that reads it): the parameter file sets it,
    the engine reads it from the section itself, and the generated configuration reference documents it."""
    insert(copy, "recon/settings/run.py",
           '    seed: int = Field(0, description="seed of the batch order, the held-out positions and the count '
           'split")',
           '    planted_note: str = Field("", description="a planted setting: a line the run log writes")')
    insert(copy, "recon/engine.py", '    loop.precondition_batches = resolve_batches(run.precondition_batches, losses)',
           '    if run.planted_note:\n        log.info("planted: %s", run.planted_note)')
    out = run_copy(copy, '''
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        run_params(tiny_params(run={"planted_note": "hello"}), 1)
        from phasestem.cli.docgen import config_reference
        print("planted_note" in config_reference())
    ''')
    assert "planted: hello" in out and out.strip().endswith("True")


def test_a_model_option_is_one_field_of_the_model_section(copy):
    """recon/settings/model.py: one field of ModelSettings (the parameter file's section and the options a model is
    built from both take it) and the line that reads it: the parameter file sets it, a program's keyword too."""
    insert(copy, "recon/settings/model.py", '    per_position_tilt: bool = Field(False, description="one tilt per '
           'position instead of a global one")', '    planted_gain: float = Field(1.0, description="a planted option")')
    insert(copy, "recon/model.py", "        model.obj_preblur = float(o.obj_preblur)",
           "        model.planted_gain = float(o.planted_gain)")
    out = run_copy(copy, '''
        from phasestem.recon.model import Ptychography
        from phasestem.recon.params import build_dataset, build_model
        params = tiny_params(model={"planted_gain": 2.5})
        dataset = build_dataset(params)
        print(build_model(params, dataset).planted_gain,
              Ptychography.from_dataset(dataset, planted_gain=3).planted_gain)
    ''')
    assert out.strip() == "2.5 3.0"
