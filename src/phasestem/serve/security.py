"""The workspace's guards: the token (as Jupyter's), paths confined to the root, bounded request bodies.

Every request and the push channel need the token: ``?token=…`` in the URL (the link ``phasestem serve`` prints;
the answer then sets an HttpOnly, SameSite=Strict cookie so the page's own requests carry it), an
``Authorization: token …`` header, or that cookie. None → 401, a wrong one → 403, each as one JSON line
``{"error": "..."}`` (an HTML page for a browser's navigation). A state-changing request whose ``Origin`` is not
the server's own is refused (403) too, and so is every request whose ``Host`` is not one the server was bound to
(a page of another site that a DNS name pointed at 127.0.0.1 cannot read the answers).

Every answer carries :data:`SECURITY_HEADERS`: a Content-Security-Policy without inline script (a page or file
that a workspace file tried to smuggle in runs no script from this origin), ``nosniff``, no framing, no referrer.
Error messages never show the server's absolute paths (:func:`public_message`).
"""
from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from ..base.errors import PhasestemError

#: the cookie that carries the token after the first visit
TOKEN_COOKIE = "phasestem_token"
#: the server's own folder under the root (its queue database, its lock): never reached through a request
SERVE_DIR = ".phasestem-serve"
#: largest JSON request body (bytes); uploads have their own limit (``--max-upload-mb``)
MAX_JSON_BYTES = 1 << 20
#: deepest nesting of a JSON request body (a job or a parameter form is 3 levels deep)
MAX_JSON_DEPTH = 32

#: the policy of every page: scripts and styles from this server's own files only (no inline code), images also
#: as data: URLs (the server renders them so), requests to this server only, no plugins, no framing
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
#: headers on every answer
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin")]
#: the policy of a workspace file served to the browser: sandboxed, nothing of its own may run
FILE_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"


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
    refuse_state_folder(root, path, f"path {text!r}")
    if must_exist and not path.exists():
        raise Refused(f"path {text!r}: not found under the workspace root", 404)
    return path


def refuse_state_folder(root: Path, path: Path, what: str) -> None:
    """Refuse (403) ``path`` (resolved) when it is the server's own state folder (:data:`SERVE_DIR`) or inside it:
    no listing, reading, upload, deletion or job argument reaches the queue database or the server's lock."""
    state = Path(root).resolve() / SERVE_DIR
    if path == state or state in path.parents:
        raise Refused(f"{what}: {SERVE_DIR}/ is the server's own state folder; refused", 403)


_ABSOLUTE = re.compile(r"(?<![\w.~])/(?:[^\s/'\"():,;]+/)+([^\s/'\"():,;]*)")


def public_message(exc: BaseException | str, root: Path) -> str:
    """An error's text as the pages may show it: paths under ``root`` relative to it, any other absolute path cut
    to its last part (``…/name``); an OS error as its reason and the file's name."""
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename
        text = f"{exc.strerror}: {name}" if name else exc.strerror
    else:
        text = str(exc)
    root_text = str(Path(root).resolve())
    text = text.replace(root_text + os.sep, "").replace(root_text, ".")
    return _ABSOLUTE.sub(lambda m: "…/" + m.group(1), text)


def host_allowed(scope, hosts: frozenset[str] | None) -> bool:
    """Whether the request's ``Host`` header (port dropped) is one of ``hosts`` (None: any)."""
    if hosts is None:
        return True
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host in hosts


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
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
                + SECURITY_HEADERS})
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


#: the port a scheme implies where a URL or ``Host`` names none
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(scheme: str, host: str) -> tuple[str, str, int] | None:
    """(scheme, host name, port) of an origin, the port implied by the scheme where ``host`` ("name[:port]",
    "[v6]:port") names none; None where it cannot be read."""
    from urllib.parse import urlsplit

    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    try:
        parts = urlsplit(f"{scheme}://{host}")
        port = parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.username:
        return None
    return scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[scheme]


def _same_origin(scope) -> bool:
    """Whether the request's ``Origin`` (when it has one) is the server's own: the same scheme, host and port as
    the request came to (``https://`` to this ``http://`` server is another origin)."""
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin")
    if origin is None:
        return True
    scheme, sep, host = origin.decode("latin-1").partition("://")
    own = origin_of(scope.get("scheme", "http"), headers.get(b"host", b"").decode("latin-1"))
    return bool(sep) and own is not None and origin_of(scheme, host) == own


class TokenGuard:
    """ASGI middleware: the ``Host`` among ``hosts`` (None: any), the token on every HTTP request (the push
    channel included), same-origin state changes, :data:`SECURITY_HEADERS` on every answer."""

    def __init__(self, app, token: str, hosts: frozenset[str] | None = None):
        self.app = app
        self.token = token
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if not host_allowed(scope, self.hosts):
            return await self._refuse(scope, send, 403, "this server answers only to the address it listens on "
                                      "(the Host header names another; phasestem serve --allow-host NAME adds one)")
        given, in_query = request_token(scope)
        if not given:
            return await self._refuse(scope, send, 401, "this workspace needs its token (?token=… in the URL, an "
                                      "'Authorization: token …' header or the cookie the first visit set)")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await self._refuse(scope, send, 403, "wrong token")
        if scope.get("method", "GET") not in ("GET", "HEAD") and not _same_origin(scope):
            return await self._refuse(scope, send, 403, "a request from another site's page is refused")
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = list(SECURITY_HEADERS)
        if in_query:
            extra.append((b"set-cookie", f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                own = list(message.get("headers", []))
                names = {k.lower() for k, _ in own}
                message = dict(message, headers=own + [(k, v) for k, v in extra if k not in names])
            await send(message)

        return await self.app(scope, receive, send_with_headers)

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
    if _nesting(body) > MAX_JSON_DEPTH:
        raise Refused(f"request body: JSON nested deeper than {MAX_JSON_DEPTH} levels", 400)
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused("request body: not JSON", 400) from None
    if not isinstance(data, dict):
        raise Refused("request body: expected a JSON object", 400)
    return data


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _nesting(body: bytes) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings not counted), read before parsing so
    that a body nested 100,000 deep is refused without recursing into it."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    steps = (codes == ord("[")).astype(np.int32) + (codes == ord("{")) - (codes == ord("]")) - (codes == ord("}"))
    return int(np.cumsum(steps).max(initial=0))
