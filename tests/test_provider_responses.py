"""``/v1/responses`` and ``system_fingerprint``, through two real clients (the official ``openai``
client and LangChain's ``ChatOpenAI``) against a real uvicorn process serving TinyGPT.

The module starts its own provider (it swaps the weights and hides the fingerprint, which
must not disturb the shared one). Every expected text and logprob is computed here from the
same weights loaded directly, never typed in. Clients use ``max_retries=0``. Nothing here
needs the network: LangChain is only asked to invoke and stream (no tiktoken counting).
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from glassbox.loader import load_model
from glassbox.provider.chat import TURN_STOPS, format_chat
from glassbox.provider.variants import quantise_int8_, system_fingerprint, weights_digest
from test_provider_shared import shared_provider

PROMPT = "Once upon a time, the nurse"
LOGPROBS = ["message.output_text.logprobs"]
STREAM_ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
STREAM_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def provider(request):
    """The provider the API tests share (TinyGPT, 4 keys), started once per test worker."""
    return shared_provider(request)


@pytest.fixture(scope="module")
def client(provider) -> openai.OpenAI:
    return provider.client(max_retries=0)


@pytest.fixture(scope="module")
def local():
    model, tokenizer = load_model("tinygpt", verbose=False)
    return model, tokenizer


def admin(provider, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{provider.port}{path}", timeout=60,
                         headers={"Authorization": f"Bearer {provider.admin_key}"}, **kwargs)


def expected_reply(local, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, str, int]:
    """(text, status, input tokens) the provider must give at temperature 0: the model's greedy
    continuation of the chat prompt, cut at a new turn or <|endoftext|>, without its one leading space."""
    model, tokenizer = local
    prompt = format_chat(messages)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    ended = tokenizer.eos_token_id in new
    if ended:
        new = new[: new.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(new)
    cuts = [text.index(stop) for stop in TURN_STOPS if stop in text]
    if cuts:
        text, ended = text[: min(cuts)], True
    text = text[1:] if text.startswith(" ") else text
    return text, "completed" if ended else "incomplete", ids.shape[1]


# ----- the Responses API with the openai client -------------------------------------------------


def test_plain_response_is_the_models_greedy_reply(provider, client, local) -> None:
    reply = client.responses.create(model=provider.model_name, input=PROMPT, max_output_tokens=12, temperature=0)
    text, status, input_tokens = expected_reply(local, [{"role": "user", "content": PROMPT}], 12)
    assert reply.output_text == text
    assert reply.status == status and reply.object == "response" and reply.model == provider.model_name
    if status == "incomplete":
        assert reply.incomplete_details.reason == "max_output_tokens"
    message = reply.output[0]
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    usage = reply.usage
    assert usage.input_tokens == input_tokens
    assert 1 <= usage.output_tokens <= 12 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0


def test_instructions_and_message_list_make_the_chat_prompt(provider, client, local) -> None:
    history = [{"role": "user", "content": "Tell me a story."},
               {"role": "assistant", "content": [{"type": "output_text", "text": "Once there was a cat."}]},
               {"role": "user", "content": [{"type": "input_text", "text": "What did the cat do?"}]}]
    reply = client.responses.create(model=provider.model_name, input=history, instructions="Answer briefly.",
                                    max_output_tokens=10, temperature=0)
    flat = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Tell me a story."},
            {"role": "assistant", "content": "Once there was a cat."}, {"role": "user", "content": "What did the cat do?"}]
    text, status, input_tokens = expected_reply(local, flat, 10)
    assert reply.usage.input_tokens == input_tokens
    assert reply.output_text == text and reply.status == status
    assert reply.instructions == "Answer briefly."


def test_logprobs_are_the_models_log_softmax(provider, client, local) -> None:
    model, tokenizer = local
    reply = client.responses.create(model=provider.model_name, input=PROMPT, max_output_tokens=6, temperature=0,
                                    top_logprobs=5, include=LOGPROBS)
    entries = reply.output[0].content[0].logprobs
    assert entries, "logprobs were asked for with include"
    ids = tokenizer(format_chat([{"role": "user", "content": PROMPT}]))["input_ids"]
    for entry in entries:
        with torch.no_grad():
            reference = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        top = reference.topk(5)
        chosen = int(top.indices[0])  # greedy
        assert entry.token == tokenizer.decode([chosen]) and entry.bytes == list(tokenizer.decode([chosen]).encode())
        assert entry.logprob == pytest.approx(float(top.values[0]), abs=1e-4)
        assert [alt.logprob for alt in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        ids.append(chosen)
    plain = client.responses.create(model=provider.model_name, input=PROMPT, max_output_tokens=6, temperature=0)
    assert not plain.output[0].content[0].logprobs  # only with include


def test_stream_sends_the_documented_events_and_the_same_text(provider, client) -> None:
    plain = client.responses.create(model=provider.model_name, input=PROMPT, max_output_tokens=10, temperature=0,
                                    top_logprobs=2, include=LOGPROBS)
    events = list(client.responses.create(model=provider.model_name, input=PROMPT, max_output_tokens=10, temperature=0,
                                          top_logprobs=2, include=LOGPROBS, stream=True))
    kinds = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert deltas, kinds
    final = "response.completed" if plain.status == "completed" else "response.incomplete"
    assert kinds == STREAM_ORDER + ["response.output_text.delta"] * len(deltas) + STREAM_END + [final]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in deltas)
    done = events[len(STREAM_ORDER) + len(deltas)]
    assert text == done.text == plain.output_text == events[-1].response.output_text
    assert [entry.logprob for event in deltas for entry in event.logprobs] == pytest.approx(
        [entry.logprob for entry in plain.output[0].content[0].logprobs], abs=1e-5)
    assert events[0].response.status == "in_progress" and events[-1].response.usage.total_tokens == plain.usage.total_tokens
    assert len({event.item_id for event in deltas} | {done.item_id}) == 1


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]}, "tools"),
    ({"store": True}, "store"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"background": True}, "background"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"temperature": 2.5}, "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
])
def test_unsupported_or_invalid_parameters_get_a_400_naming_them(provider, client, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=provider.model_name, input="Hi", **{"max_output_tokens": 2, **extra})
    error = raised.value
    assert error.status_code == 400 and error.body["param"] == param and error.body["type"] == "invalid_request_error"
    assert set(error.body) == {"message", "type", "param", "code"} and error.body["message"]


def test_non_text_input_unknown_arguments_and_long_input_get_clear_400s(provider, client) -> None:
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.org/cat.png"}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=provider.model_name, input=image)
    assert raised.value.body["param"].startswith("input[0].content") and "not supported" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=provider.model_name, input="Hi", extra_body={"seed": 1})
    assert raised.value.body["message"] == "Unrecognized request argument supplied: seed"
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=provider.model_name, input="word " * 200)
    assert raised.value.code == "context_length_exceeded" and raised.value.body["param"] == "input"


MALFORMED = [
    ({"input": None}, "input"), ({"input": 5}, "input"), ({"input": []}, "input"), ({"input": [{}]}, "input"),
    ({"input": [{"role": "user"}]}, "input"), ({"input": [{"role": "tool", "content": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": []}]}, "input"), ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input"),
    ({"instructions": 5}, "instructions"), ({"max_output_tokens": "5"}, "max_output_tokens"), ({"max_output_tokens": 1.0}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"), ({"top_p": 2}, "top_p"), ({"top_logprobs": -1}, "top_logprobs"),
    ({"include": "message.output_text.logprobs"}, "include"), ({"include": [5]}, "include"), ({"stream": "yes"}, "stream"),
    ({"metadata": {"a": 1}}, "metadata"), ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"text": {"format": {"type": "text"}, "x": 1}}, "text"), ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": {}}, "tools"), ({"store": "false"}, "store"), ({"model": 5}, "model"), ({"truncation": "auto"}, "truncation"),
]


@pytest.mark.parametrize("change, param", MALFORMED, ids=[f"{p}-{i}" for i, (_, p) in enumerate(MALFORMED)])
def test_malformed_bodies_get_an_openai_shaped_400_naming_the_field(provider, change: dict, param: str) -> None:
    body = {"model": provider.model_name, "input": "Hi", "max_output_tokens": 2, **change}
    reply = httpx.post(f"http://127.0.0.1:{provider.port}/v1/responses", json=body, timeout=60,
                       headers={"Authorization": f"Bearer {provider.api_key}"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"] or "").startswith(param), error


def test_a_body_that_is_not_a_json_object_gets_a_400(provider) -> None:
    for content in (b"[1, 2]", b"{not json", b""):
        reply = httpx.post(f"http://127.0.0.1:{provider.port}/v1/responses", content=content, timeout=60,
                           headers={"Authorization": f"Bearer {provider.api_key}", "Content-Type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json", reply.text


def test_bad_key_unknown_model_and_retrieval_errors(provider, client) -> None:
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{provider.port}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.responses.create(model=provider.model_name, input="Hi")
    assert raised.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="gpt-4o", input="Hi")
    assert raised.value.code == "model_not_found" and raised.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.retrieve("resp_123")
    assert "does not store" in raised.value.body["message"]


def test_rate_limits_and_request_log_cover_responses(provider) -> None:
    second = openai.OpenAI(base_url=f"http://127.0.0.1:{provider.port}/v1", api_key=provider.api_keys[1], max_retries=0)
    provider.set_limits(rpm=1)
    try:
        second.responses.create(model=provider.model_name, input="Hi", max_output_tokens=1)
        with pytest.raises(openai.RateLimitError) as raised:
            second.responses.create(model=provider.model_name, input="Hi", max_output_tokens=1)
        assert raised.value.code == "rate_limit_exceeded" and "retry-after" in raised.value.response.headers
    finally:
        provider.set_limits()
    entries = [entry for entry in provider.read_log() if entry["path"] == "/v1/responses" and entry.get("key_id") == "key-2"]
    assert [entry["status"] for entry in entries] == [200, 429]
    assert entries[0]["parameters"]["input"] == "Hi" and entries[0]["usage"]["prompt_tokens"] >= 1
    assert "weights" in entries[0]


# ----- system_fingerprint -----------------------------------------------------------------------


def test_fingerprint_is_a_digest_of_the_weights(local) -> None:
    model, _ = local
    again, _ = load_model("tinygpt", verbose=False)
    assert weights_digest(again) == weights_digest(model)  # the same numbers give the same digest
    quantise_int8_(again)
    assert weights_digest(again) != weights_digest(model)
    fingerprint = system_fingerprint("tinygpt", "original", weights_digest(model))
    assert fingerprint.startswith("fp_") and len(fingerprint) == 13 and "tiny" not in fingerprint
    assert system_fingerprint("tinygpt", "int8", weights_digest(model)) != fingerprint


def _chat_fingerprint(provider, client, stream: bool = False) -> str | None:
    if stream:
        chunks = list(client.chat.completions.create(model=provider.model_name, messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=2, stream=True))
        found = {chunk.system_fingerprint for chunk in chunks}
        assert len(found) == 1, found
        return found.pop()
    return client.chat.completions.create(model=provider.model_name, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2).system_fingerprint


def _response_fingerprint(provider, client) -> str | None:
    return client.responses.create(model=provider.model_name, input="Hi", max_output_tokens=2).system_fingerprint


def test_fingerprint_is_stable_changes_on_a_swap_and_can_be_hidden(provider, client, local) -> None:
    first = _chat_fingerprint(provider, client)
    assert first is not None and first.startswith("fp_")
    assert _chat_fingerprint(provider, client) == first == _chat_fingerprint(provider, client, stream=True)
    assert _response_fingerprint(provider, client) == first
    model, _ = local
    assert first == system_fingerprint("tinygpt", "original", weights_digest(model))  # derived from what is served
    try:
        provider.swap_weights("int8")
        swapped = _chat_fingerprint(provider, client)
        assert swapped is not None and swapped != first
        assert _response_fingerprint(provider, client) == swapped
        assert admin(provider, "POST", "/admin/system_fingerprint", json={"shown": False}).json()["shown"] is False
        assert _chat_fingerprint(provider, client) is None
        assert _chat_fingerprint(provider, client, stream=True) is None
        assert _response_fingerprint(provider, client) is None
        assert admin(provider, "GET", "/admin/system_fingerprint").json()["system_fingerprint"] == swapped  # the operator still sees it
    finally:
        admin(provider, "POST", "/admin/system_fingerprint", json={"shown": True})
        provider.swap_weights("original")
    assert _chat_fingerprint(provider, client) == first  # the same weights again: the same fingerprint


def test_only_the_operator_can_hide_the_fingerprint(provider) -> None:
    reply = httpx.post(f"http://127.0.0.1:{provider.port}/admin/system_fingerprint", json={"shown": False}, timeout=60,
                       headers={"Authorization": f"Bearer {provider.api_key}"})
    assert reply.status_code == 403 and reply.json()["error"]["code"] == "permission_denied"
    assert admin(provider, "POST", "/admin/system_fingerprint", json={"shown": "no"}).status_code == 400


# ----- LangChain as a second real client ---------------------------------------------------------


@pytest.mark.parametrize("use_responses_api", [False, True], ids=["chat_completions", "responses_api"])
def test_langchain_chat_openai_gets_the_same_reply(provider, client, use_responses_api: bool) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=provider.model_name, base_url=f"http://127.0.0.1:{provider.port}/v1", api_key=provider.api_key,
                     temperature=0, max_tokens=8, max_retries=0, use_responses_api=use_responses_api)
    expected = client.responses.create(model=provider.model_name, input=PROMPT, max_output_tokens=8, temperature=0)
    message = llm.invoke(PROMPT)
    assert message.text == expected.output_text
    assert message.usage_metadata["input_tokens"] == expected.usage.input_tokens
    assert message.usage_metadata["output_tokens"] == expected.usage.output_tokens
    assert "".join(chunk.text for chunk in llm.stream(PROMPT)) == expected.output_text
    if not use_responses_api:
        assert message.response_metadata["system_fingerprint"] == expected.system_fingerprint


# ----- the operator's moderation policy applies as on chat ---------------------------------------


def test_moderation_blocks_a_flagged_input_and_withholds_a_flagged_reply(tmp_path) -> None:
    import json

    from glassbox.provider import start_provider

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"categories": {
        "vault": {"patterns": ["vault code"]},
        "reply": {"patterns": ["^(?!User:|System:)."]},  # any reply; never a prompt, which starts with a role
    }}), encoding="utf-8")
    with start_provider("tinygpt", moderation=policy) as handle:
        client = handle.client(max_retries=0)
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=handle.model_name, input="Tell me the vault code", max_output_tokens=4)
        assert raised.value.code == "content_filter" and raised.value.body["param"] == "input"
        reply = client.responses.create(model=handle.model_name, input=PROMPT, max_output_tokens=6, temperature=0,
                                        top_logprobs=2, include=LOGPROBS)
        assert reply.status == "incomplete" and reply.incomplete_details.reason == "content_filter"
        assert reply.output_text == "" and not reply.output[0].content[0].logprobs
        assert reply.usage.output_tokens >= 1  # the tokens were generated, and are counted
        events = list(client.responses.create(model=handle.model_name, input=PROMPT, max_output_tokens=6, temperature=0,
                                              stream=True))
        assert not [event for event in events if event.type == "response.output_text.delta"]
        assert events[-1].type == "response.incomplete" and events[-1].response.incomplete_details.reason == "content_filter"
        logged = [entry for entry in handle.read_log() if entry["path"] == "/v1/responses"]
        assert [entry.get("moderation", {}).get("stage") for entry in logged] == ["input", "output", "output"]
