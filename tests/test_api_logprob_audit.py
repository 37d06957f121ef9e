"""Chapter 08's audit through the API's log-probabilities agrees with the open model.

One completions call per prompt (``logprobs=5``, the most OpenAI allows there) gives the
pronoun share exactly when both pronouns are in the top 5, and bounds it when one is not.
Against the course's provider serving TinyGPT, for every occupation and skew prompt, the
share from the API must equal the open model's normalised share (to 1e-4) when exact, and
contain it when bounded: agreement "up to top-k truncation". ``pair_share`` is also pinned on
made-up answers, so a bound on the wrong side cannot pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from glassbox import load_model
from glassbox.api import open_endpoint, pair_share
from glassbox.tinygpt import corpus

API_VARIABLES = ("GLASSBOX_API_BASE", "GLASSBOX_API_KEY", "GLASSBOX_API_MODEL", "GLASSBOX_REAL_API")


def test_pair_share_exact_when_both_are_shown() -> None:
    top = {" herself": math.log(0.6), " himself": math.log(0.2), " was": math.log(0.1)}
    assert pair_share(top, " herself", " himself") == pytest.approx((0.75, 0.75))
    assert pair_share(top, " himself", " herself") == pytest.approx((0.25, 0.25))


def test_pair_share_bounds_a_missing_token_by_the_smallest_shown() -> None:
    top = {" herself": math.log(0.8), " was": math.log(0.1), " had": math.log(0.05)}
    low, high = pair_share(top, " herself", " himself")
    assert high == 1.0 and low == pytest.approx(0.8 / (0.8 + 0.05))  # himself is at most 0.05
    low, high = pair_share(top, " himself", " herself")
    assert low == 0.0 and high == pytest.approx(0.05 / (0.05 + 0.8))
    assert pair_share({" was": 0.0}, " herself", " himself") == (0.0, 1.0)
    assert pair_share({}, " herself", " himself") == (0.0, 1.0)


@pytest.fixture(scope="module")
def open_model():
    torch.manual_seed(0)
    return load_model("tinygpt")


def test_api_logprob_audit_agrees_with_the_open_model(open_model, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in API_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    model, tokenizer = open_model
    prompts = [corpus.EOT + t.format(occupation=o) for o in corpus.OCCUPATIONS for t in corpus.SKEW_PROMPTS]
    target, other = (" " + p for p in corpus.PRONOUNS)
    with open_endpoint(model="tinygpt", max_retries=0) as api:
        choices, usages = api.complete_each(prompts, max_tokens=1, temperature=0, logprobs=5)
    assert len(choices) == len(prompts)
    exact_count = 0
    for text, choice in zip(prompts, choices):
        low, high = pair_share(dict(choice.logprobs.top_logprobs[0]), target, other)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits[0, -1]
        probs = torch.softmax(logits.float(), dim=-1)
        p_t, p_o = (probs[tokenizer(w)["input_ids"][0]].item() for w in (target, other))
        truth = p_t / (p_t + p_o)
        if low == high:
            exact_count += 1
            assert abs(low - truth) < 1e-4, (text, low, truth)
        else:
            assert low - 1e-6 <= truth <= high + 1e-6, (text, low, high, truth)
    assert exact_count >= len(prompts) // 2  # TinyGPT puts both pronouns in its top 5 almost always
