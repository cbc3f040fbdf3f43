"""phasestem serve as a security boundary: what a holder of the workspace's token must not be able to do.

Each defect found by trying the workspace as an attacker would (issue 49) is reproduced here against a real server
process and real jobs: code planted in the root is never imported by a job, abbreviated options cannot reach the
run folder's options, two uploads of one name never mix, files under the root never run as pages of the app,
configs and ``set`` values never read outside the root, malformed requests are one 4xx line. The fuzz test drives
the job and parameter endpoints in-process (the ASGI application itself, its job runner not started, so nothing it
queues runs) with hypothesis. The stored-script case in a real browser: test_serve_browser.py.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from serve_workspace import PATIENCE, TOKEN, Server, make_workspace  # noqa: E402

#: modules a job imports at its start; planted in the root, each would write a file outside it when imported
PLANTED = ("yaml", "numpy", "h5py", "torch")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    root = make_workspace(base / "ws")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.h5").write_bytes(b"not for the workspace")
    marker = base / "pwned"
    for name in PLANTED:
        (root / f"{name}.py").write_text(f"open({str(marker / name)!r}, 'w').write('imported from the root')\n"
                                         "raise SystemExit('planted module imported')\n")
    marker.mkdir()
    server = Server(root)
    server.outside, server.marker = outside, marker
    yield server
    server.stop()


def raw_request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, headers, body bytes) of one request with the token, over a connection of its own."""
    host, port = server.url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, body=body, headers={"Authorization": f"token {server.token}", **(headers or {})})
    res = conn.getresponse()
    out = res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    conn.close()
    return out


def test_a_job_never_imports_code_planted_in_the_workspace(workspace):
    """1. Jobs used to run as ``python -m phasestem.cli`` in the root: a ``yaml.py`` there ran as the server's user."""
    status, job = workspace.request("/api/jobs", "POST", body={"command": "plan", "config": "configs/plan.yaml",
                                                               "args": ["--quantities-only"]})
    assert status == 200, job
    job = workspace.wait_job(job["id"], timeout=300)
    log = (workspace.root / job["run_dir"] / "job.log").read_text()
    assert job["state"] == "done", log
    assert "planted module imported" not in log
    assert list(workspace.marker.iterdir()) == []
    # the planted files are really importable from the root: the same command typed there with -m does import one
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", "--version"], cwd=workspace.root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and list(workspace.marker.iterdir())
    for planted in workspace.marker.iterdir():
        planted.unlink()


def test_torchrun_jobs_and_their_workers_import_nothing_from_the_workspace(tmp_path):
    """A job with processes > 1 runs under torchrun, whose workers are started by torchrun itself."""
    from phasestem.serve.jobs import JOB_MAIN, exec_argv

    argv = exec_argv(["torchrun", "--standalone", "--nproc_per_node=1", "-m", "phasestem.cli", "--version"])
    assert argv[1:4] == [JOB_MAIN, "--torchrun", "--standalone"] and argv[-2:] == [JOB_MAIN, "--version"]
    marker = tmp_path / "marker"
    for name in PLANTED:
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\nraise SystemExit(9)\n")
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert proc.returncode == 0 and "phasestem" in proc.stdout, proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args", [["--o", "data"], ["--ou=data"], ["--out-d", "data"], ["--res"], ["--dump"],
                                  ["--scheduler", "tcp://elsewhere:8786"], ["--device", "cuda"], ["-h"],
                                  ["--epochs", "2", "--out", "data"], ["--set", "run.out_dir=data"],
                                  ["--set=out_dir=data"]])
def test_options_the_job_sets_cannot_be_reached_by_abbreviation_or_set(workspace, args):
    """2. ``--o data`` and ``--ou=data`` used to pass the check of ``--out`` and write into data/."""
    before = sorted(p.name for p in (workspace.root / "data").iterdir())
    status, answer = workspace.request("/api/jobs", "POST", body={"command": "reconstruct",
                                                                  "config": "configs/tiny.yaml", "args": args})
    assert status == 403, answer
    assert "set by the job itself" in answer["error"] or "jobs take only" in answer["error"]
    assert sorted(p.name for p in (workspace.root / "data").iterdir()) == before


def test_the_command_line_takes_options_only_by_their_full_names(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", "reconstruct", "params.yaml", "--o", "data"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --o data" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_a_job_takes_allowed_options_checked_by_the_commands_own_parser(workspace):
    spec = {"command": "reconstruct", "config": "configs/tiny.yaml", "args": ["--epochs", "two"]}
    status, answer = workspace.request("/api/jobs", "POST", body=spec)
    assert status == 400 and "--epochs" in answer["error"] and "invalid int value" in answer["error"]
    spec = {"command": "calibrate", "config": "data/scan.npz", "args": ["--c10", "-50", "--energy=300e3"]}
    status, job = workspace.request("/api/jobs", "POST", body=spec)
    assert status == 200, job
    assert job["argv"][-5:] == ["--c10", "-50", "--energy=300e3", "--", "data/scan.npz"]  # the file after '--'
    workspace.request(f"/api/jobs/{job['id']}/cancel", "POST", body={})
    workspace.wait_job(job["id"], timeout=300)


def test_a_prior_model_outside_the_root_is_refused(workspace):
    """A learned prior (``--prior MODEL``) is a file the job reads: it stays inside the root too."""
    spec = {"command": "reconstruct", "config": "configs/tiny.yaml",
            "args": ["--prior", str(workspace.outside / "secret.h5"), "--prior-weight", "0.1"]}
    status, answer = workspace.request("/api/jobs", "POST", body=spec)
    assert status == 403 and "absolute paths are refused" in answer["error"], answer
    spec["args"] = ["--prior-weight", "much"]
    status, answer = workspace.request("/api/jobs", "POST", body=spec)
    assert status == 400 and "--prior-weight" in answer["error"], answer


def upload_slowly(server, path: str, chunks: list[bytes], pause: float, result: dict) -> None:
    host, port = server.url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def body():
        for chunk in chunks:
            yield chunk
            time.sleep(pause)

    conn.request("PUT", path, body=body(), headers={"Authorization": f"token {server.token}"}, encode_chunked=True)
    res = conn.getresponse()
    result.update(status=res.status, answer=json.loads(res.read()))
    conn.close()


def test_two_uploads_of_one_name_never_mix(workspace):
    """3. Two uploads of one name used to share one temporary: 200 for both and the bytes of both interleaved."""
    big, small = [bytes([65 + i % 26]) * 10_000 for i in range(30)], [b"z" * 1000]
    first, second = {}, {}
    slow = threading.Thread(target=upload_slowly, args=(workspace, "/api/upload?path=data/race.bin", big, 0.05,
                                                        first))
    slow.start()
    time.sleep(0.4)  # the first is well under way
    upload_slowly(workspace, "/api/upload?path=data/race.bin", small, 0, second)
    slow.join(60)
    assert second["status"] == 200 and second["answer"]["size"] == 1000
    assert first["status"] == 409 and "finished first" in first["answer"]["error"]
    assert (workspace.root / "data" / "race.bin").read_bytes() == b"z" * 1000  # the winner's bytes, and only those
    assert str(workspace.root) not in json.dumps(first["answer"])
    assert not [p for p in (workspace.root / "data").iterdir() if p.name.endswith(".tmp")]  # no temporary left


@pytest.mark.parametrize("name, content", [
    ("evil.html", b"<html><script>fetch('/api/upload?path=pwned.txt',{method:'PUT',body:'x'})</script></html>"),
    ("evil.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script>fetch('/api/jobs')</script></svg>"),
    ("evil.png.html", b"<script>alert(1)</script>"), ("page.htm", b"<script>alert(1)</script>")])
def test_files_the_app_does_not_show_itself_are_downloads(workspace, name, content):
    """4. .html / .svg under the root used to be served inline from the app's origin, without CSP or nosniff."""
    (workspace.root / "data" / name).write_bytes(content)
    status, headers, body = raw_request(workspace, "GET", f"/api/file?path=data/{name}")
    assert status == 200 and body == content
    assert headers["content-disposition"].startswith("attachment")
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in headers["content-security-policy"]


def test_every_answer_carries_the_policy_and_a_foreign_host_is_refused(workspace):
    for path in ("/", "/static/app.js", "/api/info", "/api/file?path=configs/tiny.yaml", "/api/jobs/999"):
        status, headers, _ = raw_request(workspace, "GET", path)
        assert headers["x-content-type-options"] == "nosniff", path
        csp = headers["content-security-policy"]
        assert csp.startswith("sandbox") if path.startswith("/api/file") else "script-src 'self';" in csp, path
        assert "unsafe-inline" not in csp.split("style-src")[0]
        assert headers["x-frame-options"] == "DENY"
    status, headers, body = raw_request(workspace, "GET", "/api/info", headers={"Host": "attacker.example:80"})
    assert status == 403 and b"Host" in body
    port = workspace.url.rsplit(":", 1)[1]
    status, _, _ = raw_request(workspace, "GET", "/api/info", headers={"Host": f"localhost:{port}"})
    assert status == 200
    index = raw_request(workspace, "GET", "/")[2].decode()  # the page keeps to its own policy: no inline code
    assert "<script>" not in index and "onclick=" not in index and "style=" not in index


def _outside_path(workspace) -> str:
    return str(workspace.outside / "secret.h5")


@pytest.mark.parametrize("make_spec", [
    lambda o: {"command": "train", "network": "patch", "config": "configs/train.yaml", "set": {"data.files": [o]}},
    lambda o: {"command": "train", "network": "patch", "config": "configs/train.yaml",
               "args": ["--set", f"data.files=[{o}]"]},
    lambda o: {"command": "train", "network": "patch", "config": "configs/train.yaml",
               "args": ["--set", "data.files=['../outside/*.h5']"]},
    lambda o: {"command": "train", "network": "patch", "config": "configs/train_outside.yaml"},
    lambda o: {"command": "simulate", "config": "configs/simulate.yaml", "set": {"specimen.files": [o]}},
    lambda o: {"command": "plan", "config": "configs/plan.yaml", "set": {"specimen.files": [o]}},
    lambda o: {"command": "reconstruct", "config": "configs/tiny.yaml", "set": {"data.file": o}},
    lambda o: {"command": "reconstruct", "config": "configs/tiny.yaml", "args": [f"--set=data.file={o}"]},
    lambda o: {"command": "reconstruct", "config": "configs/tiny.yaml", "args": ["--init", o]},
])
def test_configs_and_set_values_never_reach_outside_the_root(workspace, make_spec):
    """5. train / simulate / plan configs and set values used to read files outside the root."""
    pytest.importorskip("timm", reason="train jobs need the learn extra")
    configs = workspace.root / "configs"
    if not (configs / "train.yaml").exists():
        train = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "train_patch_tiny.yaml").read_text())
        train["data"]["files"] = ["../data/*.h5"]
        (configs / "train.yaml").write_text(yaml.safe_dump(train))
        train["data"]["files"] = ["../../outside/secret.h5"]
        (configs / "train_outside.yaml").write_text(yaml.safe_dump(train))
        (configs / "simulate.yaml").write_text(
            (Path(__file__).resolve().parents[1] / "configs" / "simulate_tiny.yaml").read_text())
    runs = sorted((workspace.root / "runs").glob("*")) if (workspace.root / "runs").exists() else []
    status, answer = workspace.request("/api/jobs", "POST", body=make_spec(_outside_path(workspace)))
    assert status in (400, 403), answer
    assert "outside the workspace root" in answer["error"] or "absolute paths are refused" in answer["error"], answer
    assert str(workspace.root) not in answer["error"]
    after = sorted((workspace.root / "runs").glob("*")) if (workspace.root / "runs").exists() else []
    assert after == runs  # nothing refused left a run folder


def test_the_parameter_form_saves_no_path_outside_the_root(workspace):
    path = workspace.root / "configs" / "tiny.yaml"
    before = path.read_text()
    for value in (_outside_path(workspace), "../../outside/secret.h5", "~/secret.h5"):
        status, answer = workspace.request("/api/params", "POST", body={"path": "configs/tiny.yaml",
                                                                       "values": {"data.file": value}})
        assert status == 403 and "outside the workspace root" in answer["error"], answer
    assert path.read_text() == before


def test_malformed_requests_are_one_line_never_a_server_error(workspace):
    """6. Deep JSON, a huge job id and watchers leaving a push channel used to answer 500 with a traceback."""
    deep = b"[" * 100_000 + b"]" * 100_000
    for route in ("/api/jobs", "/api/params"):
        status, answer = workspace.request(route, "POST", body=deep, headers={"Content-Type": "application/json"})
        assert status == 400 and "nested deeper" in answer["error"], (route, answer)
    for job_id in ("100000000000000000000000", "0", "-1", "1e3", "%D9%A3"):
        for route in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/events"):
            status, answer = workspace.request(route)
            assert status in (400, 404), (route, status)
            assert "error" in answer
    # an existing run folder of the next job's name: the job takes another, never writes into it
    status, jobs = workspace.request("/api/jobs")
    next_id = max([j["id"] for j in jobs["jobs"]], default=0) + 1
    squatter = workspace.root / "runs" / f"{next_id:04d}-plan"
    squatter.mkdir(parents=True)
    (squatter / "keep.txt").write_text("mine")
    status, job = workspace.request("/api/jobs", "POST", body={"command": "plan", "config": "configs/plan.yaml",
                                                               "args": ["--quantities-only"]})
    assert status == 200, job
    assert job["run_dir"] == f"runs/{next_id:04d}-plan-2"
    workspace.wait_job(job["id"], timeout=300)
    assert sorted(p.name for p in squatter.iterdir()) == ["keep.txt"]


def test_watchers_leaving_a_push_channel_leave_it_working(tmp_path):
    """Pages closed while their push channel waits used to break its lock (``RuntimeError: Lock is not acquired``,
    a 500 and a traceback in the server's log, 10 of 30 times)."""
    server = Server(make_workspace(tmp_path / "ws"))
    try:
        def watch_and_leave(route):
            req = urllib.request.Request(server.url + route, headers={"Authorization": f"token {TOKEN}"})
            with urllib.request.urlopen(req, timeout=120) as res:
                res.readline()

        status, job = server.request("/api/jobs", "POST", body={"command": "plan", "config": "configs/plan.yaml",
                                                                "args": ["--quantities-only"]})
        assert status == 200, job
        for _ in range(2):
            threads = [threading.Thread(target=watch_and_leave, args=(route,)) for route in
                       ["/api/events", f"/api/jobs/{job['id']}/events"] * 15]
            for t in threads:
                t.start()
            for t in threads:
                t.join(PATIENCE)
            time.sleep(0.3)
        req = urllib.request.Request(server.url + "/api/events", headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(req, timeout=120) as res:
            assert res.readline().startswith(b"data: {\"jobs\"")
        assert server.proc.poll() is None
        server.wait_job(job["id"], timeout=300)
        server.proc.send_signal(signal.SIGTERM)
        _, log = server.proc.communicate(timeout=60)
    finally:
        server.stop()
    assert "Traceback" not in log and "Lock is not acquired" not in log, log


def test_errors_never_show_the_servers_absolute_paths(workspace):
    for method, route, body in (("GET", "/api/file?path=data/nothing.npz", None),
                                ("GET", "/api/dataset?path=configs/tiny.yaml", None),
                                ("POST", "/api/jobs", {"command": "reconstruct", "config": "data/scan.npz"}),
                                ("POST", "/api/params", {"path": "configs/none.yaml", "values": {"a.b": "1"}}),
                                ("GET", "/api/pattern?path=data/scan.npz&iy=99&ix=0", None),
                                ("PUT", "/api/upload?path=nofolder/x.bin", b"x")):
        status, answer = workspace.request(route, method, body=body)
        assert 400 <= status < 500, (route, status, answer)
        assert str(workspace.root) not in json.dumps(answer), answer


# ---- fuzz: the job and parameter endpoints in-process ------------------------------------------------------------
def asgi_call(app, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI application itself (status, body)."""
    target, _, query = path.partition("?")

    async def call():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": target, "raw_path": target.encode(), "query_string": query.encode(),
                 "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8888),
                 "headers": [(b"host", b"127.0.0.1:8888"), (b"authorization", f"token {TOKEN}".encode()),
                             (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        delivered, out = False, {"status": None, "body": b""}

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)

        async def send(message):
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await app(scope, receive, send)
        return out["status"], out["body"]

    return asyncio.run(call())


def test_fuzzed_job_and_parameter_requests_never_answer_500_nor_write_outside(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from phasestem.serve.app import create_app

    root = make_workspace(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sim_1.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # what an outside glob would read
    (root / "experiments").mkdir()
    configs = Path(__file__).resolve().parents[1] / "configs"
    (root / "configs" / "simulate.yaml").write_text((configs / "simulate_tiny.yaml").read_text())
    (root / "configs" / "train.yaml").write_text((configs / "train_patch_tiny.yaml").read_text())
    tune = yaml.safe_load((root / "configs" / "tiny.yaml").read_text())
    tune["tune"] = {"n_trials": 1, "C10": {"low": 30.0, "high": 70.0}}
    (root / "configs" / "tune.yaml").write_text(yaml.safe_dump(tune))
    app = create_app(root, TOKEN, max_upload=1 << 20, hosts=frozenset({"127.0.0.1"}))

    def snapshot() -> list[tuple[str, int, int]]:
        """Every path outside the root with its size and modification time: nothing may be created or touched."""
        return sorted((str(p.relative_to(tmp_path)), p.lstat().st_size, p.lstat().st_mtime_ns)
                      for p in tmp_path.rglob("*") if root not in (p, *p.parents))

    before = snapshot()
    text = st.one_of(st.text(max_size=40), st.sampled_from(
        ["configs/tiny.yaml", "configs/plan.yaml", "data/scan.npz", "../outside/x", "/etc/passwd", "~", "..", "",
         "runs", "configs", "--out", "--o", "--set", "data.file=/etc/passwd", "run.n_epochs=2", "\x00", "é" * 500]))
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), text)
    value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(text, inner, max_size=4)), max_leaves=12)
    keys = st.sampled_from(["command", "config", "set", "args", "device", "processes", "name", "network", "auto",
                            "path", "values"])
    commands = st.sampled_from(["reconstruct", "plan", "train", "simulate", "calibrate", "tune", "serve", "sh"])
    job = st.fixed_dictionaries({"command": st.one_of(commands, value)},
                                optional={k: value for k in ("config", "set", "args", "device", "processes", "name",
                                                             "network", "auto")})
    # set keys that name a host, a URL, a database or a path (phasestem.serve.config_keys), and values that reach out
    places = st.sampled_from([
        "tcp://127.0.0.1:1", "tcp://[::1]:8786", "127.0.0.1:8786", "tls://example.org:8786", "http://127.0.0.1:1/x",
        "https://example.org/weights.pth", "file:///etc/passwd", f"file://{outside}/sim_1.h5", "sqlite://",
        "sqlite:///runs/study.db", f"sqlite:///{outside}/x.db", "sqlite:///../outside/x.db", "sqlite:///runs/s.db?mode=rwc",
        "sqlite:///%2e%2e/outside/x.db", f"sqlite:///file:{outside}/x.db?uri=true", "postgresql://u:p@127.0.0.1/x",
        "e*/../../outside/sim_*.h5", "*/../../outside/*", "[e]x*/../../outside/*.h5", "data/*", "**/**/**/**/*",
        "../outside/*", "~/*", "/etc/*", f"{outside}/sim_*.h5", "é/ü*/名前.h5", "\ud800.h5", ".phasestem-serve/*",
        "runs/[", "x" * 5000, "a/" * 2000, "data/scan.npz", "auto"])
    listed = ("compute.scheduler", "tune.storage", "data.file", "data.files", "specimen.files", "data.train",
              "data.test", "model.allow_download", "stitch_model.allow_download", "model.initial_probe.file",
              "scan.positions_file", "data.detector_shifts", "patch_checkpoint", "model.vit_pretrained",
              "data.reader_options.header_file", "run.out_dir", "out")
    place_keys = st.one_of(st.sampled_from(listed), st.sampled_from(["data.reader_options", "compute", "tune"]), text)
    never = ("compute.scheduler", "model.allow_download", "stitch_model.allow_download", "run.out_dir", "out")

    def leaves(value) -> bool:
        """Whether a path or glob leaves the root (relative to it) or is no path at all."""
        return value.startswith(("/", "~", "..", ".phasestem-serve")) or "/../" in value or "\ud800" in value \
            or len(value) > 4096

    def reaches_out(route: str, payload) -> bool:
        """Whether a request gives a listed key a value that names a host, a database or a place outside the root."""
        pairs = payload.get("set" if route == "/api/jobs" else "values") if isinstance(payload, dict) else None
        if isinstance(pairs, list):
            pairs = dict(str(item).partition("=")[::2] for item in pairs)
        for key, value in (pairs or {}).items() if isinstance(pairs, dict) else ():
            if key not in listed or not isinstance(value, str | list):
                continue
            if key in never or (key == "tune.storage" and value != "sqlite:///runs/study.db"):
                return True
            if any(leaves(v) for v in ([value] if isinstance(value, str) else value) if isinstance(v, str)):
                return True
        return False

    place_values = st.one_of(places, st.lists(places, max_size=3), st.dictionaries(place_keys, places, max_size=2),
                             scalar)
    risky_set = st.one_of(st.dictionaries(place_keys, place_values, max_size=3),
                          st.lists(st.builds("{}={}".format, place_keys, places), max_size=3))
    own_config = st.sampled_from([("reconstruct", "tiny"), ("tune", "tune"), ("simulate", "simulate"), ("plan", "plan"),
                                  ("train", "train"), ("simulate", "tiny"), ("calibrate", "tiny")])
    risky_job = st.builds(
        lambda pair, changes, extra: {"command": pair[0], "config": f"configs/{pair[1]}.yaml", "set": changes, **extra},
        own_config, risky_set, st.fixed_dictionaries({}, optional={
            "network": st.sampled_from(["patch", "stitch", "restorer"]),
            "args": st.lists(st.one_of(places, st.sampled_from(["--set", "--scheduler", "--set=tune.storage=x"])),
                             max_size=3)}))
    risky_form = st.fixed_dictionaries({"path": st.sampled_from(["configs/tiny.yaml", "configs/tune.yaml"]),
                                        "values": st.dictionaries(place_keys, st.one_of(places, scalar), min_size=1,
                                                                  max_size=3)})
    body = st.one_of(job, st.dictionaries(keys, value, max_size=6), value,
                     st.fixed_dictionaries({"path": st.one_of(st.just("configs/tiny.yaml"), text),
                                            "values": st.one_of(st.dictionaries(text, scalar, max_size=3), value)}),
                     risky_job, risky_form)

    @settings(max_examples=500, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(route=st.sampled_from(["/api/jobs", "/api/params"]), payload=body, raw=st.booleans())
    def check(route, payload, raw):
        data = json.dumps(payload).encode() if not raw else json.dumps(payload).encode()[:-1]
        status, answer = asgi_call(app, "POST", route, data)
        assert status is not None and status < 500, (route, payload, answer)
        assert 200 <= status < 300 or "error" in json.loads(answer), answer
        assert raw or status >= 400 or not reaches_out(route, payload), (route, payload, answer)

    check()
    assert hypothesis is not None
    assert snapshot() == before  # nothing written outside the root
