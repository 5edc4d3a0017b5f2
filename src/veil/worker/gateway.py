"""The worker's OHTTP gateway (RFC 9458 / RFC 9540) as one pipeline:

    open → admit → forward → encode → settle

* **open** (``opening.py``): read the outer body within bounds and decrypt it in the framing its
  route and media type name; refuse replays (``replay.py``). Failures here are *outer* errors,
  answered in the clear as ``{"error": {"reason", "message"}}``: nothing has been decrypted.
* **admit** (``tenants.py``): decode the inner Binary HTTP request, check its ``Date``, then
  authenticate the tenant, apply its rate limits and rewrite the body (cache salts).
* **forward** (``forwarding.py``): send it to the engine on its Unix socket, headers allowlisted.
* **encode** (``encoding.py``): lay the answer out, padded, in the framing's sealed chunks; the
  encoder is chosen once per answer.
* **settle**: replace the tenant's token estimate by the usage the answer showed — in exactly one
  place, :meth:`_Exchange.close`, which runs however the exchange ended.

Once a request is opened, every answer, refusals and unexpected failures included, goes back
encrypted to that client (a step refuses by raising :class:`~veil.worker.refusals.Refusal`).
Nothing here logs plaintext or inner metadata: log lines carry framings, outer sizes and outer
reason codes only, and an unexpected exception is logged by its type name alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from veil.errors import VeilError
from veil.manifest import GatewaySettings, Manifest, PaddingSettings, TenantEntry
from veil.ohttp import bhttp
from veil.ohttp.keyconfig import KeyStore
from veil.wire import COMPAT_KEYS_PATH, COMPAT_PATH, GATEWAY_PATH, MEDIA_TYPE_CHUNKED_REQUEST, MEDIA_TYPE_KEYS, MEDIA_TYPE_REQUEST
from veil.worker.encoding import Encoder, Sealer, choose_encoder, is_event_stream
from veil.worker.forwarding import answer_body, answer_headers, open_upstream, read_whole
from veil.worker.opening import Framing, Opened, open_request
from veil.worker.refusals import Refusal, internal_error
from veil.worker.replay import DEFAULT_CAPACITY, ReplayGuard
from veil.worker.shared_state import SharedState
from veil.worker.tenants import Admission, Tenancy, Usage

log = logging.getLogger("veil.worker.gateway")

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024

STANDARD_FRAMINGS = {MEDIA_TYPE_REQUEST: Framing.WHOLE, MEDIA_TYPE_CHUNKED_REQUEST: Framing.CHUNKED}
COMPAT_FRAMINGS = {MEDIA_TYPE_CHUNKED_REQUEST: Framing.COMPAT}


def _outer_error(status: int, reason: str, message: str) -> JSONResponse:
    log.info("ohttp gateway refused request: status=%d reason=%s", status, reason)
    return JSONResponse({"error": {"reason": reason, "message": message}}, status_code=status)


class _Meter:
    """What the answer cost, counted as it passes through encode; read once, by settle."""

    def __init__(self) -> None:
        self.events = 0
        self.streamed = False
        self._usage_piece = b""
        self._total: int | None = None

    def stream(self, piece: bytes) -> None:
        self.streamed = True
        self.events += piece.count(b"data:")
        if b'"total_tokens"' in piece and len(piece) <= 1 << 16:
            self._usage_piece = piece  # an engine's final usage event (stream_options.include_usage)

    def whole(self, headers: bhttp.Fields, content: bytes) -> None:
        if is_event_stream(headers):
            self.stream(content)
        elif any(n == "content-type" and "json" in v for n, v in headers) and len(content) <= 1 << 20:
            self._total = _total_tokens(content)

    def usage(self) -> Usage:
        if self.streamed:
            for line in reversed(self._usage_piece.split(b"\n")):
                if line.startswith(b"data:") and b'"total_tokens"' in line:
                    total = _total_tokens(line[5:])
                    if total is not None:
                        return Usage(total_tokens=total)
            return Usage(stream_events=self.events)
        return Usage(total_tokens=self._total)


def _total_tokens(content: bytes) -> int | None:
    """The tokens an engine's JSON answer reports (None if absent; the engine is untrusted), in each
    API's own fields: OpenAI's ``usage.total_tokens`` (chat, completions, Responses), Anthropic's
    ``usage.input_tokens + output_tokens`` (+ cache reads), llama.cpp ``/infill``'s
    ``tokens_evaluated + tokens_predicted``."""
    try:
        doc = json.loads(content)
        usage = doc.get("usage") or {}
        if "total_tokens" in usage:
            parts = [usage["total_tokens"]]
        elif "output_tokens" in usage:
            parts = [usage.get("input_tokens"), usage["output_tokens"], usage.get("cache_read_input_tokens") or 0]
        elif "tokens_predicted" in doc:
            parts = [doc.get("tokens_evaluated"), doc["tokens_predicted"]]
        else:
            return None
    except (ValueError, AttributeError, RecursionError, TypeError):
        return None
    if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts):
        return None
    return int(sum(parts))


@dataclass
class _Exchange:
    """One request's state across the pipeline, so that ``close`` can settle and clean up once."""

    admission: Admission | None = None
    upstream: httpx.Response | None = None
    meter: _Meter = field(default_factory=_Meter)

    async def close(self) -> None:
        """settle: exactly once per admitted request, whether it streamed, failed or was cut off."""
        if self.admission is not None:
            self.admission.settle(self.meter.usage())
            self.admission = None
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await answer_body(upstream).aclose()


class Gateway:
    """The gateway of one worker process. A newer manifest applies through :meth:`apply_manifest`."""

    def __init__(
        self,
        keys: KeyStore,
        upstream: httpx.AsyncBaseTransport,
        *,
        tenancy: Tenancy,
        padding: PaddingSettings,
        settings: GatewaySettings,
        limits: bhttp.Limits,
        max_request_bytes: int,
        shared: SharedState,
    ) -> None:
        self.keys = keys
        self.upstream = upstream
        self.tenancy = tenancy
        self.padding = padding
        self.settings = settings
        self.limits = limits
        self.max_request_bytes = max_request_bytes
        self.replay = ReplayGuard(window=settings.replay_window_seconds, shared=shared)
        self.stopped: str | None = None

    def apply_manifest(self, manifest: Manifest, keys: KeyStore | None = None) -> None:
        """A newer manifest (from re-registration) takes effect for the next request; keys received
        with it replace the old set entirely."""
        self.tenancy = self.tenancy.updated(manifest.tenants)
        self.padding = manifest.padding or PaddingSettings()
        self.settings = manifest.gateway or GatewaySettings()
        self.replay.window = self.settings.replay_window_seconds
        if keys is not None:
            self.keys = keys

    def stop(self, reason: str) -> None:
        """Fail closed: forget every key at once, so no further request can be opened."""
        self.stopped = reason
        self.keys = KeyStore()

    # -- routes ---------------------------------------------------------------------------------

    async def keys_endpoint(self, request: Request) -> Response:
        return Response(self.keys.encode_configs(), media_type=MEDIA_TYPE_KEYS, headers={"cache-control": "max-age=300"})

    async def compat_keys_endpoint(self, request: Request) -> Response:
        if not self.settings.ohttpy_compat:
            return _compat_disabled()
        return await self.keys_endpoint(request)

    async def respond(self, request: Request, framings: dict[str, Framing], ex: _Exchange) -> "Response | SealedStream":
        """The whole pipeline for one POST; ``ex.close()`` (the caller's) settles afterwards."""
        if framings is COMPAT_FRAMINGS and not self.settings.ohttpy_compat:
            return _compat_disabled()
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        framing = framings.get(media)
        if framing is None:
            return _outer_error(415, "ohttp.bad_media_type", f"expected {' or '.join(framings)}")
        if self.stopped is not None:
            return _outer_error(503, "gateway.stopped", "this worker has stopped serving")
        try:
            opened = await open_request(request, framing, self.keys, self.replay, self.max_request_bytes)
        except VeilError as err:
            return _outer_error(413 if err.reason == "ohttp.too_large" else 400, err.reason, err.message)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except Exception as exc:  # noqa: BLE001 - nothing is decrypted yet; still never a traceback
            log.error("ohttp gateway: unexpected %s while opening a request", type(exc).__name__)
            return _outer_error(500, "gateway.internal_error", "the gateway could not open this request")
        log.info("ohttp request: framing=%s", framing.value)
        try:
            return await self._answer(opened, ex)
        except Refusal as refusal:
            return self._refused(opened, refusal)
        except VeilError as err:
            return self._refused(opened, Refusal.of(err))
        except Exception as exc:  # noqa: BLE001 - RecursionError and the like: answered encrypted
            log.error("ohttp gateway: unexpected %s after decryption; answered encrypted", type(exc).__name__)
            return self._refused(opened, internal_error())

    async def _answer(self, opened: Opened, ex: _Exchange) -> "Response | SealedStream":
        try:
            inner = bhttp.decode_request(opened.plaintext, self.limits)
        except VeilError as err:
            raise Refusal.of(err) from None
        self.replay.check_date(opened.claim, inner.headers)
        ex.admission = self.tenancy.admit(inner)
        ex.upstream = await open_upstream(self.upstream, ex.admission.request)
        status, headers = ex.upstream.status_code, answer_headers(ex.upstream)
        encoder = choose_encoder(opened.sealer, headers, self.padding)
        first = encoder.head(status, headers)
        outer = _outer_status(opened.sealer, status)
        if encoder.streams:
            return SealedStream(outer, opened.sealer.media_type, encoder, first, ex)
        content = await read_whole(ex.upstream, self.limits.max_content_bytes)
        ex.meter.whole(headers, content)
        wire = first + encoder.body(content) + encoder.end()
        return Response(b"".join(wire), status_code=outer, media_type=opened.sealer.media_type)

    def _refused(self, opened: Opened, refusal: Refusal) -> Response:
        status, headers, body = refusal.answer()
        encoder = choose_encoder(opened.sealer, headers, self.padding)
        wire = encoder.head(status, headers) + encoder.body(body) + encoder.end()
        return Response(b"".join(wire), status_code=_outer_status(opened.sealer, status), media_type=opened.sealer.media_type)


def _outer_status(sealer: Sealer, inner: int) -> int:
    # ohttpy reads the status from the outer response: the one inner detail its variant exposes.
    return 200 if sealer.bhttp else inner


def _compat_disabled() -> JSONResponse:
    return _outer_error(404, "gateway.compat_disabled", "this deployment's manifest does not enable ohttpy's variant")


class SealedStream:
    """A streamed answer, sealed chunk by chunk and sent straight to the server's ``send``.

    Every streamed event passes through here, so it takes the fewest hops: one ASGI message per
    engine read (all events that arrived together sealed as one chunk), no generator or
    middleware wrapper of ``send`` in between, and no per-request task group. A client that
    leaves is noticed by one waiting ``receive()`` whose completion cancels the stream (the
    engine's connection is then closed by settle, so the engine stops generating).
    """

    def __init__(self, status: int, media_type: str, encoder: Encoder, first: list[bytes], ex: _Exchange) -> None:
        self.status = status
        self.headers = [(b"content-type", media_type.encode())]
        self.encoder = encoder
        self.first = first
        self.ex = ex
        self.finished = False
        self.client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        watcher = asyncio.ensure_future(receive())

        def on_message(done: "asyncio.Future[Message]") -> None:
            if not self.finished and not done.cancelled() and task is not None:
                self.client_left = True
                task.cancel()

        watcher.add_done_callback(on_message)
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            await send({"type": "http.response.body", "body": b"".join(self.first), "more_body": True})
            end = await self._pump(send)
            self.finished = True
            await send({"type": "http.response.body", "body": end, "more_body": False})
        except asyncio.CancelledError:
            if not self.client_left:
                raise
        finally:
            self.finished = True
            watcher.cancel()

    async def _pump(self, send: Send) -> bytes:
        """Seal and send the engine's body as it arrives; the final chunk's bytes, or — if the
        engine failed mid-answer — nothing more: the client then reports ``chunked.truncated``,
        never a silently short answer."""
        ex, encoder = self.ex, self.encoder
        assert ex.upstream is not None
        try:
            async for piece in answer_body(ex.upstream):
                ex.meter.stream(piece)
                sealed = encoder.body(piece)
                if sealed:
                    body = sealed[0] if len(sealed) == 1 else b"".join(sealed)  # one write per read
                    await send({"type": "http.response.body", "body": body, "more_body": True})
        except httpx.HTTPError:
            log.warning("ohttp stream: the engine failed mid-answer; closing without a final chunk")
            return b""
        except Exception as exc:  # noqa: BLE001 - never a traceback once plaintext exists
            log.error("ohttp stream: unexpected %s mid-answer; closing without a final chunk", type(exc).__name__)
            return b""
        return b"".join(encoder.end())


Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class GatewayApp:
    """The gateway's ASGI app: its four routes, dispatched by path and method.

    Written by hand, in place of Starlette's application and router, because Starlette wraps
    every ``send`` in two middlewares (error and exception handling) that each streamed event
    would pass through; the pipeline already turns every failure into an answer. Any other path
    is a 404 and any other method a 405 (``gateway.not_found``, ``gateway.method_not_allowed``).
    ``state.gateway`` is the :class:`Gateway` (the worker applies newer manifests through it).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.state = SimpleNamespace(gateway=gateway)
        self.routes: dict[str, dict[str, Endpoint]] = {
            GATEWAY_PATH: {"GET": _get(gateway.keys_endpoint), "POST": _PostEndpoint(gateway, STANDARD_FRAMINGS)},
            COMPAT_PATH: {"POST": _PostEndpoint(gateway, COMPAT_FRAMINGS)},
            COMPAT_KEYS_PATH: {"GET": _get(gateway.compat_keys_endpoint)},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets: uvicorn refuses the upgrade
        methods = self.routes.get(scope["path"])
        if methods is None:
            await _outer_error(404, "gateway.not_found", "no such gateway route")(scope, receive, send)
            return
        endpoint = methods.get(scope["method"])
        if endpoint is None:
            refusal = _outer_error(405, "gateway.method_not_allowed", f"use {' or '.join(methods)}")
            refusal.headers["allow"] = ", ".join(methods)
            await refusal(scope, receive, send)
            return
        await endpoint(scope, receive, send)


def _get(handler: Callable[[Request], Awaitable[Response]]) -> Endpoint:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await (await handler(Request(scope, receive)))(scope, receive, send)

    return endpoint


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _PostEndpoint:
    """The ASGI app of one POST route: runs the pipeline, sends the answer, then settles."""

    def __init__(self, gateway: Gateway, framings: dict[str, Framing]) -> None:
        self.gateway = gateway
        self.framings = framings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = _Exchange()
        try:
            response = await self.gateway.respond(Request(scope, receive), self.framings, ex)
            await response(scope, receive, send)
        finally:
            await ex.close()


def create_gateway_app(
    keys: KeyStore,
    upstream: httpx.AsyncBaseTransport,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    limits: bhttp.Limits = bhttp.DEFAULT_LIMITS,
    manifest: Manifest | None = None,
    engine: str | None = None,
    tenants: list[TenantEntry] | None = None,
    padding: PaddingSettings | None = None,
    settings: GatewaySettings | None = None,
    tenant_salt_secret: bytes | None = None,
    shared: SharedState | None = None,
) -> GatewayApp:
    """Build the gateway ASGI app. ``upstream`` is the transport to the engine: an
    :class:`~veil.worker.engine_link.EngineLink` on its Unix socket (or, in tests, an
    ``httpx.ASGITransport`` around an in-process engine).

    ``manifest`` supplies ``tenants``, ``padding`` and the gateway ``settings`` (explicit arguments
    win); ``engine`` names the engine behind ``upstream`` (per-tenant ``cache_salt`` goes only to
    engines that take it, vLLM). ``tenant_salt_secret`` keys the prefix-cache salts; by default a
    fresh random one per worker. No tenants: no API key is required. ``shared`` is the worker's
    table of replay entries and tenant buckets (``veil.worker.pool`` gives every gateway process
    the same one); by default a table of this gateway's own.
    """
    if shared is None:
        shared = SharedState.create(DEFAULT_CAPACITY)
    if tenants is None:
        tenants = manifest.tenants if manifest is not None else []
    if padding is None:
        padding = (manifest.padding if manifest is not None else None) or PaddingSettings()
    if settings is None:
        settings = (manifest.gateway if manifest is not None else None) or GatewaySettings()
    tenancy = Tenancy(tenants, salt_secret=tenant_salt_secret, engine=engine, shared=shared)
    gw = Gateway(
        keys,
        upstream,
        tenancy=tenancy,
        padding=padding,
        settings=settings,
        limits=limits,
        max_request_bytes=max_request_bytes,
        shared=shared,
    )
    return GatewayApp(gw)
