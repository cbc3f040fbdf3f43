"""phasestem serve in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
opens the workspace with its token, browses a scan, clicks a position and sees its pattern, starts a short
reconstruction and watches its loss curve and phase image update, cancels a second job, re-runs the first with a
changed parameter and compares the two runs; calibrates the scan and checks the parameter form.

Screenshots of each page go to the test's folder, and to $PHASESTEM_SCREENSHOTS (e.g. docs/figures) when set:
``PHASESTEM_SCREENSHOTS=docs/figures pytest tests/test_serve_browser.py`` makes docs/figures/serve_*.png.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
selenium = pytest.importorskip("selenium", reason="the browser test drives Chromium through Selenium (dev extra)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from serve_workspace import Server, make_workspace  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium and its driver are not installed (Debian: apt-get install chromium chromium-driver; "
           ".ci/run installs them)")

#: epochs of the watched reconstruction (10 × 10 scan, 50 mini-batches an epoch: slow enough that the page sees
#: several epochs go by on a fast machine too; with 10 mini-batches CI once saw only one epoch before the end)
EPOCHS = 25
SIDE = 240  # px, the scan images on the dataset page (app.css)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("browser") / "ws", n_epochs=EPOCHS, scan=10, batch_size=2)
    server = Server(root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,860",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60, message: str = ""):
    try:
        waiter = WebDriverWait(driver, timeout, poll_frequency=0.1,  # a table redrawn while it is read: look again
                               ignored_exceptions=(StaleElementReferenceException,))
        return waiter.until(lambda d: condition(d), message)
    except TimeoutException:  # say what the page said
        errors = "; ".join(e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE")
        banner = driver.execute_script("return (document.getElementById('error') || {}).textContent")
        shown = driver.execute_script("return JSON.stringify(document.body.dataset)")
        raise TimeoutException(f"{message} after {timeout} s at {driver.current_url} (page errors: {errors or 'none'}"
                               f"; error banner: {banner or 'none'}; body data: {shown})") from None


def screenshot(driver, folder: Path, name: str) -> None:
    path = folder / f"serve_{name}.png"
    driver.save_screenshot(str(path))
    target = os.environ.get("PHASESTEM_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)


def open_page(driver, page: str) -> None:
    driver.execute_script("document.body.dataset.ready = ''")
    driver.get(driver.current_url.split("#")[0] + f"#/{page}")
    name = page.split("?")[0].split("/")[0]
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == name, 60, f"page {page}")


def fetch_json(driver, path: str) -> dict:
    """GET ``path`` from the page (its token cookie) and return the JSON."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.json()).then(done, e => done({error: String(e)}));", path)


def state_of(driver) -> str:
    return driver.find_element(By.ID, "run-state").text


def on_run_page(driver, job_id: int) -> None:
    """Wait until the page drawn is job ``job_id``'s run page (the address changes before the page is drawn)."""
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "run"
         and d.find_element(By.TAG_NAME, "h2").text.split(" ")[:2] == ["Run", str(job_id)], 30, f"run page {job_id}")


def test_the_workspace_in_a_browser(workspace, browser, tmp_path):
    d = browser
    # no token: the page says what is missing
    d.get(workspace.url + "/")
    assert "401" in d.find_element(By.TAG_NAME, "h1").text
    # the printed link with its token; the token leaves the address bar (the cookie holds it)
    d.get(f"{workspace.url}/?token={workspace.token}#/files")
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "files")
    assert "token" not in d.current_url
    screenshot(d, tmp_path, "files")

    # ---- calibrate the scan (a job; it runs while the scan is browsed)
    open_page(d, "calibrate?path=data/scan.npz")
    for field, value in {"calib-key": "patterns", "calib-energy": "300e3", "calib-semiangle": "15",
                         "calib-step": "1.0"}.items():
        d.find_element(By.ID, field).send_keys(value)
    d.find_element(By.ID, "calib-run").click()
    wait(d, lambda d: "job=" in d.current_url, 30)
    calibration = int(d.current_url.rsplit("=", 1)[-1])

    # ---- browse: files → data/ → scan.npz → dataset page
    open_page(d, "files")
    d.find_element(By.CSS_SELECTOR, 'a[data-path="data"]').click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, 'a[data-path="data/scan.npz"]'))
    d.find_element(By.CSS_SELECTOR, 'a[data-path="data/scan.npz"]').click()
    wait(d, lambda d: d.find_elements(By.ID, "bf-img"), 60, "dataset page")
    assert "10×10 scan" in d.find_element(By.ID, "ds-summary").text
    # click scan position (row 2, col 7) on the virtual bright field
    bf = d.find_element(By.ID, "bf-img")
    cell = SIDE / 10
    ActionChains(d).move_to_element_with_offset(bf, int((7.5 * cell) - SIDE / 2), int((2.5 * cell) - SIDE / 2)) \
        .click().perform()
    wait(d, lambda d: d.find_element(By.ID, "pattern-info").get_attribute("data-position") == "2,7")
    shown = d.find_element(By.ID, "pattern-img").get_attribute("src")
    there = fetch_json(d, "/api/pattern?path=data/scan.npz&iy=2&ix=7&log=1")
    elsewhere = fetch_json(d, "/api/pattern?path=data/scan.npz&iy=8&ix=1&log=1")
    assert shown == there["image"] != elsewhere["image"]  # that position's pattern, not another's
    assert "position (2, 7)" in d.find_element(By.ID, "pattern-info").text
    assert d.find_elements(By.CSS_SELECTOR, "#disk-overlay circle")  # the fitted disk drawn over it
    screenshot(d, tmp_path, "dataset")

    # ---- the calibration's fits, numbers and parameters (a form checked by the YAML's schema)
    open_page(d, f"calibrate?job={calibration}")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#params-form input"), 180, "calibrate's results")
    assert "done" in d.find_element(By.ID, "calib-state").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#calib-figures img")) >= 2
    assert "angular_sampling_mrad" in d.find_element(By.ID, "calib-numbers").text
    epochs = d.find_element(By.CSS_SELECTOR, '#params-form input[name="run.n_epochs"]')
    epochs.clear()
    epochs.send_keys("0")
    d.find_element(By.ID, "params-save").click()
    wait(d, lambda d: "run.n_epochs" in d.find_element(By.ID, "params-status").text, 30)
    assert "greater than or equal to 1" in d.find_element(By.ID, "params-status").text
    screenshot(d, tmp_path, "calibrate")

    # ---- a short reconstruction, watched live
    open_page(d, "jobs")
    d.find_element(By.ID, "job-config").send_keys("configs/tiny.yaml")
    d.find_element(By.ID, "job-name").send_keys("first")
    d.find_element(By.ID, "job-submit").click()
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "run", 30)
    first = int(d.current_url.rsplit("/", 1)[-1])
    assert "phasestem reconstruct" in d.find_element(By.ID, "run-command").text

    def running_updates():  # pushed before the run ended
        ups = d.execute_script("return window.__liveUpdates || []")
        return [u for u in ups if u["state"] == "running" and u["epoch"] < EPOCHS]

    wait(d, lambda d: len({u["epoch"] for u in running_updates()}) >= 2, 180, "live updates while running")
    with contextlib.suppress(TimeoutException):  # a later moment makes a better picture, where there is time
        wait(d, lambda d: max(u["epoch"] for u in running_updates()) >= EPOCHS // 2, 60)
    screenshot(d, tmp_path, "run")
    wait(d, lambda d: state_of(d).split(" ")[0] in ("done", "failed"), 180)
    assert state_of(d) == "done", d.find_element(By.ID, "run-log").text
    ups = running_updates()
    assert len({u["epoch"] for u in ups}) >= 2
    assert len({u["phase"] for u in ups}) >= 2  # the phase image changed between pushes
    assert len({u["points"] for u in ups}) >= 2  # and the loss curve grew
    final = d.execute_script("return window.__liveUpdates")[-1]
    assert final["epoch"] == EPOCHS
    points = d.find_element(By.CSS_SELECTOR, "#loss-curve polyline").get_attribute("data-points")
    assert int(points) == EPOCHS

    # ---- a second job, cancelled
    open_page(d, "jobs")
    d.find_element(By.ID, "job-config").send_keys("configs/tiny.yaml")
    d.find_element(By.ID, "job-set").send_keys("run.n_epochs=500")
    d.find_element(By.ID, "job-name").send_keys("to cancel")
    d.find_element(By.ID, "job-submit").click()
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "run", 30)
    second = int(d.current_url.rsplit("/", 1)[-1])
    on_run_page(d, second)
    wait(d, lambda d: state_of(d) in ("queued", "running"), 30)
    d.find_element(By.ID, "run-cancel").click()
    wait(d, lambda d: state_of(d) == "cancelled", 60)

    # ---- re-run the first with a changed parameter
    open_page(d, f"run/{first}")
    box = d.find_element(By.ID, "rerun-set")
    box.clear()
    box.send_keys("run.n_epochs=4\nrun.lr_scale=0.5")
    d.find_element(By.ID, "rerun").click()
    wait(d, lambda d: d.current_url.rsplit("/", 1)[-1] not in (str(first), "jobs"), 30)
    third = int(d.current_url.rsplit("/", 1)[-1])
    on_run_page(d, third)  # not the first run's page, still drawn while the third's loads
    wait(d, lambda d: state_of(d) == "done", 180, "the re-run")

    # ---- the job list, then compare the two finished runs
    open_page(d, "jobs")
    def states(d):
        return {int(r.get_attribute("data-job")): r.find_elements(By.TAG_NAME, "td")[3].text
                for r in d.find_elements(By.CSS_SELECTOR, "#jobs-table tr[data-job]")}

    expected = {calibration: "done", first: "done", second: "cancelled", third: "done"}
    with contextlib.suppress(TimeoutException):  # a push is at most a watch period old
        wait(d, lambda d: states(d) == expected, 10)
    assert states(d) == expected
    screenshot(d, tmp_path, "jobs")
    for job_id in (first, third):
        d.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job="{job_id}"] .compare-box').click()
    d.find_element(By.ID, "compare-selected").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".compare-run img")) == 2, 60, "compare page")
    diff = d.find_element(By.ID, "compare-diff").text
    assert "run.n_epochs" in diff and "run.lr_scale" in diff
    assert len(d.find_elements(By.CSS_SELECTOR, "#compare-loss polyline")) == 2
    screenshot(d, tmp_path, "compare")

    # ---- plan a session (the workspace's configs/plan.yaml): its text in the log, its figure on the page
    open_page(d, "jobs")
    Select(d.find_element(By.ID, "job-command")).select_by_value("plan")
    d.find_element(By.ID, "job-config").send_keys("configs/plan.yaml")
    d.find_element(By.ID, "job-submit").click()
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "run", 30)
    planned = int(d.current_url.rsplit("/", 1)[-1])
    on_run_page(d, planned)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#plan-figures img.plan-figure"), 240, "the plan's figure")
    img = d.find_element(By.CSS_SELECTOR, "#plan-figures img.plan-figure")
    wait(d, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 200, 30)
    assert "expected (a 7 × 7 field" in d.find_element(By.ID, "run-log").text
    screenshot(d, tmp_path, "plan")
