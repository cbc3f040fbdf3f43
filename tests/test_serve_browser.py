"""phasestem serve in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
opens the workspace with its token, browses a scan, clicks a position and sees its pattern, drags the virtual
detectors over the mean pattern and sees their images computed again, starts ``reconstruct --auto`` from the data file
and watches it, starts a short reconstruction (its parameter file chosen in the file picker) and watches its loss
curve and phase image update, cancels a second job, re-runs the first with a changed parameter and compares the two
runs (difference map, a line profile drawn on it); calibrates the scan and checks the table of its values and the
parameter form. Every image carries a colour bar and a scale bar; the console shows no Content-Security-Policy
violation.

Screenshots of each page go to the test's folder, and to $PHASESTEM_SCREENSHOTS (e.g. docs/figures) when set:
``PHASESTEM_SCREENSHOTS=docs/figures pytest tests/test_serve_browser.py`` makes docs/figures/serve_*.png.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
selenium = pytest.importorskip("selenium", reason="the browser test drives Chromium through Selenium (dev extra)")

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from serve_workspace import Server, chromium_driver, make_workspace, needs_chromium  # noqa: E402

pytestmark = needs_chromium

#: epochs of the watched reconstruction (10 × 10 scan, 50 mini-batches an epoch: slow enough that the page sees
#: several epochs go by on a fast machine too; with 10 mini-batches CI once saw only one epoch before the end)
EPOCHS = 25
#: epochs of the reconstruct --auto run started from the data file
AUTO_EPOCHS = 3
SIDE = 240  # px, the scan images on the dataset page (app.js: figure widths)
#: the browser window (px); screenshots are taken as tall as the page, up to SHOT_HEIGHT
WINDOW, SHOT_HEIGHT = (1440, 1000), 1900
#: what the console said (drained from Chromium's log as the test goes)
CONSOLE: list[str] = []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("browser") / "ws", n_epochs=EPOCHS, scan=10, batch_size=2)
    server = Server(root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium_driver(tmp_path_factory.mktemp("chromium-profile"), window=WINDOW)
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


def drain_console(driver) -> list[str]:
    """The SEVERE console messages since the last call, kept in CONSOLE."""
    new = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    CONSOLE.extend(new)
    return new


def screenshot(driver, folder: Path, name: str, full: bool = True) -> None:
    """The page as it is now (``full``: the window made as tall as the page, up to SHOT_HEIGHT, for the picture)."""
    path = folder / f"serve_{name}.png"
    if full:
        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(WINDOW[0], min(SHOT_HEIGHT, max(WINDOW[1], height + 140)))
    driver.save_screenshot(str(path))
    if full:
        driver.set_window_size(*WINDOW)
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


def fetch_status(driver, path: str) -> list:
    """[HTTP status, JSON] of GET ``path`` from the page."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(async r => done([r.status, await r.json().catch(() => null)]),"
        " e => done([0, String(e)]));", path)


def bars(driver, img_id: str) -> dict:
    """The scale bar (its length and unit) and the colour bar (its range) drawn with the image ``img_id``."""
    return driver.execute_script(
        "const box = document.getElementById(arguments[0]).closest('figure');"
        "const s = box.querySelector('svg.scalebar'), c = box.querySelector('svg.colourbar');"
        "return {unit: s && s.dataset.unit, length: s && +s.dataset.length, text: s && s.textContent,"
        " vmin: c && +c.dataset.vmin, vmax: c && +c.dataset.vmax, ticks: c ? c.querySelectorAll('text').length : 0}",
        img_id)


def drag(driver, element, dx: int, dy: int, start=(0, 0)) -> None:
    """Press on ``element`` (``start`` px from its centre), move by (dx, dy) px in steps, release."""
    chain = ActionChains(driver).move_to_element_with_offset(element, *start).click_and_hold()
    for _ in range(4):
        chain = chain.move_by_offset(dx // 4, dy // 4)
    chain.release().perform()


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
    drain_console(d)  # the 401 page's own complaint

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
    # the file says neither the scan step nor the detector pixel: the scale bars are in pixels, and say so
    assert bars(d, "bf-img")["unit"] == "px" and "scan step unknown" in d.find_element(By.ID, "bf-img") \
        .find_element(By.XPATH, "ancestor::figure").text
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

    # ---- the scan step and semi-angle given: scale bars in Å over the scan, in mrad on the detector
    open_page(d, "dataset?path=data/scan.npz&key=patterns&step=1.0&semiangle=15")
    assert bars(d, "bf-img")["unit"] == "Å" and bars(d, "mean-img")["unit"] == "mrad"
    assert bars(d, "com-y-img")["vmin"] == -bars(d, "com-y-img")["vmax"] < 0  # a diverging scale about 0
    assert all(bars(d, i)["ticks"] >= 3 for i in ("bf-img", "adf-img", "com-x-img", "mean-img"))
    wait(d, lambda d: bars(d, "pattern-img")["unit"] == "mrad", 30, "the first pattern")
    # drag the bright-field disc off centre: its image is computed again on release
    before = d.find_element(By.ID, "bf-img").get_attribute("src")
    readout = d.find_element(By.ID, "detector-readout").text
    drag(d, d.find_element(By.CSS_SELECTOR, "#detector-overlay g.det-bf .det-body"), 48, 32)
    wait(d, lambda d: (d.execute_script("return document.body.dataset.virtual") or "").startswith("bf:"), 60,
         "the virtual bright field of the moved disc")
    assert d.find_element(By.ID, "bf-img").get_attribute("src") != before
    assert d.find_element(By.ID, "detector-readout").text != readout
    # the annular detector: its inner radius dragged outwards by its handle
    d.find_element(By.ID, "det-adf").click()
    before, inner = d.find_element(By.ID, "adf-img").get_attribute("src"), float(
        d.find_element(By.ID, "ds-adf_inner").get_attribute("value") or 0)
    drag(d, d.find_element(By.CSS_SELECTOR, "#detector-overlay g.det-adf .det-handle[data-part=inner]"), 40, 0)
    wait(d, lambda d: (d.execute_script("return document.body.dataset.virtual") or "").startswith("adf:"), 60,
         "the virtual annular dark field of the wider annulus")
    assert d.find_element(By.ID, "adf-img").get_attribute("src") != before
    assert float(d.find_element(By.ID, "ds-adf_inner").get_attribute("value")) > inner
    # the endpoint refuses what it cannot place, in one line, never a server error
    for query, words in {"detector=bf&cy=16&cx=16": "r:", "detector=disc&cy=1&cx=1&r=2": "detector:",
                         "detector=bf&cy=99&cx=16&r=3": "cy:", "detector=bf&cy=nan&cx=16&r=3": "cy:",
                         "detector=adf&cy=16&cx=16&inner=9&outer=4": "outer:",
                         "detector=bf&cy=16&cx=16&r=3&step=-1": "step:"}.items():
        status, answer = fetch_status(d, f"/api/virtual?path=data/scan.npz&{query}")
        assert status == 400 and answer["error"].startswith(words), (query, status, answer)
    screenshot(d, tmp_path, "dataset")

    # ---- reconstruct --auto from the data file (Files page), watched live
    open_page(d, "files?path=data")
    d.find_element(By.CSS_SELECTOR, 'button.auto-open[data-path="data/scan.npz"]').click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#auto-dialog[open] #auto-run"), 10, "the --auto form")
    # data/scan.npz: phasestem.recon.synthetic's scan, 300 keV, α = 15 mrad, 1 Å steps (serve_workspace)
    for field, value in {"auto-key": "patterns", "auto-energy": "300e3", "auto-semiangle": "15", "auto-step": "1.0",
                         "auto-epochs": str(AUTO_EPOCHS)}.items():
        d.find_element(By.ID, field).send_keys(value)
    preview = d.find_element(By.ID, "auto-command").text
    screenshot(d, tmp_path, "files", full=False)  # the data folder, the --auto form open over it
    assert preview.startswith("phasestem reconstruct data/scan.npz --auto --key patterns --energy 300e3"), preview
    d.find_element(By.ID, "auto-run").click()
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "run", 30, "the --auto run page")
    auto = int(d.current_url.rsplit("/", 1)[-1])
    on_run_page(d, auto)
    assert "--auto" in d.find_element(By.ID, "run-command").text
    wait(d, lambda d: state_of(d).split(" ")[0] in ("done", "failed"), 240, "the --auto run")
    assert state_of(d) == "done", d.find_element(By.ID, "run-log").text
    wait(d, lambda d: (d.execute_script("return window.__liveUpdates") or [{}])[-1].get("epoch") == AUTO_EPOCHS, 30)
    assert bars(d, "live-phase")["unit"] == "Å"
    assert not d.find_element(By.ID, "run-cancel").is_displayed()  # a finished job: no Cancel, no Resume
    assert not d.find_element(By.ID, "run-resume").is_displayed()
    screenshot(d, tmp_path, "auto")

    # ---- the calibration's fits, numbers and parameters (a form checked by the YAML's schema)
    open_page(d, f"calibrate?job={calibration}")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#params-form input"), 180, "calibrate's results")
    assert "done" in d.find_element(By.ID, "calib-state").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#calib-figures img")) >= 2
    table = d.find_element(By.ID, "calib-numbers").text.lower()  # section titles are shown in capitals
    for words in ("angular_sampling_mrad", "angular sampling", "rotation", "transpose", "c10 (= −defocus)",
                  "hot pixels", "dead pixels", "descan per scan row", "disk radius", "notes (1)"):
        assert words in table, words
    d.find_element(By.CSS_SELECTOR, "#calib-figures img").click()  # a figure enlarged, Escape closes it
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#lightbox[open] img"), 10, "the lightbox")
    ActionChains(d).send_keys(Keys.ESCAPE).perform()
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "#lightbox[open]"), 10)
    # the fields edited first on top, the rest folded by section
    assert d.find_element(By.CSS_SELECTOR, '#params-first input[name="optics.energy"]').is_displayed()
    assert len(d.find_elements(By.CSS_SELECTOR, "#params-form details.params-section")) >= 5
    epochs = d.find_element(By.CSS_SELECTOR, '#params-form input[name="run.n_epochs"]')
    epochs.clear()
    epochs.send_keys("0")
    d.find_element(By.ID, "params-save").click()
    wait(d, lambda d: "run.n_epochs" in d.find_element(By.ID, "params-status").text, 30)
    assert "greater than or equal to 1" in d.find_element(By.ID, "params-status").text
    screenshot(d, tmp_path, "calibrate")

    # ---- a short reconstruction (its parameter file chosen in the picker), watched live
    open_page(d, "jobs")
    d.find_element(By.ID, "job-config-browse").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#picker[open] a.picker-dir[data-path="configs"]'), 10)
    d.find_element(By.CSS_SELECTOR, '#picker a.picker-dir[data-path="configs"]').click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '#picker a.picker-file[data-path="configs/tiny.yaml"]'), 10)
    assert not d.find_elements(By.CSS_SELECTOR, '#picker a.picker-file[data-path="data/scan.npz"]')
    d.find_element(By.CSS_SELECTOR, '#picker a.picker-file[data-path="configs/tiny.yaml"]').click()
    wait(d, lambda d: d.find_element(By.ID, "job-config").get_attribute("value") == "configs/tiny.yaml", 10)
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
    assert d.find_element(By.ID, "run-cancel").is_displayed() and not d.find_element(By.ID, "run-resume").is_displayed()
    assert bars(d, "live-phase")["unit"] == "Å" and bars(d, "live-probe-phase")["vmax"] > 3.14
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

    # ---- a second job, cancelled: the page shows the new state at once, and Resume instead of Cancel
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
    wait(d, lambda d: state_of(d) in ("cancelling", "cancelled"), 5, "the state the cancel answered")
    wait(d, lambda d: state_of(d) == "cancelled", 60)
    assert d.find_element(By.ID, "run-resume").is_displayed() and not d.find_element(By.ID, "run-cancel").is_displayed()

    # ---- re-run the first with a changed parameter
    open_page(d, f"run/{first}")
    box = d.find_element(By.ID, "rerun-set")
    box.clear()
    box.send_keys("run.n_epochs=4\nrun.lr_scale=0.5\nrun.noise_sigma=0.01")  # a noise model: the σ map
    d.find_element(By.ID, "rerun").click()
    wait(d, lambda d: d.current_url.rsplit("/", 1)[-1] not in (str(first), "jobs"), 30)
    third = int(d.current_url.rsplit("/", 1)[-1])
    on_run_page(d, third)  # not the first run's page, still drawn while the third's loads
    wait(d, lambda d: state_of(d) == "done", 180, "the re-run")
    wait(d, lambda d: d.find_elements(By.ID, "live-sigma"), 30, "the re-run's error bars (run.noise_sigma)")
    assert bars(d, "live-sigma")["unit"] == "Å" and "phase σ" in d.find_element(By.ID, "live-sigma").get_attribute(
        "alt")
    screenshot(d, tmp_path, "sigma")

    # ---- the job list (buttons only where they apply), then compare the two finished runs
    open_page(d, "jobs")
    def states(d):
        return {int(r.get_attribute("data-job")): r.find_elements(By.TAG_NAME, "td")[3].text
                for r in d.find_elements(By.CSS_SELECTOR, "#jobs-table tr[data-job]")}

    expected = {calibration: "done", auto: "done", first: "done", second: "cancelled · no results", third: "done"}
    with contextlib.suppress(TimeoutException):  # a push is at most a watch period old
        wait(d, lambda d: states(d) == expected, 10)
    assert states(d) == expected
    assert not d.find_elements(By.ID, f"cancel-{first}") and not d.find_elements(By.ID, f"resume-{first}")
    assert d.find_elements(By.ID, f"resume-{second}") and not d.find_elements(By.ID, f"cancel-{second}")
    screenshot(d, tmp_path, "jobs")
    for job_id in (first, third):
        d.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job="{job_id}"] .compare-box').click()
    d.find_element(By.ID, "compare-selected").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".compare-run img")) == 2, 60, "compare page")
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "compare", 60, "compare page")
    diff = d.find_element(By.ID, "compare-diff").text
    assert "run.n_epochs" in diff and "run.lr_scale" in diff
    assert len(d.find_elements(By.CSS_SELECTOR, "#compare-loss polyline")) == 2
    # the difference map (third − first, diverging about 0) and a line profile of both runs
    assert d.find_element(By.ID, "diff-img").get_attribute("src").startswith("data:image/png")
    scale = bars(d, "diff-img")
    assert scale["unit"] == "Å" and scale["vmin"] == -scale["vmax"] < 0
    assert f"job {third} − job {first}" in d.find_element(By.ID, "compare-difference").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#compare-profile polyline")) == 2
    line = d.find_element(By.ID, "compare-profile").get_attribute("data-line")
    drag(d, d.find_element(By.ID, "profile-line"), 200, 200, start=(-100, -100))  # a diagonal drawn anew
    wait(d, lambda d: d.find_element(By.ID, "compare-profile").get_attribute("data-line") != line, 30, "new profile")
    y0, x0, y1, x1 = (float(v) for v in d.find_element(By.ID, "compare-profile").get_attribute("data-line").split(","))
    assert y1 > y0 + 0.3 and x1 > x0 + 0.3
    assert len(d.find_elements(By.CSS_SELECTOR, "#compare-profile polyline")) == 2
    assert "Å" in d.find_element(By.ID, "compare-profile").text
    status, answer = fetch_status(d, f"/api/compare/profile?jobs={first},{third}&line=0,0,2,1")
    assert status == 400 and answer["error"].startswith("line:")
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

    # ---- nothing the pages did was refused by the Content-Security-Policy (no inline script or style)
    drain_console(d)
    assert not [m for m in CONSOLE if "Content Security Policy" in m or "Content-Security-Policy" in m], CONSOLE


def test_the_pages_hold_no_inline_script_or_style():
    """The markup and the script set no style attribute and no inline handler (the CSP refuses them)."""
    static = Path(__file__).resolve().parents[1] / "src" / "phasestem" / "serve" / "static"
    html, js = (static / "index.html").read_text(), (static / "app.js").read_text()
    assert "style=" not in html and "<script>" not in html and not re.search(r"\son[a-z]+\s*=", html)
    assert 'setAttribute("style"' not in js and not re.search(r"[{,]\s*style\s*:", js)
    assert "cssText" not in js and "innerHTML" not in js and "<script" not in js
