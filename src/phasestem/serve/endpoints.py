"""The endpoints of ``phasestem serve`` and their route table (:data:`ROUTES`, what :func:`~.app.create_app`
mounts behind the token guard).

Every endpoint is a function ``endpoint(ws, request)`` of the :class:`~.workspace.Workspace` and the Starlette
request; a JSON endpoint returns what becomes the JSON body (or a Response), and its refusals
(:class:`~.security.Refused`, user errors) become ``{"error": …}`` with their status (:func:`json_endpoint`).
"""
from __future__ import annotations

import asyncio
import json
import os

from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ..base.errors import PhasestemError
from ..io import EXTENSIONS
from .job_spec import check_form_paths
from .jobs import RUNS_DIR
from .runs import compare_ids, compare_runs, line_profile, params_form, params_layout, save_params_form
from .security import FILE_CSP, Refused, confine, public_message, read_json, refuse_size, relative
from .workspace import KEEPALIVE, STATIC, Channel

#: kinds of file the files page offers to open, by suffix (the data files: every extension phasestem reads)
KINDS = {**dict.fromkeys(EXTENSIONS, "data"), ".yaml": "yaml", ".yml": "yaml", ".png": "image", ".log": "text",
         ".json": "text", ".txt": "text"}
#: what the app shows in the browser itself, by suffix, with the type it is served as; every other file is a
#: download (an .html or .svg under the root never runs as a page of this origin)
SHOWN = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".yaml": "text/plain; charset=utf-8",
         ".yml": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
         ".json": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


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


def json_endpoint(ws, fn, threaded: bool = True):
    """A JSON endpoint of ``fn(ws, request)`` (in the thread pool unless ``threaded`` is False, then awaited)."""

    async def endpoint(request):
        try:
            result = await (run_in_threadpool(fn, ws, request) if threaded else fn(ws, request))
        except Refused as exc:
            return JSONResponse({"error": public_message(exc, ws.root)}, status_code=exc.status)
        except (PhasestemError, OSError, ValueError, RecursionError) as exc:
            return JSONResponse({"error": public_message(exc, ws.root)}, status_code=400)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint


# ---- files ----------------------------------------------------------------------------------------------


def files(ws, request):
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


def file(ws, request):
    path = confine(ws.root, request.query_params.get("path"), must_exist=True)
    if not path.is_file():
        raise Refused(f"{request.query_params.get('path')}: not a file", 400)
    media = SHOWN.get(path.suffix.lower())
    if media is None or request.query_params.get("download"):  # never rendered by the browser from here
        return FileResponse(path, filename=path.name, media_type="application/octet-stream",
                            content_disposition_type="attachment", headers={"Content-Security-Policy": FILE_CSP})
    return FileResponse(path, media_type=media, headers={"Content-Security-Policy": FILE_CSP})


async def upload(ws, request):
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


def dataset(ws, request):
    q = _query(request)
    return ws.datasets.overview(confine(ws.root, q.get("path"), must_exist=True), q)


def pattern(ws, request):
    q = _query(request)
    return ws.datasets.pattern(confine(ws.root, q.get("path"), must_exist=True), q)


def virtual(ws, request):
    q = _query(request)
    return ws.datasets.virtual(confine(ws.root, q.get("path"), must_exist=True), q)


# ---- jobs -------------------------------------------------------------------------------------------------


def jobs(ws, request):
    return ws.jobs_payload()[0]


async def submit(ws, request):
    spec = await read_json(request)
    job = await run_in_threadpool(ws.runner.submit, spec)
    return job.public(ws.root)


def job(ws, request):
    j = ws.store.get(_job_id(request))
    out = ws.described(j)
    run = ws.root / j.run_dir
    out["files"] = [relative(ws.root, p) for p in sorted(run.iterdir()) if p.is_file()
                    and not p.name.startswith(".")] if run.is_dir() else []
    calib = run / "calibration.json"
    if calib.is_file():
        out["calibration"] = json.loads(calib.read_text())
    return out


def cancel(ws, request):
    return ws.runner.cancel(_job_id(request)).public(ws.root)


def resume(ws, request):
    return ws.runner.resume(_job_id(request)).public(ws.root)


def compare(ws, request):
    try:
        ids = [int(v) for v in request.query_params.get("jobs", "").split(",") if v.strip()]
    except ValueError:
        raise Refused("jobs: expected job ids separated by commas", 400) from None
    if len(ids) > 8:
        raise Refused("compare: at most 8 runs at once", 400)
    return compare_runs(ws.root, [ws.store.get(i) for i in ids])


def compare_profile(ws, request):
    ids = compare_ids(request.query_params.get("jobs"))
    return line_profile(ws.root, [ws.store.get(i) for i in ids], request.query_params.get("line"))


def params_get(ws, request):
    path = confine(ws.root, request.query_params.get("path"), must_exist=True)
    fields = params_form(path)
    return {"path": relative(ws.root, path), "fields": fields, "layout": params_layout(path, fields)}


async def params_post(ws, request):
    body = await read_json(request)
    path = confine(ws.root, _text_field(body, "path"), must_exist=True)
    if not path.is_file() or path.suffix.lower() not in (".yaml", ".yml"):
        raise Refused(f"path {relative(ws.root, path)!r}: not a parameter file (.yaml)", 400)
    await run_in_threadpool(check_form_paths, ws.root, path, body.get("values"))
    await run_in_threadpool(save_params_form, path, body.get("values"))
    return {"path": relative(ws.root, path), "saved": True}


def info(ws, request):
    return {"root": ws.root.name, "devices": ws.devices(), "max_upload": ws.max_upload,
            "runs": RUNS_DIR, "commands": ["calibrate", "reconstruct", "simulate", "train", "tune"]}


# ---- push channels (Server-Sent Events) --------------------------------------------------------------------


async def stream(ws, key, make):
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


async def job_events(ws, request):
    try:
        job_id = _job_id(request)
        await run_in_threadpool(ws.store.get, job_id)  # 404 before the stream starts
    except Refused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return sse(stream(ws, ("job", job_id), lambda: ws.job_channel(job_id)))


async def jobs_events(ws, request):
    return sse(stream(ws, "jobs", lambda: Channel(ws.jobs_signature, ws.jobs_payload)))


async def index(ws, request):
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


#: path, endpoint, how it runs ("json": in the thread pool; "json_async": awaited; "raw": its own response),
#: methods. The one list of what the server answers (besides /static, its files).
ROUTES = (
    ("/", index, "raw", ("GET",)),
    ("/api/info", info, "json", ("GET",)),
    ("/api/files", files, "json", ("GET",)),
    ("/api/file", file, "json", ("GET",)),
    ("/api/upload", upload, "json_async", ("PUT", "POST")),
    ("/api/dataset", dataset, "json", ("GET",)),
    ("/api/pattern", pattern, "json", ("GET",)),
    ("/api/virtual", virtual, "json", ("GET",)),
    ("/api/jobs", jobs, "json", ("GET",)),
    ("/api/jobs", submit, "json_async", ("POST",)),
    ("/api/events", jobs_events, "raw", ("GET",)),
    ("/api/jobs/{job_id}", job, "json", ("GET",)),
    ("/api/jobs/{job_id}/cancel", cancel, "json", ("POST",)),
    ("/api/jobs/{job_id}/resume", resume, "json", ("POST",)),
    ("/api/jobs/{job_id}/events", job_events, "raw", ("GET",)),
    ("/api/compare", compare, "json", ("GET",)),
    ("/api/compare/profile", compare_profile, "json", ("GET",)),
    ("/api/params", params_get, "json", ("GET",)),
    ("/api/params", params_post, "json_async", ("POST",)),
)
