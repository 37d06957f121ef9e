"""The operator's tools: a moderation policy (``--moderation``, ``/v1/moderations``, blocked prompts
and replies), revoking a key, and chat templates, through the official openai client against a
real uvicorn process serving TinyGPT.

The reply the output filter must catch is not typed in: it is TinyGPT's own greedy
continuation, computed here from the same weights, and the policy is written from it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import openai
import pytest
import torch

from glassbox.loader import load_model
from glassbox.provider import start_provider
from glassbox.provider.chat import TURN_STOPS, chat_prompt, format_chat
from glassbox.provider.moderation import MAX_MODERATION_CHARS, MAX_MODERATION_INPUTS, PolicyError, load_policy, parse_policy
from glassbox.provider.process import ProviderError, ProviderStartError
from test_provider_shared import shared_provider

CHAT = [{"role": "user", "content": "Where does the nurse live?"}]
PROMPT = "Once upon a time, the nurse"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tinygpt", verbose=False)


@pytest.fixture(scope="module")
def greedy_reply(tiny) -> dict[str, str]:
    """TinyGPT's greedy chat reply and completion, and a word of each that its prompt does not contain."""
    model, tokenizer = tiny

    def greedy(prompt: str, new: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids.shape[1]:])

    chat_text = greedy(format_chat(CHAT), 12)
    for stop in TURN_STOPS:
        chat_text = chat_text.split(stop)[0]
    completion_text = greedy(PROMPT, 12)

    def new_word(text: str, prompt: str) -> str:
        words = [word.strip(".,!?;:\"'") for word in text.split()]
        fresh = [word for word in words if len(word) >= 4 and word.isalpha() and word.lower() not in prompt.lower()]
        assert fresh, f"TinyGPT's greedy reply {text!r} has no new word of 4+ letters to build the output policy from"
        return fresh[0]

    return {"chat": chat_text, "chat_word": new_word(chat_text, format_chat(CHAT)),
            "completion": completion_text, "completion_word": new_word(completion_text, PROMPT)}


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory, greedy_reply) -> str:
    policy = {
        "model": "glassbox-moderation-latest",
        "categories": {
            "vault": {"patterns": ["vault code", {"pattern": r"\bsecret\b", "weight": 0.3}], "threshold": 0.5},
            "reply-word": {"patterns": [rf"\b{greedy_reply['chat_word']}\b", rf"\b{greedy_reply['completion_word']}\b"]},
        },
    }
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    path.write_text(json.dumps(policy), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def provider(policy_file):
    with start_provider("tinygpt", n_keys=3, moderation=policy_file) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(provider) -> openai.OpenAI:
    return provider.client(max_retries=0)


def post(provider, path: str, key: str, **kwargs) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{provider.port}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs)


# ----- the policy file ---------------------------------------------------------------------------


def test_policy_scores_combine_weights_and_flag_at_the_threshold() -> None:
    policy = parse_policy({"categories": {"vault": {"patterns": [{"pattern": "vault", "weight": 0.3},
                                                                    {"pattern": "code", "weight": 0.4}], "threshold": 0.5}}})
    assert policy.classify("nothing here") == {"flagged": False, "categories": {"vault": False}, "category_scores": {"vault": 0.0}}
    one = policy.classify("the VAULT")  # case-insensitive
    assert one["category_scores"]["vault"] == pytest.approx(0.3) and not one["flagged"]
    both = policy.classify("the vault code")
    assert both["category_scores"]["vault"] == pytest.approx(1 - 0.7 * 0.6) and both["flagged"]


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"categories": {}}', "non-empty object"),
    ('{"categories": {"a b": {"patterns": ["x"]}}}', "category name"),
    ('{"categories": {"vault": {"patterns": ["(unclosed"]}}}', "category 'vault', pattern 0.*not a valid regular expression"),
    ('{"categories": {"vault": {"patterns": [{"pattern": "x", "weight": 2}]}}}', "pattern 0.*'weight' must be a number greater than 0"),
    ('{"categories": {"vault": {"patterns": ["x"], "threshold": 0}}}', "'threshold' must be a number"),
    ('{"categories": {"vault": {"patterns": []}}}', "'patterns' must be a non-empty list"),
    ('{"categories": {"vault": {"patterns": ["x"]}}, "apply_to": ["everything"]}', "'apply_to'"),
    ('{"categories": {"vault": {"patterns": ["x"]}}, "colour": "red"}', "unknown key 'colour'"),
])
def test_a_malformed_policy_is_refused_naming_the_problem(tmp_path, text: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match=problem):
        load_policy(path)
    # and the server refuses to start with it, at once (before loading any model), saying why
    started = subprocess.run([sys.executable, "-m", "glassbox.provider", "--port", "0", "--moderation", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert started.stderr.startswith("Error: ") and "bad.json" in started.stderr
    assert started.stdout == ""


def test_a_missing_policy_file_stops_start_provider_with_the_reason(tmp_path) -> None:
    with pytest.raises(ProviderStartError, match="Cannot read the moderation policy"):
        start_provider("tinygpt", moderation=tmp_path / "nowhere.json", startup_timeout=60)


# ----- /v1/moderations ---------------------------------------------------------------------------


def test_moderations_endpoint_answers_in_openais_shape(client) -> None:
    result = client.moderations.create(model="glassbox-moderation-latest", input=["What is the vault code?", "Hello there"])
    assert result.model == "glassbox-moderation-latest" and result.id.startswith("modr-")
    flagged, clean = result.results
    assert flagged.flagged is True and clean.flagged is False
    assert flagged.categories.model_extra["vault"] is True and flagged.category_scores.model_extra["vault"] == 1.0
    assert clean.categories.model_extra == {"vault": False, "reply-word": False}
    assert clean.category_scores.model_extra == {"vault": 0.0, "reply-word": 0.0}
    one = client.moderations.create(input="a secret")  # model may be left out; weight 0.3 < threshold 0.5
    assert one.results[0].flagged is False and one.results[0].category_scores.model_extra["vault"] == pytest.approx(0.3)
    parts = client.moderations.create(input=[{"type": "text", "text": "the VAULT CODE"}])
    assert parts.results[0].flagged is True


@pytest.mark.parametrize("body, status, problem", [
    ({"input": ["x"] * (MAX_MODERATION_INPUTS + 1)}, 400, f"at most {MAX_MODERATION_INPUTS}"),
    ({"input": "x" * (MAX_MODERATION_CHARS + 1)}, 400, "too long"),
    ({"input": []}, 400, "non-empty list"),
    ({"input": [3]}, 400, "input\\[0\\]"),
    ({"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}, 400, "only text"),
    ({}, 400, "Missing required parameter: 'input'"),
    ({"input": "x", "temperature": 1}, 400, "Unrecognized request argument supplied: temperature"),
    ({"input": "x", "model": "omni-moderation-latest"}, 404, "does not exist"),
])
def test_moderation_requests_over_the_limits_get_a_clear_4xx(provider, body, status: int, problem: str) -> None:
    response = post(provider, "/v1/moderations", provider.api_key, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert re.search(problem, error["message"]), error["message"]


def test_without_a_policy_the_moderation_endpoint_says_so(request) -> None:
    plain = shared_provider(request)
    with pytest.raises(openai.NotFoundError) as caught:
        plain.client(max_retries=0).moderations.create(input="the vault code")
    assert caught.value.code == "moderation_not_enabled" and "--moderation" in caught.value.message


# ----- blocked prompts and replies ---------------------------------------------------------------


def test_a_flagged_prompt_gets_400_content_filter_and_the_model_never_runs(provider, client) -> None:
    before = provider.stats()["tokens_generated"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=provider.model_name, messages=[{"role": "user", "content": "Tell me the vault code"}])
    assert caught.value.status_code == 400 and caught.value.code == "content_filter" and caught.value.param == "messages"
    assert "vault" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=provider.model_name, prompt=["harmless", "The vault code is"], max_tokens=3)
    assert caught.value.code == "content_filter" and caught.value.param == "prompt"
    assert provider.stats()["tokens_generated"] == before
    blocked = [entry for entry in provider.read_log() if entry.get("moderation", {}).get("stage") == "input"]
    assert len(blocked) >= 2 and all(entry["key_id"] == "key-1" and entry["status"] == 400 for entry in blocked)
    assert all(entry["moderation"]["flagged"] == ["vault"] for entry in blocked)


def test_a_flagged_reply_is_withheld_with_finish_reason_content_filter(provider, client, greedy_reply) -> None:
    chat = client.chat.completions.create(model=provider.model_name, messages=CHAT, max_tokens=12, temperature=0, logprobs=True)
    choice = chat.choices[0]
    assert choice.finish_reason == "content_filter" and choice.message.content is None and choice.logprobs is None
    assert chat.usage.completion_tokens > 0  # the tokens were generated (and counted) before the check
    completion = client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    assert completion.choices[0].finish_reason == "content_filter" and completion.choices[0].text == ""
    entries = [entry for entry in provider.read_log(5) if entry.get("moderation", {}).get("stage") == "output"]
    assert entries and all(entry["status"] == 200 and entry["moderation"]["flagged"] == ["reply-word"] for entry in entries)


def test_an_unflagged_reply_passes_unchanged(provider, client, tiny, policy_file) -> None:
    model, tokenizer = tiny
    policy = load_policy(policy_file)
    for prompt in ("Once upon a time, the king", "The teacher said", "In the morning", "Hello"):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:]).split("<|endoftext|>")[0]
        if not policy.classify(prompt + expected)["flagged"]:
            break
    else:
        pytest.fail("every candidate prompt's greedy reply is flagged by the test policy: choose other prompts")
    completion = client.completions.create(model=provider.model_name, prompt=prompt, max_tokens=4, temperature=0)
    assert completion.choices[0].finish_reason in {"length", "stop"}
    assert completion.choices[0].text == expected


def test_a_streamed_reply_is_checked_whole_before_any_of_it_is_sent(provider, client, greedy_reply) -> None:
    chunks = list(client.chat.completions.create(model=provider.model_name, messages=CHAT, max_tokens=12, temperature=0, stream=True))
    texts = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert texts == []  # not one piece of the flagged reply left the server
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "content_filter"
    # a reply that is not flagged still streams, in one piece at its end, equal to the non-streamed one
    messages = [{"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(model=provider.model_name, messages=messages, max_tokens=3, temperature=0)
    if whole.choices[0].finish_reason != "content_filter":
        streamed = list(client.chat.completions.create(model=provider.model_name, messages=messages, max_tokens=3, temperature=0, stream=True))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert text == whole.choices[0].message.content
    pieces = list(client.completions.create(model=provider.model_name, prompt=PROMPT, max_tokens=12, temperature=0, stream=True))
    assert "".join(piece.choices[0].text for piece in pieces if piece.choices) == ""
    assert [piece.choices[0].finish_reason for piece in pieces if piece.choices][-1] == "content_filter"


# ----- revoking a key ----------------------------------------------------------------------------


def test_revoking_a_key_makes_its_next_request_401_and_leaves_the_others(provider) -> None:
    doomed = provider.client(api_key=provider.api_keys[2], max_retries=0)
    kept = provider.client(api_key=provider.api_keys[1], max_retries=0)
    assert doomed.models.list().data[0].id == provider.model_name
    answer = provider.revoke_key("key-3")
    assert answer == {"object": "admin.key", "id": "key-3", "revoked": True}
    with pytest.raises(openai.AuthenticationError) as caught:
        doomed.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert kept.models.list().data[0].id == provider.model_name
    assert provider.revoke_key("key-3") == answer  # revoking twice changes nothing


def test_revoking_needs_the_admin_key_and_a_known_label(provider) -> None:
    unknown = post(provider, "/admin/keys/key-99/revoke", provider.admin_key)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "key_not_found" and "key-99" in unknown.json()["error"]["message"]
    learner = post(provider, "/admin/keys/key-2/revoke", provider.api_keys[1])
    assert learner.status_code == 403 and learner.json()["error"]["code"] == "permission_denied"
    with pytest.raises(ProviderError, match="HTTP 404"):
        provider.revoke_key("admin")  # the admin key is not a learner key
    assert provider.client(api_key=provider.api_keys[1], max_retries=0).models.list().data  # key-2 still works


# ----- chat templates ----------------------------------------------------------------------------


def test_a_tokenizer_with_a_chat_template_formats_the_chat_with_it(tiny) -> None:
    _, tokenizer = tiny
    assert chat_prompt(tokenizer, CHAT) == (format_chat(CHAT), TURN_STOPS)  # TinyGPT base: no template
    original = getattr(tokenizer, "chat_template", None)
    try:
        tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                                   "{% if add_generation_prompt %}<assistant>{% endif %}")
        messages = [{"role": "developer", "content": "Be brief."}, *CHAT]
        text, stops = chat_prompt(tokenizer, messages)
        assert text == "<system>Be brief.\n<user>Where does the nurse live?\n<assistant>"
        assert stops == ()
    finally:
        tokenizer.chat_template = original


def test_tinygpt_chat_is_served_through_its_chat_template() -> None:
    """The provider formats a chat with the tokenizer's template: the prompt it counts is the template's,
    and the reply is the model's own greedy answer to the templated prompt, computed here directly."""
    from glassbox.tinygpt import chat_data, chat_train

    model, tokenizer = load_model("tinygpt-chat", verbose=False)
    question = chat_data.harmless_prompts("heldout")[0]
    templated = tokenizer.apply_chat_template(chat_data.conversation(question), tokenize=False, add_generation_prompt=True)
    assert templated != format_chat(chat_data.conversation(question))
    expected = chat_train.generate_replies(model, tokenizer, [question], max_new_tokens=12)[0]
    with start_provider("tinygpt-chat") as handle:
        answer = handle.client(max_retries=0).chat.completions.create(
            model=handle.model_name, messages=chat_data.conversation(question), max_tokens=12, temperature=0)
    assert answer.usage.prompt_tokens == len(tokenizer(templated)["input_ids"])
    assert answer.choices[0].message.content.strip() == expected
