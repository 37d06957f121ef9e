"""The provider through the official openai client, against a real uvicorn process serving TinyGPT.

Every expected number is computed here from the same weights loaded directly (never typed
in): the API must return the model's own log-probabilities and greedy text. Clients use
``max_retries=0`` except where the client's retry after a 429 is the point.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import torch

from glassbox.loader import load_model
from glassbox.paths import TINYGPT_WEIGHTS_DIR
from test_provider_shared import shared_provider

PROMPT = "Once upon a time, the nurse"


@pytest.fixture(scope="module")
def provider(request):
    return shared_provider(request)


@pytest.fixture(scope="module")
def client(provider) -> openai.OpenAI:
    return provider.client(max_retries=0)


@pytest.fixture(scope="module")
def local():
    """The served weights, loaded directly: the reference for every number."""
    model, tokenizer = load_model("tinygpt", verbose=False)
    return model, tokenizer


def local_logprobs(local, ids: list[int], bias: dict[int, float] | None = None) -> torch.Tensor:
    """log_softmax of the raw logits after each prefix of ``ids`` (plus ``bias``, if given)."""
    model, _ = local
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    if bias:
        for token, value in bias.items():
            logits[:, token] += value
    return torch.log_softmax(logits, dim=-1)


def greedy_text(local, prompt: str, new_tokens: int) -> str:
    model, tokenizer = local
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:])


def raw(provider, method: str, path: str, key: str | None = "learner", **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if key == "learner":
        headers["Authorization"] = f"Bearer {provider.api_key}"
    elif key == "admin":
        headers["Authorization"] = f"Bearer {provider.admin_key}"
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.request(method, f"http://127.0.0.1:{provider.port}{path}", headers=headers, timeout=60, **kwargs)


# ----- what is served --------------------------------------------------------------------------


def test_health_and_models_show_only_a_provider_style_name(provider, client) -> None:
    assert raw(provider, "GET", "/health", key=None).json() == {"status": "ok"}
    listed = raw(provider, "GET", "/v1/models").json()
    assert [model["id"] for model in listed["data"]] == [provider.model_name]
    assert set(listed["data"][0]) == {"id", "object", "created", "owned_by"}
    assert "tiny" not in provider.model_name.lower() and "gpt2" not in provider.model_name.lower()
    assert client.models.retrieve(provider.model_name).id == provider.model_name
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="tinygpt", prompt="x", max_tokens=1)
    assert raised.value.code == "model_not_found"


def test_greedy_completion_is_the_models_greedy_text(provider, client, local) -> None:
    reply = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    expected = greedy_text(local, PROMPT, 12)
    if choice.finish_reason == "length":
        assert choice.text == expected
    else:  # the model ended the text early: same text up to there
        assert expected.startswith(choice.text)
    _, tokenizer = local
    assert reply.usage.prompt_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == provider.model_name and reply.object == "text_completion"


def test_echo_logprobs_are_log_softmax_of_the_models_logits(provider, client, local) -> None:
    _, tokenizer = local
    ids = tokenizer(PROMPT)["input_ids"]
    reply = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=1, temperature=0,
                                      logprobs=5, echo=True)
    logprobs = reply.choices[0].logprobs
    reference = local_logprobs(local, ids)
    assert logprobs.tokens[: len(ids)] == [tokenizer.decode([token]) for token in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for position in range(1, len(ids)):
        assert logprobs.token_logprobs[position] == pytest.approx(float(reference[position - 1, ids[position]]), abs=1e-4)
        top5 = reference[position - 1].topk(5)
        shown = logprobs.top_logprobs[position]
        for value, token in zip(top5.values.tolist(), top5.indices.tolist()):
            assert shown[tokenizer.decode([token])] == pytest.approx(value, abs=1e-4)
    generated = logprobs.token_logprobs[len(ids)]
    assert generated == pytest.approx(float(reference[-1].max()), abs=1e-4)  # greedy picked the top token
    assert reply.choices[0].text.startswith(PROMPT)
    offsets = logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert all(reply.choices[0].text[offset:].startswith(token) for offset, token in zip(offsets, logprobs.tokens))


def test_prompt_list_gives_one_choice_per_prompt_same_as_alone(provider, client) -> None:
    prompts = ["The cat", "Once upon a time in a small village there was", "A", "The teacher said that", "Rain"]
    batch = client.completions.create(model=provider.model_name, prompt=prompts, max_tokens=8, temperature=0, logprobs=2)
    assert [choice.index for choice in batch.choices] == list(range(len(prompts)))
    for prompt, choice in zip(prompts, batch.choices):
        alone = client.completions.create(model=provider.model_name, prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
        assert choice.text == alone.choices[0].text
        assert choice.logprobs.token_logprobs == pytest.approx(alone.choices[0].logprobs.token_logprobs, abs=1e-4)


def test_n_and_prompt_lists_are_indexed_prompt_major(provider, client) -> None:
    reply = client.completions.create(model=provider.model_name, prompt=["The cat", "The dog"], n=3, max_tokens=4, seed=5)
    assert [choice.index for choice in reply.choices] == list(range(6))
    by_token_ids = client.completions.create(model=provider.model_name, prompt=[[464, 3797]], max_tokens=4, seed=5, n=3)
    assert [choice.text for choice in by_token_ids.choices] == [choice.text for choice in reply.choices[:3]]  # [464, 3797] is "The cat"


def test_same_seed_same_text_and_other_seed_other_text(provider, client) -> None:
    def sample(seed: int) -> list[str]:
        reply = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=24, n=3, seed=seed, temperature=1.0)
        return [choice.text for choice in reply.choices]

    first = sample(11)
    assert sample(11) == first
    assert len(set(first)) > 1  # the n choices are different samples
    assert sample(12) != first


def test_stop_sequence_cuts_the_text_before_it(provider, client) -> None:
    free = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=20, temperature=0)
    text = free.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop and stop in text
    stopped = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "zzzz"])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_chat_uses_the_documented_format_and_returns_logprobs(provider, client, local) -> None:
    _, tokenizer = local
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is the nurse?"}]
    reply = client.chat.completions.create(model=provider.model_name, messages=messages, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    prompt = "System: Answer briefly.\nUser: Who is the nurse?\nAssistant:"
    assert reply.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and reply.object == "chat.completion"
    entries = choice.logprobs.content
    assert entries and all(len(entry.top_logprobs) == 3 for entry in entries)
    reference = local_logprobs(local, tokenizer(prompt)["input_ids"])
    assert entries[0].logprob == pytest.approx(float(reference[-1].max()), abs=1e-4)
    assert "".join(entry.token for entry in entries).lstrip(" ").startswith(choice.message.content[:5])
    assert bytes(entries[0].bytes).decode() == entries[0].token


def test_streamed_completion_equals_the_unstreamed_one(provider, client) -> None:
    settings = dict(model=provider.model_name, prompt=PROMPT, max_tokens=16, seed=3, logprobs=1)
    whole = client.completions.create(**settings)
    chunks = list(client.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    tokens = [token for chunk in chunks if chunk.choices and chunk.choices[0].logprobs for token in chunk.choices[0].logprobs.tokens]
    assert tokens == whole.choices[0].logprobs.tokens
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_chat_equals_the_unstreamed_one(provider, client) -> None:
    settings = dict(model=provider.model_name, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12, seed=8)
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(**settings, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens


# ----- logit_bias in both behaviours ------------------------------------------------------------


def test_logit_bias_changes_sampling_and_shows_in_logprobs_only_before_2024(provider, client, local) -> None:
    _, tokenizer = local
    ids = tokenizer(PROMPT)["input_ids"]
    reference = local_logprobs(local, ids)[-1]
    target = int(reference.argsort()[len(reference) // 2])  # a token of middling probability
    bias = {target: 30.0}
    biased = local_logprobs(local, ids, bias)[-1]
    request = dict(model=provider.model_name, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=5, logit_bias={str(target): 30})
    try:
        provider.set_logit_bias_mode("post-2024")
        after = client.completions.create(**request).choices[0]
        provider.set_logit_bias_mode("pre-2024")
        before = client.completions.create(**request).choices[0]
    finally:
        provider.set_logit_bias_mode("post-2024")
    name = tokenizer.decode([target])
    assert after.logprobs.tokens == [name] and before.logprobs.tokens == [name]  # the bias wins the argmax either way
    assert after.logprobs.token_logprobs[0] == pytest.approx(float(reference[target]), abs=1e-4)  # unbiased
    assert before.logprobs.token_logprobs[0] == pytest.approx(float(biased[target]), abs=1e-4)  # biased
    # before 2024, logprob differences inside the top 5 are logit differences plus the bias (Carlini et al. 2024)
    top = before.logprobs.top_logprobs[0]
    other = next(token for token in top if token != name)
    other_id = tokenizer(other)["input_ids"][0]
    assert top[name] - top[other] == pytest.approx(float(reference[target] - reference[other_id]) + 30, abs=1e-3)


def test_logit_bias_minus_100_bans_a_token(provider, client, local) -> None:
    _, tokenizer = local
    free = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0)
    token = free.choices[0].logprobs.tokens[0]
    (token_id,) = tokenizer(token)["input_ids"]
    reply = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0,
                                      logit_bias={str(token_id): -100})
    assert reply.choices[0].logprobs.tokens[0] != token


# ----- the operator's controls -------------------------------------------------------------------


def test_swapping_weights_changes_logprobs_under_the_same_name(provider, client) -> None:
    request = dict(model=provider.model_name, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0, echo=True)

    def scores() -> list[float]:
        reply = client.completions.create(**request)
        assert reply.model == provider.model_name
        return reply.choices[0].logprobs.token_logprobs[1:]

    original = scores()
    try:
        assert provider.swap_weights("int8")["variant"] == "int8"
        quantised = scores()
        assert provider.swap_weights("fp16")["variant"] == "fp16"
        half = scores()
        folder = provider.swap_weights(str(TINYGPT_WEIGHTS_DIR))  # any load_model name or folder
        assert folder["weights"] == str(TINYGPT_WEIGHTS_DIR) and folder["variant"] == "original"
        same_weights = scores()
    finally:
        provider.swap_weights("original")
    restored = scores()
    assert max(abs(a - b) for a, b in zip(original, quantised)) > 1e-3
    assert max(abs(a - b) for a, b in zip(original, half)) > 1e-5
    assert same_weights == pytest.approx(original, abs=1e-5)  # TinyGPT's own folder: the same weights
    assert restored == pytest.approx(original, abs=1e-5)
    assert provider.stats()["weights"] == "tinygpt"
    assert [model.id for model in client.models.list()] == [provider.model_name]


def test_admin_controls_need_the_admin_key(provider) -> None:
    learner = raw(provider, "POST", "/admin/swap", json={"variant": "int8"})
    assert learner.status_code == 403 and learner.json()["error"]["code"] == "permission_denied"
    nobody = raw(provider, "GET", "/admin/log", key="sk-wrong-key-0000")
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "invalid_api_key"
    assert raw(provider, "POST", "/admin/logit_bias_mode", json={"mode": "pre-2024"}).status_code == 403
    assert raw(provider, "GET", "/admin/logit_bias_mode", key="admin").json()["mode"] == "post-2024"
    bad = raw(provider, "POST", "/admin/swap", key="admin", json={"variant": "no-such-model"})
    assert bad.status_code == 400 and "no-such-model" in bad.json()["error"]["message"]


# ----- keys, limits, errors ----------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_the_key_is_never_echoed(provider) -> None:
    wrong = "sk-this-is-not-a-real-key-123"
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=provider.base_url, api_key=wrong, max_retries=0).completions.create(
            model=provider.model_name, prompt="x", max_tokens=1)
    assert raised.value.code == "invalid_api_key"
    assert wrong not in raised.value.response.text
    missing = raw(provider, "POST", "/v1/completions", key=None, json={"model": provider.model_name, "prompt": "x"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    basic = raw(provider, "GET", "/v1/models", key=None, headers={"Authorization": f"Basic {provider.api_key}"})
    assert basic.status_code == 401


def test_rate_limit_gives_429_with_headers_then_the_clients_retry_succeeds(provider) -> None:
    key = provider.api_keys[3]  # a key of its own: limits are per key
    request = dict(model=provider.model_name, prompt="Hi", max_tokens=1)
    strict = openai.OpenAI(base_url=provider.base_url, api_key=key, max_retries=0)
    try:
        provider.set_limits(rpm=30, tpm=None)  # a bucket of 30, refilled one every 2 s
        ok = strict.completions.with_raw_response.create(**request)
        assert ok.headers["x-ratelimit-limit-requests"] == "30"
        assert ok.headers["x-ratelimit-remaining-requests"] == "29"
        with pytest.raises(openai.RateLimitError) as raised:
            for _ in range(40):
                strict.completions.create(**request)
        error = raised.value
        assert error.code == "rate_limit_exceeded"
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 2
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        patient = openai.OpenAI(base_url=provider.base_url, api_key=key, max_retries=2)
        for _ in range(3):  # (if the bucket refilled between the 429 and the next call, the retry was not needed: again)
            response = patient.completions.with_raw_response.create(**request)
            assert response.parse().choices[0].finish_reason in {"length", "stop"}
            if response.retries_taken >= 1:
                break  # it got a 429, waited as the server said, and then succeeded
            with pytest.raises(openai.RateLimitError):
                for _ in range(40):
                    strict.completions.create(**request)
        assert response.retries_taken >= 1
        # another key still has its whole allowance
        assert provider.client(max_retries=0).completions.create(**request).usage.prompt_tokens >= 1
        provider.set_limits(rpm=None, tpm=50)
        with pytest.raises(openai.RateLimitError) as raised:
            strict.completions.create(model=provider.model_name, prompt="Hi", max_tokens=60)
        assert raised.value.response.headers["x-ratelimit-limit-tokens"] == "50"
    finally:
        provider.set_limits(rpm=None, tpm=None)


def test_prompt_longer_than_the_context_names_both_numbers(provider, client, local) -> None:
    model, tokenizer = local
    context = model.config.n_positions
    prompt = "the nurse and the teacher " * 40
    n_prompt = len(tokenizer(prompt)["input_ids"])
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=provider.model_name, prompt=prompt, max_tokens=16)
    assert raised.value.code == "context_length_exceeded"
    assert f"maximum context length is {context} tokens" in raised.value.message
    assert f"{n_prompt + 16} tokens ({n_prompt} in the prompt" in raised.value.message
    short = tokenizer.decode(tokenizer(prompt)["input_ids"][: context - 10])
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=provider.model_name, prompt=short, max_tokens=11)
    assert raised.value.code == "context_length_exceeded"
    assert client.completions.create(model=provider.model_name, prompt=short, max_tokens=10).usage.completion_tokens <= 10


def test_every_response_has_its_own_request_id(provider) -> None:
    responses = [
        raw(provider, "GET", "/health", key=None),
        raw(provider, "GET", "/v1/models"),
        raw(provider, "GET", "/v1/models", key="wrong-key-000000"),
        raw(provider, "GET", "/v1/nothing-here"),
        raw(provider, "PUT", "/v1/completions"),
        raw(provider, "POST", "/v1/completions", content=b"{not json"),
    ]
    ids = [response.headers.get("x-request-id") for response in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [response.status_code for response in responses] == [200, 200, 401, 404, 405, 400]


def test_request_log_keeps_prompts_and_counts_but_never_a_key(provider, client) -> None:
    marker = "a secret about the purple giraffe"
    client.completions.create(model=provider.model_name, prompt=marker, max_tokens=3, user="student-7")
    entry = next(entry for entry in reversed(provider.read_log()) if entry.get("prompt") == marker)
    assert entry["key_id"] == "key-1" and entry["status"] == 200 and entry["path"] == "/v1/completions"
    assert entry["usage"]["completion_tokens"] >= 1 and entry["parameters"]["user"] == "student-7"
    assert {"time", "model", "parameters", "usage", "weights"} <= set(entry)
    text = provider.log_path.read_text(encoding="utf-8")
    for secret in [*provider.api_keys, provider.admin_key]:
        assert secret not in text
    assert provider.api_key not in provider.server_log_path.read_text(encoding="utf-8")


def test_a_client_that_leaves_mid_stream_stops_its_generation(provider, client) -> None:
    before = provider.stats()["sequences_cancelled"]
    stream = client.completions.create(model=provider.model_name, prompt="The", max_tokens=120, stream=True,
                                       logit_bias={"50256": -100})  # no early end of text
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = provider.stats()
        if stats["sequences_cancelled"] > before and stats["active_sequences"] == 0:
            break
        time.sleep(0.05)
    assert provider.stats()["sequences_cancelled"] == before + 1
    entry = next(entry for entry in reversed(provider.read_log()) if entry.get("error") == "client_disconnected")
    assert entry["usage"]["completion_tokens"] < 120
    assert client.completions.create(model=provider.model_name, prompt="The", max_tokens=2).choices  # still serving


def test_concurrent_requests_share_forward_passes(provider) -> None:
    before = provider.stats()
    results: list[int] = []

    def one(key: str) -> None:
        own = openai.OpenAI(base_url=provider.base_url, api_key=key, max_retries=0)
        reply = own.completions.create(model=provider.model_name, prompt="The nurse", max_tokens=16,
                                       logit_bias={"50256": -100})
        results.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=one, args=(provider.api_keys[i % 3],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = provider.stats()
    assert results == [16] * 8
    tokens = after["tokens_generated"] - before["tokens_generated"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert tokens == 128 and passes < tokens  # several sequences per forward pass


def test_openapi_schema_describes_the_public_endpoints_only(provider) -> None:
    schema = raw(provider, "GET", "/openapi.json", key=None).json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(schema["paths"])
    assert not any(path.startswith("/admin") for path in schema["paths"])
    assert "n_positions" not in json.dumps(schema) and "tinygpt" not in json.dumps(schema).lower()
