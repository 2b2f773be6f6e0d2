"""``python -m pdplan.realrun.gateway``: the deployment's front door, ahead of ``sglang-router``.

sglang-router 0.3.2 does the routing (PD pairing, bootstrap rooms, retries) but leaves what a
service owes its clients to the workers behind it, and some of it cannot be done there. The
gateway, on the deployment's public port, adds exactly that and forwards everything else:

- **Overload before work**: at most ``--max-inflight`` generation requests are in flight (the
  deployment's capacity: running batches plus queues); one more gets ``503`` with ``Retry-After`` at
  once, before the router pairs it with a prefill and a decode worker.
- **Streams end explicitly**: when the router's stream breaks off before its terminal event (a
  worker died mid-stream; the router just cuts the connection), the client gets one
  ``data: {"error": ...}`` event, like every other failure of a stream, and no ``[DONE]``.
- **Hostile clients**: bodies over ``--max-body-bytes`` get ``413``; bodies that are not JSON, nest
  too deeply or carry text that is not valid Unicode (lone surrogates) get ``400`` JSON before
  reaching the router; header and body read times and open connections are bounded
  (:mod:`conn_guard`); every error is a JSON body.
- **One place to look**: ``GET /metrics`` serves the gateway's own counters (prometheus_client),
  then the router's Prometheus text (``--router-metrics``), then every worker's, so one scrape of
  the public port sees the whole deployment; ``/v1/models`` names the model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import ClientError, ClientResponse, ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from pdplan.realrun.conn_guard import ConnectionGuard
from pdplan.realrun.responses import error_body, sse

log = logging.getLogger("pdplan.realrun.gateway")
GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")
PASS_PATHS = ("/health", "/readiness", "/liveness", "/get_server_info", "/get_model_info", "/server_info")
MAX_JSON_DEPTH = 64
MAX_ERROR_BODY_BYTES = 64 * 1024


def _error(message: str, status: int, kind: str) -> web.Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(error_body(message, status, kind), status=status, headers=headers)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping once it passes ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def check_body(raw: bytes) -> None:
    """A generation body must be a JSON object of bounded depth whose strings are valid Unicode.

    Raises:
        ValueError: with the reason, answered as 400.
    """
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ValueError("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ValueError("request body: expected a JSON object")
    if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"request body holds text that is not valid Unicode ({err.reason}, e.g. a lone surrogate)"
        ) from None


def _is_json_error(body: bytes) -> bool:
    """Whether an upstream error body is already a JSON object with an ``error`` field."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and "error" in parsed


async def _read_bounded(upstream: ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes (an error body; the rest is dropped)."""
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(ClientError, asyncio.IncompleteReadError, ConnectionError):
        while size < limit and (chunk := await upstream.content.read(limit - size)):
            parts.append(chunk)
            size += len(chunk)
    return b"".join(parts)


def _error_text(body: bytes) -> str:
    """The message of an upstream error body: JSON or SSE ``data:`` lines, however nested."""
    text = body.decode("utf-8", "replace").strip()
    lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    text = " ".join(line for line in lines if line != "[DONE]") if lines else text
    for _ in range(8):  # unwrap {"error": {"message": ...}} layers, as routers nest them
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            break
        inner = parsed.get("error", parsed.get("message")) if isinstance(parsed, dict) else None
        if isinstance(inner, dict):
            inner = inner.get("message", inner)
        if inner is None:
            break
        text = inner if isinstance(inner, str) else json.dumps(inner)
    return text[:500] or "upstream error"


class Gateway:
    def __init__(self, args: argparse.Namespace) -> None:
        self.router = args.router.rstrip("/")
        self.router_metrics = args.router_metrics
        self.worker_urls: list[str] = [u.rstrip("/") for u in args.worker_urls]
        self.model_name = args.model_name
        self.max_inflight = args.max_inflight
        self.body_timeout_s = args.body_timeout_s
        self.inflight = 0
        self.session: ClientSession | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pdplan_gateway_requests", "Generation requests by outcome.", ["outcome"], registry=self.registry
        )
        self.cut_streams = Counter(
            "pdplan_gateway_cut_streams",
            "Streams the router broke off, ended with an error event.",
            registry=self.registry,
        )
        Gauge(
            "pdplan_gateway_inflight", "Generation requests in flight.", registry=self.registry
        ).set_function(lambda: self.inflight)

    def app(self, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._json_errors])
        for path in GENERATION_PATHS:
            app.router.add_post(path, self.generate)
        for path in PASS_PATHS:
            app.router.add_get(path, self.passthrough)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None, sock_connect=5)
        )

    async def _stop(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.reason or "error", exc.status, "http_error")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return _error(f"internal error: {type(exc).__name__}", 500, "internal_error")

    async def passthrough(self, request: web.Request) -> web.Response:
        assert self.session is not None
        try:
            async with self.session.get(f"{self.router}{request.path}", timeout=ClientTimeout(total=10)) as r:
                body = await r.read()
                return web.Response(status=r.status, body=body, content_type=r.content_type)
        except (ClientError, TimeoutError) as err:
            return _error(f"router unreachable: {err}", 503, "unavailable")

    async def models(self, _request: web.Request) -> web.Response:
        card = {"id": self.model_name, "object": "model", "owned_by": "pdplan", "root": self.model_name}
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, _request: web.Request) -> web.Response:
        assert self.session is not None
        parts = [generate_latest(self.registry).decode()]
        for url in ([self.router_metrics] if self.router_metrics else []) + [
            f"{w}/metrics" for w in self.worker_urls
        ]:
            try:
                async with self.session.get(url, timeout=ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        parts.append(f"# from {url}\n{await r.text()}")
            except (ClientError, TimeoutError):
                parts.append(f"# {url} unreachable\n")
        return web.Response(text="\n".join(parts), content_type="text/plain", charset="utf-8")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        if self.inflight >= self.max_inflight:
            self.requests.labels("overloaded").inc()
            return _error(
                f"deployment at capacity ({self.inflight} requests in flight); retry later", 503, "overloaded"
            )
        self.inflight += 1
        try:
            try:
                raw = await asyncio.wait_for(request.read(), self.body_timeout_s)
            except TimeoutError:
                self.requests.labels("bad_request").inc()
                return _error(f"request body not received within {self.body_timeout_s:g} s", 408, "timeout")
            try:
                check_body(raw)
            except ValueError as err:
                self.requests.labels("bad_request").inc()
                return _error(str(err), 400, "bad_request")
            return await self._forward(request, raw)
        finally:
            self.inflight -= 1

    async def _forward(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        assert self.session is not None
        headers = {"Content-Type": "application/json"}
        try:
            upstream = await self.session.post(f"{self.router}{request.path}", data=raw, headers=headers)
        except (ClientError, TimeoutError) as err:
            self.requests.labels("unavailable").inc()
            return _error(f"router unreachable: {err}", 503, "unavailable")
        async with upstream:
            streamed = upstream.content_type == "text/event-stream"
            if upstream.status >= 400:
                # An error is answered as one JSON body, also when the router sent it as an event
                # stream (it does so for a failed streamed request): never a 5xx with SSE text.
                body = await _read_bounded(upstream, MAX_ERROR_BODY_BYTES)
                overloaded = upstream.status in (429, 503)
                self.requests.labels("overloaded" if overloaded else "error").inc()
                status = 503 if upstream.status == 429 else upstream.status
                if streamed or not _is_json_error(body):
                    kind = "overloaded" if overloaded else "upstream_error"
                    return _error(_error_text(body), status, kind)
                return web.Response(
                    status=status,
                    body=body,
                    content_type="application/json",
                    headers={"Retry-After": "1"} if status == 503 else None,
                )
            if not streamed:
                body = await upstream.read()
                self.requests.labels("ok").inc()
                return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            )
            await response.prepare(request)
            ended = False
            try:
                async for line in upstream.content:
                    stripped = line.strip()
                    if stripped == b"data: [DONE]" or stripped.startswith(b'data: {"error"'):
                        ended = True
                    await response.write(line)
            except (ClientError, asyncio.IncompleteReadError, ConnectionError) as err:
                log.warning("stream from the router broke off: %r", err)
            if not ended:
                self.cut_streams.inc()
                self.requests.labels("cut").inc()
                payload = error_body(
                    "the stream broke off upstream (a worker stopped mid-request); output is incomplete",
                    502,
                    "stream_interrupted",
                )
                with_info = payload | {"meta_info": {"finish_reason": {"type": "abort"}}}
                with contextlib.suppress(ConnectionResetError):  # the client may be gone too
                    await response.write(sse(with_info))
            else:
                self.requests.labels("ok").inc()
            return response


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pdplan.realrun.gateway", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--router", required=True, help="URL of sglang-router behind the gateway")
    p.add_argument("--router-metrics", default="", help="URL of the router's Prometheus metrics")
    p.add_argument("--worker-urls", nargs="*", default=[], help="workers whose /metrics to include")
    p.add_argument("--model-name", default="model")
    p.add_argument("--max-inflight", type=int, default=256, help="generation requests in flight (503 beyond)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--max-connections", type=int, default=1024)
    p.add_argument("--header-timeout-s", type=float, default=10.0)
    p.add_argument("--body-timeout-s", type=float, default=10.0)
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    if args.max_inflight < 1 or args.max_body_bytes < 1024 or args.max_connections < 1:
        p.error("--max-inflight, --max-connections must be ≥ 1 and --max-body-bytes ≥ 1024")
    return args


async def serve(args: argparse.Namespace) -> None:
    gateway = Gateway(args)
    runner = web.AppRunner(gateway.app(args.max_body_bytes), access_log=None, keepalive_timeout=75.0)
    await runner.setup()
    loop = asyncio.get_running_loop()
    assert runner.server is not None
    guard = ConnectionGuard(runner.server, loop, args.max_connections, args.header_timeout_s)
    http = await loop.create_server(guard, args.host, args.port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("gateway on http://%s:%d -> %s", args.host, args.port, args.router)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            if args.parent_pid is not None and os.getppid() != args.parent_pid:
                break
    http.close()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
