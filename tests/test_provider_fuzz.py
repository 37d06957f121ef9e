"""Bad input, faults and security: hundreds of bad requests, and the provider keeps serving.

Two batteries against the real server: the issue's list written out by hand (each with
the status and the ``param``/``code`` expected), then requests generated at random from
the server's own OpenAPI schema with schemathesis (fixed seed, so every run sends the
same ones). Every answer must be a 4xx in OpenAI's error shape, never a 5xx, and
``/health`` and a normal completion must still work afterwards.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from glassbox.provider.settings import MAX_BODY_BYTES, MAX_PROMPTS
from test_provider_shared import shared_provider

M = "{model}"  # replaced by the served name
CASES: list[tuple[str, str, dict, int, str | None]] = []  # (method, path, request, status, param or code expected)


def case(method: str, path: str, status: int, expect: str | None = None, **request) -> None:
    CASES.append((method, path, request, status, expect))


def completion(status: int = 400, expect: str | None = None, **fields) -> None:
    case("POST", "/v1/completions", status, expect, json={"model": M, "prompt": "Hi", "max_tokens": 2, **fields})


def chat(status: int = 400, expect: str | None = None, **fields) -> None:
    case("POST", "/v1/chat/completions", status, expect,
         json={"model": M, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields})


def without(field: str, endpoint: str = "completions") -> dict:
    base = {"model": M, "prompt": "Hi"} if endpoint == "completions" else {"model": M, "messages": [{"role": "user", "content": "Hi"}]}
    base.pop(field)
    return base


# --- malformed, non-object, empty, deep or huge bodies ---
for raw in [b"{", b"{'model': 1}", b"nul", b"[1, 2", b"\xff\xfe\x00", b"", b"   ", b'{"model": }', b'{"a": 1,}', b"{}}",
            b'{"model": "x", "prompt": "unterminated}']:
    case("POST", "/v1/completions", 400, "invalid_json", content=raw)
for raw in [b"[]", b"[1]", b'"text"', b"42", b"null", b"true", b"[{}]"]:
    case("POST", "/v1/chat/completions", 400, "invalid_json", content=raw)
for depth in (40, 1000, 100_000):
    case("POST", "/v1/completions", 400, "invalid_json", content=(b'{"model": "m", "prompt": ' + b"[" * depth + b"]" * depth + b"}"))
case("POST", "/v1/completions", 400, "invalid_json", content=b'{"a":' * 5000 + b"1" + b"}" * 5000)
case("POST", "/v1/completions", 413, "request_too_large", json={"model": M, "prompt": "x" * (MAX_BODY_BYTES + 10)})
case("POST", "/v1/chat/completions", 413, "request_too_large", content=b" " * (3 * MAX_BODY_BYTES))
case("POST", "/v1/completions", 400, "invalid_json", content=b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}")
case("POST", "/v1/completions", 400, "temperature", content=b'{"model": "{model}", "prompt": "x", "temperature": NaN}')
case("POST", "/v1/completions", 400, "top_p", content=b'{"model": "{model}", "prompt": "x", "top_p": Infinity}')
case("POST", "/v1/completions", 400, "max_tokens", content=b'{"model": "{model}", "prompt": "x", "max_tokens": 1e400}')

# --- missing fields and unknown fields ---
case("POST", "/v1/completions", 400, "model", json=without("model"))
case("POST", "/v1/completions", 400, "prompt", json=without("prompt"))
case("POST", "/v1/chat/completions", 400, "messages", json=without("messages", "chat"))
case("POST", "/v1/chat/completions", 400, "model", json=without("model", "chat"))
case("POST", "/v1/completions", 400, "model", json={})
for extra in ("foo", "functions", "tools", "response_format", "max_completion_tokens"):
    completion(400, None, **{extra: 1})
for extra in ("functions", "tools", "response_format", "best_of", "echo", "suffix"):
    chat(400, None, **{extra: [] if extra != "response_format" else {"type": "json_object"}})

# --- wrong types (completions) ---
for field, value in [("model", 5), ("model", None), ("prompt", 5), ("prompt", {"a": 1}), ("prompt", [1, "a"]), ("prompt", [[1], "a"]),
                     ("prompt", []), ("prompt", [[]]), ("prompt", [-1]), ("prompt", [[-5]]), ("prompt", None), ("prompt", [None]),
                     ("prompt", [1.5]), ("prompt", True),
                     ("max_tokens", "5"), ("max_tokens", 5.5), ("max_tokens", True), ("max_tokens", [2]),
                     ("temperature", "hot"), ("temperature", [1]), ("temperature", True), ("n", "2"), ("n", 1.5), ("stream", "yes"),
                     ("stream", 1), ("echo", 1), ("echo", "true"), ("logprobs", "5"), ("logprobs", True), ("logprobs", 1.0),
                     ("stop", 5), ("stop", [1, 2]), ("stop", {"a": "b"}), ("stop", [None]),
                     ("logit_bias", []), ("logit_bias", "x"), ("logit_bias", {"1": "5"}), ("logit_bias", {"1": None}),
                     ("logit_bias", {"1": [1]}), ("seed", "1"), ("seed", 1.5), ("user", 5), ("top_p", "1"), ("presence_penalty", "x"),
                     ("frequency_penalty", [0]), ("best_of", "2"), ("suffix", 5), ("stream_options", "x"),
                     ("stream_options", {"include_usage": "yes"}), ("stream_options", {"bogus": 1})]:
    completion(400, field, **{field: value})

# --- values out of range (completions) ---
for field, value in [("max_tokens", 0), ("max_tokens", -1), ("max_tokens", -10**9), ("n", 0), ("n", -1), ("n", 129), ("n", 10**6),
                     ("temperature", -0.1), ("temperature", -5), ("temperature", 2.1), ("temperature", 1e308), ("top_p", -0.1),
                     ("top_p", 1.5), ("logprobs", 6), ("logprobs", -1), ("logprobs", 100), ("presence_penalty", 3),
                     ("presence_penalty", -3), ("frequency_penalty", 2.5), ("best_of", 0), ("best_of", 200),
                     ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", ""), ("stop", "x" * 300),
                     ("logit_bias", {"50256": 101}), ("logit_bias", {"1": -101}), ("logit_bias", {"1": 1e9}),
                     ("logit_bias", {"abc": 1}), ("logit_bias", {"-1": 5}), ("logit_bias", {"1.5": 5}), ("logit_bias", {"50257": 5}),
                     ("logit_bias", {"999999999999": 1}), ("logit_bias", {" 1": 1}), ("logit_bias", {"": 1}),
                     ("logit_bias", {str(i): 1 for i in range(301)}), ("prompt", [50257]), ("prompt", [[10**9]]),
                     ("prompt", ["x"] * (MAX_PROMPTS + 1)), ("best_of", 3), ("suffix", "and then")]:
    completion(400, field, **{field: value})
completion(400, "n", prompt=["a"] * 20, n=128)
completion(400, "best_of", best_of=2, n=2, stream=True)

# --- unknown models and prompts longer than the context ---
for model in ("gpt-4", "", "glassbox-chat-2", "tinygpt", "gpt2", "x" * 5000, "../etc/passwd"):
    case("POST", "/v1/completions", 404, "model_not_found", json={"model": model, "prompt": "Hi"})
    case("POST", "/v1/chat/completions", 404, "model_not_found", json={"model": model, "messages": [{"role": "user", "content": "x"}]})
completion(400, "context_length_exceeded", prompt="word " * 500)
completion(400, "context_length_exceeded", max_tokens=10_000)
completion(400, "context_length_exceeded", max_tokens=10**12)
completion(400, "context_length_exceeded", max_tokens=2**70)
completion(400, "context_length_exceeded", prompt=["short", "word " * 500])
completion(400, "context_length_exceeded", prompt=[464] * 2000)
chat(400, "context_length_exceeded", messages=[{"role": "user", "content": "word " * 500}])
chat(400, "context_length_exceeded", max_tokens=100_000)

# --- chat messages and chat parameters ---
for messages, param in [([], "messages"), ("hi", "messages"), ({"role": "user"}, "messages"), ([1], "messages[0]"),
                        ([{"role": "wizard", "content": "x"}], "messages[0].role"), ([{"role": "user"}], "messages[0].content"),
                        ([{"role": "user", "content": None}], "messages[0].content"), ([{"role": "user", "content": 5}], "messages[0].content"),
                        ([{"role": "user", "content": []}], "messages[0].content"),
                        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}], "messages[0].content"),
                        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content"),
                        ([{"role": None, "content": "x"}], "messages[0].role"), ([{"role": "tool", "content": "x"}], "messages[0].role"),
                        ([{"role": "function", "content": "x"}], "messages[0].role"),
                        ([{"role": "user", "content": "x", "foo": 1}], None), ([{"content": "x"}], "messages[0].role"),
                        ([{"role": "user", "content": "x"}] * 2049, "messages"), ([{"role": "assistant", "content": None}], "messages[0].content")]:
    chat(400, param, messages=messages)
for field, value in [("top_logprobs", 21), ("top_logprobs", -1), ("top_logprobs", "5"), ("logprobs", "yes"), ("logprobs", 1),
                     ("max_tokens", 0), ("max_completion_tokens", -1), ("max_completion_tokens", "3"), ("n", 0), ("n", 200),
                     ("stop", ["1", "2", "3", "4", "5"]), ("temperature", 3), ("temperature", -1), ("top_p", 2),
                     ("logit_bias", {"50256": 101}), ("logit_bias", {"x": 1}), ("seed", "abc"), ("stream", "no")]:
    chat(400, field, **{field: value})
chat(400, "top_logprobs", top_logprobs=5)
chat(400, "top_logprobs", top_logprobs=5, logprobs=False)

# --- keys ---
for authorization in (None, "Bearer", "Bearer sk-wrong-key", "Basic abc", "bearer", "Token sk-x", "Bearer " + "x" * 10_000,
                      "Bearer {learner} extra"):
    headers = {} if authorization is None else {"Authorization": authorization}
    case("POST", "/v1/completions", 401, "invalid_api_key", json={"model": M, "prompt": "Hi"}, headers=headers, key=None)
case("GET", "/v1/models", 401, "invalid_api_key", key=None)
case("POST", "/v1/chat/completions", 401, "invalid_api_key", key=None, content=b"{not even json")  # keys come first
for method, path in [("POST", "/admin/swap"), ("GET", "/admin/log"), ("GET", "/admin/stats"), ("POST", "/admin/limits"),
                     ("GET", "/admin"), ("POST", "/admin/logit_bias_mode")]:
    case(method, path, 403, "permission_denied", json={"variant": "int8"})

# --- wrong methods and paths ---
for method, path, status in [("GET", "/v1/completions", 405), ("PUT", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405),
                             ("PATCH", "/v1/completions", 405), ("GET", "/v1/nope", 404), ("POST", "/v1/nope", 404), ("GET", "/nope", 404),
                             ("POST", "/health", 405), ("GET", "/v1", 404), ("GET", "/v1/models/unknown-model", 404),
                             ("GET", "/v1/engines/davinci/completions", 404), ("GET", "/docs", 404), ("DELETE", "/health", 405),
                             ("GET", "/redoc", 404)]:
    case(method, path, status)

# --- the operator's controls, with bad values ---
for path, body, param in [("/admin/swap", {"variant": 5}, "variant"), ("/admin/swap", {"variant": ""}, "variant"),
                          ("/admin/swap", {"variant": "x" * 5000}, "variant"), ("/admin/swap", {"variant": "no-such-model"}, "variant"),
                          ("/admin/swap", {"variant": "/no/such/folder"}, "variant"), ("/admin/swap", {}, "variant"),
                          ("/admin/logit_bias_mode", {"mode": "2023"}, "mode"), ("/admin/logit_bias_mode", {"mode": None}, "mode"),
                          ("/admin/limits", {"rpm": 0}, "rpm"), ("/admin/limits", {"tpm": "x"}, "tpm"), ("/admin/limits", {"rpm": -5}, "rpm")]:
    case("POST", path, 400, param, json=body, key="admin")
for query in ("?limit=-1", "?limit=abc", "?limit=0"):
    case("GET", "/admin/log" + query, 400, "limit", key="admin")


@pytest.fixture(scope="module")
def provider(request):
    return shared_provider(request, last_user=True)


@pytest.fixture(scope="module")
def http(provider):
    with httpx.Client(base_url=f"http://127.0.0.1:{provider.port}", timeout=60) as client:
        yield client


def _fill(value, provider):
    """Put the served name and the learner key into a request written before the server started."""
    if isinstance(value, str):
        return value.replace(M, provider.model_name).replace("{learner}", provider.api_key)
    if isinstance(value, bytes):
        return value.replace(M.encode(), provider.model_name.encode())
    if isinstance(value, list):
        return [_fill(item, provider) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, provider) for key, item in value.items()}
    return value


def send(http: httpx.Client, provider, method: str, path: str, request: dict) -> httpx.Response:
    request = dict(request)
    key = request.pop("key", "learner")
    headers = dict(request.pop("headers", {}))
    if key == "learner":
        headers.setdefault("Authorization", f"Bearer {provider.api_key}")
    elif key == "admin":
        headers.setdefault("Authorization", f"Bearer {provider.admin_key}")
    headers = _fill(headers, provider)
    if "json" in request:
        content = json.dumps(_fill(request["json"], provider)).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        content = _fill(request.get("content", b""), provider)
    return http.request(method, path, content=content, headers=headers)


def assert_openai_error(response: httpx.Response) -> dict:
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert response.headers.get("x-request-id", "").startswith("req_")
    return error


def test_the_hand_written_battery_gets_the_expected_4xx(provider, http) -> None:
    assert len(CASES) >= 200
    problems = []
    for method, path, request, status, expect in CASES:
        response = send(http, provider, method, path, request)
        where = f"{method} {path} {str(request)[:120]}"
        if response.status_code != status:
            problems.append(f"{where}: expected {status}, got {response.status_code} {response.text[:200]}")
            continue
        error = assert_openai_error(response)
        if expect is not None and expect != error["code"] and not (error["param"] or "").startswith(expect):
            problems.append(f"{where}: expected param or code {expect!r}, got {error}")
        secret_free = response.text
        assert provider.api_key not in secret_free and provider.admin_key not in secret_free
    assert not problems, "\n".join(problems)
    assert_still_serving(provider, http)


def test_requests_generated_from_the_openapi_schema_never_get_a_5xx(provider, http) -> None:
    schema = schemathesis.openapi.from_dict(http.get("/openapi.json").json())
    headers = {"Authorization": f"Bearer {provider.api_key}"}
    statuses: list[int] = []

    def check(case) -> None:
        response = case.call(base_url=f"http://127.0.0.1:{provider.port}", headers=headers, timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    for path, mode, examples in [("/v1/completions", GenerationMode.NEGATIVE, 40), ("/v1/chat/completions", GenerationMode.NEGATIVE, 40),
                                 ("/v1/completions", GenerationMode.POSITIVE, 10), ("/v1/chat/completions", GenerationMode.POSITIVE, 10)]:
        strategy = schema[path]["POST"].as_strategy(generation_mode=mode)

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(generated=strategy)
        def run(generated) -> None:
            if mode is GenerationMode.POSITIVE and isinstance(generated.body, dict):
                # keep valid requests small: a valid model name and a short generation (the schema allows any)
                generated.body["model"] = provider.model_name
                generated.body["max_tokens"] = 2
                generated.body.pop("max_completion_tokens", None)
                generated.body["n"] = min(generated.body.get("n") or 1, 4)
            check(generated)

        run()
    assert len(statuses) >= 100
    assert any(400 <= status < 500 for status in statuses) and any(status == 200 for status in statuses)
    assert_still_serving(provider, http)


def assert_still_serving(provider, http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    reply = provider.client(max_retries=0).completions.create(model=provider.model_name, prompt="The nurse", max_tokens=3)
    assert reply.usage.completion_tokens >= 1
