"""The workspace's guards: the token (as Jupyter's), paths confined to the root, bounded request bodies.

Every request and the push channel need the token: ``?token=…`` in the URL (the link ``phasestem serve`` prints;
the answer then sets an HttpOnly, SameSite=Strict cookie so the page's own requests carry it), an
``Authorization: token …`` header, or that cookie. None → 401, a wrong one → 403, each as one JSON line
``{"error": "..."}`` (an HTML page for a browser's navigation). A state-changing request whose ``Origin`` is not
the server's own is refused (403) too.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import PhasestemError

#: the cookie that carries the token after the first visit
TOKEN_COOKIE = "phasestem_token"
#: largest JSON request body (bytes); uploads have their own limit (``--max-upload-mb``)
MAX_JSON_BYTES = 1 << 20


class Refused(PhasestemError):
    """A request the workspace refuses; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def new_token() -> str:
    """A random token (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def confine(root: Path, rel: str | os.PathLike | None, must_exist: bool = False) -> Path:
    """``rel`` (a path relative to ``root``, '' or None for the root itself) as a resolved path inside ``root``.
    Absolute paths, ``..`` parts and symbolic links that lead out of the root are refused (403)."""
    text = "" if rel is None else str(rel)
    if "\x00" in text:
        raise Refused("path: contains a NUL character", 400)
    if text.startswith(("/", "\\", "~")) or (len(text) > 1 and text[1] == ":"):
        raise Refused(f"path {text!r}: absolute paths are refused; give a path relative to the workspace root", 403)
    parts = Path(text).parts
    if ".." in parts:
        raise Refused(f"path {text!r}: '..' is refused; paths stay inside the workspace root", 403)
    root = Path(root).resolve()
    path = (root / text).resolve()
    if path != root and root not in path.parents:
        raise Refused(f"path {text!r}: leads out of the workspace root (a symbolic link?); refused", 403)
    if must_exist and not path.exists():
        raise Refused(f"path {text!r}: not found under the workspace root", 404)
    return path


def relative(root: Path, path: Path) -> str:
    """``path`` (inside ``root``) as the relative, '/'-separated name the pages use ('' for the root)."""
    rel = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    return "" if rel == "." else rel


def _error_body(scope, status: int, message: str) -> tuple[bytes, bytes]:
    headers = dict(scope.get("headers") or [])
    wants_html = b"text/html" in headers.get(b"accept", b"") and not scope.get("path", "").startswith("/api/")
    if wants_html:
        from html import escape

        page = (f"<!doctype html><title>phasestem serve: {status}</title><h1>{status}</h1><p>{escape(message)}</p>"
                "<p>Open the link with <code>?token=…</code> that <code>phasestem serve</code> printed.</p>")
        return page.encode(), b"text/html; charset=utf-8"
    return json.dumps({"error": message}).encode(), b"application/json"


async def send_error(scope, send, status: int, message: str) -> None:
    """One refusal as a complete HTTP answer (JSON, or HTML for a browser's page request)."""
    body, ctype = _error_body(scope, status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def request_token(scope) -> tuple[str | None, bool]:
    """(the token the request carries or None, whether it came in the query string)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    headers = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    for prefix in ("token ", "bearer "):
        if auth.lower().startswith(prefix):
            return auth[len(prefix):].strip(), False
    cookie = headers.get(b"cookie")
    if cookie:
        jar = SimpleCookie()
        try:
            jar.load(cookie.decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header counts as no cookie
            return None, False
        if TOKEN_COOKIE in jar:
            return jar[TOKEN_COOKIE].value, False
    return None, False


def _same_origin(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin")
    if origin is None or origin == b"null" and False:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    return origin.decode("latin-1").split("://", 1)[-1] == host


class TokenGuard:
    """ASGI middleware: the token on every HTTP request (the push channel included), same-origin state changes."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given, in_query = request_token(scope)
        if not given:
            return await self._refuse(scope, send, 401, "this workspace needs its token (?token=… in the URL, an "
                                      "'Authorization: token …' header or the cookie the first visit set)")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await self._refuse(scope, send, 403, "wrong token")
        if scope.get("method", "GET") not in ("GET", "HEAD") and not _same_origin(scope):
            return await self._refuse(scope, send, 403, "a request from another site's page is refused")
        if not in_query or scope["type"] != "http":
            return await self.app(scope, receive, send)
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"set-cookie", cookie)])
            await send(message)

        return await self.app(scope, receive, send_with_cookie)

    async def _refuse(self, scope, send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
            return
        await send_error(scope, send, status, message)


#: a refused body up to this size is read (and dropped) before the answer, so that the client, still sending,
#: receives the refusal instead of a reset connection; a larger one is cut off
DRAIN_BYTES = 16 << 20


async def refuse_size(request, message: str, read: int = 0) -> None:
    """Raise 413 ``message`` after draining what is left of a body of modest size (:data:`DRAIN_BYTES`)."""
    async for chunk in request.stream():
        read += len(chunk)
        if read > DRAIN_BYTES:
            break
    raise Refused(message, 413)


async def read_body(request, limit: int = MAX_JSON_BYTES) -> bytes:
    """The request body, refused (413) beyond ``limit`` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await refuse_size(request, f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await refuse_size(request, f"request body over the limit of {limit:,} bytes", size)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request, limit: int = MAX_JSON_BYTES) -> dict:
    """The request's JSON object (≤ ``limit`` bytes)."""
    body = await read_body(request, limit)
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Refused("request body: not JSON", 400) from None
    if not isinstance(data, dict):
        raise Refused("request body: expected a JSON object", 400)
    return data
