"""The admin endpoints: which request goes where, who may ask, and what each
answers (JSON bodies, JSON errors, the metrics text, the dashboard page).

    GET /health          200 {"status": "ok", ...}; 503 {"status": "unhealthy", "problems": [...]}
    GET /stats           the stats dict (Client.stats())
    GET /stats/{topic}   one topic's entry; 404 for an unknown or invalid name
    GET /metrics         Prometheus text 0.0.4, or OpenMetrics 1.0.0 when Accept asks for it
    GET /history         the recent history (history.py); ?since=<epoch s> for the newer part
    GET /                the dashboard page, with a Content-Security-Policy of its own hashes

resolve() checks a request in this order: its target (404), the Host header
on a loopback server (421), the method (405 with Allow; HEAD is GET without
the body), the bearer token on every endpoint but /health (401). The server
(server.py) reads the request, admits it (concurrency limits) and writes the
answer; what an endpoint needs from the broker comes from a Backend.
Standard library only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import re
from base64 import b64encode
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from ..config import check_topic
from ..errors import MQError
from . import metrics

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
ALLOW = "GET, HEAD"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Request:
    """A parsed request head: method, target (as sent), and headers
    (case-insensitive get())."""

    method: str
    target: str
    headers: Message


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: Headers = ()


class Unavailable(Exception):
    """The broker did not answer in time: a 503, not a failure of ours."""


class Backend(Protocol):
    """What the endpoints need from the server that runs them."""

    token: bytes | None   # the bearer token every endpoint but /health wants, or None
    loopback: bool        # bound to a loopback address: only loopback Host names are served

    async def stats(self) -> dict[str, Any]: ...

    async def health(self) -> tuple[bool, dict[str, Any]]: ...

    def history(self, since: float | None) -> dict[str, Any]: ...


def to_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def error(status: int, message: str, headers: Headers = ()) -> Response:
    """A JSON error: {"error": message}."""
    return Response(status, to_json({"error": message}), JSON_TYPE, headers)


# -- the endpoints ------------------------------------------------------------------------

Handler = Callable[[Backend, Request, str, Mapping[str, list[str]]], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """A resolved request: the handler, its argument (the topic of
    /stats/{topic}), the query, and its lane: "health", "source" (calls
    stats()) or "local" (calls nothing), each admitted apart from the others,
    so that a slow stats() never delays a probe or the page."""

    handler: Handler
    request: Request
    arg: str = ""
    query: Mapping[str, list[str]] = field(default_factory=dict)
    lane: str = "source"

    async def __call__(self, backend: Backend) -> Response:
        try:
            return await self.handler(backend, self.request, self.arg, self.query)
        except MQError as e:  # the broker is closing, say: not our failure
            return error(503, str(e))
        except Unavailable as e:
            return error(503, str(e), (("Retry-After", "1"),))


async def health(backend: Backend, request: Request, arg: str,
                 query: Mapping[str, list[str]]) -> Response:
    try:
        ok, details = await backend.health()
        details = dict(details)
    except Exception as e:  # an unhealthy broker may fail to say why
        ok, details = False, {"problems": [f"health check failed: {e}"]}
    if ok:
        details.pop("problems", None)
        return Response(200, to_json({"status": "ok", **details}))
    problems = list(details.pop("problems", None) or ["unhealthy"])
    return Response(503, to_json({"status": "unhealthy", "problems": problems, **details}))


async def stats(backend: Backend, request: Request, arg: str,
                query: Mapping[str, list[str]]) -> Response:
    return Response(200, to_json(await backend.stats()))


async def topic(backend: Backend, request: Request, arg: str,
                query: Mapping[str, list[str]]) -> Response:
    try:
        check_topic(arg)
    except ValueError:
        return error(404, "invalid topic name")
    figures = ((await backend.stats()).get("topics") or {}).get(arg)
    if figures is None:
        return error(404, f"no topic {arg!r}")
    return Response(200, to_json(figures))


async def metrics_endpoint(backend: Backend, request: Request, arg: str,
                           query: Mapping[str, list[str]]) -> Response:
    figures, health_result = await asyncio.gather(backend.stats(), backend.health(),
                                                  return_exceptions=True)
    if isinstance(figures, BaseException):
        raise figures
    healthy = not isinstance(health_result, BaseException) and bool(health_result[0])
    vary = (("Vary", "Accept"),)
    if metrics.wants_openmetrics(request.headers.get("Accept")):
        return Response(200, metrics.openmetrics_text(figures, healthy).encode(),
                        metrics.OPENMETRICS_TYPE, vary)
    return Response(200, metrics.metrics_text(figures, healthy).encode(),
                    metrics.PROMETHEUS_TYPE, vary)


async def history(backend: Backend, request: Request, arg: str,
                  query: Mapping[str, list[str]]) -> Response:
    since = None
    for value in query.get("since", ())[:1]:
        try:
            since = float(value)
        except ValueError:
            return error(400, f"since must be a number of epoch seconds, not {value!r}")
    return Response(200, to_json(backend.history(since)))


async def page(backend: Backend, request: Request, arg: str,
               query: Mapping[str, list[str]]) -> Response:
    body, csp = dashboard()
    return Response(200, body, HTML_TYPE, (("Content-Security-Policy", csp),
                                           ("Referrer-Policy", "no-referrer"),
                                           ("X-Frame-Options", "DENY")))


# -- resolving a request -------------------------------------------------------------------

def resolve(request: Request, backend: Backend) -> Endpoint | Response:
    """The endpoint that answers the request, or the error that does."""
    try:
        parts = urlsplit(request.target)
        query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        return error(400, "malformed request target")
    path = parts.path
    if not path.startswith("/"):
        return error(404, "not found")
    try:
        segs = [unquote(s, errors="strict") for s in path[1:].split("/")]
    except UnicodeDecodeError:
        return error(404, "not found")
    if len(segs) > 1 and segs[-1] == "":
        segs.pop()  # one trailing slash: /stats/ is /stats
    if any(s in (".", "..") or "/" in s or "\0" in s for s in segs):
        return error(404, "not found")
    arg, lane = "", "source"
    handler: Handler
    if segs == [""]:
        handler, lane = page, "local"
    elif segs == ["health"]:
        handler, lane = health, "health"
    elif segs == ["stats"]:
        handler = stats
    elif len(segs) == 2 and segs[0] == "stats":
        handler, arg = topic, segs[1]
    elif segs == ["metrics"]:
        handler = metrics_endpoint
    elif segs == ["history"]:
        handler, lane = history, "local"
    else:
        return error(404, "not found")
    if backend.loopback and not loopback_host(request.headers.get("Host")):
        return error(421, "this server answers only requests for a loopback address")
    if request.method not in ("GET", "HEAD"):
        return error(405, f"method {request.method} not allowed", (("Allow", ALLOW),))
    if handler is not health and not authorized(request, query, backend.token):
        return error(401, "a bearer token is required",
                     (("WWW-Authenticate", 'Bearer realm="pymq"'),))
    return Endpoint(handler, request, arg, query, lane)


def authorized(request: Request, query: Mapping[str, list[str]], want: bytes | None) -> bool:
    """Whether the request carries the token: `Authorization: Bearer <token>`
    or `?token=<token>` (compared in constant time)."""
    if want is None:
        return True
    given = []
    scheme, _, cred = (request.headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and cred.strip():
        given.append(cred.strip().encode("latin-1", "replace"))
    for value in query.get("token", ())[:1]:
        given.append(value.encode("utf-8", "surrogateescape"))
    ok = False
    for g in given:
        ok |= hmac.compare_digest(g, want)
    return ok


def loopback_host(host: str | None) -> bool:
    """Whether a Host header names this machine's loopback (or is absent): on
    loopback, a web page elsewhere that rebinds its DNS name to 127.0.0.1
    cannot read the server."""
    if not host:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# -- the dashboard --------------------------------------------------------------------------

_dashboard: tuple[bytes, str] | None = None


def dashboard() -> tuple[bytes, str]:
    """The page (dashboard.html beside this file), and its
    Content-Security-Policy: hashes of its inline script and style, nothing
    else may run or style it."""
    global _dashboard
    if _dashboard is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.html")
        with open(path, encoding="utf-8") as f:
            text = f.read()

        def hashes(tag: str) -> str:
            found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
            return " ".join("'sha256-%s'" % b64encode(hashlib.sha256(s.encode()).digest()).decode()
                            for s in found) or "'none'"

        csp = (f"default-src 'none'; script-src {hashes('script')}; "
               f"style-src {hashes('style')}; connect-src 'self'; img-src data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        _dashboard = text.encode("utf-8"), csp
    return _dashboard
