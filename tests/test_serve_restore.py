"""phasestem serve runs ``phasestem restore`` as a job (a real server, a real reconstruct job, an untrained restorer
inside the root): the verdict's calibration in the job's run folder, the run page's lines, figure and verdict read
by a reader process, and every request outside the allow-list or the root refused in one line."""
from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from serve_workspace import PATIENCE, Server, chromium_driver, make_workspace, needs_chromium  # noqa: E402
from test_restore_output import _identity_restorer  # noqa: E402

from phasestem.serve.jobs import SERVE_DIR, Job, JobStore  # noqa: E402
from phasestem.serve.restored import restore_view  # noqa: E402

MODEL = "models/restorer.safetensors"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A real server whose first job, a tiny reconstruction, has finished; an untrained restorer for its optics at
    :data:`MODEL`; a file outside the root and a link to it."""
    base = tmp_path_factory.mktemp("serve_restore")
    root = make_workspace(base / "ws", n_epochs=4)
    (base / "outside").mkdir()
    (base / "outside" / "results.h5").write_bytes(b"not for the workspace")
    (root / "escape.h5").symlink_to(base / "outside" / "results.h5")
    server = Server(root)
    status, job = server.request("/api/jobs", "POST", body={"command": "reconstruct", "config": "configs/tiny.yaml",
                                                            "set": {"run.noise_sigma": 1e-3}})  # σ maps
    assert status == 200, job
    run = server.wait_job(job["id"])
    assert run["state"] == "done", run
    (root / "models").mkdir()
    _identity_restorer(root / MODEL, root / run["run_dir"] / "results.h5")
    server.results = f"{run['run_dir']}/results.h5"
    yield server
    server.stop()


def _restore(server, *args, **spec):
    body = {"command": "restore", "config": server.results, "args": ["--model", MODEL, *args], **spec}
    return server.request("/api/jobs", "POST", body=body)


@pytest.fixture(scope="module")
def verdict_job(workspace):
    """A restore job with the verdict (one calibration specimen on an 8 Å cell: seconds), as queued and finished."""
    status, job = _restore(workspace, "--verdict", "--fdr", "0.2", "--calibration-samples", "1",
                           "--calibration-cell", "8", name="restore with verdict")
    assert status == 200, job
    return job, workspace.wait_job(job["id"])


def test_a_restore_job_gives_its_verdict_and_the_run_page_shows_it(workspace, verdict_job):
    job, done = verdict_job
    run = job["run_dir"]
    assert job["argv"][:8] == ["phasestem", "restore", "--out-file", f"{run}/restored.h5", "--replace", "--device",
                               "cpu", "--calibration"]
    assert job["argv"][8] == f"{run}/calibration" and job["argv"][-2:] == ["--", workspace.results]
    assert done["state"] == "done", (workspace.root / run / "job.log").read_text()[-3000:]
    # the calibration stayed in the job's run folder (the only folder a job may write)
    assert (workspace.root / run / "calibration" / "calibration.json").is_file()
    assert {"restored.h5", "restored.png", "restored.log"} <= {p.rsplit("/", 1)[-1] for p in done["files"]}

    status, page = workspace.request(f"/api/jobs/{job['id']}/restored")
    assert status == 200, page
    lines = page["lines"]
    assert lines[0].startswith("restored phase ") and f"{run}/restored.h5" in lines[0]
    assert lines[1].startswith("the restorer changed 0.00 % of the scanned field")  # the σ line: the identity
    assert any(line.startswith("data guard: ") for line in lines)  # the patterns were read: the verdict's dose
    verdict_line = next(line for line in lines if line.startswith("verdict: "))
    assert "restored columns are not supported by the data at 20% FDR" in verdict_line
    assert str(workspace.root) not in str(page)
    with h5py.File(workspace.root / run / "restored.h5") as f:
        table = f["verdict_sites"][...]
        attrs = dict(f["verdict_sites"].attrs)
    v = page["verdict"]
    assert v["sites"] == len(table) > 0 and v["unsupported"] == int((table["supported"] == 0).sum())
    assert v["fdr"] == pytest.approx(0.2) and v["calibration_samples"] == 1
    assert v["calibration_null_sites"] == attrs["calibration_null_sites"]
    assert v["calibration_cpu_seconds"] > 0
    assert v["calibration_cpu_seconds"] == pytest.approx(float(attrs["calibration_cpu_seconds"]))
    assert v["calibration_power"] == pytest.approx(float(attrs["calibration_power"]))
    assert v["summary"] == (f"{v['unsupported']} of {v['sites']} restored columns are not supported by the data at "
                            "20% FDR")
    assert verdict_line.startswith(f"verdict: {v['summary']}")
    assert "1 simulated specimens" in v["calibration"] and "CPU seconds" in v["calibration"]
    assert "of their true columns were supported" in v["calibration"]
    said = "Read the columns marked in red from AD's phase" if v["unsupported"] else "Every restored column"
    assert v["advice"].startswith(said)
    # the figure is served, as a PNG of the run folder
    assert page["figure"] == f"{run}/restored.png"
    status, png = workspace.request(f"/api/file?path={page['figure']}")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("config, status", [("../outside/results.h5", 403), ("/etc/passwd", 403),
                                            ("escape.h5", 403), ("runs/none/results.h5", 404)])
def test_a_results_file_outside_the_root_is_refused(workspace, config, status):
    got, answer = _restore(workspace, config=config)
    assert got == status and "\n" not in answer["error"], answer
    assert str(workspace.root) not in answer["error"]


@pytest.mark.parametrize("args, status, words", [
    (["--trust-geometry"], 403, "restore jobs take only --model, --data, --verdict"),
    (["--no-data-guard"], 403, "restore jobs take only"),
    (["--calibration", "elsewhere"], 403, "set by the job itself"),
    (["--out-file", "data/restored.h5"], 403, "set by the job itself"),
    (["--scheduler", "tcp://127.0.0.1:8786"], 403, "restore jobs take only"),
    (["--verdict", "--fdr", "1.5"], 400, "--fdr 1.5: the verdict's false-discovery rate"),
    (["--verdict", "--fdr", "0"], 400, "--fdr 0.0"),
    (["--verdict", "--fdr=nan"], 400, "--fdr nan"),
    (["--verdict", "--fdr", "often"], 400, "invalid float value"),
    (["--fdr", "0.1"], 400, "give them with --verdict"),
    (["--verdict", "--calibration-samples", "0"], 400, "expected 1 to 64 specimens"),
    (["--verdict", "--calibration-cell", "1e6"], 400, "at most 200"),
    (["--data", "../outside/results.h5"], 403, "'..' is refused"),
    (["--data", "configs"], 400, "not a file"),
])
def test_options_beyond_the_allow_list_and_bad_values_are_refused(workspace, args, status, words):
    runs = sorted(os.listdir(workspace.root / "runs"))
    got, answer = _restore(workspace, *args)
    assert got == status and words in answer["error"] and "\n" not in answer["error"], answer
    assert sorted(os.listdir(workspace.root / "runs")) == runs  # no run folder made


def test_the_model_is_a_shipped_restorer_or_a_file_inside_the_root(workspace):
    status, info = workspace.request("/api/info")
    assert status == 200 and "restore-seed-fine" in info["restorers"] and "seed-tiny" not in info["restorers"]
    body = {"command": "restore", "config": workspace.results}
    for model, code, words in (("../outside/x.safetensors", 403, "'..' is refused"),
                               ("escape.h5", 403, "leads out of the workspace root"),
                               ("no-such-restorer", 400, "neither a shipped restorer (restore-bench"),
                               ("", 400, "neither a shipped restorer")):
        status, answer = workspace.request("/api/jobs", "POST", body={**body, "args": ["--model", model]})
        assert status == code and words in answer["error"], answer
    status, answer = workspace.request("/api/jobs", "POST", body=body)
    assert status == 400 and "--model" in answer["error"], answer
    status, answer = workspace.request("/api/jobs", "POST", body={**body, "args": ["--model", MODEL],
                                                                  "set": {"run.n_epochs": 2}})
    assert status == 400 and "restore takes its options as args" in answer["error"], answer
    status, answer = workspace.request("/api/jobs", "POST", body={**body, "args": ["--model", MODEL], "processes": 2})
    assert status == 400 and "torchrun" in answer["error"], answer
    # a shipped name is taken as it is (the job itself refuses a model made for other optics)
    status, job = workspace.request("/api/jobs", "POST", body={**body, "args": ["--model", "restore-seed-fine"]})
    assert status == 200 and job["argv"][job["argv"].index("--model") + 1] == "restore-seed-fine", job
    assert "--calibration" not in job["argv"]  # no verdict, no calibration
    workspace.request(f"/api/jobs/{job['id']}/cancel", "POST", body={})
    workspace.wait_job(job["id"])
    # the restore view is a restore job's only
    status, answer = workspace.request("/api/jobs/1/restored")
    assert status == 400 and "not a restore" in answer["error"], answer


def test_the_run_page_never_follows_a_link_the_job_left(workspace, verdict_job):
    """A restore job's run folder whose restored.h5, .log and .png are links (to a real restoration elsewhere in the
    root): the page reads none of them."""
    real = workspace.root / verdict_job[0]["run_dir"]
    run = workspace.root / "runs" / "linked-restore"
    run.mkdir()
    for name in ("restored.h5", "restored.log", "restored.png"):
        (run / name).symlink_to(real / name)
    assert restore_view(workspace.root, real)["verdict"] is not None  # the target itself is a restoration
    store = JobStore(workspace.root / SERVE_DIR / "jobs.sqlite")
    job = store.add(Job(id=0, command="restore", argv=["phasestem", "restore"], run_dir="runs/linked-restore",
                        state="done", returncode=0, created=time.time(), started=time.time(), ended=time.time()))
    status, page = workspace.request(f"/api/jobs/{job.id}/restored")
    assert status == 200 and page == {"lines": [], "figure": None, "verdict": None}, page
    np.testing.assert_equal(restore_view(workspace.root, run), page)


@needs_chromium
def test_the_page_queues_a_restore_of_a_finished_run_and_shows_its_verdict(workspace, tmp_path):
    """In headless Chromium: a finished reconstruction's run page offers the restore (the shipped restorers, a model
    of the workspace, the verdict); its button queues the job and opens its page, which shows the verdict, the
    figure and the printed lines once the job is done."""
    pytest.importorskip("selenium", reason="the browser test drives Chromium through Selenium (dev extra)")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver(tmp_path / "profile")
    try:
        def shown(script: str, timeout: float = PATIENCE):
            try:
                return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))
            except TimeoutException:  # say what the page said
                said = driver.execute_script("return document.getElementById('error').textContent")
                raise AssertionError(f"{script} at {driver.current_url}: {said}; {driver.get_log('browser')}") from None

        reconstruction = workspace.results.split("/")[1].split("-")[0].lstrip("0")
        driver.get(f"{workspace.url}/?token={workspace.token}#/run/{reconstruction}")
        shown("return document.getElementById('restore-card')", 60)  # (the job's set given as a mapping)
        options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#restore-model option")]
        assert "restore-seed-fine" in options and "seed-tiny" not in options
        for name, value in (("path", MODEL), ("fdr", "0.2"), ("samples", "1"), ("cell", "8")):
            box = driver.find_element(By.ID, f"restore-{name}")
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "restore-verdict").click()
        driver.find_element(By.ID, "restore-queue").click()
        job_id = int(shown("const m = /#\\/run\\/(\\d+)$/.exec(location.hash); "
                           f"return m && m[1] !== '{reconstruction}' && m[1]", 60))  # the new job's page
        status, job = workspace.request(f"/api/jobs/{job_id}")
        assert status == 200 and job["command"] == "restore" and job["spec"]["config"] == workspace.results
        assert job["spec"]["args"] == ["--model", MODEL, "--verdict", "--fdr", "0.2", "--calibration-samples", "1",
                                       "--calibration-cell", "8"]
        summary = shown("return document.getElementById('verdict-summary')?.textContent")
        assert summary.endswith("restored columns are not supported by the data at 20% FDR")
        assert "CPU seconds" in driver.find_element(By.ID, "verdict-calibration").text
        assert driver.find_element(By.ID, "verdict-advice").text
        assert "verdict: " in driver.find_element(By.ID, "restored-lines").text
        assert shown("const img = document.getElementById('restored-figure'); return img && img.naturalWidth", 60)
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
