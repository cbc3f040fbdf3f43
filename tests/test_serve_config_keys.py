"""phasestem serve: config keys as dangerous as options (issue 63, build item 4).

A key that names a host, a URL, a database or a path is held to one rule, whether it comes as an option, a ``set``
value, a config file or the parameter form (``phasestem.serve.config_keys``). Each reproduction of the issue runs
against a real server and, where the old code let it through, a real job: a fake Dask scheduler listening on
127.0.0.1 records whether anything connected, an outside folder must stay empty, an outside ``sim_*.h5`` must never
be opened (the kernel's inotify events say whether any process did).
"""
from __future__ import annotations

import glob
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from serve_workspace import CONFIGS, Server, make_workspace  # noqa: E402

from phasestem.serve.security import Refused  # noqa: E402


class FakeScheduler:
    """A TCP listener on 127.0.0.1 that accepts, records and closes every connection (a Dask scheduler's port)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.connections.append(peer)
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


class OpenProbe:
    """Whether any process opened ``path`` (a regular file), from the kernel's inotify events (IN_OPEN, IN_ACCESS):
    a stat, a listing of its folder or resolving a link to it is no open."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, path: Path):
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN | self.IN_ACCESS) < 0:
            pytest.skip(f"inotify is not available here (errno {ctypes.get_errno()})")
        self.events = 0

    def opened(self) -> int:
        """Opens and reads seen so far."""
        while True:
            try:
                self.events += len(os.read(self.fd, 1 << 16)) // 16  # one event: 16 bytes and its (empty) name
            except BlockingIOError:
                return self.events

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("config_keys")
    root = make_workspace(base / "ws")
    configs = root / "configs"
    (configs / "simulate.yaml").write_text((CONFIGS / "simulate_tiny.yaml").read_text())
    tune = yaml.safe_load((configs / "tiny.yaml").read_text())
    tune["tune"] = {"n_trials": 1, "n_epochs": 1, "C10": {"low": 30.0, "high": 70.0}}
    (configs / "tune.yaml").write_text(yaml.safe_dump(tune, sort_keys=False))
    train = yaml.safe_load((CONFIGS / "train_patch_tiny.yaml").read_text())
    train["data"]["files"] = ["../data/*.h5"]
    (configs / "train.yaml").write_text(yaml.safe_dump(train))
    (root / "experiments").mkdir()
    (root / "sims").mkdir()
    outside = base / "outside"
    outside.mkdir()
    server = Server(root)
    server.base, server.outside = base, outside
    yield server
    server.stop()


def submit_and_wait(server, spec: dict, until=lambda: False, timeout: float = 120) -> tuple[int, dict]:
    """POST the job; where it was accepted (the old code), let it run until it ends, ``until()`` holds or
    ``timeout`` s pass (then cancel it), so what it did is there to be seen."""
    status, answer = server.request("/api/jobs", "POST", body=spec)
    if status == 200:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not until():
            job = server.request(f"/api/jobs/{answer['id']}")[1]
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.3)
        server.request(f"/api/jobs/{answer['id']}/cancel", "POST", body={})
        server.wait_job(answer["id"], timeout=300)
    return status, answer


def scheduler_specs(address: str) -> list[dict]:
    simulate = {"command": "simulate", "config": "configs/simulate.yaml"}
    return [{**simulate, "set": {"compute.scheduler": address}}, {**simulate, "set": [f"compute.scheduler={address}"]},
            {**simulate, "args": ["--set", f"compute.scheduler={address}"]},
            {**simulate, "config": "configs/simulate_scheduler.yaml"}, {**simulate, "args": ["--scheduler", address]}]


@pytest.mark.parametrize("case", range(5))
def test_a_job_connects_to_no_scheduler(workspace, case):
    """2. ``set {"compute.scheduler": "tcp://127.0.0.1:PORT"}``: the option was refused, its key was not; the job
    connected to a fake scheduler (which could have answered with a pickle that runs code)."""
    scheduler = FakeScheduler()
    try:
        address = f"tcp://127.0.0.1:{scheduler.port}"
        config = yaml.safe_load((CONFIGS / "simulate_tiny.yaml").read_text())
        config["compute"]["scheduler"] = address
        (workspace.root / "configs" / "simulate_scheduler.yaml").write_text(yaml.safe_dump(config))
        status, answer = submit_and_wait(workspace, scheduler_specs(address)[case],
                                         until=lambda: bool(scheduler.connections))
        time.sleep(0.5)
    finally:
        scheduler.close()
    assert scheduler.connections == [], f"the job connected to the fake scheduler: {answer}"
    assert status == 403 and "compute.scheduler" in answer["error"], answer


def _storage_specs(outside: Path) -> list[dict]:
    absolute = f"sqlite:///{outside / 'x.db'}"
    return [{"command": "tune", "config": "configs/tune.yaml", "set": {"tune.storage": absolute}},
            {"command": "tune", "config": "configs/tune.yaml", "set": {"tune.storage": "sqlite:///../outside/x.db"}},
            {"command": "tune", "config": "configs/tune.yaml", "args": ["--set", f"tune.storage={absolute}"]},
            {"command": "tune", "config": "configs/tune.yaml", "set": {"tune.storage": "sqlite:///%2e%2e/outside/x.db"}},
            {"command": "tune", "config": "configs/tune.yaml",
             "set": {"tune.storage": f"sqlite:///file:{outside / 'x.db'}?uri=true"}},
            {"command": "reconstruct", "config": "configs/tune.yaml", "set": {"tune.storage": absolute}},
            {"command": "tune", "config": "configs/tune_outside.yaml"}]


@pytest.mark.parametrize("case", range(7))
def test_a_tune_study_is_never_written_outside_the_root(workspace, case):
    """4. ``set {"tune.storage": "sqlite:////…/outside/x.db"}`` created a 114 kB database outside the root."""
    for left in workspace.outside.iterdir():  # each case starts from an empty outside folder
        left.unlink()
    tune = yaml.safe_load((workspace.root / "configs" / "tune.yaml").read_text())
    tune["tune"]["storage"] = f"sqlite:///{workspace.outside / 'x.db'}"
    (workspace.root / "configs" / "tune_outside.yaml").write_text(yaml.safe_dump(tune))
    status, answer = submit_and_wait(workspace, _storage_specs(workspace.outside)[case],
                                     until=lambda: any(workspace.outside.iterdir()))
    assert list(workspace.outside.iterdir()) == [], f"written outside the root: {answer}"
    assert status == 403 and "tune.storage" in answer["error"], answer
    assert str(workspace.base) not in answer["error"]


def test_a_tune_study_may_live_in_a_sqlite_file_inside_the_root_and_nowhere_else(workspace):
    scheduler = FakeScheduler()  # a database server's port: nothing may connect to it either
    try:
        for url in (f"postgresql://user@127.0.0.1:{scheduler.port}/study", f"mysql://127.0.0.1:{scheduler.port}/x",
                    "sqlite://", "sqlite:///runs/study.db?mode=rwc"):
            spec = {"command": "tune", "config": "configs/tune.yaml", "set": {"tune.storage": url}}
            status, answer = submit_and_wait(workspace, spec, until=lambda: bool(scheduler.connections))
            assert status == 403 and "tune.storage" in answer["error"] and "SQLite file" in answer["error"], answer
    finally:
        scheduler.close()
    assert scheduler.connections == []
    spec = {"command": "tune", "config": "configs/tune.yaml", "set": {"tune.storage": "sqlite:///runs/study.db"}}
    status, job = workspace.request("/api/jobs", "POST", body=spec)
    assert status == 200, job
    workspace.request(f"/api/jobs/{job['id']}/cancel", "POST", body={})
    workspace.wait_job(job["id"], timeout=300)


def test_the_parameter_form_saves_no_database_outside_the_root(workspace):
    """4. The params form saved ``tune.storage: sqlite:////…/outside/x.db`` into the parameter file."""
    path = workspace.root / "configs" / "tune.yaml"
    before = path.read_text()
    for value in (f"sqlite:///{workspace.outside / 'x.db'}", "sqlite:///../outside/x.db", "postgresql://127.0.0.1/x"):
        status, answer = workspace.request("/api/params", "POST", body={"path": "configs/tune.yaml",
                                                                       "values": {"tune.storage": value}})
        assert status == 403 and "tune.storage" in answer["error"], answer
        assert path.read_text() == before
    status, answer = workspace.request("/api/params", "POST", body={"path": "configs/tune.yaml",
                                                                   "values": {"tune.storage": "sqlite:///runs/s.db"}})
    assert status == 200 and answer["saved"], answer
    assert yaml.safe_load(path.read_text())["tune"]["storage"] == "sqlite:///runs/s.db"
    path.write_text(before)
    assert list(workspace.outside.iterdir()) == []


@pytest.mark.parametrize("spec", [
    {"command": "train", "network": "patch", "config": "configs/train.yaml",
     "set": {"data.files": ["e*/../../outside/sim_*.h5"]}},
    {"command": "train", "network": "patch", "config": "configs/train.yaml",
     "args": ["--set", "data.files=[e*/../../outside/sim_*.h5]"]},
    {"command": "train", "network": "patch", "config": "configs/train.yaml", "set": {"data.files": ["sims/*.h5"]}},
    {"command": "train", "network": "patch", "config": "configs/train.yaml",
     "set": {"data.files": ["data/*.h5", "[ef]x*/../../outside/sim_*"]}},
], ids=["dotdot-after-wildcard", "dotdot-by-set-option", "a-match-links-out", "second-pattern"])
def test_a_glob_reads_nothing_outside_the_root(workspace, spec):
    """5. ``set {"data.files": ["e*/../../outside/sim_*.h5"]}`` trained on an outside file: the check read only the
    text before the first wildcard. A glob whose match is a link out of the root is the same read."""
    pytest.importorskip("timm", reason="train jobs need the learn extra")
    for left in workspace.outside.iterdir():
        left.unlink()
    sim = workspace.outside / "sim_1.h5"
    sim.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 1000)  # read by whoever opens it: a seed-000 file's name
    link = workspace.root / "sims" / "sim_2.h5"
    link.symlink_to(sim)
    probe = OpenProbe(sim)
    try:
        status, answer = submit_and_wait(workspace, spec, until=lambda: probe.opened() > 0, timeout=180)
        time.sleep(0.3)
        opened = probe.opened()
    finally:
        probe.close()
        link.unlink()
        sim.unlink()
    assert opened == 0, f"the outside file was opened: {answer}"
    assert status == 403 and "data.files" in answer["error"], answer
    assert "outside" not in answer["error"] or "lies outside the workspace root" in answer["error"] \
        or "'..' after a wildcard" in answer["error"], answer


def test_every_key_named_like_a_path_stays_inside_even_without_a_schema_mark(workspace):
    """Keys no schema marks but named like paths (inside ``data.reader_options`` too), the network switch of the
    learned route, and the server's own state folder."""
    for key, value in (("data.reader_options", {"header_file": str(workspace.outside / "h.hdr")}),
                       ("data.reader_options", {"frames_dir": "../outside"}),
                       ("data.file", ".phasestem-serve/jobs.sqlite"),
                       ("data.file", "\ud800.h5"), ("data.file", "x" * 5000)):
        spec = {"command": "reconstruct", "config": "configs/tiny.yaml", "set": {key: value}}
        status, answer = workspace.request("/api/jobs", "POST", body=spec)
        assert status in (400, 403) and key in answer["error"], (key, value, answer)


def test_the_learned_route_downloads_nothing(workspace):
    pytest.importorskip("timm", reason="train jobs need the learn extra")
    for key in ("model.allow_download", "stitch_model.allow_download"):
        spec = {"command": "train", "network": "patch", "config": "configs/train.yaml", "set": {key: True}}
        status, answer = workspace.request("/api/jobs", "POST", body=spec)
        assert status == 403 and key in answer["error"] and "downloads nothing" in answer["error"], answer


# ---- the table itself ---------------------------------------------------------------------------------------------
def _schemas():
    from phasestem.plan.config import PlanConfig
    from phasestem.recon.params import ReconstructParams
    from phasestem.simulate.config import SimulationConfig

    out = {"reconstruct": ReconstructParams, "simulate": SimulationConfig, "plan": PlanConfig}
    try:
        from phasestem.learn.registry import names, run_config_class
    except ImportError:
        return out
    return {**out, **{f"train {n}": run_config_class(n) for n in names()}}


def _string_fields(model, prefix=""):
    from phasestem.base.configfile import _submodels, path_marker

    for name, field in model.model_fields.items():
        subs = _submodels(field.annotation)
        if subs and path_marker(field) is None:
            yield from _string_fields(subs[0], f"{prefix}{name}.")
        elif "str" in str(field.annotation) or "Path" in str(field.annotation):
            yield prefix + name


@pytest.mark.parametrize("command", sorted(_schemas()))
def test_every_field_that_names_a_place_is_in_the_table(command):
    """Derived from the schemas: every string field named like a path, a host, a URL or a database is a ConfigPath
    field or a listed key; the listed keys exist in the schemas."""
    from phasestem.serve.config_keys import KEY_RULES, PATH_NAME, keys_table

    schema = _schemas()[command]
    table = keys_table(schema)
    named = ("file", "dir", "path", "folder", "storage", "scheduler", "url", "host", "address", "checkpoint",
             "pretrained", "weights", "database", "uri", "model")
    for key in _string_fields(schema):
        last = key.rsplit(".", 1)[-1]
        if PATH_NAME.match(last) or any(word in last for word in named):
            assert key in table or any(r.matches(key) for r in KEY_RULES), f"{command}: {key} is in no rule"
    assert "compute.scheduler" in table and "tune.storage" in table


def test_the_option_allow_list_and_the_keys_share_one_table():
    """An option that sets a listed key (``--scheduler`` → ``compute.scheduler``) is one of that command's real
    options, and no job may add it: the allow-list and the key's rule say the same."""
    from phasestem.cli import build_parser
    from phasestem.serve.config_keys import REFUSED, SET_BY_JOB, option_rule
    from phasestem.serve.job_spec import ALLOWED_OPTIONS

    parser = build_parser()
    simulate = parser._subparsers._group_actions[0].choices["simulate"]  # noqa: SLF001 - argparse has no API
    assert "--scheduler" in simulate._option_string_actions and option_rule("--scheduler").key == "compute.scheduler"
    for command, options in ALLOWED_OPTIONS.items():
        for option in options:
            rule = option_rule(option)
            assert rule is None or rule.rule not in (REFUSED, SET_BY_JOB), (command, option)


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root[1]"  # the root's own name is no pattern
    for rel in ("a/x1.h5", "a/x2.h5", "a/.hidden.h5", "b/c/x1.h5", "d1/x1.h5", "d2/y.h5", ".h/x.h5", "top.h5",
                "a/sub/deep.h5"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


@pytest.mark.parametrize("pattern", ["*/*.h5", "**/*.h5", "d?/x[12].h5", ".h*/*", "*/sub/*.h5", "a/*", "*.h5",
                                     "[ab]/*1.h5", "a/x1.h5", "nothing/*.h5", "b/*/x1.h5"])
def test_a_glob_is_expanded_as_python_expands_it(tmp_path, pattern):
    from phasestem.serve.config_keys import glob_matches

    root = _tree(tmp_path).resolve()
    found = sorted(str(p) for p in glob_matches(root, str(root / pattern), "data.files"))
    expected = sorted(str(root / p) for p in glob.glob(pattern, root_dir=root))
    assert found == expected


def test_a_glob_expansion_is_bounded(tmp_path):
    from phasestem.serve.config_keys import glob_matches

    root = _tree(tmp_path).resolve()
    for name in range(50):
        (root / "a" / f"many{name}.h5").write_bytes(b"")
    with pytest.raises(Refused, match="more than 20 files"):
        glob_matches(root, str(root / "a" / "*.h5"), "data.files", limit=20)
    with pytest.raises(Refused, match="more than 30 folder entries"):
        glob_matches(root, str(root / "*" / "*" / "*.h5"), "data.files", budget=30)
    with pytest.raises(Refused, match="'..' after a wildcard") as refused:
        glob_matches(root, str(root / "a*" / ".." / "a" / "*.h5"), "data.files")
    assert refused.value.status == 403
    start = time.perf_counter()
    glob_matches(root, str(root / "/".join(["**"] * 12) / "*.h5"), "data.files")  # '**' is '*': no recursion
    assert time.perf_counter() - start < 2
