"""The web application of ``phasestem serve`` (Starlette, served by uvicorn).

Pages (one small vanilla-JS front end, ``static/``): files, dataset, calibrate, jobs, live run, compare. The JSON
API under ``/api/`` is what the pages call (:mod:`.endpoints`, one route table); the push channel is Server-Sent
Events (``/api/events`` for the job list, ``/api/jobs/{id}/events`` for a live run): one watcher per channel looks
at the run folder four times a second and every page watching it receives the same rendered payload
(:mod:`.workspace`), so twenty watchers cost about one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from ..base.errors import PhasestemError
from ..base.extras import require
from .jobs import SERVE_DIR
from .reader import ReaderLimits
from .security import TokenGuard
from .workspace import STATIC, Workspace

log = logging.getLogger("phasestem.serve")


def create_app(root: Path, token: str, max_upload: int = 2 << 30, max_running: int = 1,
               hosts: frozenset[str] | None = None, kernel_confinement: bool = True,
               reader_limits: ReaderLimits | None = None):
    """The ASGI application over the workspace ``root``: the routes of :data:`~.endpoints.ROUTES` and the static
    files behind the token guard (``hosts``: the ``Host`` names it answers to, None: any; ``kernel_confinement``
    False: jobs run without Landlock, ``--no-kernel-confinement``; ``reader_limits``: what one request may spend in
    a data reader, :class:`~.reader.ReaderLimits`)."""
    require("starlette", "phasestem serve")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from .endpoints import ROUTES, json_endpoint

    ws = Workspace(root, token, max_upload, max_running, kernel_confinement=kernel_confinement,
                   reader_limits=reader_limits)

    def mounted(fn, how):
        if how == "raw":
            async def endpoint(request):
                return await fn(ws, request)

            return endpoint
        return json_endpoint(ws, fn, threaded=how == "json")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        ws.runner.start()
        ws.reader.start()
        try:
            yield
        finally:
            for channel in ws.channels.values():
                if channel.task is not None:
                    channel.task.cancel()
            await ws.reader.close()
            await run_in_threadpool(ws.runner.shutdown)

    routes = [Route(path, mounted(fn, how), methods=list(methods)) for path, fn, how, methods in ROUTES]
    app = Starlette(routes=[*routes, Mount("/static", StaticFiles(directory=STATIC))], lifespan=lifespan)
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
          max_upload: int = 2 << 30, max_running: int = 1, allow_hosts: tuple[str, ...] = (),
          kernel_confinement: bool = True, reader_limits: ReaderLimits | None = None) -> int:
    """Run the workspace until interrupted: hold ``root``'s serve lock, bind, print the URL with its token."""
    import socket
    import sys

    require("starlette", "phasestem serve")
    uvicorn = require("uvicorn", "phasestem serve")

    from ..base.lock import hold_output
    from . import job_isolation
    from .security import new_token

    root = Path(root).resolve()
    abi, confinement_line = job_isolation.kernel_confinement(kernel_confinement)  # no Landlock: refused here
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
                         hosts=allowed_hosts(host, tuple(allow_hosts)), kernel_confinement=kernel_confinement,
                         reader_limits=reader_limits)
        shown = f"[{host}]" if ":" in host else host
        print(confinement_line, file=sys.stdout if abi else sys.stderr, flush=True)
        if not is_loopback(host):
            print(exposure_warning(host, port, root), file=sys.stderr, flush=True)
        print(f"phasestem serve: workspace {root}\n    http://{shown}:{port}/?token={token}", flush=True)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, lifespan="on",
                                access_log=False)
        started = time.monotonic()
        uvicorn.Server(config).run(sockets=[sock])
        log.info("served for %.0f s", time.monotonic() - started)
    return 0
