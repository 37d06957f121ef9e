"""Chapter 06's checks: right answers pass, plausible wrong answers fail with their hint.

The cost and swap-detection checks run on real ``usage`` objects and logprob dicts; the
back-off check starts the course's real provider (a uvicorn process) and is tested
against its real 429 responses; the log-probability check runs on TinyGPT.
"""

from __future__ import annotations

import math
import time

import openai
import pytest
import torch
from openai.types import CompletionUsage

from glassbox.exercise_checks.black_box_api import (
    check_batch_cost,
    check_open_model_logprobs,
    check_weights_changed,
    check_with_backoff,
    read_prices,
    reference_batch_cost,
    reference_logprobs,
)
from glassbox.tinygpt import corpus
from checks.conftest import fails_with


# ----------------------------------------------------------------- batch_cost

USAGES = [CompletionUsage(prompt_tokens=12, completion_tokens=20, total_tokens=32),
          CompletionUsage(prompt_tokens=5, completion_tokens=1, total_tokens=6),
          CompletionUsage(prompt_tokens=40, completion_tokens=64, total_tokens=104)]


def cost_ok(usages, price):
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return (prompt * price["usd_per_1m_input"] + completion * price["usd_per_1m_output"]) / 1_000_000


def test_prices_are_read_as_numbers_with_their_date() -> None:
    rows = read_prices()
    assert rows and all(isinstance(r["usd_per_1m_input"], float) for r in rows)
    assert all(r["as_of"] and r["source"] for r in rows)


def test_batch_cost_reference_by_hand() -> None:
    price = {"usd_per_1m_input": 2.0, "usd_per_1m_output": 10.0}
    assert math.isclose(reference_batch_cost(USAGES, price), (57 * 2 + 85 * 10) / 1e6)


def test_batch_cost_accepts_right_answer(capsys) -> None:
    check_batch_cost(cost_ok, USAGES)
    out = capsys.readouterr().out
    assert out.startswith("✓") and "as of" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda us, p: cost_ok(us, {"usd_per_1m_input": p["usd_per_1m_output"],
                                "usd_per_1m_output": p["usd_per_1m_input"]}), "swapped"),
    (lambda us, p: sum(u.total_tokens for u in us) * p["usd_per_1m_input"] / 1e6, "input price"),
    (lambda us, p: sum(u.prompt_tokens for u in us) * p["usd_per_1m_input"] / 1e6, "left out the completion"),
    (lambda us, p: cost_ok(us, p) * 1000, "per MILLION"),
    (lambda us, p: cost_ok(us, p) * 1e6, "per million"),
    (lambda us, p: cost_ok(us[:1], p), "off by"),
    (lambda us, p: None, "return"),
    (lambda us, p: f"${cost_ok(us, p)}", "should be a number"),
    (lambda us, p: sum(u["prompt_tokens"] for u in us), "attributes"),
])
def test_batch_cost_known_mistakes(wrong, hint) -> None:
    fails_with(check_batch_cost, wrong, USAGES, match=hint)


def test_batch_cost_empty_batch_must_cost_nothing() -> None:
    def minimum_charge(usages, price):
        return max(cost_ok(usages, price), 1e-6)
    fails_with(check_batch_cost, minimum_charge, USAGES, match="empty batch")


# ----------------------------------------------------------------- weights_changed

BEFORE = {" herself": -0.11, " himself": -2.3, " was": -4.0, " would": -5.5, ".": -6.25}


def changed_ok(before, after, tol=1e-3):
    return set(before) != set(after) or any(abs(before[t] - after[t]) > tol for t in before)


def test_weights_changed_accepts_right_answer(capsys) -> None:
    after = {t: v + 0.02 for t, v in BEFORE.items()}
    check_weights_changed(changed_ok, BEFORE, dict(BEFORE), after)
    out = capsys.readouterr().out
    assert out.startswith("✓") and "the operator's swap in your `after` included" in out


@pytest.mark.parametrize("wrong, hint", [
    (lambda a, b, tol=1e-3: a != b, "tolerance"),
    (lambda a, b, tol=1e-3: list(a) != list(b), "order"),
    (lambda a, b, tol=1e-3: any(b[t] - a[t] > tol for t in a if t in b), "went DOWN"),
    (lambda a, b, tol=1e-3: any(abs(a[t] - b[t]) > tol for t in a if t in b), "token"),
    (lambda a, b, tol=1e-3: any(abs(a[t] - b[t]) > tol for t in a), "sets of tokens"),
    (lambda a, b, tol=1e-3: changed_ok(a, b, 1e-3), "tol argument"),
    (lambda a, b, tol=1e-3: any(abs(a[t] - b[t]) > tol for t in list(a)[:-1] if t in b),
     "every token"),
    (lambda a, b, tol=1e-3: "yes" if changed_ok(a, b, tol) else "", "True or False"),
    (lambda a, b: changed_ok(a, b), "keep the tol argument"),
])
def test_weights_changed_known_mistakes(wrong, hint) -> None:
    fails_with(check_weights_changed, wrong, BEFORE, dict(BEFORE), match=hint)


def test_weights_changed_real_swap_must_be_detected() -> None:
    def only_big_changes(a, b, tol=1e-3):
        return changed_ok(a, b, max(tol, 0.05))
    after = {t: v + 0.02 for t, v in BEFORE.items()}
    fails_with(check_weights_changed, only_big_changes, BEFORE, dict(BEFORE), after,
               match="before and after the operator's swap")


def test_weights_changed_accepts_numpy_and_torch_bools() -> None:
    check_weights_changed(lambda a, b, tol=1e-3: torch.tensor(changed_ok(a, b, tol)), BEFORE)


# ----------------------------------------------------------------- open_model_logprobs


PROMPT = "The nurse"


@torch.no_grad()
def logprobs_ok(model, tokenizer, prompt, tokens):
    ids = tokenizer(prompt)["input_ids"]
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], dim=-1)
    return {t: logprobs[tokenizer(t)["input_ids"][0]].item() for t in tokens}


@pytest.fixture(scope="module")
def api_top(tinygpt):
    model, tokenizer = tinygpt
    # what the provider would return: the model's own top 5, rounded like a JSON float
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], dim=-1)
    top = torch.topk(lp, 5).indices.tolist()
    return {tokenizer.decode([i]): round(float(lp[i]), 7) for i in top}


def test_logprob_reference_matches_api_shape(tinygpt, api_top) -> None:
    model, tokenizer = tinygpt
    ref = reference_logprobs(model, tokenizer, tokenizer(PROMPT)["input_ids"], list(api_top))
    assert max(abs(ref[t] - api_top[t]) for t in api_top) < 1e-6


def test_open_model_logprobs_accepts_right_answer(tinygpt, api_top, capsys) -> None:
    model, tokenizer = tinygpt
    check_open_model_logprobs(logprobs_ok, model, tokenizer, PROMPT, api_top)
    out = capsys.readouterr().out
    assert out.startswith("✓") and "Largest gap" in out


def with_transform(transform, position=-1, prefix="", over_listed=False):
    @torch.no_grad()
    def wrong(model, tokenizer, prompt, tokens):
        ids = tokenizer(prefix + prompt)["input_ids"]
        logits = model(input_ids=torch.tensor([ids])).logits[0, position]
        token_ids = [tokenizer(t)["input_ids"][0] for t in tokens]
        if over_listed:
            values = torch.log_softmax(logits[token_ids], dim=-1)
            return {t: float(v) for t, v in zip(tokens, values)}
        values = transform(logits)
        return {t: float(values[i]) for t, i in zip(tokens, token_ids)}
    return wrong


@pytest.mark.parametrize("wrong, hint", [
    (with_transform(lambda l: torch.softmax(l, -1)), "probabilities"),
    (with_transform(lambda l: l), "raw logits"),
    (with_transform(lambda l: torch.log2(torch.softmax(l, -1))), "base 2"),
    (with_transform(lambda l: torch.log_softmax(l, -1), position=0), "Off by one"),
    (with_transform(lambda l: torch.log_softmax(l, -1), prefix=corpus.EOT), "adds nothing"),
    (with_transform(None, over_listed=True), "listed tokens only"),
    (lambda m, t, p, tokens: {tok: -1.0 for tok in tokens}, "the open model gives"),
    (lambda m, t, p, tokens: {tok.strip(): -1.0 for tok in tokens}, "leading space"),
    (lambda m, t, p, tokens: [-1.0] * len(tokens), "dict"),
    (lambda m, t, p, tokens: {tok: torch.zeros(3) for tok in tokens}, "shape (3,)"),
])
def test_open_model_logprobs_known_mistakes(tinygpt, api_top, wrong, hint) -> None:
    model, tokenizer = tinygpt
    fails_with(check_open_model_logprobs, wrong, model, tokenizer, PROMPT, api_top, match=hint)


# ----------------------------------------------------------------- with_backoff (real 429s)

@pytest.fixture(scope="module")
def provider():
    from glassbox.provider import start_provider

    with start_provider("tinygpt") as handle:
        yield handle


def _backoff(wait):
    """A with_backoff that waits wait(retry_after, base_delay, attempt) before each retry."""
    def with_backoff(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
        for attempt in range(max_retries + 1):
            try:
                return request()
            except openai.RateLimitError as error:
                if attempt == max_retries:
                    raise
                sleep(wait(float(error.response.headers.get("retry-after", 0)), base_delay, attempt))
    return with_backoff


backoff_ok = _backoff(lambda retry_after, base_delay, attempt: max(retry_after, base_delay * 2 ** attempt))


def test_backoff_accepts_right_answer_on_its_own_provider(provider, monkeypatch, capsys) -> None:
    """Without a provider the check starts its own (here: the module's, handed out by a stand-in
    start_provider, so the test starts no second process) and lifts its limit at the end."""
    import contextlib

    import glassbox.provider

    started = []

    @contextlib.contextmanager
    def start_provider(*args, **kwargs):
        started.append(args)
        yield provider

    monkeypatch.setattr(glassbox.provider, "start_provider", start_provider)
    check_with_backoff(backoff_ok, rpm=60)  # a request a second: the real wait is 1 s, not 3
    out = capsys.readouterr().out
    assert started == [("tinygpt",)]
    assert out.startswith("✓") and "real rate limit" in out


def test_backoff_accepts_right_answer_on_a_given_provider_and_lifts_the_limit(provider, capsys) -> None:
    check_with_backoff(backoff_ok, provider)
    assert capsys.readouterr().out.startswith("✓")
    client = provider.client(max_retries=0)
    for _ in range(25):  # more than the check's limit of 20 a minute: the limit is gone again
        client.completions.create(model=provider.model_name, prompt="The nurse", max_tokens=1)


def no_retry(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    return request()


def one_retry_too_many(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    return backoff_ok(request, max_retries + 1, base_delay, sleep)


ignores_retry_after = _backoff(lambda retry_after, base_delay, attempt: base_delay * 2 ** attempt)
constant_wait = _backoff(lambda retry_after, base_delay, attempt: max(retry_after, base_delay))


def retries_everything(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    for attempt in range(max_retries + 1):
        try:
            return request()
        except Exception as error:  # noqa: BLE001 - the mistake under test
            if attempt == max_retries:
                raise
            headers = error.response.headers if hasattr(error, "response") else {}
            sleep(max(float(headers.get("retry-after", 0)), base_delay * 2 ** attempt))


def swallows(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    try:
        return backoff_ok(request, max_retries, base_delay, sleep)
    except openai.RateLimitError:
        return None


def new_error(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    try:
        return backoff_ok(request, max_retries, base_delay, sleep)
    except openai.RateLimitError:
        raise RuntimeError("gave up") from None


def sleeps_after_last(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    for attempt in range(max_retries + 1):
        try:
            return request()
        except openai.RateLimitError as error:
            sleep(max(float(error.response.headers["retry-after"]), base_delay * 2 ** attempt))
            if attempt == max_retries:
                raise


def real_time_sleep(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    return backoff_ok(request, max_retries, base_delay, lambda s: time.sleep(min(s, 0.01)))


def string_delay(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    for attempt in range(max_retries + 1):
        try:
            return request()
        except openai.RateLimitError as error:
            if attempt == max_retries:
                raise
            sleep(error.response.headers["retry-after"])


@pytest.mark.parametrize("wrong, hint", [
    (no_retry, "expected 4"),
    (one_retry_too_many, "expected 4"),
    (ignores_retry_after, "retry-after"),
    (constant_wait, "double"),
    (retries_everything, "Catch only openai.RateLimitError"),
    (swallows, "re-raise the RateLimitError"),
    (new_error, "itself"),
    (sleeps_after_last, "expected 3"),
    (real_time_sleep, "without calling the sleep"),
    (string_delay, "float()"),
])
def test_backoff_known_mistakes(provider, wrong, hint) -> None:
    fails_with(check_with_backoff, wrong, provider, match=hint)


def test_backoff_probe_needs_no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    def stub(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
        raise NotImplementedError
    started = []
    import glassbox.provider
    monkeypatch.setattr(glassbox.provider, "start_provider", lambda *a, **k: started.append(a) or 1 / 0)
    with pytest.raises(NotImplementedError):
        check_with_backoff(stub)
    assert not started  # no provider was started for an untouched exercise
    fails_with(check_with_backoff, lambda request, max_retries=4, base_delay=0.5, sleep=None: None,
               match="returned None")
    fails_with(check_with_backoff, lambda request: request(), match="keep those keyword arguments")


# ----------------------------------------------------------------- catalogue of wrong answers (issue 16)
# Each answer below passed the checks before issue 16 (or failed without naming its mistake).

def cost_per_call(usages, price):
    return cost_ok(usages, price) / len(usages) if usages else 0.0


def cost_rounded_to_a_cent(usages, price):
    return round(cost_ok(usages, price), 2)


@pytest.mark.parametrize("wrong, hint", [
    (cost_per_call, "average cost of one call"),
    (cost_rounded_to_a_cent, "off by"),
])
def test_batch_cost_catalogue(wrong, hint) -> None:
    fails_with(check_batch_cost, wrong, USAGES, match=hint)


def changed_relative(a, b, tol=1e-3):
    return set(a) != set(b) or any(abs(a[t] - b[t]) / abs(a[t]) > tol for t in a)


def changed_sum(a, b, tol=1e-3):
    return set(a) != set(b) or abs(sum(a.values()) - sum(b.values())) > tol


def changed_extremes(a, b, tol=1e-3):
    return set(a) != set(b) or abs(max(a.values()) - max(b.values())) > tol \
        or abs(min(a.values()) - min(b.values())) > tol


def changed_at_tol(a, b, tol=1e-3):
    return set(a) != set(b) or any(abs(a[t] - b[t]) >= tol for t in a)


@pytest.mark.parametrize("wrong, hint", [
    (changed_relative, "absolute tolerance"),
    (changed_sum, "opposite directions"),
    (changed_extremes, "opposite directions"),
    (changed_at_tol, "exactly tol is not enough"),
])
def test_weights_changed_catalogue(wrong, hint) -> None:
    fails_with(check_weights_changed, wrong, BEFORE, dict(BEFORE), match=hint)


def test_weights_changed_claims_the_swap_only_when_it_was_checked(capsys) -> None:
    """An `after` that did not change (the swap was invisible) is not checked, so not claimed."""
    check_weights_changed(changed_ok, BEFORE, dict(BEFORE), dict(BEFORE))
    assert "swap" not in capsys.readouterr().out
    check_weights_changed(changed_ok, BEFORE, dict(BEFORE), {t: v + 0.02 for t, v in BEFORE.items()})
    assert "the operator's swap in your `after` included" in capsys.readouterr().out


def logprobs_in_training_mode(model, tokenizer, prompt, tokens):
    model.train()
    return logprobs_ok(model, tokenizer, prompt, tokens)


def logprobs_leaving_gradients(model, tokenizer, prompt, tokens):
    ids = tokenizer(prompt)["input_ids"]
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], dim=-1)
    logprobs.max().backward()
    return {t: float(logprobs[tokenizer(t)["input_ids"][0]]) for t in tokens}


def logprobs_in_half_precision(model, tokenizer, prompt, tokens):
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].half().float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return {t: float(logprobs[tokenizer(t)["input_ids"][0]]) for t in tokens}


@pytest.mark.parametrize("wrong, hint", [
    (logprobs_in_training_mode, "training mode"),
    (logprobs_leaving_gradients, "left gradients"),
    (logprobs_in_half_precision, "you gave"),
])
def test_open_model_logprobs_catalogue(tinygpt, api_top, wrong, hint) -> None:
    model, tokenizer = tinygpt
    try:
        fails_with(check_open_model_logprobs, wrong, model, tokenizer, PROMPT, api_top, match=hint)
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("wait, hint", [
    (lambda retry_after, base, attempt: max(retry_after, base * 2 ** (attempt + 1)), "exponent is one too high"),
    (lambda retry_after, base, attempt: retry_after + base * 2 ** attempt, "added retry-after and the back-off"),
    (lambda retry_after, base, attempt: max(retry_after, base * (attempt + 1)), "grows linearly"),
    (lambda retry_after, base, attempt: max(retry_after, base * 2 ** attempt) * 1.9, "wait exactly"),
])
def test_backoff_catalogue(provider, wait, hint) -> None:
    fails_with(check_with_backoff, _backoff(wait), provider, match=hint)


def test_backoff_wait_mistakes_are_outside_the_tolerance() -> None:
    """On the check's inputs (the replayed retry-afters, base delays of 0.001 s and 10 x retry-after
    + 1 s), every named waiting mistake misses the right waits by far more than the 1e-6 s allowed,
    or gives them exactly, and each misses on at least one of the two."""
    from glassbox.exercise_checks.black_box_api import RETRY_AFTERS, _WAIT_MISTAKES, _waits

    retry_afters = list(RETRY_AFTERS[:3])
    for setting, hint in _WAIT_MISTAKES:
        gaps = []
        for base in (0.001, 10 * max(RETRY_AFTERS) + 1.0):
            right = [max(r, base * 2 ** i) for i, r in enumerate(retry_afters)]
            gaps.append(max(abs(w - r) for w, r in zip(_waits(retry_afters, base, **setting), right)))
        assert all(gap == 0 or gap >= 1e-3 for gap in gaps) and max(gaps) >= 1e-3, (hint, gaps)


def first_retry_after_only(request, max_retries=4, base_delay=0.5, sleep=time.sleep):
    """Reads retry-after from the first 429 and keeps it: passed while every 429 said 3 s."""
    first = None
    for attempt in range(max_retries + 1):
        try:
            return request()
        except openai.RateLimitError as error:
            if attempt == max_retries:
                raise
            first = float(error.response.headers["retry-after"]) if first is None else first
            sleep(max(first, base_delay * 2 ** attempt))


def test_backoff_reading_only_the_first_retry_after_is_rejected(provider) -> None:
    fails_with(check_with_backoff, first_retry_after_only, provider, match="first 429 only")


def test_backoff_replayed_429s_are_the_providers_own_with_other_retry_afters(provider) -> None:
    """The replayed 429s keep the provider's body and headers; only retry-after (and -ms) change."""
    from glassbox.exercise_checks.black_box_api import RETRY_AFTERS, _rate_limited, _replaying

    provider.set_limits(rpm=1)
    try:
        with provider.client(max_retries=0) as client:
            real = _rate_limited(lambda: client.completions.create(
                model=provider.model_name, prompt="The nurse", max_tokens=1), tries=5)
    finally:
        provider.set_limits(rpm=None)
    request = _replaying(real)
    seen = []
    for _ in RETRY_AFTERS:
        with pytest.raises(openai.RateLimitError) as info:
            request()
        headers = info.value.response.headers
        seen.append(float(headers["retry-after"]))
        assert float(headers["retry-after-ms"]) == 1000 * seen[-1]
        assert headers["x-ratelimit-limit-requests"] == real.response.headers["x-ratelimit-limit-requests"]
        assert info.value.body == real.body and info.value.status_code == 429
    assert seen == list(RETRY_AFTERS) and len(set(seen)) > 1


def test_open_model_logprobs_that_copies_the_apis_numbers(tinygpt, api_top) -> None:
    """An answer that reads the API's own numbers is right on the API's prompt only."""
    model, tokenizer = tinygpt
    fails_with(check_open_model_logprobs, lambda m, t, prompt, tokens: {x: api_top[x] for x in tokens},
               model, tokenizer, PROMPT, api_top, match="not from the API's numbers")
