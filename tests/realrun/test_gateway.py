"""The gateway in front of the router: every upstream error reaches the client as one JSON body with
the upstream's status (503 with Retry-After), also when the router sent it as an event stream."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("aiohttp")

from aiohttp import ClientSession, web
from realrun_helpers import free_port

from pdplan.realrun.gateway import Gateway, _error_text, parse_args

NESTED_SSE = (
    b'data: {"error": {"message": "{\\"error\\": {\\"message\\": '
    b'\\"KV hand-off connection failed: [Errno 32] Broken pipe\\"}}"}}\n\n'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "worker overloaded"}}', "worker overloaded"),
        (NESTED_SSE, "KV hand-off connection failed: [Errno 32] Broken pipe"),
        (b"Bad Gateway", "Bad Gateway"),
        (b"", "upstream error"),
        (b"data: [DONE]\n\n", "upstream error"),
    ],
    ids=["json", "nested-sse", "plain", "empty", "sse-done-only"],
)
def test_error_text_unwraps_what_routers_send(body: bytes, message: str) -> None:
    assert _error_text(body) == message


async def _upstream(status: int, body: bytes, content_type: str) -> web.AppRunner:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/generate", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


@pytest.mark.parametrize(
    ("status", "body", "content_type", "want_status"),
    [
        (502, NESTED_SSE, "text/event-stream", 502),
        (503, b"data: busy\n\n", "text/event-stream", 503),
        (429, b"Too Many Requests", "text/plain", 503),
        (503, b'{"error": {"message": "full", "code": 503}}', "application/json", 503),
    ],
    ids=["sse-502", "sse-503", "plain-429", "json-503"],
)
def test_upstream_errors_reach_the_client_as_json(
    status: int, body: bytes, content_type: str, want_status: int
) -> None:
    async def scenario() -> tuple[int, dict[str, str], bytes]:
        upstream = await _upstream(status, body, content_type)
        up_port, gw_port = free_port(), free_port()
        await web.TCPSite(upstream, "127.0.0.1", up_port).start()
        gateway = Gateway(parse_args(["--port", str(gw_port), "--router", f"http://127.0.0.1:{up_port}"]))
        runner = web.AppRunner(gateway.app(1024 * 1024))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", gw_port).start()
        try:
            async with ClientSession() as client:
                reply = await client.post(
                    f"http://127.0.0.1:{gw_port}/generate", json={"text": "hi", "stream": True}
                )
                return reply.status, dict(reply.headers), await reply.read()
        finally:
            await runner.cleanup()
            await upstream.cleanup()

    got, headers, raw = asyncio.run(scenario())
    assert got == want_status
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["error"]["message"]
    assert (headers.get("Retry-After") == "1") == (want_status == 503)
