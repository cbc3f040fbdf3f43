"""The endpoints of ``phasestem serve`` and their route table (:data:`ROUTES`, what :func:`~.app.create_app`
mounts behind the token guard).

Every endpoint is a function ``endpoint(ws, request)`` of the :class:`~.workspace.Workspace` and the Starlette
request; a JSON endpoint returns what becomes the JSON body (or a Response), and its refusals
(:class:`~.security.Refused`, user errors) become ``{"error": …}`` with their status (:func:`json_endpoint`).
"""
from __future__ import annotations

import asyncio
import os

from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ..base.errors import PhasestemError
from ..io import EXTENSIONS
from .job_spec import check_form_paths
from .jobs import RUNS_DIR
from .jobstore import parse_job_id
from .jsontext import dumps, load_file
from .params_form import params_form, save_params_form
from .reader import file_identity, while_connected
from .restored import FIGURE, LOG, RESTORED, restorer_names
from .runs import compare_ids
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


def _job_id(request) -> int:
    return parse_job_id(str(request.path_params.get("job_id", "")))


class JSONAnswer(JSONResponse):
    """A JSON answer whose NaN and ±Infinity are null (:func:`~.jsontext.dumps`): a diverged loss or a run's
    ``calibration.json`` with NaN is an answer the page can read, never a 500."""

    def render(self, content) -> bytes:
        return dumps(content).encode("utf-8")


def json_endpoint(ws, fn, threaded: bool = True):
    """A JSON endpoint of ``fn(ws, request)`` (in the thread pool unless ``threaded`` is False, then awaited)."""

    async def endpoint(request):
        try:
            result = await (run_in_threadpool(fn, ws, request) if threaded else fn(ws, request))
        except Refused as exc:
            return JSONAnswer({"error": public_message(exc, ws.root)}, status_code=exc.status)
        except (PhasestemError, OSError, ValueError, RecursionError) as exc:
            return JSONAnswer({"error": public_message(exc, ws.root)}, status_code=400)
        return result if isinstance(result, Response) else JSONAnswer(result)

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


# ---- dataset (read by the confined reader processes: serve.reader) -----------------------------------------


async def dataset(ws, request):
    return await _read_data_file(ws, request, "dataset")


async def pattern(ws, request):
    return await _read_data_file(ws, request, "pattern")


async def virtual(ws, request):
    return await _read_data_file(ws, request, "virtual")


async def _read_data_file(ws, request, task: str):
    """The dataset page's ``task`` on the file ``?path=`` (checked here), answered by a reader process."""
    q = _query(request)
    path = await run_in_threadpool(confine, ws.root, q.get("path"), True)
    key = (task, await run_in_threadpool(file_identity, [path]), tuple(sorted(q.items())))
    return await _from_reader(ws, request, task, {"path": str(path), "query": q}, relative(ws.root, path),
                              slot=str(path), key=key)


async def _from_reader(ws, request, task: str, params: dict, what: str, slot, key) -> Response:
    """A reader's answer (:meth:`~.reader.ReaderPool.answer`) as the response; the reader stops when the client
    leaves first."""
    body = await while_connected(request, ws.reader.answer(task, params, what, slot, key))
    if body is None:
        return Response(status_code=499)  # nobody is left to read it
    return Response(body, media_type="application/json")


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
        out["calibration"] = load_file(calib)  # NaN as null; None where it is not JSON
    return out


def cancel(ws, request):
    return ws.runner.cancel(_job_id(request)).public(ws.root)


def resume(ws, request):
    return ws.runner.resume(_job_id(request)).public(ws.root)


def _compared_jobs(ws, request) -> list:
    ids = compare_ids(request.query_params.get("jobs"))
    return [ws.store.get(i) for i in ids]


async def compare(ws, request):
    return await _read_runs(ws, request, "compare", {})


async def compare_profile(ws, request):
    return await _read_runs(ws, request, "profile", {"line": request.query_params.get("line")})


async def restored(ws, request):
    """A restore job's printed lines, figure and verdict (:func:`~.restored.restore_view`), read by a reader
    process."""
    job = await run_in_threadpool(ws.store.get, _job_id(request))
    if job.command != "restore":
        raise Refused(f"job {job.id}: a {job.command} job, not a restore", 400)
    run = ws.root / job.run_dir
    key = ("restored", await run_in_threadpool(file_identity, [run / n for n in (RESTORED, FIGURE, LOG)]))
    return await _from_reader(ws, request, "restored", {"path": str(run)}, f"the restoration of job {job.id}",
                              slot=str(run), key=key)


async def _read_runs(ws, request, task: str, params: dict):
    """Compare's ``task`` on the runs of ``?jobs=`` (their results.h5, config.yaml and folders), answered by a
    reader process."""
    jobs = await run_in_threadpool(_compared_jobs, ws, request)
    runs = [ws.root / j.run_dir for j in jobs]
    files = [p for run in runs for p in (run, run / "results.h5", run / "config.yaml")]
    refs = [{"id": j.id, "name": j.name, "run_dir": j.run_dir} for j in jobs]
    key = (task, tuple((j.id, j.name, j.run_dir) for j in jobs), await run_in_threadpool(file_identity, files),
           tuple(sorted(params.items())))
    what = "the runs of job" + ("s " if len(jobs) > 1 else " ") + ", ".join(str(j.id) for j in jobs)
    return await _from_reader(ws, request, task, {**params, "jobs": refs}, what,
                              slot=tuple(sorted(map(str, runs))), key=key)


def params_get(ws, request):
    path = confine(ws.root, request.query_params.get("path"), must_exist=True)
    return {"path": relative(ws.root, path), **params_form(path)}


async def params_post(ws, request):
    """Save the form: ``{"path", "values", "version"}`` (``version``: what the GET answered, optional). Answers
    ``saved: true`` with the ``version`` of the exact text written; 409 when the file changed since ``version``."""
    body = await read_json(request)
    path = confine(ws.root, _text_field(body, "path"), must_exist=True)
    if not path.is_file() or path.suffix.lower() not in (".yaml", ".yml"):
        raise Refused(f"path {relative(ws.root, path)!r}: not a parameter file (.yaml)", 400)
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise Refused("version: expected the version string the form was read at", 400)
    values = body.get("values")
    saved = await run_in_threadpool(save_params_form, path, values, version,
                                    lambda: check_form_paths(ws.root, path, values))
    return {"path": relative(ws.root, path), "saved": True, "version": saved}


def info(ws, request):
    return {"root": ws.root.name, "devices": ws.devices(), "max_upload": ws.max_upload,
            "runs": RUNS_DIR, "commands": ["calibrate", "live", "reconstruct", "restore", "simulate", "train", "tune"],
            "restorers": restorer_names()}


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
        return JSONAnswer({"error": str(exc)}, status_code=exc.status)
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
    ("/api/dataset", dataset, "json_async", ("GET",)),
    ("/api/pattern", pattern, "json_async", ("GET",)),
    ("/api/virtual", virtual, "json_async", ("GET",)),
    ("/api/jobs", jobs, "json", ("GET",)),
    ("/api/jobs", submit, "json_async", ("POST",)),
    ("/api/events", jobs_events, "raw", ("GET",)),
    ("/api/jobs/{job_id}", job, "json", ("GET",)),
    ("/api/jobs/{job_id}/cancel", cancel, "json", ("POST",)),
    ("/api/jobs/{job_id}/resume", resume, "json", ("POST",)),
    ("/api/jobs/{job_id}/events", job_events, "raw", ("GET",)),
    ("/api/jobs/{job_id}/restored", restored, "json_async", ("GET",)),
    ("/api/compare", compare, "json_async", ("GET",)),
    ("/api/compare/profile", compare_profile, "json_async", ("GET",)),
    ("/api/params", params_get, "json", ("GET",)),
    ("/api/params", params_post, "json_async", ("POST",)),
)
