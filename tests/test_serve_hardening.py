"""phasestem serve's requests, hardened (issue 63, reproductions 7 and 9), each against a real server process.

* the parameter form: 8 saves of one file at once, 25 rounds; every save answered ``saved: true`` is what the file
  holds afterwards or was replaced by a later save that also answered ``saved: true``, a save against a version
  that another save replaced is 409, no race answers 400 and no read sees a half-written file;
* job ids out of SQLite's range on every route (compare, its line profile), never a 500;
* a run folder's ``calibration.json`` with NaN and Infinity, read as null;
* a data or config file whose name begins with ``-``: the job's file, not an option;
* the server's own ``.phasestem-serve/`` out of the file API and of jobs;
* an ``Origin`` of another scheme (``https://`` to this ``http://`` server) refused.
"""
from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from serve_workspace import Server, chromium_driver, make_workspace, needs_chromium  # noqa: E402

PARAMS = "configs/tiny.yaml"
#: concurrent saves per round, rounds
WRITERS, ROUNDS = 8, 25


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(make_workspace(tmp_path_factory.mktemp("hardening") / "ws"))
    yield server
    server.stop()


def _form(server) -> dict:
    status, form = server.request(f"/api/params?path={PARAMS}")
    assert status == 200, form  # a half-written file would not parse: 400
    return form


def _save(server, epochs: int, version: str | None = None) -> tuple[int, dict]:
    body = {"path": PARAMS, "values": {"run.n_epochs": str(epochs)}}
    if version is not None:
        body["version"] = version
    return server.request("/api/params", "POST", body=body)


def _read_while(server, busy: threading.Event, seen: list) -> None:
    """Read the file through the server until ``busy`` is cleared; every read must be a whole parameter file."""
    while busy.is_set():
        status, text = server.request(f"/api/file?path={PARAMS}")
        assert status == 200
        seen.append(yaml.safe_load(text)["run"]["n_epochs"])  # a half-written file: no 'run', or not YAML


def _round(server, pool, values: list[int], version: str | None) -> list[tuple[int, dict]]:
    """``values`` saved at once (each with ``version`` when given) while a reader reads the form."""
    busy, seen = threading.Event(), []
    before = yaml.safe_load((server.root / PARAMS).read_text())["run"]["n_epochs"]
    busy.set()
    reader = threading.Thread(target=_read_while, args=(server, busy, seen))
    reader.start()
    try:
        answers = list(pool.map(lambda v: _save(server, v, version), values))
    finally:
        busy.clear()
        reader.join(30)
    assert seen, "the reader read nothing"
    assert set(seen) <= set(values) | {before}, seen  # one whole save or another, never a mixture
    return answers


def test_concurrent_saves_of_the_parameter_form_are_never_lost(server):
    """7. Every save shared one temporary per server process: 72 of 200 answered 400, 4 rounds kept a save answered
    400 and lost the ones answered ``saved: true``, 3 saves read a half-written file."""
    path = server.root / PARAMS
    with ThreadPoolExecutor(WRITERS) as pool:
        for r in range(ROUNDS):
            values = [1000 + WRITERS * r + i for i in range(WRITERS)]
            answers = _round(server, pool, values, None)
            assert [status for status, _ in answers] == [200] * WRITERS, (r, answers)  # one at a time, each saved
            assert all(a["saved"] is True for _, a in answers)
            held = yaml.safe_load(path.read_text())["run"]["n_epochs"]
            assert held in values, (r, held)  # the last save's text: none answered otherwise holds the file
            form = _form(server)
            assert int(form["fields"]["run.n_epochs"]) == held
            saved = {a.get("version"): v for v, (_, a) in zip(values, answers, strict=True)}
            assert len(saved) == WRITERS and saved[form["version"]] == held  # each wrote its own text; that one stays
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_concurrent_saves_of_one_version_save_once(server):
    """Eight saves of the form as read at one version: one is saved, the others are told the file changed (409)
    instead of silently replacing it (or being replaced)."""
    path = server.root / PARAMS
    with ThreadPoolExecutor(WRITERS) as pool:
        for r in range(ROUNDS // 2):
            values = [5000 + WRITERS * r + i for i in range(WRITERS)]
            answers = _round(server, pool, values, _form(server)["version"])
            assert sorted(status for status, _ in answers) == [200] + [409] * (WRITERS - 1), (r, answers)
            assert all("changed since the form was read" in a["error"] for s, a in answers if s == 409)
            (winner, answer), = [(v, a) for v, (s, a) in zip(values, answers, strict=True) if s == 200]
            assert answer["saved"] is True and _form(server)["version"] == answer["version"]
            assert yaml.safe_load(path.read_text())["run"]["n_epochs"] == winner


def test_a_save_over_a_version_another_save_replaced_is_refused(server):
    version = _form(server)["version"]
    status, first = _save(server, 77, version)
    assert status == 200 and first["saved"] is True and first["version"] != version
    status, late = _save(server, 78, version)
    assert status == 409 and "reload the form" in late["error"], late
    assert _form(server)["fields"]["run.n_epochs"] == "77"
    status, again = _save(server, 78, first["version"])  # the page sends the version its last save answered
    assert status == 200 and _form(server)["version"] == again["version"]
    status, answer = server.request("/api/params", "POST", body={"path": PARAMS, "values": {"run.n_epochs": "5"},
                                                                 "version": 12})
    assert status == 400 and "version" in answer["error"]


@needs_chromium
def test_the_pages_form_saves_again_and_is_told_when_another_save_came_first(server, tmp_path):
    """The page sends the version it read and takes the one its save answered: its own saves follow one another,
    and a save over someone else's later save is refused on the page instead of replacing it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = server.root / PARAMS
    d = chromium_driver(tmp_path / "profile")
    try:
        d.get(f"{server.url}/?token={server.token}#/params?path={PARAMS}")
        epochs_field = (By.CSS_SELECTOR, '#params-form input[name="run.n_epochs"]')
        WebDriverWait(d, 60).until(lambda d: d.find_elements(*epochs_field))

        def save_in_page(epochs: int) -> str:
            field = d.find_element(*epochs_field)
            field.clear()
            field.send_keys(str(epochs))
            d.execute_script("document.getElementById('params-status').textContent = ''")
            d.find_element(By.ID, "params-save").click()
            return WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "params-status").text)

        assert save_in_page(31) == "saved (valid)"
        assert save_in_page(32) == "saved (valid)" and yaml.safe_load(path.read_text())["run"]["n_epochs"] == 32
        assert _save(server, 33)[0] == 200  # someone else, after the page read the file
        assert "changed since the form was read" in save_in_page(34)
        assert yaml.safe_load(path.read_text())["run"]["n_epochs"] == 33
    finally:
        d.quit()


@pytest.mark.parametrize("route", [
    "/api/compare?jobs=99999999999999999999999,1", "/api/compare?jobs=9223372036854775808,1",
    "/api/compare/profile?jobs=99999999999999999999999,1&line=0,0,1,1",
    "/api/compare/profile?jobs=9223372036854775808,1&line=0,0,1,1", "/api/compare?jobs=1,%D9%A3",
    "/api/compare?jobs=1,-2", "/api/jobs/9223372036854775808", "/api/jobs/9223372036854775807"])
def test_job_ids_out_of_range_are_refused_on_every_route(server, route):
    """9. /api/compare and /api/compare/profile passed any integer to SQLite: OverflowError, a 500."""
    status, answer = server.request(route)
    assert status in (400, 404), (route, status, answer)
    assert "error" in answer and "Traceback" not in answer["error"]


def _finished_plan(server, config: str = "configs/plan.yaml") -> dict:
    status, job = server.request("/api/jobs", "POST", body={"command": "plan", "config": config,
                                                            "args": ["--quantities-only"]})
    assert status == 200, job
    job = server.wait_job(job["id"], timeout=300)
    assert job["state"] == "done", (server.root / job["run_dir"] / "job.log").read_text()
    return job


def test_a_run_folders_calibration_with_nan_is_read_as_null(server):
    """9. /api/jobs/N answered 500 once its folder held a calibration.json with NaN (Python writes NaN; JSON has
    no such number)."""
    job = _finished_plan(server)
    (server.root / job["run_dir"] / "calibration.json").write_text(
        '{"rotation_deg": NaN, "defocus": Infinity, "c30": -Infinity, "fit": {"residual": [1.5, NaN]}}')
    status, answer = server.request(f"/api/jobs/{job['id']}")
    assert status == 200, answer
    assert answer["calibration"] == {"rotation_deg": None, "defocus": None, "c30": None,
                                     "fit": {"residual": [1.5, None]}}
    (server.root / job["run_dir"] / "calibration.json").write_text('{"rotation_deg": 1.')  # being written
    status, answer = server.request(f"/api/jobs/{job['id']}")
    assert status == 200 and answer["calibration"] is None


def test_a_file_whose_name_begins_with_a_dash_is_the_jobs_file(server):
    """9. ``phasestem plan -x.yaml --out …``: the file was taken for an option and the job failed at once."""
    shutil.copy(server.root / "configs" / "plan.yaml", server.root / "-x.yaml")
    job = _finished_plan(server, "-x.yaml")
    assert job["argv"][-2:] == ["--", "-x.yaml"]
    assert "probe: radius" in (server.root / job["run_dir"] / "job.log").read_text()
    shutil.copy(server.root / "data" / "scan.npz", server.root / "-x.npz")
    args = ["--energy", "300e3", "--semiangle", "15", "--scan-step", "1.0"]  # the simulated scan's (write_npz)
    status, job = server.request("/api/jobs", "POST", body={"command": "calibrate", "config": "-x.npz", "args": args})
    assert status == 200, job
    job = server.wait_job(job["id"], timeout=300)
    assert job["argv"][-2:] == ["--", "-x.npz"]
    assert job["state"] == "done", (server.root / job["run_dir"] / "job.log").read_text()
    assert (server.root / job["run_dir"] / "params.yaml").is_file()


@pytest.mark.parametrize("method, route, body", [
    ("GET", "/api/files?path=.phasestem-serve", None),
    ("GET", "/api/file?path=.phasestem-serve/jobs.sqlite", None),
    ("GET", "/api/file?path=state/jobs.sqlite", None),  # a link into it
    ("GET", "/api/dataset?path=.phasestem-serve/jobs.sqlite", None),
    ("GET", "/api/params?path=.phasestem-serve/jobs.sqlite", None),
    ("PUT", "/api/upload?path=.phasestem-serve/planted.yaml", b"x"),
    ("PUT", "/api/upload?path=state/planted.yaml", b"x"),
    ("POST", "/api/jobs", {"command": "calibrate", "config": ".phasestem-serve/jobs.sqlite"}),
    ("POST", "/api/jobs", {"command": "reconstruct", "config": PARAMS, "args": ["--init", ".phasestem-serve/x.h5"]}),
    ("POST", "/api/jobs", {"command": "reconstruct", "config": PARAMS,
                           "set": {"data.file": ".phasestem-serve/jobs.sqlite"}}),
    ("POST", "/api/params", {"path": PARAMS, "values": {"data.file": "../.phasestem-serve/jobs.sqlite"}}),
])
def test_the_servers_own_state_folder_is_out_of_the_file_api(server, method, route, body):
    """9. ``.phasestem-serve/`` (the queue's database) was listed, read and written through the file API."""
    state = server.root / ".phasestem-serve"
    link = server.root / "state"
    if not link.is_symlink():
        link.symlink_to(state.name)
    status, answer = server.request(route, method, body=body)
    assert status == 403 and ".phasestem-serve/ is the server's own state folder" in answer["error"], answer
    assert not list(state.glob("planted*"))


def test_a_state_change_from_an_origin_of_another_scheme_is_refused(server):
    """9. The Origin check compared host and port only: a page of ``https://127.0.0.1:PORT`` passed."""
    own = server.url  # http://127.0.0.1:PORT
    host = own.split("//", 1)[1]
    body = {"path": PARAMS, "values": {"run.n_epochs": "not a number"}}
    for origin in (f"https://{host}", f"ws://{host.split(':')[0]}:1", "null", f"http://{host}.evil.example",
                   f"http://{host.split(':')[0]}:1"):
        status, answer = server.request("/api/params", "POST", body=body, headers={"Origin": origin})
        assert status == 403 and "another site" in answer["error"], (origin, status, answer)
    status, answer = server.request("/api/params", "POST", body=body, headers={"Origin": own})
    assert status == 400 and "run.n_epochs" in answer["error"], answer  # past the guard: the form's own refusal
