"""The web application of ``phasestem serve`` (Starlette, served by uvicorn).

Pages (one small vanilla-JS front end, ``static/``): files, dataset, calibrate, jobs, live run, compare. The JSON
API under ``/api/`` is what the pages call; the push channel is Server-Sent Events (``/api/events`` for the job
list, ``/api/jobs/{id}/events`` for a live run): one watcher per channel looks at the run folder four times a
second and every page watching it receives the same rendered payload, so twenty watchers cost about one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..base.errors import PhasestemError
from ..base.extras import require
from ..io import EXTENSIONS
from .data import Datasets
from .job_spec import check_form_paths
from .jobs import FINAL, RUNS_DIR, SERVE_DIR, JobRunner, JobStore
from .runs import LiveRuns, compare_ids, compare_runs, line_profile, params_form, params_layout, save_params_form
from .security import FILE_CSP, Refused, TokenGuard, confine, public_message, read_json, refuse_size, relative

log = logging.getLogger("phasestem.serve")

STATIC = Path(__file__).with_name("static")
#: seconds between two looks at a watched run folder
WATCH_PERIOD = 0.25
#: seconds between keep-alive comments on an idle push channel
KEEPALIVE = 15.0
#: kinds of file the files page offers to open, by suffix (the data files: every extension phasestem reads)
KINDS = {**dict.fromkeys(EXTENSIONS, "data"), ".yaml": "yaml", ".yml": "yaml", ".png": "image", ".log": "text",
         ".json": "text", ".txt": "text"}
#: what the app shows in the browser itself, by suffix, with the type it is served as; every other file is a
#: download (an .html or .svg under the root never runs as a page of this origin)
SHOWN = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".yaml": "text/plain; charset=utf-8",
         ".yml": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
         ".json": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


class Channel:
    """One push channel: a watcher task computes payloads when their signature changes; subscribers wait.

    Each new payload sets the event that subscribers wait on and puts a fresh one in its place: a subscriber that
    leaves while waiting (its page closed) holds no lock, so it cannot leave one broken for the others."""

    def __init__(self, signature, payload):
        self.signature, self.payload = signature, payload
        self.version, self.data, self.final = 0, "", False
        self.changed = asyncio.Event()
        self.subscribers = 0
        self.task: asyncio.Task | None = None

    def publish(self, data: str, final: bool) -> None:
        self.data, self.final = data, final
        self.version += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def next(self, seen: int, timeout: float) -> tuple[int, str, bool] | None:
        """(version, payload, final) newer than ``seen``, or None after ``timeout`` s without one."""
        if self.version <= seen:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)
        if self.version <= seen:
            return None
        return self.version, self.data, self.final

    async def watch(self, run_sync, root: Path) -> None:
        last = object()
        try:
            while self.subscribers > 0 and not self.final:
                sig = await run_sync(self.signature)
                if sig != last:
                    data, final = await run_sync(self.payload)
                    self.publish(json.dumps(data), final)
                    last = sig
                if not self.final:
                    await asyncio.sleep(WATCH_PERIOD)
        except Exception as exc:  # noqa: BLE001 - a watcher that fails tells its pages once and stops
            log.exception("push channel")
            self.publish(json.dumps({"error": f"{type(exc).__name__}: {public_message(exc, root)}"}), True)


class Workspace:
    """The state behind the pages: the root, the queue and its runner, open datasets, push channels."""

    def __init__(self, root: Path, token: str, max_upload: int, max_running: int = 1):
        self.root = Path(root).resolve()
        self.token = token
        self.max_upload = max_upload
        self.store = JobStore(self.root / SERVE_DIR / "jobs.sqlite")
        self.runner = JobRunner(self.root, self.store, max_running=max_running)
        self.datasets = Datasets()
        self.live = LiveRuns(self.root)
        self.channels: dict[Any, Channel] = {}
        self._devices: list[str] | None = None

    def devices(self) -> list[str]:
        if self._devices is None:
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            self._devices = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else [])
        return self._devices

    def jobs_payload(self) -> tuple[dict, bool]:
        return {"jobs": [j.public(self.root) for j in self.store.jobs()]}, False

    def jobs_signature(self):
        return [(j.id, j.state, j.returncode, j.note) for j in self.store.jobs()]

    def job_channel(self, job_id: int) -> Channel:
        def signature():
            return self.live.signature(self.store.get(job_id))

        def payload():
            job = self.store.get(job_id)
            return self.live.payload(job), job.state in FINAL

        return Channel(signature, payload)


def _text_field(body: dict, name: str) -> str:
    """A string field of a JSON body (400 when it is another type)."""
    value = body.get(name)
    if not isinstance(value, str):
        raise Refused(f"{name}: expected a string", 400)
    return value


def _query(request) -> dict[str, str]:
    return dict(request.query_params)


#: the largest job id (SQLite's integer)
MAX_JOB_ID = 2**63 - 1


def _job_id(request) -> int:
    text = str(request.path_params.get("job_id", ""))
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 0 < int(text) <= MAX_JOB_ID:
        raise Refused(f"job id {text[:30]!r}: expected a positive integer", 400 if not text.isdigit() else 404)
    return int(text)


def create_app(root: Path, token: str, max_upload: int = 2 << 30, max_running: int = 1,
               hosts: frozenset[str] | None = None):
    """The ASGI application over the workspace ``root`` (the token guard around every route; ``hosts``: the
    ``Host`` names it answers to, None: any)."""
    require("starlette", "phasestem serve")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    ws = Workspace(root, token, max_upload, max_running)

    def api(fn, threaded: bool = True):
        """A JSON endpoint: ``fn(request)`` (in the thread pool unless ``threaded`` is False, then awaited)."""

        async def endpoint(request):
            try:
                result = await (run_in_threadpool(fn, request) if threaded else fn(request))
            except Refused as exc:
                return JSONResponse({"error": public_message(exc, ws.root)}, status_code=exc.status)
            except (PhasestemError, OSError, ValueError, RecursionError) as exc:
                return JSONResponse({"error": public_message(exc, ws.root)}, status_code=400)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    # ---- files ----------------------------------------------------------------------------------------------
    def files(request):
        folder = confine(ws.root, request.query_params.get("path", ""), must_exist=True)
        if not folder.is_dir():
            raise Refused(f"{request.query_params.get('path')}: not a folder", 400)
        entries = []
        for p in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
            if p.name.startswith(".") or p.name.endswith(".tmp"):
                continue
            try:
                rel = relative(ws.root, p)  # a link leading out of the root is not listed
                st = p.stat()
            except (ValueError, OSError):
                continue
            kind = "dir" if p.is_dir() else KINDS.get(p.suffix.lower(), "other")
            if kind == "dir" and (p / "results.h5").exists():
                kind = "run"
            entries.append({"name": p.name, "path": rel, "kind": kind, "size": st.st_size, "mtime": st.st_mtime})
        rel = relative(ws.root, folder)
        parent = None if not rel else (rel.rsplit("/", 1)[0] if "/" in rel else "")
        return {"path": rel, "parent": parent, "entries": entries}

    def file(request):
        path = confine(ws.root, request.query_params.get("path"), must_exist=True)
        if not path.is_file():
            raise Refused(f"{request.query_params.get('path')}: not a file", 400)
        media = SHOWN.get(path.suffix.lower())
        if media is None or request.query_params.get("download"):  # never rendered by the browser from here
            return FileResponse(path, filename=path.name, media_type="application/octet-stream",
                                content_disposition_type="attachment", headers={"Content-Security-Policy": FILE_CSP})
        return FileResponse(path, media_type=media, headers={"Content-Security-Policy": FILE_CSP})

    async def upload(request):
        target = confine(ws.root, request.query_params.get("path"))
        rel = relative(ws.root, target)
        if target == ws.root or target.name.startswith(".") or target.name.endswith(".tmp"):
            raise Refused(f"upload path {rel!r}: give a file name (not hidden, not ending in .tmp)", 400)
        if os.path.lexists(target):
            raise Refused(f"{rel}: exists; uploads never replace a file", 409)
        if not target.parent.is_dir():
            raise Refused(f"{relative(ws.root, target.parent)}: no such folder", 404)
        from ..base.safety import atomic_file, unique_temporary_name

        limit, size = ws.max_upload, 0
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await refuse_size(request, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes "
                              "(phasestem serve --max-upload-mb)")
        try:  # a temporary of its own per request; placed only where nothing is, in one step
            with atomic_file(target, field="upload", temporary=unique_temporary_name, replace=False) as tmp, \
                    open(tmp, "wb") as fh:  # removed again when refused
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        await refuse_size(request, f"upload over the limit of {limit:,} bytes (phasestem serve "
                                          "--max-upload-mb)", size)
                    fh.write(chunk)
                fh.flush()
                stored = os.fstat(fh.fileno()).st_size
        except FileExistsError:
            raise Refused(f"{rel}: another upload of that name finished first; uploads never replace a file",
                          409) from None
        return {"path": rel, "size": stored}

    # ---- dataset ----------------------------------------------------------------------------------------------
    def dataset(request):
        q = _query(request)
        return ws.datasets.overview(confine(ws.root, q.get("path"), must_exist=True), q)

    def pattern(request):
        q = _query(request)
        return ws.datasets.pattern(confine(ws.root, q.get("path"), must_exist=True), q)

    def virtual(request):
        q = _query(request)
        return ws.datasets.virtual(confine(ws.root, q.get("path"), must_exist=True), q)

    # ---- jobs -------------------------------------------------------------------------------------------------
    def jobs(request):
        return ws.jobs_payload()[0]

    async def submit(request):
        spec = await read_json(request)
        job = await run_in_threadpool(ws.runner.submit, spec)
        return job.public(ws.root)

    def job(request):
        j = ws.store.get(_job_id(request))
        out = j.public(ws.root)
        run = ws.root / j.run_dir
        out["files"] = [relative(ws.root, p) for p in sorted(run.iterdir()) if p.is_file()
                        and not p.name.startswith(".")] if run.is_dir() else []
        calib = run / "calibration.json"
        if calib.is_file():
            out["calibration"] = json.loads(calib.read_text())
        return out

    def cancel(request):
        return ws.runner.cancel(_job_id(request)).public(ws.root)

    def resume(request):
        return ws.runner.resume(_job_id(request)).public(ws.root)

    def compare(request):
        try:
            ids = [int(v) for v in request.query_params.get("jobs", "").split(",") if v.strip()]
        except ValueError:
            raise Refused("jobs: expected job ids separated by commas", 400) from None
        if len(ids) > 8:
            raise Refused("compare: at most 8 runs at once", 400)
        return compare_runs(ws.root, [ws.store.get(i) for i in ids])

    def compare_profile(request):
        ids = compare_ids(request.query_params.get("jobs"))
        return line_profile(ws.root, [ws.store.get(i) for i in ids], request.query_params.get("line"))

    def params_get(request):
        path = confine(ws.root, request.query_params.get("path"), must_exist=True)
        fields = params_form(path)
        return {"path": relative(ws.root, path), "fields": fields, "layout": params_layout(path, fields)}

    async def params_post(request):
        body = await read_json(request)
        path = confine(ws.root, _text_field(body, "path"), must_exist=True)
        if not path.is_file() or path.suffix.lower() not in (".yaml", ".yml"):
            raise Refused(f"path {relative(ws.root, path)!r}: not a parameter file (.yaml)", 400)
        await run_in_threadpool(check_form_paths, ws.root, path, body.get("values"))
        await run_in_threadpool(save_params_form, path, body.get("values"))
        return {"path": relative(ws.root, path), "saved": True}

    def info(request):
        return {"root": ws.root.name, "devices": ws.devices(), "max_upload": ws.max_upload,
                "runs": RUNS_DIR, "commands": ["calibrate", "reconstruct", "simulate", "train", "tune"]}

    # ---- push channels (Server-Sent Events) --------------------------------------------------------------------
    async def stream(key, make):
        channel = ws.channels.get(key)
        if channel is None or channel.task is None or channel.task.done():
            channel = ws.channels[key] = make()
        channel.subscribers += 1
        if channel.task is None:
            channel.task = asyncio.create_task(channel.watch(run_in_threadpool, ws.root))
        seen = 0
        try:
            while True:
                news = await channel.next(seen, KEEPALIVE)
                if news is None:
                    yield ": keep-alive\n\n"
                    continue
                seen, data, final = news
                yield f"data: {data}\n\n"
                if final:
                    yield "event: end\ndata: {}\n\n"
                    return
        finally:
            channel.subscribers -= 1

    def sse(generator):
        return StreamingResponse(generator, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def job_events(request):
        try:
            job_id = _job_id(request)
            await run_in_threadpool(ws.store.get, job_id)  # 404 before the stream starts
        except Refused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return sse(stream(("job", job_id), lambda: ws.job_channel(job_id)))

    async def jobs_events(request):
        return sse(stream("jobs", lambda: Channel(ws.jobs_signature, ws.jobs_payload)))

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        ws.runner.start()
        try:
            yield
        finally:
            for channel in ws.channels.values():
                if channel.task is not None:
                    channel.task.cancel()
            await run_in_threadpool(ws.runner.shutdown)

    routes = [
        Route("/", index),
        Route("/api/info", api(info)),
        Route("/api/files", api(files)),
        Route("/api/file", api(file)),
        Route("/api/upload", api(upload, threaded=False), methods=["PUT", "POST"]),
        Route("/api/dataset", api(dataset)),
        Route("/api/pattern", api(pattern)),
        Route("/api/virtual", api(virtual)),
        Route("/api/jobs", api(jobs)),
        Route("/api/jobs", api(submit, threaded=False), methods=["POST"]),
        Route("/api/events", jobs_events),
        Route("/api/jobs/{job_id}", api(job)),
        Route("/api/jobs/{job_id}/cancel", api(cancel), methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", api(resume), methods=["POST"]),
        Route("/api/jobs/{job_id}/events", job_events),
        Route("/api/compare", api(compare)),
        Route("/api/compare/profile", api(compare_profile)),
        Route("/api/params", api(params_get)),
        Route("/api/params", api(params_post, threaded=False), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.workspace = ws
    return TokenGuard(app, token, hosts)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, root: Path) -> str:
    """What binding to a non-loopback ``host`` exposes (printed by ``phasestem serve``)."""
    return (f"phasestem serve: warning: listening on {host}:{port}, not only on this machine: anyone who can reach "
            f"this port and has the token can read, upload and download every file under {root} and run phasestem "
            "commands there; the traffic (token included) is plain HTTP, not encrypted. Prefer the default "
            "127.0.0.1 with an SSH tunnel (ssh -L 8888:localhost:8888 HOST).")


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The ``Host`` names the server answers to when bound to ``host``: that address; for a loopback address the
    names of this machine's loopback too; for a wildcard (0.0.0.0, ::) also this machine's host names; plus
    ``extra`` (``--allow-host``). A DNS name of an attacker's that points at 127.0.0.1 is none of them."""
    import socket

    names = {host.strip("[]").lower(), *(h.lower() for h in extra)}
    if is_loopback(host) or host in ("0.0.0.0", "::", ""):
        names |= {"127.0.0.1", "localhost", "::1"}
    if host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n)


def serve(root: Path, host: str = "127.0.0.1", port: int = 8888, token: str | None = None,
          max_upload: int = 2 << 30, max_running: int = 1, allow_hosts: tuple[str, ...] = ()) -> int:
    """Run the workspace until interrupted: hold ``root``'s serve lock, bind, print the URL with its token."""
    import socket
    import sys

    require("starlette", "phasestem serve")
    uvicorn = require("uvicorn", "phasestem serve")

    from ..base.lock import hold_output
    from .security import new_token

    root = Path(root).resolve()
    if not root.is_dir():
        raise PhasestemError(f"--root {root}: not a folder")
    token = token or os.environ.get("PHASESTEM_SERVE_TOKEN") or new_token()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise PhasestemError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    port = sock.getsockname()[1]
    sock.listen(128)  # connections wait in the backlog from now on, before the first is accepted
    with hold_output(root / SERVE_DIR, "phasestem serve"):
        app = create_app(root, token, max_upload=max_upload, max_running=max_running,
                         hosts=allowed_hosts(host, tuple(allow_hosts)))
        shown = f"[{host}]" if ":" in host else host
        if not is_loopback(host):
            print(exposure_warning(host, port, root), file=sys.stderr, flush=True)
        print(f"phasestem serve: workspace {root}\n    http://{shown}:{port}/?token={token}", flush=True)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, lifespan="on",
                                access_log=False)
        started = time.monotonic()
        uvicorn.Server(config).run(sockets=[sock])
        log.info("served for %.0f s", time.monotonic() - started)
    return 0
