"""A small OpenAI-"compatible" server that behaves like llama.cpp's, for testing the probe.

It mimics the quirks measured on llama-cpp-python's server 0.3.36 (issue 19): ``n`` and
``best_of`` ignored; any ``model`` name accepted; no ``/v1/models/{id}``; a list of prompts,
token-id prompts and a non-integer ``logit_bias`` key give 500; ``logprobs`` up to 100 and
out-of-range ``temperature``, ``top_logprobs`` and ``logit_bias`` values accepted unchecked;
``max_tokens=0`` means no limit; ``echo`` log-probabilities shifted by one position; no
``system_fingerprint``; no ``/v1/responses``. Each quirk can be switched off, so a test can show
that the probe tells the difference.

The "model" is a fixed table: the next word's log-probabilities depend on the last word only.
It is a real FastAPI app, served by uvicorn on 127.0.0.1 by :func:`serve`.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from glassbox.provider.__main__ import bind

WORDS = [" herself", " himself", " was", " the", " a", " fox", " ran", " to", " river", " had",
         " red", " ball", " near", " village", " It", " The", " nurse", " pilot", " sunny", " day",
         " cat", " dog", " found", " gave", " key", " box", " cup", " map", " lake", " sad", "."]
MODEL_NAME = "tinygpt-q8_0.gguf"


def tokenize(text: str) -> list[str]:
    return re.findall(r" ?[^ ]+", text)


def next_logprobs(context: list[str]) -> dict[str, float]:
    """log P(word | the last token of context), a fixed table made from a hash."""
    last = context[-1] if context else ""
    scores = {w: int(hashlib.sha256(f"{last}|{w}".encode()).hexdigest()[:6], 16) / 0xFFFFFF * 8
              for w in WORDS}
    log_z = math.log(sum(math.exp(s) for s in scores.values()))
    return {w: s - log_z for w, s in scores.items()}


@dataclass
class Quirks:
    ignore_n: bool = True
    refuse_prompt_list: bool = True
    no_model_retrieve: bool = True
    shift_echo: bool = True
    unchecked_limits: bool = True
    requests: list[dict] = field(default_factory=list)


def _top(lp: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(lp.items(), key=lambda item: -item[1])[:k])


def _generate(context: list[str], max_tokens: int, temperature: float, rng: random.Random,
              bias: dict[str, float]) -> list[tuple[str, float, dict[str, float]]]:
    out = []
    for _ in range(max_tokens or 16):  # max_tokens=0: "no limit" (here: 16)
        lp = next_logprobs(context)
        scores = {w: v + bias.get(w, 0.0) for w, v in lp.items()}
        if temperature <= 0:
            word = max(scores, key=scores.get)
        else:
            weights = [math.exp(v / temperature) for v in scores.values()]
            word = rng.choices(list(scores), weights=weights)[0]
        out.append((word, lp[word], lp))
        context = context + [word]
    return out


def make_app(quirks: Quirks) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "me", "created": 0}]}

    if not quirks.no_model_retrieve:
        @app.get("/v1/models/{name}")
        async def model(name: str) -> dict:
            return {"id": name, "object": "model", "owned_by": "me", "created": 0}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        quirks.requests.append(body)
        prompt = body.get("prompt", "")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if isinstance(prompt, list) and quirks.refuse_prompt_list:
            return JSONResponse({"error": {"message": "Internal Server Error", "type": "server_error"}}, 500)
        bias_in = body.get("logit_bias") or {}
        if any(not key.lstrip("-").isdigit() for key in bias_in):
            return JSONResponse({"error": {"message": "invalid literal for int()", "type": "server_error"}}, 500)
        if not quirks.unchecked_limits:
            if (body.get("logprobs") or 0) > 5 or not 0 <= body.get("temperature", 1) <= 2 or \
                    any(abs(v) > 100 for v in bias_in.values()):
                return JSONResponse({"error": {"message": "out of range", "type": "invalid_request_error",
                                               "param": None, "code": None}}, 400)
        bias = {WORDS[int(k) % len(WORDS)]: float(v) for k, v in bias_in.items()}
        k = body.get("logprobs")
        n = 1 if quirks.ignore_n else int(body.get("n") or 1)
        seed = body.get("seed")
        rng = random.Random(seed if seed is not None else time.time_ns())
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, text in enumerate(prompts):
            context = tokenize(text)
            prompt_tokens += len(context)
            for j in range(n):
                generated = _generate(context, int(body.get("max_tokens", 16)),
                                      float(body.get("temperature", 1.0)), rng, bias)
                completion_tokens += len(generated)
                tokens, values, tops = [], [], []
                if body.get("echo"):
                    for i, word in enumerate(context):
                        tokens.append(word)
                        if quirks.shift_echo:  # each prompt token gets the next position's logprob
                            following = context[i + 1] if i + 1 < len(context) else generated[0][0]
                            lp = next_logprobs(context[: i + 1])
                            values.append(lp[following])
                        else:
                            lp = next_logprobs(context[:i])
                            values.append(None if i == 0 else lp[word])
                        tops.append(None if k is None else _top(lp, k))
                for word, logprob, lp in generated:
                    tokens.append(word)
                    values.append(logprob)
                    tops.append(None if k is None else {**_top(lp, k), word: logprob})
                full = ("".join(context) if body.get("echo") else "") + "".join(w for w, _, _ in generated)
                offsets, position = [], 0
                for word in tokens:
                    offsets.append(position)
                    position += len(word)
                choices.append({
                    "text": full, "index": len(choices), "finish_reason": "length",
                    "logprobs": None if k is None else {"tokens": tokens, "token_logprobs": values,
                                                        "top_logprobs": tops, "text_offset": offsets}})
        return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body.get("model"),
                "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                              "total_tokens": prompt_tokens + completion_tokens}}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        quirks.requests.append(body)
        context = tokenize(" ".join(m["content"] for m in body["messages"]))
        generated = _generate(context, int(body.get("max_tokens", 16)), float(body.get("temperature", 1.0)),
                              random.Random(body.get("seed") or 0), {})
        logprobs = None
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            logprobs = {"content": [{"token": w, "logprob": lp, "bytes": list(w.encode()),
                                     "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                                      for t, v in _top(table, k).items()]}
                                    for w, lp, table in generated]}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(w for w, _, _ in generated)},
                             "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(context), "completion_tokens": len(generated),
                          "total_tokens": len(context) + len(generated)}}

    return app


@contextmanager
def serve(quirks: Quirks | None = None) -> Iterator[tuple[str, Quirks]]:
    """Serve the fake on a free port of 127.0.0.1 for the ``with`` block: (base URL, its quirks)."""
    quirks = quirks or Quirks()
    # The provider's own socket (IPPROTO_TCP and TCP_NODELAY): with a plain socket() every answer on a
    # reused connection waited for Nagle's algorithm (measured here: 48 ms a request, 4.4 ms without).
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(quirks), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", quirks
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
