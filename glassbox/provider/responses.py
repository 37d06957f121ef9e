"""The JSON the provider sends back, in OpenAI's shapes (non-streamed and streamed).

Completions (legacy): ``choices[i].logprobs = {tokens, token_logprobs, top_logprobs, text_offset}``;
``top_logprobs`` is a list of ``{token: logprob}`` holding the top ``logprobs`` alternatives
and always the chosen token, as OpenAI documents (so up to ``logprobs + 1`` entries). With
``echo`` the prompt's tokens come first, the first of them with ``None``. A token that is
not valid UTF-8 on its own is named ``bytes:\\xNN...``. The end-of-text token, when the model
ends there, is listed as ``<|endoftext|>`` and adds no text.

Chat: ``choices[i].logprobs.content = [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]``.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from glassbox.provider.chat import reply_content
from glassbox.provider.engine import Engine, Sequence
from glassbox.provider.tokens import decode_complete


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _top_dict(engine: Engine, top: list[tuple[int, float]], token: int, logprob: float) -> dict[str, float]:
    names = engine.token_names
    alternatives = {names[i]: value for i, value in top}
    alternatives.setdefault(names[token], logprob)
    return alternatives


class PromptEcho:
    """The prompt as ``echo`` shows it: its text and its tokens' names and offsets."""

    def __init__(self, engine: Engine, text: str, ids: list[int], scored: bool) -> None:
        self.text = text
        self.ids = ids if scored else []
        self.offsets: list[int] = []
        data = b""
        for token in self.ids:
            self.offsets.append(len(decode_complete(data)))
            data += engine.token_bytes[token]


def completion_logprobs(engine: Engine, sequence: Sequence, start: int, end: int, echo: PromptEcho | None,
                        include_prompt: bool = True) -> dict[str, Any]:
    """The ``logprobs`` object for generated tokens ``start:end``, after the prompt's tokens if ``echo`` and ``include_prompt``."""
    names = engine.token_names
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    if echo is not None and include_prompt:
        for position, token in enumerate(echo.ids):
            tokens.append(names[token])
            text_offset.append(echo.offsets[position])
            if position == 0:
                token_logprobs.append(None)
                top_logprobs.append(None)
            else:
                logprob, top = sequence.prompt_scores[position - 1]
                token_logprobs.append(logprob)
                top_logprobs.append(_top_dict(engine, top, token, logprob))
    base = len(echo.text) if echo is not None else 0
    for position in range(start, end):
        token = sequence.ids[position]
        logprob = sequence.token_logprobs[position]
        tokens.append(names[token])
        token_logprobs.append(logprob)
        top_logprobs.append(_top_dict(engine, sequence.top[position], token, logprob))
        text_offset.append(base + sequence.offsets[position])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset}


def completion_choice(engine: Engine, sequence: Sequence, echo: PromptEcho | None) -> dict[str, Any]:
    text = (echo.text if echo is not None else "") + sequence.text
    logprobs = None
    if sequence.params.logprobs is not None:
        logprobs = completion_logprobs(engine, sequence, 0, sequence.kept, echo)
    return {"text": text, "index": sequence.index, "logprobs": logprobs, "finish_reason": sequence.finish_reason}


def chat_logprob_entries(engine: Engine, sequence: Sequence, start: int, end: int) -> list[dict[str, Any]]:
    """Chat logprobs for generated tokens ``start:end`` (the end-of-text token is left out)."""
    entries = []
    for position in range(start, end):
        token = sequence.ids[position]
        if token == engine.eos_id:
            continue
        entries.append({
            "token": engine.token_bytes[token].decode("utf-8", errors="replace"),
            "logprob": sequence.token_logprobs[position],
            "bytes": list(engine.token_bytes[token]),
            "top_logprobs": [
                {"token": engine.token_bytes[i].decode("utf-8", errors="replace"), "logprob": value, "bytes": list(engine.token_bytes[i])}
                for i, value in sequence.top[position]
            ],
        })
    return entries


def chat_choice(engine: Engine, sequence: Sequence) -> dict[str, Any]:
    logprobs = None
    if sequence.params.logprobs is not None:
        logprobs = {"content": chat_logprob_entries(engine, sequence, 0, sequence.kept), "refusal": None}
    return {
        "index": sequence.index,
        "message": {"role": "assistant", "content": reply_content(sequence.text), "refusal": None, "annotations": []},
        "logprobs": logprobs,
        "finish_reason": sequence.finish_reason,
    }


def completion_tokens(sequences: list[Sequence]) -> int:
    return sum(len(sequence.ids) for sequence in sequences)


def created() -> int:
    return int(time.time())
