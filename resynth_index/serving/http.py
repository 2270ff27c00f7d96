"""``rindex serve``: the HTTP API over :class:`~resynth_index.serving.service.AttributionService` (FastAPI + uvicorn).

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

``POST /v1/attribute``
    one or many images, as ``multipart/form-data`` (every file field is an image) or JSON
    ``{"images": [{"data": "<base64>", "name": "a.png"}, ...]}`` (``"image": "<base64>"`` for one; entries may
    also be bare base64 strings or ``data:`` URIs). Answers ``{"results": [...], "snapshot": id, "seconds": s}``
    with one JSONL-contract object per image plus ``image_cache`` (``exact``, ``perceptual`` or ``none``),
    ``image_distance``, ``queued`` (the prompt waits for the builder) and ``snapshot``.
    Errors: 400 bad request (no images, too many, bad JSON or base64, a name that is not valid Unicode), 408
    a body slower than ``client_timeout``, 413 body over ``max_upload_bytes`` or an image over ``max_pixels``
    (decompression bomb), 415 not an image, 422 a corrupt image, 503 overloaded or shutting down, 504 past
    ``request_timeout``. A request with a bad image is refused whole; ``detail`` names each bad image by index.
``GET /v1/health``
    ``{"status": "ok", ...}`` once the models are loaded and the index is open.
``GET /v1/index``
    namespaces, prompts, vectors per generator, the snapshot id, the build queue.
``POST /v1/index/refresh``
    swap to a newer snapshot now (the service also checks every ``serve.refresh_interval`` seconds).
``GET /metrics``
    Prometheus text: ``rindex_http_requests_total``, ``rindex_images_total{result=image_exact|image_perceptual|
    hit|near|miss}``, ``rindex_stage_seconds`` (per-stage histograms), ``rindex_queue_depth``,
    ``rindex_build_queue_prompts``, ``rindex_snapshot_id``, ``rindex_snapshot_swaps_total``...

Binds to 127.0.0.1 by default. ``serve.api_key`` (or ``$RINDEX_API_KEY``) makes every endpoint but
``/v1/health`` require ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``); binding beyond loopback
without one prints a warning.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..config import Config
from ..errors import ImageError, RindexError
from .errors import Overloaded, ServiceClosed, classify_image_error
from .service import AttributionService

ConfigSource = str | os.PathLike | Mapping[str, Any] | Config | None

log = logging.getLogger("resynth_index.serving.http")

#: environment variable that sets (and overrides) ``serve.api_key``
API_KEY_ENV = "RINDEX_API_KEY"

_ERROR_SCHEMA = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"}, "detail": {}}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error answers of an endpoint (every error body is ``{"error", "detail"}``)."""
    text = {400: "bad request", 401: "missing or wrong API key", 408: "the client sent too slowly",
            413: "too large", 415: "not an accepted image format", 422: "a corrupt image",
            500: "an internal error", 503: "overloaded, not ready or shutting down", 504: "timed out"}
    return {c: {"description": text[c], "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
            for c in codes}


def api_key(sc) -> str:
    """The API key in effect: ``$RINDEX_API_KEY`` when set, else ``serve.api_key`` ("" = none)."""
    return os.environ.get(API_KEY_ENV, sc.api_key or "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only to this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

_ATTRIBUTE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                              "description": "one or more image files (any field name)"}}},
            },
            "application/json": {
                "schema": {"type": "object", "minProperties": 1, "properties": {
                    "images": {"type": "array", "minItems": 1, "items": {"oneOf": [
                        {"type": "string", "description": "base64 or data: URI"},
                        {"type": "object", "properties": {"data": {"type": "string"}, "name": {"type": "string"}},
                         "required": ["data"]}]}},
                    "image": {"type": "string", "description": "one base64 image"}}},
            },
        },
    }
}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, detail: Any = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def create_app(
    config: ConfigSource = None,
    *,
    index: str | os.PathLike | None = None,
    device: str | None = None,
    service: AttributionService | None = None,
    overrides: dict | None = None,
):
    """The FastAPI app. Without ``service`` it creates and starts one in its lifespan (after any fork)."""
    own = service is None
    svc = service or AttributionService(config, index=index, device=device, overrides=overrides)
    sc = svc.serve

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if own:
            await run_in_threadpool(svc.start)
        try:
            yield
        finally:
            if own:
                await run_in_threadpool(svc.close)

    app = FastAPI(title="resynth-index", version=_version(), lifespan=lifespan,
                  description="Attribute AI-generated images to the text-to-image model that made them.")
    app.state.service = svc

    def error(status: int, message: str, detail: Any = None) -> JSONResponse:
        body = {"error": message}
        if detail is not None:
            body["detail"] = detail
        # After a body that came too slowly or too large, the rest of it may still be on the way: close the
        # connection rather than keep it alive for another request.
        headers = {"Connection": "close"} if status in (408, 413) else None
        return JSONResponse(body, status_code=status, headers=headers)

    key = api_key(sc)

    @app.middleware("http")
    async def auth_middleware(request: Request, call_next):
        if key and request.url.path != "/v1/health":
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), key.encode()):
                return JSONResponse({"error": "missing or wrong API key (Authorization: Bearer <key>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.middleware("http")
    async def metrics_middleware(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        svc.metrics.http_requests.labels(endpoint, str(response.status_code)).inc()
        svc.metrics.http_seconds.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    async def read_body(request: Request) -> bytes:
        body = bytearray()
        seen = 0

        async def read() -> None:
            nonlocal seen
            async for chunk in request.stream():
                seen += len(chunk)
                if seen <= sc.max_upload_bytes:
                    body.extend(chunk)
                elif seen > 4 * sc.max_upload_bytes:
                    break

        try:  # a client that sends too slowly must not hold a connection and a request slot for ever
            await asyncio.wait_for(read(), timeout=sc.client_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise _HTTPError(408, f"the request body did not arrive within {sc.client_timeout:g}s") from None
        # Past the limit the rest is read (and dropped) up to 4x the limit so that a client still sending gets
        # the 413 rather than a connection reset; beyond that the connection is closed after the answer.
        if seen > sc.max_upload_bytes:
            raise _HTTPError(413, f"request body is over the limit of {sc.max_upload_bytes:,} bytes")
        return bytes(body)

    async def parse_images(request: Request) -> list[tuple[str, bytes]]:
        body = await read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        items: list[tuple[str, bytes]] = []
        if ctype == "multipart/form-data":
            # starlette parses the form from a request that replays the body already read (and limited)
            try:
                form = await _replay(request, body).form(max_files=sc.max_images + 1, max_fields=sc.max_images + 16)
            except Exception as exc:  # noqa: BLE001 - starlette's MultiPartException / HTTPException
                raise _HTTPError(400, f"bad multipart body: {getattr(exc, 'detail', None) or exc}") from None
            try:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        items.append((value.filename or key, await value.read()))
            finally:
                await form.close()
        elif ctype in ("application/json", ""):
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise _HTTPError(400, f"body is not valid JSON: {exc}") from None
            except RecursionError:
                raise _HTTPError(400, "body is not acceptable JSON: nested too deeply") from None
            if not isinstance(doc, dict) or ("images" not in doc and "image" not in doc):
                raise _HTTPError(400, 'JSON body must be an object with "images" (a list) or "image"')
            entries = doc.get("images", [doc.get("image")] if "image" in doc else [])
            if not isinstance(entries, list):
                raise _HTTPError(400, '"images" must be a list')
            for n, e in enumerate(entries):
                name = f"<image {n}>"
                if isinstance(e, dict):
                    name, e = str(e.get("name") or name), e.get("data")
                    if not name.isascii() and not _is_unicode(name):  # echoed in the answer, which must encode
                        raise _HTTPError(400, f"image {n}: its name is not valid Unicode text (a lone surrogate)")
                if not isinstance(e, str):
                    raise _HTTPError(400, f"image {n}: expected a base64 string")
                if e.startswith("data:") and "," in e:
                    e = e.split(",", 1)[1]
                try:
                    items.append((name, base64.b64decode(e, validate=True)))
                except (binascii.Error, ValueError):
                    raise _HTTPError(400, f"image {n} ({name}): not valid base64") from None
        else:
            raise _HTTPError(415, f"content type {ctype!r}: send multipart/form-data or application/json")
        if not items:
            raise _HTTPError(400, "no images in the request")
        if len(items) > sc.max_images:
            raise _HTTPError(400, f"{len(items)} images in one request; the limit is {sc.max_images}")
        return items

    @app.post("/v1/attribute", openapi_extra=_ATTRIBUTE_BODY, summary="Attribute one or many images",
              responses=_errors(400, 401, 408, 413, 415, 422, 500, 503, 504))
    async def attribute(request: Request):
        t0 = time.perf_counter()
        try:
            items = await parse_images(request)
        except _HTTPError as exc:
            return error(exc.status, exc.message, exc.detail)
        deadline = time.monotonic() + sc.request_timeout

        def decode_all():
            """Decode under the request's pixel budget (each image may use what the earlier ones left) and
            its timeout, which covers decoding."""
            out, bad = [], []
            left = sc.max_request_pixels
            for n, (name, data) in enumerate(items):
                if time.monotonic() > deadline:
                    raise TimeoutError
                try:
                    d = svc.decode(data, name, max_pixels=left)
                except ImageError as exc:
                    status, reason = classify_image_error(exc)
                    msg = str(exc)
                    if status == 413 and left < sc.max_pixels:
                        msg += f" (this request's images may total {sc.max_request_pixels:,} pixels)"
                    bad.append({"index": n, "name": name, "status": status, "reason": reason, "error": msg})
                    continue
                left -= d.image.image.width * d.image.image.height
                out.append(d)
            return out, bad

        try:
            decoded, bad = await asyncio.wait_for(run_in_threadpool(decode_all), timeout=sc.request_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            svc.metrics.timeouts.inc()
            return error(504, f"images not decoded within the request timeout of {sc.request_timeout:g}s")
        if bad:
            status = max(b["status"] for b in bad) if len({b["status"] for b in bad}) == 1 else 422
            status = 413 if any(b["status"] == 413 for b in bad) else status
            msg = bad[0]["error"] if len(bad) == 1 else f"{len(bad)} of {len(items)} images were refused"
            return error(status, msg, bad)
        timeout = sc.request_timeout - (time.perf_counter() - t0)
        try:
            futures = await run_in_threadpool(svc.submit, decoded, [name for name, _ in items], timeout=timeout)
        except Overloaded as exc:
            return error(503, str(exc))
        except ServiceClosed as exc:
            return error(503, str(exc))
        waiters = [asyncio.wrap_future(f) for f in futures]
        try:
            results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=max(0.0, timeout))
        except (asyncio.TimeoutError, TimeoutError):
            for f in futures:
                f.cancel()
            svc.metrics.timeouts.inc()
            return error(504, f"no answer within the request timeout of {sc.request_timeout:g}s")
        except ServiceClosed as exc:
            return error(503, str(exc))
        except RindexError as exc:
            return error(500, str(exc))
        except Exception as exc:  # noqa: BLE001 - an engine failure fails this request, not the server
            return error(500, f"{type(exc).__name__}: {exc}")
        return {"results": results, "snapshot": svc.snapshot.id, "seconds": round(time.perf_counter() - t0, 6)}

    @app.get("/v1/health", summary="Liveness and readiness", responses=_errors(503))
    async def health():
        problem = svc.problem
        if problem is not None:
            return error(503, problem)
        return {"status": "ok", "snapshot": svc.snapshot.id, "miss_policy": sc.miss_policy,
                "uptime_s": round(time.time() - svc.started_at, 3)}

    @app.get("/v1/index", summary="The served index: namespaces, counts, snapshot id",
             responses=_errors(401, 503))
    async def index_info():
        try:
            return await run_in_threadpool(svc.info)
        except ServiceClosed as exc:
            return error(503, str(exc))

    @app.post("/v1/index/refresh", summary="Swap to a newer index snapshot now", responses=_errors(401, 503))
    async def refresh():
        try:
            before = svc.snapshot.id
            after = await run_in_threadpool(svc.refresh)
        except ServiceClosed as exc:
            return error(503, str(exc))
        return {"snapshot": after, "swapped": after != before}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)})
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates, which do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replay(request: Request, body: bytes) -> Request:
    """A request over the same scope whose body is ``body`` (the original's stream is consumed)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: an ephemeral one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ConfigSource = None, *, index: str | os.PathLike | None = None, device: str | None = None,
          host: str | None = None, port: int | None = None,
          log_level: str = "warning", overrides: dict | None = None) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM: finish in-flight requests, then stop)."""
    import uvicorn

    app = create_app(config, index=index, device=device, overrides=overrides)
    sc = app.state.service.serve
    host = host or sc.host
    sock = bind_socket(host, sc.port if port is None else port)
    bound = sock.getsockname()[1]
    if not is_loopback(host) and not api_key(sc):
        print(f"rindex: WARNING: serving on {host}, beyond this machine, with NO API KEY: anyone who can reach "
              f"port {bound} can use every endpoint (set serve.api_key or ${API_KEY_ENV}, or bind 127.0.0.1 "
              "behind an authenticating proxy)", file=sys.stderr, flush=True)
    print(f"rindex: serving http://{host}:{bound} (docs at /docs; miss policy {sc.miss_policy}"
          f"{'; API key required' if api_key(sc) else ''})", file=sys.stderr, flush=True)
    # timeout_keep_alive closes idle connections, the protocol closes those whose request headers do not
    # arrive in time; limit_concurrency answers 503 past that many open connections and tasks.
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=30,
                                           timeout_keep_alive=max(1, int(sc.client_timeout)),
                                           limit_concurrency=sc.max_pending + 64,
                                           http=header_timeout_protocol(sc.client_timeout)))
    server.run(sockets=[sock])


def header_timeout_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers have not all arrived ``timeout``
    seconds after it opened or after its previous answer. uvicorn only times out idle keep-alive connections,
    so a client that sent nothing, or half a request line, held its connection (and a file descriptor, and a
    slot of ``limit_concurrency``) for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout, self._headers_late, self.cycle)

        def _headers_late(self, cycle) -> None:
            # Still the request/response cycle of the time the timer was set (no new request's headers arrived)
            # and nothing in progress: the client is too slow.
            self._header_timer = None
            if self.cycle is cycle and (cycle is None or cycle.response_complete):
                self.transport.close()

    return HeaderTimeoutProtocol


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("resynth-index")
    except Exception:  # noqa: BLE001
        return "0"


__all__ = ["bind_socket", "create_app", "header_timeout_protocol", "serve"]
