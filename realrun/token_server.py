"""A trivial token-streaming server for testing and timing the benchmark client.

``python -m pdplan.realrun.token_server --port 0 [--first-token-ms F] [--token-ms T]`` answers
SGLang's ``/generate`` and OpenAI's ``/v1/completions`` and ``/v1/chat/completions`` with exactly
the requested number of tokens (``max_new_tokens`` / ``max_tokens``), the first after ``F`` ms and
then one every ``T`` ms, each event stamped with ``sent_s`` = ``time.perf_counter()`` just before
it is written. On Linux ``perf_counter`` is ``CLOCK_MONOTONIC``, shared by every process of the
machine, so a client on the same host can measure how late it timestamps what it receives.
Binds 127.0.0.1; prints ``port N`` once listening. No model: nothing is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web


def _json_error(message: str, status: int) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return web.json_response(body, status=status)


def make_app(first_token_s: float = 0.0, token_s: float = 0.0) -> web.Application:
    """The aiohttp app; ``first_token_s`` / ``token_s`` are the delays described above."""

    async def stream(request: web.Request, api: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _json_error("body is not JSON", 400)
        if not isinstance(body, dict):
            return _json_error("body must be a JSON object", 400)
        if api == "generate":
            prompt = body.get("input_ids") or []
            n = (body.get("sampling_params") or {}).get("max_new_tokens", 16)
        else:
            prompt = body.get("prompt") if api == "completions" else body.get("messages")
            n = body.get("max_tokens", 16)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1_000_000:
            return _json_error(f"max tokens {n!r}; expected an integer in [1, 1000000]", 400)
        prompt_tokens = len(prompt) if isinstance(prompt, list) else 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = time.perf_counter()
        for i in range(n):
            due = start + first_token_s + i * token_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(_event(api, i, n, prompt_tokens))
        if api != "generate":
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            }
            await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def generate(request: web.Request) -> web.StreamResponse:
        return await stream(request, "generate")

    async def completions(request: web.Request) -> web.StreamResponse:
        return await stream(request, "completions")

    async def chat(request: web.Request) -> web.StreamResponse:
        return await stream(request, "chat")

    app = web.Application()
    app.router.add_post("/generate", generate)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    return app


def _event(api: str, i: int, n: int, prompt_tokens: int) -> bytes:
    last = i == n - 1
    payload: dict[str, Any]
    if api == "generate":
        finish = {"type": "length", "length": n} if last else None
        payload = {
            "text": "x" * (i + 1),
            "output_ids": [7] * (i + 1),
            "meta_info": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": i + 1,
                "finish_reason": finish,
            },
        }
    elif api == "completions":
        payload = {"choices": [{"index": 0, "text": "x", "finish_reason": "length" if last else None}]}
    else:
        payload = {
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length" if last else None}]
        }
    payload["sent_s"] = time.perf_counter()
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first-token-ms", type=float, default=0.0)
    parser.add_argument("--token-ms", type=float, default=0.0)
    args = parser.parse_args(argv)

    async def serve() -> None:
        runner = web.AppRunner(make_app(args.first_token_ms / 1000, args.token_ms / 1000), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(f"port {port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
