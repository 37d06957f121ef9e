"""The provider's HTTP API (FastAPI): what a real OpenAI-compatible provider shows, nothing more.

Public: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``,
``POST /v1/chat/completions``, ``POST /v1/moderations`` (with ``--moderation FILE``; see
moderation.py, also for what a blocked request gets) (and ``/openapi.json``). Operator only
(admin key, not in the OpenAPI schema): ``POST /admin/swap``, ``POST /admin/keys/{label}/revoke``
(the key gets 401 from its next request on), ``GET|POST /admin/logit_bias_mode``,
``GET|POST /admin/limits``, ``GET /admin/log``, ``GET /admin/stats``.

Nothing here exposes the weights, hidden states, gradients or the model's configuration:
a client learns the served name, the text, the logprobs and the token counts, as from
OpenAI. The context length shows only in the ``context_length_exceeded`` error, as there.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from glassbox.provider import moderation as mod
from glassbox.provider.chat import chat_prompt
from glassbox.provider.engine import Engine, EngineBusy, Job, SamplingParams, Sequence, choice_seed
from glassbox.provider.errors import APIError, install_error_handlers
from glassbox.provider.gatekeeper import Gatekeeper, KeyStore
from glassbox.provider.ratelimit import RateLimiter
from glassbox.provider.requestlog import RequestLog
from glassbox.provider.responses import (
    PromptEcho,
    chat_choice,
    chat_logprob_entries,
    completion_choice,
    completion_logprobs,
    completion_tokens,
    created,
    new_id,
    sse,
    usage,
)
from glassbox.provider.schemas import ChatCompletionRequest, CompletionRequest, LimitsRequest, LogitBiasModeRequest, SwapRequest
from glassbox.provider.settings import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    LOGIT_BIAS_MODES,
    MAX_CHOICES,
    MAX_STOP_CHARS,
)
from glassbox.provider.variants import FingerprintRequest

MODEL_CREATED = 1717200000  #: the "created" time /v1/models shows (a fixed date, like a provider's)
DISCONNECT_POLL_SECONDS = 1.0
_TOKEN_ID = re.compile(r"^[0-9]{1,9}$")


class ProviderState:
    """What the routes share: the engine, the served name, the limits and the logit_bias mode."""

    def __init__(self, engine: Engine, served_name: str, limiter: RateLimiter, log: RequestLog | None,
                 logit_bias_mode: str, moderation: mod.Policy | None = None) -> None:
        self.moderation = moderation  #: the operator's moderation policy (moderation.py), or None
        self.engine = engine
        self.served_name = served_name
        self.limiter = limiter
        self.log = log
        self.logit_bias_mode = logit_bias_mode
        self.fingerprint: str | None = None  #: of the served weights (variants.system_fingerprint); set at start and on a swap
        self.fingerprint_shown = True  #: the operator's choice (POST /admin/system_fingerprint)

    def shown_fingerprint(self) -> str | None:
        """``system_fingerprint`` as clients see it: the served weights' fingerprint, or ``None`` (JSON null)
        when the operator hides it. Null, not a constant: OpenAI documents the field as nullable, and a
        constant would falsely tell clients that the backend never changes."""
        return self.fingerprint if self.fingerprint_shown else None


async def refresh_fingerprint(state: ProviderState) -> str:
    """Recompute the served weights' fingerprint (a digest of every weight, off the event loop)."""
    from glassbox.provider.variants import system_fingerprint, weights_digest

    engine = state.engine
    name, variant, model = engine.base_name, engine.variant, engine.model
    state.fingerprint = system_fingerprint(name, variant, await asyncio.to_thread(weights_digest, model))
    return state.fingerprint


def create_app(engine: Engine, *, keys: KeyStore, served_name: str, limiter: RateLimiter, log: RequestLog | None,
               logit_bias_mode: str, moderation: mod.Policy | None = None) -> FastAPI:
    """The ASGI app. The engine's worker starts with the app and stops with it."""
    state = ProviderState(engine, served_name, limiter, log, logit_bias_mode, moderation)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        await refresh_fingerprint(state)
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="Glass Box provider",
        version="1.0",
        description="An OpenAI-compatible provider serving one model under a provider-style name.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.provider = state
    install_error_handlers(app)
    app.add_middleware(Gatekeeper, keys=keys, log=log, limiter=limiter)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_object(state)]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        _check_model(state, model_id, param=None)
        return _model_object(state)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await _completions(state, body, request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await _chat(state, body, request)

    from glassbox.provider import responses_api  # POST /v1/responses, in its own module

    responses_api.register(app, state)

    @app.post("/v1/moderations")
    async def create_moderation(request: Request) -> dict[str, Any]:
        if state.moderation is None:
            raise APIError(404, "This provider runs without a moderation policy (the operator starts it with --moderation FILE).",
                           code="moderation_not_enabled")
        texts, model, problem = mod.moderation_inputs(await request.json())
        if problem is not None:
            raise APIError(400, problem, param="input" if "input" in problem else None, code="invalid_value")
        if model is not None and model != state.moderation.model:
            raise APIError(404, f"The model `{model[:80]}` does not exist or you do not have access to it.", param="model",
                           code="model_not_found")
        return mod.moderation_response(state.moderation, texts)

    # ----- operator controls (admin key) -----------------------------------------------------

    @app.post("/admin/keys/{label}/revoke", include_in_schema=False)
    async def revoke_key(label: str) -> dict[str, Any]:
        if not keys.revoke(label):
            raise APIError(404, f"No learner key is labelled {label[:70]!r} (labels are in the request log's key_id).",
                           param="label", code="key_not_found")
        return {"object": "admin.key", "id": label, "revoked": True}

    @app.post("/admin/swap", include_in_schema=False)
    async def swap(body: SwapRequest) -> dict[str, Any]:
        from glassbox.loader import ModelLoadError

        try:
            described = await asyncio.wrap_future(engine.request_swap(body.variant))
        except ModelLoadError as error:
            raise APIError(400, f"Cannot swap to {body.variant!r}: {error}", param="variant", code="invalid_value") from None
        await refresh_fingerprint(state)
        return {"object": "admin.swap", **described, "system_fingerprint": state.fingerprint}

    @app.get("/admin/logit_bias_mode", include_in_schema=False)
    async def get_mode() -> dict[str, Any]:
        return {"object": "admin.logit_bias_mode", "mode": state.logit_bias_mode, "modes": list(LOGIT_BIAS_MODES)}

    @app.post("/admin/logit_bias_mode", include_in_schema=False)
    async def set_mode(body: LogitBiasModeRequest) -> dict[str, Any]:
        state.logit_bias_mode = body.mode
        return {"object": "admin.logit_bias_mode", "mode": state.logit_bias_mode, "modes": list(LOGIT_BIAS_MODES)}

    @app.get("/admin/limits", include_in_schema=False)
    async def get_limits() -> dict[str, Any]:
        return {"object": "admin.limits", "rpm": limiter.rpm, "tpm": limiter.tpm}

    @app.post("/admin/limits", include_in_schema=False)
    async def set_limits(body: LimitsRequest) -> dict[str, Any]:
        limiter.set_limits(body.rpm, body.tpm)
        return {"object": "admin.limits", "rpm": limiter.rpm, "tpm": limiter.tpm}

    @app.get("/admin/system_fingerprint", include_in_schema=False)
    async def get_fingerprint() -> dict[str, Any]:
        return {"object": "admin.system_fingerprint", "shown": state.fingerprint_shown, "system_fingerprint": state.fingerprint}

    @app.post("/admin/system_fingerprint", include_in_schema=False)
    async def set_fingerprint(body: FingerprintRequest) -> dict[str, Any]:
        state.fingerprint_shown = body.shown
        return {"object": "admin.system_fingerprint", "shown": state.fingerprint_shown, "system_fingerprint": state.fingerprint}

    @app.get("/admin/log", include_in_schema=False)
    async def read_log(limit: int | None = Query(None, ge=1, le=1_000_000)) -> dict[str, Any]:
        entries = await asyncio.to_thread(log.read, limit) if log is not None else []
        return {"object": "list", "data": entries}

    @app.get("/admin/stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        return {"object": "admin.stats", **engine.stats(), **engine.describe(), "logit_bias_mode": state.logit_bias_mode,
                "rpm": limiter.rpm, "tpm": limiter.tpm, "keys": len(keys)}

    return app


# ----- helpers shared by the two generation endpoints ------------------------------------------


def _model_object(state: ProviderState) -> dict[str, Any]:
    return {"id": state.served_name, "object": "model", "created": MODEL_CREATED, "owned_by": "glassbox"}


def _check_model(state: ProviderState, name: str, param: str | None = "model") -> None:
    if name != state.served_name:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise APIError(404, f"The model `{shown}` does not exist or you do not have access to it.", param=param,
                       code="model_not_found")


def _context(request: Request) -> dict[str, Any]:
    return request.scope.setdefault("glassbox", {"log": {}, "key_id": None, "admin": False})


def _logit_bias(state: ProviderState, bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    if not bias:
        return ()
    vocab = state.engine.vocab_size
    merged: dict[int, float] = {}
    for key, value in bias.items():
        if not _TOKEN_ID.match(key):
            shown = key if len(key) <= 30 else key[:27] + "..."
            raise APIError(400, f"Invalid key {shown!r} in 'logit_bias': keys are token ids from 0 to {vocab - 1}, written as strings.",
                           param="logit_bias", code="invalid_value")
        token = int(key)
        if token >= vocab:
            raise APIError(400, f"Invalid key {key!r} in 'logit_bias': token {token} is outside the vocabulary (0 to {vocab - 1}).",
                           param="logit_bias", code="invalid_value")
        merged[token] = float(value)
    return tuple(sorted(merged.items()))


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for item in stops:
        if not item:
            raise APIError(400, "Invalid value for 'stop': a stop sequence must not be empty.", param="stop", code="invalid_value")
        if len(item) > MAX_STOP_CHARS:
            raise APIError(400, f"Invalid value for 'stop': a stop sequence may have at most {MAX_STOP_CHARS} characters.",
                           param="stop", code="invalid_value")
    return stops


def _context_error(n_positions: int, prompt_tokens: int, max_tokens: int, which: str = "") -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {n_positions} tokens. However, you requested {prompt_tokens + max_tokens} tokens "
        f"({prompt_tokens} in the prompt{which}, {max_tokens} for the completion). Please reduce the prompt or the completion length.",
        param="messages" if which == " (the messages)" else "prompt", code="context_length_exceeded",
    )


def _admit(state: ProviderState, context: dict[str, Any], tokens: int) -> dict[str, str]:
    """A request's cost (prompts x n x (prompt tokens + max_tokens)) against the per-request ceiling (everyone) and
    the key's tokens per minute (the admin key has no limit; the request itself was counted by the gatekeeper).
    Returns the x-ratelimit-*-tokens headers."""
    state.limiter.check_cost(tokens)
    if context.get("admin"):
        return {}
    return state.limiter.take_tokens(context.get("key_id") or "?", tokens)


class JobStream(StreamingResponse):
    """Server-sent events of a job; whatever ends the response (done, or the client leaving) ends the job."""

    def __init__(self, events: AsyncIterator[bytes], job: Job, headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # nothing if it finished; otherwise the client went away mid-stream
            await self.body_iterator.aclose()  # type: ignore[attr-defined]  # runs the generator's own clean-up now


def _submit(state: ProviderState, sequences: list[Sequence], stream: bool) -> Job:
    try:
        return state.engine.submit(sequences, asyncio.get_running_loop(), stream)
    except EngineBusy:
        raise APIError(503, "The server is overloaded with requests. Please try again later.", type="server_error",
                       code="server_overloaded") from None


async def _wait(job: Job, request: Request) -> bool:
    """Wait for a non-streamed job; cancel it if the client goes away. False if it did."""
    while not job.finished():
        try:
            await asyncio.wait_for(job.changed.wait(), DISCONNECT_POLL_SECONDS)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return False
        job.changed.clear()
    return True


def _raise_sequence_error(job: Job) -> None:
    for sequence in job.sequences:
        if sequence.error is not None:
            status, code, message = sequence.error
            raise APIError(status, message, type="server_error" if status >= 500 else "invalid_request_error", code=code)


def _log_result(state: ProviderState, context: dict[str, Any], prompt_tokens: int, sequences: list[Sequence]) -> None:
    engine = state.engine
    context["log"].update({
        "served_name": state.served_name,
        "weights": f"{engine.base_name} ({engine.variant})",
        "logit_bias_mode": state.logit_bias_mode,
        "usage": usage(prompt_tokens, completion_tokens(sequences)),
        "finish_reasons": sorted({sequence.finish_reason or "?" for sequence in sequences}),
    })


async def _finish(state: ProviderState, job: Job, request: Request, context: dict[str, Any],
                  prompt_tokens: int, sequences: list[Sequence]) -> Response | None:
    """Wait for a non-streamed job and write its log line. A 499 response if the client went
    away (the line says so); otherwise None, after raising the first failed sequence's error."""
    if not await _wait(job, request):
        context["log"]["error"] = "client_disconnected"
        _log_result(state, context, prompt_tokens, sequences)
        return Response(status_code=499)
    _log_result(state, context, prompt_tokens, sequences)
    _raise_sequence_error(job)
    return None


# ----- /v1/completions -------------------------------------------------------------------------


async def _completions(state: ProviderState, body: CompletionRequest, request: Request) -> Response:
    engine = state.engine
    context = _context(request)
    _check_model(state, body.model)
    if body.suffix:
        raise APIError(400, "'suffix' is not supported by this model.", param="suffix", code="unsupported_parameter")
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise APIError(400, "'best_of' is not supported: every sample is returned. Use 'n' instead.", param="best_of",
                       code="unsupported_parameter")
    if body.stream and body.best_of not in (None, 1):
        raise APIError(400, "'best_of' cannot be used with 'stream'.", param="best_of", code="unsupported_parameter")
    prompt = body.prompt
    if isinstance(prompt, str):
        texts: list[str | None] = [prompt]
        given_ids: list[list[int] | None] = [None]
    elif prompt and isinstance(prompt[0], str):
        texts, given_ids = list(prompt), [None] * len(prompt)
    elif prompt and isinstance(prompt[0], int):
        texts, given_ids = [None], [list(prompt)]
    else:
        texts, given_ids = [None] * len(prompt), [list(ids) for ids in prompt]
    if len(texts) * n > MAX_CHOICES:
        raise APIError(400, f"Too many choices: {len(texts)} prompts x n={n} is {len(texts) * n:,}; at most {MAX_CHOICES:,} "
                       "per request.", param="n", code="invalid_value")
    bias = _logit_bias(state, body.logit_bias)
    stops = _stops(body.stop)
    max_tokens = body.max_tokens if body.max_tokens is not None else DEFAULT_MAX_TOKENS

    to_encode = [text for text in texts if text is not None]
    encoded = iter(await asyncio.to_thread(engine.encode, to_encode) if to_encode else [])
    prompts: list[list[int]] = []
    for text, ids in zip(texts, given_ids):
        if ids is None:
            ids = next(encoded)
        elif any(token >= engine.vocab_size for token in ids):
            raise APIError(400, f"Invalid 'prompt': token ids must be below {engine.vocab_size}.", param="prompt", code="invalid_value")
        prompts.append(ids if ids else [engine.eos_id])  # an empty prompt starts after <|endoftext|>, as in training
    for index, ids in enumerate(prompts):
        if len(ids) + max_tokens > engine.n_positions:
            which = f" of prompt {index}" if len(prompts) > 1 else ""
            raise _context_error(engine.n_positions, len(ids), max_tokens, which)

    mod.check_prompt(state.moderation, [text if text is not None else engine_decode(engine, ids) for text, ids in zip(texts, prompts)],
                     "prompt", context["log"])
    prompt_tokens = sum(len(ids) for ids in prompts)
    headers = _admit(state, context, n * (prompt_tokens + max_tokens * len(prompts)))  # each choice reads its prompt
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stops,
        logit_bias=bias,
        logprobs=body.logprobs,
        echo=bool(body.echo),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        bias_in_logprobs=state.logit_bias_mode == "pre-2024",
    )
    sequences = [Sequence(ids, params, choice_seed(body.seed, p * n + j), p * n + j) for p, ids in enumerate(prompts) for j in range(n)]
    echoes: list[PromptEcho | None] = [None] * len(sequences)
    if body.echo:
        for p, (text, ids) in enumerate(zip(texts, prompts)):
            shown = text if text is not None else engine_decode(engine, ids)
            real = bool(text) or given_ids[p] is not None
            echo = PromptEcho(engine, shown, ids if real else [], body.logprobs is not None)
            for j in range(n):
                echoes[p * n + j] = echo
    job = _submit(state, sequences, bool(body.stream))
    completion_id, when = new_id("cmpl"), created()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _stream_completion(state, job, echoes, completion_id, when, body.model, prompt_tokens, include_usage, context)
        return JobStream(stream, job, headers)
    left = await _finish(state, job, request, context, prompt_tokens, sequences)
    if left is not None:
        return left
    payload = {
        "id": completion_id,
        "object": "text_completion",
        "created": when,
        "model": body.model,
        "choices": [_moderated(state, context, completion_choice(engine, sequence, echo), sequence.text, chat=False)
                    for sequence, echo in zip(sequences, echoes)],
        "usage": usage(prompt_tokens, completion_tokens(sequences)),
    }
    return await _json(payload, headers, big=len(sequences) > 64)


def _moderated(state: ProviderState, context: dict[str, Any], choice: dict[str, Any], text: str, chat: bool) -> dict[str, Any]:
    """The choice, or, if the operator's policy flags its text, the choice withheld (see moderation.py)."""
    flagged = mod.output_flagged(state.moderation, text)
    mod.note_output(context["log"], flagged)
    return mod.filter_choice(choice, chat) if flagged else choice


def engine_decode(engine: Engine, ids: list[int]) -> str:
    return b"".join(engine.token_bytes[token] for token in ids).decode("utf-8", errors="replace")


async def _json(payload: dict[str, Any], headers: dict[str, str], big: bool) -> Response:
    """A JSON response; large ones are serialised off the event loop."""
    if big:
        text = await asyncio.to_thread(json.dumps, payload)
        return Response(text, media_type="application/json", headers=headers)
    return JSONResponse(payload, headers=headers)


async def _stream_completion(state: ProviderState, job: Job, echoes: list[PromptEcho | None], completion_id: str, when: int,
                             model: str, prompt_tokens: int, include_usage: bool, context: dict[str, Any]) -> AsyncIterator[bytes]:
    engine = state.engine
    sent_chars = [0] * len(job.sequences)
    sent_tokens = [0] * len(job.sequences)
    started = [False] * len(job.sequences)
    done = [False] * len(job.sequences)
    hold = state.moderation is not None and state.moderation.checks("output")

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": completion_id, "object": "text_completion", "created": when, "model": model, "choices": [choice]}

    try:
        while True:
            job.changed.clear()
            last_chunk = None
            for position, sequence in enumerate(job.sequences):
                if done[position]:
                    continue
                reason = sequence.finish_reason
                if sequence.error is not None:
                    status, code, message = sequence.error
                    yield sse({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                                         "param": None, "code": code}})
                    return
                if reason is None and hold:
                    continue  # output moderation: the reply is checked whole before any of it is sent
                kept, released, text = sequence.kept, sequence.released, sequence.text
                if reason is not None:
                    kept, released, text = sequence.kept, len(sequence.text), sequence.text
                if kept == sent_tokens[position] and released <= sent_chars[position] and reason is None:
                    continue
                echo = echoes[position]
                piece = text[sent_chars[position]:released]
                logprobs = None
                if sequence.params.logprobs is not None:
                    logprobs = completion_logprobs(engine, sequence, sent_tokens[position], kept, echo, include_prompt=not started[position])
                if echo is not None and not started[position]:
                    piece = echo.text + piece
                if reason is not None and (flagged := mod.output_flagged(state.moderation, text)):
                    mod.note_output(context["log"], flagged)
                    piece, logprobs, reason = "", None, "content_filter"
                started[position] = True
                sent_chars[position], sent_tokens[position] = max(sent_chars[position], released), kept
                if reason is not None:
                    done[position] = True
                last_chunk = chunk({"text": piece, "index": sequence.index, "logprobs": logprobs, "finish_reason": reason})
                if all(done) and not include_usage:
                    last_chunk["usage"] = usage(prompt_tokens, completion_tokens(job.sequences))
                yield sse(last_chunk)
            if all(done):
                break
            await job.changed.wait()
        if include_usage:
            yield sse({"id": completion_id, "object": "text_completion", "created": when, "model": model, "choices": [],
                       "usage": usage(prompt_tokens, completion_tokens(job.sequences))})
        yield sse("[DONE]")
    finally:
        if not job.finished():
            job.cancel()
            context["log"]["error"] = "client_disconnected"
        _log_result(state, context, prompt_tokens, job.sequences)


# ----- /v1/chat/completions --------------------------------------------------------------------


async def _chat(state: ProviderState, body: ChatCompletionRequest, request: Request) -> Response:
    engine = state.engine
    context = _context(request)
    _check_model(state, body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs", code="invalid_value")
    n = body.n or 1
    bias = _logit_bias(state, body.logit_bias)
    stops = _stops(body.stop)
    prompt_text, turn_stops = chat_prompt(engine.tokenizer, body.messages)
    mod.check_prompt(state.moderation, [prompt_text], "messages", context["log"])
    (prompt,) = await asyncio.to_thread(engine.encode, [prompt_text])
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if requested is None:
        max_tokens = min(DEFAULT_CHAT_MAX_TOKENS, engine.n_positions - len(prompt))
        if max_tokens < 1:
            raise _context_error(engine.n_positions, len(prompt), 1, " (the messages)")
    else:
        max_tokens = requested
        if len(prompt) + max_tokens > engine.n_positions:
            raise _context_error(engine.n_positions, len(prompt), max_tokens, " (the messages)")
    headers = _admit(state, context, n * (len(prompt) + max_tokens))
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stops + turn_stops,
        logit_bias=bias,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        bias_in_logprobs=state.logit_bias_mode == "pre-2024",
    )
    sequences = [Sequence(prompt, params, choice_seed(body.seed, j), j) for j in range(n)]
    job = _submit(state, sequences, bool(body.stream))
    completion_id, when = new_id("chatcmpl"), created()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _stream_chat(state, job, completion_id, when, body.model, len(prompt), include_usage, context)
        return JobStream(stream, job, headers)
    left = await _finish(state, job, request, context, len(prompt), sequences)
    if left is not None:
        return left
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": when,
        "model": body.model,
        "choices": [_moderated(state, context, chat_choice(engine, sequence), sequence.text, chat=True) for sequence in sequences],
        "usage": usage(len(prompt), completion_tokens(sequences)),
        "system_fingerprint": state.shown_fingerprint(),
    }
    return await _json(payload, headers, big=len(sequences) > 64)


async def _stream_chat(state: ProviderState, job: Job, completion_id: str, when: int, model: str, prompt_tokens: int,
                       include_usage: bool, context: dict[str, Any]) -> AsyncIterator[bytes]:
    engine = state.engine
    count = len(job.sequences)
    sent_chars, sent_tokens, done = [0] * count, [0] * count, [False] * count
    hold = state.moderation is not None and state.moderation.checks("output")

    def chunk(index: int, delta: dict[str, Any], logprobs: Any, reason: str | None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": when, "model": model,
                "system_fingerprint": state.shown_fingerprint(),
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}

    try:
        for sequence in job.sequences:
            yield sse(chunk(sequence.index, {"role": "assistant", "content": "", "refusal": None}, None, None))
        while True:
            job.changed.clear()
            for position, sequence in enumerate(job.sequences):
                if done[position]:
                    continue
                reason = sequence.finish_reason
                if sequence.error is not None:
                    status, code, message = sequence.error
                    yield sse({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                                         "param": None, "code": code}})
                    return
                if reason is None and hold:
                    continue  # output moderation: the reply is checked whole before any of it is sent
                kept, released, text = sequence.kept, sequence.released, sequence.text
                if reason is not None:
                    released = len(text)
                if reason is not None and (flagged := mod.output_flagged(state.moderation, text)):
                    mod.note_output(context["log"], flagged)
                    reason, kept, released = "content_filter", sent_tokens[position], sent_chars[position]
                if kept > sent_tokens[position] or released > sent_chars[position]:
                    start = sent_chars[position]
                    piece = text[start:released]
                    if start == 0 and piece.startswith(" "):
                        piece = piece[1:]  # the reply's one leading space (see chat.py)
                    logprobs = None
                    if sequence.params.logprobs is not None:
                        logprobs = {"content": chat_logprob_entries(engine, sequence, sent_tokens[position], kept), "refusal": None}
                    sent_chars[position], sent_tokens[position] = max(start, released), kept
                    if piece or (logprobs and logprobs["content"]):
                        yield sse(chunk(sequence.index, {"content": piece}, logprobs, None))
                if reason is not None:
                    done[position] = True
                    final = chunk(sequence.index, {}, None, reason)
                    if all(done) and not include_usage:
                        final["usage"] = usage(prompt_tokens, completion_tokens(job.sequences))
                    yield sse(final)
            if all(done):
                break
            await job.changed.wait()
        if include_usage:
            yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": when, "model": model,
                       "system_fingerprint": state.shown_fingerprint(), "choices": [], "usage": usage(prompt_tokens, completion_tokens(job.sequences))})
        yield sse("[DONE]")
    finally:
        if not job.finished():
            job.cancel()
            context["log"]["error"] = "client_disconnected"
        _log_result(state, context, prompt_tokens, job.sequences)

