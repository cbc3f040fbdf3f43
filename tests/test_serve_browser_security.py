"""A script stored in the workspace never runs as a page of ``phasestem serve`` (real headless Chromium).

A colleague's upload or a downloaded dataset may hold an .html or .svg file with a script; opened from the files
page it used to run from the app's origin with the session cookie, and could upload files and queue jobs. Files the
app does not show itself are now downloads (``Content-Disposition: attachment``, a sandbox policy, ``nosniff``), and
the app's own page carries a policy without inline script.
"""
from __future__ import annotations

import time

import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("selenium", reason="the browser test drives Chromium through Selenium (dev extra)")

from serve_workspace import Server, chromium_driver, make_workspace, needs_chromium  # noqa: E402

pytestmark = needs_chromium

#: what each planted file's script would do with the page's cookie: upload a file named after it
ATTACK = "fetch('/api/upload?path={name}.pwned', {method: 'PUT', body: 'x'}); document.title = 'ran';"
PLANTED = {
    "evil.html": "<!doctype html><title>x</title><script>" + ATTACK + "</script>",
    "evil.svg": "<svg xmlns='http://www.w3.org/2000/svg'><script>" + ATTACK + "</script></svg>",
    "evil.png": "<!doctype html><script>" + ATTACK + "</script>",  # HTML in a PNG's name: sniffing must not run it
    "evil.txt": "<!doctype html><script>" + ATTACK + "</script>",
    "evil.xml": "<html xmlns='http://www.w3.org/1999/xhtml'><script>" + ATTACK + "</script></html>",
}


def test_a_stored_script_never_runs_from_the_workspace(tmp_path):
    root = make_workspace(tmp_path / "ws")
    for name, text in PLANTED.items():
        (root / "data" / name).write_text(text.replace("{name}", name.replace(".", "_")))
    server = Server(root)
    downloads = tmp_path / "downloads"
    driver = chromium_driver(tmp_path / "profile", downloads)
    try:
        driver.get(f"{server.url}/?token={server.token}#/files?path=data")  # the cookie is set from here on
        time.sleep(1)
        for name in PLANTED:
            for query in ("", "&download=1"):
                driver.get(f"{server.url}/api/file?path=data/{name}{query}")
                time.sleep(0.7)
                assert driver.title != "ran", name
        # the page itself: an injected inline script is refused by its policy
        driver.get(f"{server.url}/#/files")
        time.sleep(0.5)
        driver.execute_script("const s = document.createElement('script'); s.textContent = \"" +
                              ATTACK.replace("{name}", "inline") + "\"; document.body.append(s);")
        time.sleep(1.0)
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert violations, "the page's policy did not refuse an inline script"
    finally:
        driver.quit()
        server.stop()
    assert not list(root.rglob("*.pwned"))  # no script reached the API
