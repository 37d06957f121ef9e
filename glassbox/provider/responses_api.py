"""``POST /v1/responses``: OpenAI's Responses API, for what the course's models can do.

The official ``openai`` client's primary interface is now ``client.responses.create``, and
LangChain's ``ChatOpenAI(use_responses_api=True)`` calls it too. This module serves it
from the same engine, keys, rate limits, request log and error shapes as
``/v1/chat/completions`` (one module per endpoint, as vLLM's ``entrypoints/openai`` does;
``responses.py`` holds the JSON shapes of completions and chat).

Supported: ``input`` as a string or a list of messages (``role`` system / developer / user /
assistant; ``content`` a string or text parts ``input_text`` / ``output_text``, so a previous
response's output can be sent back as history), ``instructions`` (a system message before
the input), ``max_output_tokens``, ``temperature``, ``top_p``, ``top_logprobs`` (0 to 20)
with ``include: ["message.output_text.logprobs"]``, ``stream: true`` with the documented
event sequence and ``sequence_number``, ``usage`` with its details objects, ``metadata``
(echoed), ``user`` / ``safety_identifier`` / ``prompt_cache_key`` (accepted, unused).
The conversation becomes the prompt exactly as on chat completions (``chat.chat_prompt``: the
tokenizer's chat template when it has one, otherwise ``System: ...``, ``User: ...``,
``Assistant:``), and the operator's moderation policy applies as there (``moderation.py``): a
flagged input gets the 400 ``content_filter`` error (``param: "input"``); a flagged reply is
withheld, with ``status: "incomplete"`` and ``incomplete_details.reason: "content_filter"``,
the reason OpenAI documents for it; a stream is then checked whole before any text is sent.

Not supported, each with an OpenAI-shaped 400 naming the parameter: ``tools`` and any
``tool_choice`` other than "none"/"auto", ``store: true`` (nothing is stored, so
``GET /v1/responses/{id}`` is a 404), ``previous_response_id`` and ``conversation`` (send
the history in ``input``), ``background``, ``reasoning``, ``prompt`` templates, structured
``text.format`` (json_schema / json_object), ``truncation: "auto"``, other ``include``
values, and non-text input (images, files, audio, tool items).

``system_fingerprint`` is added to the response object as on chat completions. OpenAI's
Response object does not have it (it is this course's extension; the ``openai`` client
keeps unknown fields, as ``response.system_fingerprint``); see ``variants.system_fingerprint``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from glassbox.provider.app import (
    JobStream,
    ProviderState,
    _admit,
    _check_model,
    _context,
    _finish,
    _json,
    _log_result,
    _submit,
)
from glassbox.provider import moderation as mod
from glassbox.provider.chat import chat_prompt, reply_content
from glassbox.provider.engine import SamplingParams, Sequence, choice_seed
from glassbox.provider.errors import APIError, validation_message
from glassbox.provider.responses import chat_logprob_entries, completion_tokens, new_id, sse
from glassbox.provider.settings import DEFAULT_CHAT_MAX_TOKENS, MAX_MESSAGES, MAX_TOP_LOGPROBS

LOGPROBS_INCLUDE = "message.output_text.logprobs"

_STRICT = ConfigDict(extra="forbid", strict=True)
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class InputText(BaseModel):
    """A text part of an input message (``output_text`` parts come from a previous response)."""

    model_config = ConfigDict(extra="ignore", strict=True)  # output_text parts carry annotations, logprobs...
    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # a previous output message carries id, status...
    type: Optional[Literal["message"]] = None
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, Annotated[list[InputText], Field(min_length=1)]]


class TextFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class TextConfig(BaseModel):
    model_config = _STRICT
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["medium"]] = None


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_obfuscation: Optional[bool] = None  # accepted; this server does not pad its events


class ResponsesRequest(BaseModel):
    """POST /v1/responses (the parameters this provider implements or accepts harmlessly)."""

    model_config = _STRICT
    model: str
    input: Union[str, Annotated[list[InputMessage], Field(min_length=1, max_length=MAX_MESSAGES)]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    temperature: Optional[Temperature] = None
    top_p: Optional[TopP] = None
    top_logprobs: Optional[Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]] = None
    include: Optional[list[str]] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    metadata: Optional[Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)]] = None
    text: Optional[TextConfig] = None
    parallel_tool_calls: Optional[bool] = None
    tool_choice: Optional[Literal["none", "auto"]] = None
    tools: Optional[Annotated[list[Any], Field(max_length=0)]] = None
    store: Optional[Literal[False]] = None
    truncation: Optional[Literal["disabled"]] = None
    service_tier: Optional[Literal["auto", "default"]] = None
    user: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None


#: Documented parameters this provider does not implement: name -> (is it used?, why / what to do instead).
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "tools": (lambda v: v not in (None, []), "Tools are not supported: the course's models cannot call functions or built-in tools."),
    "tool_choice": (lambda v: v not in (None, "none", "auto"), "'tool_choice' is not supported: no tools can be called."),
    "store": (lambda v: v not in (None, False),
              "Stored responses are not supported: this provider keeps no responses to retrieve. Send store: false or leave it out."),
    "previous_response_id": (lambda v: v is not None,
                             "'previous_response_id' is not supported: no responses are stored. Send the conversation in 'input'."),
    "conversation": (lambda v: v is not None, "'conversation' is not supported: send the conversation in 'input'."),
    "background": (lambda v: v not in (None, False), "Background responses are not supported: the response is made during the request."),
    "reasoning": (lambda v: v is not None, "'reasoning' is not supported: the course's models are not reasoning models."),
    "prompt": (lambda v: v is not None, "Prompt templates ('prompt') are not supported: send the text in 'input' and 'instructions'."),
    "max_tool_calls": (lambda v: v is not None, "'max_tool_calls' is not supported: no tools can be called."),
    "truncation": (lambda v: v not in (None, "disabled"),
                   "truncation 'auto' is not supported: a conversation longer than the context gets a context_length_exceeded error."),
}


def _check_unsupported(data: dict[str, Any]) -> None:
    for name, (used, message) in UNSUPPORTED.items():
        if name in data and used(data[name]):
            raise APIError(400, message, param=name, code="unsupported_parameter")
    text = data.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict) and text["format"].get("type") not in (None, "text"):
        raise APIError(400, f"text.format {text['format'].get('type')!r} is not supported: only plain text output "
                       "(structured outputs need a model trained for them).", param="text.format", code="unsupported_parameter")
    include = data.get("include")
    if isinstance(include, list):
        for item in include:
            if item != LOGPROBS_INCLUDE:
                raise APIError(400, f"Invalid value {json.dumps(item)[:60]} in 'include': this provider supports only "
                               f"'{LOGPROBS_INCLUDE}'.", param="include", code="unsupported_parameter")


def _param(location: tuple[Any, ...]) -> str | None:
    """``("input", 1, "content", 0, "type")`` -> ``"input[1].content[0].type"`` (pydantic's union branch names dropped)."""
    param = ""
    for part in location:
        if isinstance(part, int):
            param += f"[{part}]"
        elif isinstance(part, str) and (part in ResponsesRequest.model_fields or part in InputMessage.model_fields
                                        or part in InputText.model_fields or part in TextConfig.model_fields):
            param += ("." if param else "") + part
    return param or None


def parse_request(raw: bytes) -> ResponsesRequest:
    """The request body, checked; an OpenAI-shaped 400 naming the parameter otherwise."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    _check_unsupported(data)
    try:
        return ResponsesRequest.model_validate_json(raw)
    except ValidationError as error:
        errors = error.errors()
        # a union ('input': a string or a list of messages) reports every branch: name the deepest place
        first = max((item for item in errors if item.get("loc", ())[:1] == errors[0].get("loc", ())[:1]),
                    key=lambda item: len(item.get("loc", ())))
        location = tuple(first.get("loc", ()))
        param = _param(location)
        if location and location[0] == "input" and first.get("type") not in {"missing", "too_long", "too_short"}:
            message = ("'input' must be a string or a list of messages {\"role\": ..., \"content\": ...} whose content is a "
                       "string or a list of text parts (input_text, output_text); images, files, audio and tool items are "
                       f"not supported (at '{param}').")
        else:
            message = validation_message(first, param)  # type: ignore[arg-type]
        code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
        raise APIError(400, message, param=param, code=code) from None


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions is not None:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
    else:
        for message in body.input:
            content = message.content if isinstance(message.content, str) else "".join(part.text for part in message.content)
            messages.append({"role": message.role, "content": content})
    return messages


def response_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


class Draft:
    """One response as it is built (non-streamed, or event by event)."""

    def __init__(self, state: ProviderState, body: ResponsesRequest, created_at: int) -> None:
        self.state = state
        self.body = body
        self.id = new_id("resp").replace("-", "_")
        self.message_id = new_id("msg").replace("-", "_")
        self.created_at = created_at
        self.logprobs = bool(body.include and LOGPROBS_INCLUDE in body.include)

    def part(self, text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}

    def message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                 incomplete_reason: str | None = None, completed_at: int | None = None) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": completed_at,
            "error": None,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "model": body.model,
            "output": output,
            "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": None,
            "service_tier": "default",
            "store": False,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.tool_choice or "auto",
            "tools": [],
            "top_logprobs": body.top_logprobs or 0,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": body.user,
            "system_fingerprint": self.state.shown_fingerprint(),
        }

    def finished(self, sequence: Sequence, prompt_tokens: int, log: dict[str, Any]) -> dict[str, Any]:
        """The complete response object for a finished sequence (its text withheld if the operator's policy flags it)."""
        engine = self.state.engine
        flagged = mod.output_flagged(self.state.moderation, sequence.text)
        mod.note_output(log, flagged)
        if flagged:
            text, logprobs, reason = "", [], "content_filter"
        else:
            text = reply_content(sequence.text)
            logprobs = chat_logprob_entries(engine, sequence, 0, sequence.kept) if self.logprobs else []
            reason = "max_output_tokens" if sequence.finish_reason == "length" else None
        status = "incomplete" if reason else "completed"
        output = [self.message(status, [self.part(text, logprobs)])]
        return self.response(status, output, response_usage(prompt_tokens, completion_tokens([sequence])),
                             incomplete_reason=reason, completed_at=None if reason else _now())


def _now() -> int:
    import time

    return int(time.time())


def register(app: FastAPI, state: ProviderState) -> None:
    """Add ``POST /v1/responses`` and ``GET /v1/responses/{id}`` (always 404: nothing is stored)."""

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await _create(state, parse_request(await request.body()), request)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str) -> Response:
        shown = response_id if len(response_id) <= 80 else response_id[:77] + "..."
        raise APIError(404, f"Response with id '{shown}' not found: this provider does not store responses.",
                       param="response_id", code="not_found")


async def _create(state: ProviderState, body: ResponsesRequest, request: Request) -> Response:
    engine = state.engine
    context = _context(request)
    _check_model(state, body.model)
    prompt_text, turn_stops = chat_prompt(engine.tokenizer, _messages(body))
    mod.check_prompt(state.moderation, [prompt_text], "input", context["log"])
    (prompt,) = await asyncio.to_thread(engine.encode, [prompt_text])
    if body.max_output_tokens is None:
        max_tokens = min(DEFAULT_CHAT_MAX_TOKENS, engine.n_positions - len(prompt))
    else:
        max_tokens = body.max_output_tokens
    if max_tokens < 1 or len(prompt) + max_tokens > engine.n_positions:
        asked = max(max_tokens, 1)
        raise APIError(400, f"This model's maximum context length is {engine.n_positions} tokens. However, you requested "
                       f"{len(prompt) + asked} tokens ({len(prompt)} in the input, {asked} for the output). Please reduce "
                       "the input or max_output_tokens.", param="input", code="context_length_exceeded")
    headers = _admit(state, context, len(prompt) + max_tokens)
    draft = Draft(state, body, _now())
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=turn_stops,
        logit_bias=(),
        logprobs=(body.top_logprobs or 0) if draft.logprobs else None,
        bias_in_logprobs=False,
    )
    sequences = [Sequence(prompt, params, choice_seed(None, 0), 0)]
    job = _submit(state, sequences, bool(body.stream))
    if body.stream:
        return JobStream(_stream(state, job, draft, len(prompt), context), job, headers)
    left = await _finish(state, job, request, context, len(prompt), sequences)
    if left is not None:
        return left
    return await _json(draft.finished(sequences[0], len(prompt), context["log"]), headers, big=False)


async def _stream(state: ProviderState, job: Any, draft: Draft, prompt_tokens: int, context: dict[str, Any]) -> AsyncIterator[bytes]:
    """The documented event sequence: created, in_progress, output_item.added, content_part.added,
    output_text.delta..., output_text.done, content_part.done, output_item.done, completed (or incomplete)."""
    engine = state.engine
    sequence = job.sequences[0]
    number = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal number
        payload = {"type": kind, "sequence_number": number, **fields}
        number += 1
        return f"event: {kind}\n".encode() + sse(payload)

    where = {"item_id": draft.message_id, "output_index": 0}
    hold = state.moderation is not None and state.moderation.checks("output")  # the reply is checked whole first
    try:
        started = draft.response("in_progress", [], None)
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        yield event("response.output_item.added", output_index=0, item=draft.message("in_progress", []))
        yield event("response.content_part.added", **where, content_index=0, part=draft.part("", []))
        sent_chars = sent_tokens = 0
        while True:
            job.changed.clear()
            if sequence.error is not None:
                status, code, message = sequence.error
                yield event("error", code=code, message=message, param=None)
                return
            reason = sequence.finish_reason
            if reason is None and hold:
                await job.changed.wait()
                continue
            kept, released, text = sequence.kept, sequence.released, sequence.text
            if reason is not None:
                released = len(text)
                if mod.output_flagged(state.moderation, text):
                    break  # withheld: finished() below says content_filter
            if kept > sent_tokens or released > sent_chars:
                piece = text[sent_chars:released]
                if sent_chars == 0 and piece.startswith(" "):
                    piece = piece[1:]  # the reply's one leading space (see chat.py)
                logprobs = chat_logprob_entries(engine, sequence, sent_tokens, kept) if draft.logprobs else []
                sent_chars, sent_tokens = max(sent_chars, released), kept
                if piece or logprobs:
                    yield event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=logprobs)
            if reason is not None:
                break
            await job.changed.wait()
        final = draft.finished(sequence, prompt_tokens, context["log"])
        message = final["output"][0]
        part = message["content"][0]
        yield event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=part["logprobs"])
        yield event("response.content_part.done", **where, content_index=0, part=part)
        yield event("response.output_item.done", output_index=0, item=message)
        yield event("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)
    finally:
        if not job.finished():
            job.cancel()
            context["log"]["error"] = "client_disconnected"
        _log_result(state, context, prompt_tokens, job.sequences)
