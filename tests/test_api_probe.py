"""glassbox.api.probe_endpoint: what an "OpenAI-compatible" endpoint really does, and the fallbacks.

Against the course's provider every documented feature must pass. Against a real uvicorn app
on 127.0.0.1 that mimics llama.cpp's measured quirks (tests/fake_llamacpp.py) each quirk must be
found and named, and the fallbacks must still give the statistic that was asked for. The same
fake with its quirks switched off must pass, so the probe tells the difference rather than
failing everything it does not know.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from glassbox.api import open_endpoint

sys.path.insert(0, str(Path(__file__).parent))
import fake_llamacpp  # noqa: E402
from test_provider_shared import shared_provider  # noqa: E402

API_VARIABLES = ("GLASSBOX_API_BASE", "GLASSBOX_API_KEY", "GLASSBOX_API_MODEL", "GLASSBOX_REAL_API",
                 "OPENAI_API_KEY")
DOCUMENTED = ("models.retrieve", "n", "prompt list", "logprobs", "echo", "chat top_logprobs", "limits")


@pytest.fixture(autouse=True)
def clean_api_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in API_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def course_provider(request):
    """The provider the API tests share, started once per test worker."""
    return shared_provider(request)


@pytest.fixture()
def llamacpp_like(monkeypatch: pytest.MonkeyPatch):
    with fake_llamacpp.serve() as (base_url, quirks):
        monkeypatch.setenv("GLASSBOX_API_BASE", base_url)
        monkeypatch.setenv("GLASSBOX_API_KEY", "no-key-needed-here")
        yield quirks


def test_course_provider_passes_every_documented_feature(monkeypatch, course_provider) -> None:
    monkeypatch.setenv("GLASSBOX_API_BASE", course_provider.base_url)
    monkeypatch.setenv("GLASSBOX_API_KEY", course_provider.api_key)
    with open_endpoint(max_retries=0) as api:
        capabilities = api.capabilities()
        failing = {f: capabilities.findings[f].seen for f in DOCUMENTED if not capabilities.works(f)}
        assert not failing, failing
        assert api.capabilities() is capabilities  # probed once
        table = capabilities.table()
        assert course_provider.api_key not in table
        for feature in DOCUMENTED:
            assert feature in table


def test_llamacpp_quirks_are_each_found_and_named(llamacpp_like) -> None:
    with open_endpoint(max_retries=2) as api:
        c = api.capabilities()
        assert api.model == fake_llamacpp.MODEL_NAME
    assert not c.works("models.retrieve") and "404" in c.findings["models.retrieve"].seen
    assert not c.works("n") and "n is ignored" in c.findings["n"].seen
    assert not c.works("prompt list") and "500" in c.findings["prompt list"].seen
    assert c.works("logprobs")
    assert not c.works("echo") and "not those of their tokens" in c.findings["echo"].seen
    assert not c.works("limits")
    for what in ("logprobs=6", "temperature=2.5", "logit_bias of 101"):
        assert what in c.findings["limits"].seen
    assert not c.works("chat top_logprobs") and "21 was accepted" in c.findings["chat top_logprobs"].seen
    assert not c.works("system_fingerprint") and not c.works("responses")
    # the probe never retries: the prompt list that gives 500 was sent once, not three times
    assert sum(isinstance(r.get("prompt"), list) for r in llamacpp_like.requests) == 1
    # every failing row says what the notebooks do instead
    assert all(f.fallback for f in c.findings.values() if not f.works)
    assert "NO" in c.table()


def test_the_same_fake_without_its_quirks_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    honest = fake_llamacpp.Quirks(ignore_n=False, refuse_prompt_list=False, no_model_retrieve=False,
                                  shift_echo=False, unchecked_limits=False)
    with fake_llamacpp.serve(honest) as (base_url, _):
        monkeypatch.setenv("GLASSBOX_API_BASE", base_url)
        monkeypatch.setenv("GLASSBOX_API_KEY", "no-key-needed-here")
        with open_endpoint(max_retries=0) as api:
            c = api.capabilities()
    for feature in ("models.retrieve", "n", "prompt list", "logprobs", "echo", "limits"):
        assert c.works(feature), (feature, c.findings[feature].seen)


def test_require_skips_with_one_sentence(llamacpp_like, capsys) -> None:
    with open_endpoint(max_retries=0) as api:
        assert api.capabilities().require("echo", "membership inference through the API") is False
        assert api.capabilities().require("logprobs", "reading log-probabilities") is True
    out = capsys.readouterr().out.strip()
    assert out.startswith("Skipped: membership inference through the API needs")
    assert out.count("\n") == 0 and "Traceback" not in out


def test_sampling_falls_back_to_one_request_per_sample(llamacpp_like) -> None:
    with open_endpoint(max_retries=0) as api:
        api.capabilities()
        before = len(llamacpp_like.requests)
        choices, usages, requests = api.sample("The nurse", 12, seed=0, max_tokens=1, temperature=1)
    assert len(choices) == 12 and requests == 12 and len(usages) == 12
    assert len(llamacpp_like.requests) - before == 12
    assert len({c.text for c in choices}) > 1  # each request had its own seed: real samples


def test_sampling_uses_n_where_it_works(course_provider, monkeypatch) -> None:
    monkeypatch.setenv("GLASSBOX_API_BASE", course_provider.base_url)
    monkeypatch.setenv("GLASSBOX_API_KEY", course_provider.api_key)
    with open_endpoint(max_retries=0) as api:
        choices, usages, requests = api.sample("The nurse", 200, seed=0, max_tokens=1, temperature=1)
    assert len(choices) == 200 and requests == 2  # 128 + 72: at most 128 choices per request


def test_prompt_lists_fall_back_to_one_request_per_prompt(llamacpp_like) -> None:
    prompts = ["The nurse", "It was a", "The fox ran"]
    with open_endpoint(max_retries=0) as api:
        choices, usages = api.complete_each(prompts, max_tokens=2, temperature=0, logprobs=1)
        singles = [api.client.completions.create(model=api.model, prompt=p, max_tokens=2, temperature=0)
                   .choices[0].text for p in prompts]
    assert [c.text for c in choices] == singles and len(usages) == len(prompts)


def test_bad_sample_size_is_refused_clearly(llamacpp_like) -> None:
    with open_endpoint(max_retries=0) as api:
        with pytest.raises(ValueError, match="n must be at least 1"):
            api.sample("The nurse", 0, seed=0)
