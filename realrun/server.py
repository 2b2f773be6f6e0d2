"""The worker's HTTP API (aiohttp), shaped like an SGLang server so ``sglang-router`` fronts it unchanged.

Endpoints: ``POST /generate`` and ``POST /v1/completions`` (JSON or SSE streams), ``GET /health``
(200 while the engine thread runs), ``GET /server_info`` and ``GET /model_info`` (also under their
``/get_*`` names; the router reads both when it registers a worker), ``GET /v1/models``, ``GET
/metrics`` (Prometheus text) and ``POST /flush_cache`` (drops the prefix cache's pages that no
request holds; a no-op without one). Every error is a JSON body ``{"error": {"message", "type",
"code"}}`` — unknown routes, wrong methods and oversized bodies included. A stream that fails
after it started ends with one ``data: {"error": ...}`` event and no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from pdplan.profiles.model_spec import ModelSpec
from pdplan.realrun.metrics import WorkerMetrics
from pdplan.realrun.protocol import (
    GenerateRequest,
    Limits,
    RequestError,
    chat_messages,
    parse_chat,
    parse_completion,
    parse_generate,
)
from pdplan.realrun.responses import (
    SSE_DONE,
    chat_body,
    chat_chunk,
    completion_body,
    completion_chunk,
    error_body,
    generate_body,
    sse,
    usage_body,
)
from pdplan.realrun.service import Output, ServiceError, WorkerService
from pdplan.realrun.tokenizer import Tokenizer, plain_chat_prompt
from pdplan.realrun.worker_config import WorkerConfig

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 32 * 1024 * 1024
#: Longest a client may take to send a request body (slow clients must not hold a worker).
BODY_TIMEOUT_S = 10.0
#: What a 503 tells the client to wait before retrying.
RETRY_AFTER_S = 1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(message: str, status: int, kind: str) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return web.json_response(error_body(message, status, kind), status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers, and any unexpected failure, as JSON errors too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.reason or "error", exc.status, "http_error")
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # a bug must still answer JSON, and say so in the log
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(f"internal error: {type(exc).__name__}", 500, "internal_error")


class _StreamText:
    """Text of a growing output: cumulative (SGLang) and the new part (OpenAI deltas)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids)
        delta = full[len(self.text) :] if full.startswith(self.text) else full
        self.text = full
        return delta


class WorkerServer:
    """Routes HTTP requests to ``service`` and formats its outputs."""

    def __init__(
        self,
        config: WorkerConfig,
        spec: ModelSpec,
        service: WorkerService,
        tokenizer: Tokenizer,
        limits: Limits,
        metrics: WorkerMetrics,
        model_path: str,
    ) -> None:
        self.config, self.spec, self.service = config, spec, service
        self.tokenizer, self.limits, self.metrics = tokenizer, limits, metrics
        self.model_path = model_path
        self.model_name = spec.name or Path(model_path).stem
        self.started_at = time.time()
        self.body_timeout_s = BODY_TIMEOUT_S
        self.shutting_down = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health)
        for path in ("/server_info", "/get_server_info"):
            app.router.add_get(path, self.server_info)
        for path in ("/model_info", "/get_model_info"):
            app.router.add_get(path, self.model_info)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/get_load", self.load)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_post("/flush_cache", self.flush_cache)
        return app

    # --- info -----------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        if self.shutting_down or not self.service.engine.alive:
            return _error("worker is not serving (engine stopped or shutting down)", 503, "unhealthy")
        return web.Response(status=200)

    async def server_info(self, _request: web.Request) -> web.Response:
        steps = self.metrics.recent_steps()
        return web.json_response(
            {
                **self.config.to_dict(),
                "model_path": self.model_path,
                "tokenizer_path": self.tokenizer.name,
                "disaggregation_mode": self.config.disaggregation_mode,
                "disaggregation_bootstrap_port": self.config.bootstrap_port,
                "tp_size": 1,
                "dp_size": 1,
                "kv_bytes_per_token": self.service.executor.spec.kv_bytes_per_token(
                    self.service.executor.dtype_name
                ),
                "version": "pdplan",
                "uptime_s": time.time() - self.started_at,
                "internal_states": [
                    {
                        "queue_length": self.service.waiting,
                        "running_batch": self.service.engine.running_count,
                        "kv_used_tokens": self.service.budget.used_tokens,
                        "recent_decode_steps": [
                            {
                                "batch_size": st.batch_size,
                                "context_tokens": st.context_tokens,
                                "step_ms": st.step_ms,
                                "start_s": st.start_s,
                                "running_after": st.running_after,
                                "cpu_ms": st.cpu_ms,
                            }
                            for st in steps
                        ],
                        "recent_prefill_batches": [
                            {
                                "new_tokens": list(pf.new_tokens),
                                "prior_tokens": list(pf.prior_tokens),
                                "step_ms": pf.step_ms,
                                "cpu_ms": pf.cpu_ms,
                                "start_s": pf.start_s,
                                "decode_batch": pf.decode_batch,
                                "decode_context": pf.decode_context,
                            }
                            for pf in self.metrics.recent_prefills()
                        ],
                    }
                ],
            }
        )

    async def model_info(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_path": self.model_path,
                "tokenizer_path": None if self.tokenizer.name == "bytes" else self.tokenizer.name,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "random" if self.config.weights is None else "default",
                "model_type": self.spec.model_type,
                "max_context_length": self.limits.max_total_tokens,
            }
        )

    async def models(self, _request: web.Request) -> web.Response:
        card = {"id": self.model_name, "object": "model", "owned_by": "pdplan", "root": self.model_path}
        return web.json_response(
            {"object": "list", "data": [{**card, "max_model_len": self.limits.max_total_tokens}]}
        )

    async def load(self, _request: web.Request) -> web.Response:
        """SGLang's ``/get_load`` (one entry per data-parallel rank): what sglang-router's
        ``power_of_two`` policy reads to pick the less loaded worker."""
        running = self.service.engine.running_count
        waiting = self.service.waiting
        return web.json_response(
            [
                {
                    "dp_rank": 0,
                    "num_reqs": running + waiting,
                    "num_waiting_reqs": waiting,
                    "num_tokens": self.service.budget.used_tokens,
                }
            ]
        )

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def flush_cache(self, _request: web.Request) -> web.Response:
        prefix = self.service.engine.prefix_cache
        if prefix is None:
            return web.Response(status=200, text="no prefix cache to flush")
        freed = prefix.evict(prefix.cached_tokens)
        return web.Response(status=200, text=f"flushed {freed} cached tokens")

    # --- generation -------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> Any:
        try:
            raw = await asyncio.wait_for(request.read(), self.body_timeout_s)
        except TimeoutError:
            raise RequestError(f"request body not received within {self.body_timeout_s:g} s", 408) from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(f"request body is not valid JSON: {err}") from None
        except RecursionError:
            raise RequestError("request body is nested too deeply") from None

    def _encode(self) -> Callable[[str], list[int]]:
        def encode(text: str) -> list[int]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise RequestError(
                    f"text is not valid Unicode ({err.reason} at position {err.start}, e.g. a lone surrogate)"
                ) from None
            return self.tokenizer.encode(text)

        return encode

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.shutting_down:
                raise ServiceError("worker is shutting down", 503, "shutting_down")
            reqs = parse_generate(await self._body(request), self.limits, self._encode())
        except RequestError as err:
            self.metrics.inc("requests_total", label="rejected")
            return _error(err.message, err.status, "bad_request")
        except ServiceError as err:
            self.metrics.inc("requests_total", label="rejected")
            return _error(err.message, err.status, err.kind)
        if len(reqs) == 1:
            return await self._serve(request, reqs[0])
        results = await asyncio.gather(*(self._collect(r) for r in reqs))
        for result in results:
            if isinstance(result, web.Response):
                return result
        return web.json_response(results)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.shutting_down:
                raise ServiceError("worker is shutting down", 503, "shutting_down")
            req = parse_completion(await self._body(request), self.limits, self._encode())
        except RequestError as err:
            self.metrics.inc("requests_total", label="rejected")
            return _error(err.message, err.status, "bad_request")
        except ServiceError as err:
            self.metrics.inc("requests_total", label="rejected")
            return _error(err.message, err.status, err.kind)
        return await self._serve(request, req)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.shutting_down:
                raise ServiceError("worker is shutting down", 503, "shutting_down")
            body = await self._body(request)
            messages = chat_messages(body)
            template = getattr(self.tokenizer, "chat_prompt", plain_chat_prompt)
            req = parse_chat(body, template(messages), self.limits, self._encode())
        except RequestError as err:
            self.metrics.inc("requests_total", label="rejected")
            return _error(err.message, err.status, "bad_request")
        except ServiceError as err:
            self.metrics.inc("requests_total", label="rejected")
            return _error(err.message, err.status, err.kind)
        return await self._serve(request, req)

    def _fail(self, err: ServiceError, started: bool) -> web.Response:
        rejected = not started and (err.status < 500 or err.kind == "overloaded")
        self.metrics.inc("requests_total", label="rejected" if rejected else "error")
        return _error(err.message, err.status, err.kind)

    async def _collect(self, req: GenerateRequest) -> dict[str, Any] | web.Response:
        """A whole (non-streamed) output as its reply body, or the error response."""
        outputs: list[Output] = []
        gen = self.service.generate(req)
        try:
            async for out in gen:
                outputs.append(out)
        except ServiceError as err:
            return self._fail(err, bool(outputs))
        finally:
            await gen.aclose()
        self.metrics.inc("requests_total", label="ok")
        return self._final_body(req, outputs)

    def _final_body(self, req: GenerateRequest, outputs: list[Output]) -> dict[str, Any]:
        ids = [o.token for o in outputs]
        text = self.tokenizer.decode(ids)
        last = outputs[-1]
        if req.api == "completions":
            model = req.model or self.model_name
            cached = last.timeline.cached_tokens
            return completion_body(req.rid, model, len(req.input_ids), len(ids), text, last.finish, cached)
        if req.api == "chat":
            model = req.model or self.model_name
            cached = last.timeline.cached_tokens
            return chat_body(req.rid, model, len(req.input_ids), len(ids), text, last.finish, cached)
        return generate_body(req.rid, len(req.input_ids), ids, text, last.finish, last.timeline)

    async def _serve(self, request: web.Request, req: GenerateRequest) -> web.StreamResponse:
        if not req.stream:
            result = await self._collect(req)
            return result if isinstance(result, web.Response) else web.json_response(result)
        gen = self.service.generate(req)
        try:
            try:
                first = await gen.__anext__()
            except ServiceError as err:
                return self._fail(err, started=False)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            await self._stream(response, req, first, gen)
            return response
        finally:
            await gen.aclose()

    async def _stream(
        self, response: web.StreamResponse, req: GenerateRequest, first: Output, gen: Any
    ) -> None:
        text = _StreamText(self.tokenizer)
        model = req.model or self.model_name
        out = first
        first.timeline.first_token_sent = time.time()
        try:
            while True:
                delta = text.add(out.token)
                if req.api == "completions":
                    await response.write(sse(completion_chunk(req.rid, model, delta, out.finish)))
                elif req.api == "chat":
                    first_chunk = len(text.ids) == 1
                    await response.write(sse(chat_chunk(req.rid, model, delta, out.finish, first_chunk)))
                else:
                    body = generate_body(
                        req.rid, len(req.input_ids), text.ids, text.text, out.finish, out.timeline
                    )
                    await response.write(sse(body))
                if out.finish is not None:
                    break
                out = await gen.__anext__()
            if req.api in ("completions", "chat") and req.include_usage:
                n, p = len(text.ids), len(req.input_ids)
                usage = usage_body(p, n, out.timeline.cached_tokens)
                if req.api == "chat":
                    await response.write(sse(chat_chunk(req.rid, model, "", None, usage=usage)))
                else:
                    chunk = completion_chunk(req.rid, model, "", None, usage) | {"choices": []}
                    await response.write(sse(chunk))
            await response.write(SSE_DONE)
            self.metrics.inc("requests_total", label="ok")
        except ServiceError as err:
            self.metrics.inc("requests_total", label="error")
            payload = error_body(err.message, err.status, err.kind)
            payload["meta_info"] = {"id": req.rid, "finish_reason": {"type": "abort", "message": err.message}}
            with contextlib.suppress(ConnectionResetError):  # the client may be gone as well
                await response.write(sse(payload))
        except (ConnectionResetError, StopAsyncIteration) as err:
            log.info("stream of %s ended early: %r", req.rid, err)
            self.metrics.inc("requests_total", label="error")
