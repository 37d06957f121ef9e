"""Checks for chapter 06, "Using a model you cannot see".

Each ``check_*`` function calls the learner's function and compares the result with a
reference computed here: from real ``usage`` objects and the dated price table, from
real 429 responses of the course's provider, from logprobs the provider returned, or
from the open model's exact distribution. Known mistakes (prices per thousand instead of
per million tokens, input and output prices swapped, retrying forever, ignoring
``retry-after``, probabilities instead of log-probabilities...) are computed from the
same inputs, so their hints fire for whichever model is loaded.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import openai
import torch
from openai.types import CompletionUsage

from glassbox.exercise_checks.feedback import (
    ExerciseFailed,
    as_number,
    call_learner,
    check_number,
    check_type,
    fail,
    passed,
)
from glassbox.paths import DATA_DIR

__all__ = [
    "PRICE_COLUMNS",
    "check_batch_cost",
    "check_open_model_logprobs",
    "check_weights_changed",
    "check_with_backoff",
    "read_prices",
    "reference_batch_cost",
    "reference_logprobs",
    "reference_weights_changed",
]

PRICE_COLUMNS: tuple[str, ...] = ("usd_per_1m_input", "usd_per_1m_output", "usd_per_1m_cached_input")
"""The numeric columns of data/api_prices.csv (US dollars per million tokens)."""


# --------------------------------------------------------------------------- exercise 1

def read_prices(path: str | Path = DATA_DIR / "api_prices.csv") -> list[dict[str, Any]]:
    """The rows of the price table, with the price columns as floats (None where empty)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in PRICE_COLUMNS:
            row[column] = float(row[column]) if row.get(column, "").strip() else None
    return rows


def reference_batch_cost(usages: Sequence[Any], price: Mapping[str, Any]) -> float:
    """Dollars for a batch of calls: prompt tokens at the input price, completion tokens at the output price."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return (prompt * price["usd_per_1m_input"] + completion * price["usd_per_1m_output"]) / 1e6


def _cost_mistakes(usages: Sequence[Any], price: Mapping[str, Any]) -> list[tuple[float, str]]:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    total = sum(u.total_tokens for u in usages)
    p_in, p_out = price["usd_per_1m_input"], price["usd_per_1m_output"]
    return [
        ((prompt * p_out + completion * p_in) / 1e6,
         "The input and output prices are swapped: prompt_tokens are input, "
         "completion_tokens are output."),
        (total * p_in / 1e6, "You charged every token at the input price. Output (completion) "
                             "tokens have their own, higher price."),
        (total * p_out / 1e6, "You charged every token at the output price. Prompt tokens are "
                              "charged at the input price."),
        (prompt * p_in / 1e6, "You left out the completion (output) tokens."),
        (completion * p_out / 1e6, "You left out the prompt (input) tokens."),
        (total * (p_in + p_out) / 1e6, "You charged every token twice, at both prices. Use "
                                       "prompt_tokens and completion_tokens, not total_tokens."),
        ((prompt * p_in + completion * p_out) / 1e3,
         "The table's prices are per MILLION tokens: divide by 1,000,000, not 1,000."),
        (prompt * p_in + completion * p_out, "The table's prices are per million tokens: "
                                             "divide by 1,000,000."),
        ((prompt * p_in + completion * p_out) / 1e6 / max(len(usages), 1),
         "That is the average cost of one call: the batch costs the sum over all its calls."),
    ]


_USAGE_HINT = ("Each usage is an object: usage.prompt_tokens and usage.completion_tokens "
               "(attributes, not usage['prompt_tokens']). The price row is a dict of floats: "
               "price['usd_per_1m_input'] and price['usd_per_1m_output'].")


def check_batch_cost(batch_cost: Callable[..., Any], usages: Sequence[Any],
                     prices: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Check ``batch_cost(usages, price) -> float`` (US dollars).

    ``usages`` are the ``usage`` objects of real calls; the check prices them with every
    row of ``data/api_prices.csv`` (read here), and also prices a made-up batch and an
    empty one.
    """
    rows = list(prices) if prices is not None else read_prices()
    usages = list(usages)
    for usage in usages:
        if not hasattr(usage, "prompt_tokens"):
            fail("The check needs the `usage` objects of your calls (response.usage), got "
                 f"{type(usage).__name__}.")
    made_up = [CompletionUsage(prompt_tokens=1200, completion_tokens=300, total_tokens=1500),
               CompletionUsage(prompt_tokens=7, completion_tokens=1, total_tokens=8)]
    cases = [(f"your {len(usages)} calls priced as {row['model']} (as of {row['as_of']})", usages, row)
             for row in rows]
    cases += [("a made-up batch of 1,207 prompt and 301 completion tokens", made_up, rows[0]),
              ("an empty batch", [], rows[0])]
    for label, batch, row in cases:
        expected = reference_batch_cost(batch, row)
        got = call_learner(batch_cost, list(batch), row, name="batch_cost",
                           hints={AttributeError: _USAGE_HINT, TypeError: _USAGE_HINT})
        check_number(got, expected, f"batch_cost for {label}",
                     known_mistakes=lambda: _cost_mistakes(batch, row),
                     rel_tol=1e-9, abs_tol=1e-15,
                     hint="cost = (sum of prompt_tokens × input price + sum of completion_tokens "
                          "× output price) / 1,000,000.")
    first = rows[0]
    passed(f"batch_cost: right for your {len(usages)} calls at all {len(rows)} prices of the table "
           f"(e.g. ${reference_batch_cost(usages, first):.6f} at {first['model']}'s price as of "
           f"{first['as_of']}), for a made-up batch and for an empty one.")


# --------------------------------------------------------------------------- exercise 2

BACKOFF_RPM = 20
"""The rate limit the back-off check sets: 20 requests per minute per key, so the
allowance refills by one request every 3 seconds (the longest real wait of the check)."""


def _rate_limited(request: Callable[[], Any], tries: int) -> openai.RateLimitError:
    """Call ``request`` until the provider answers 429; return that error."""
    for _ in range(tries):
        try:
            request()
        except openai.RateLimitError as error:
            return error
    raise RuntimeError(f"the provider did not answer 429 within {tries} requests")


def _retry_after(error: openai.RateLimitError) -> float:
    value = error.response.headers.get("retry-after")
    return float(value) if value is not None else 0.0


class _Recorder:
    """A fake ``sleep`` that records the delays it is asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(_as_delay(seconds))


class _RealSleep(_Recorder):
    """``time.sleep`` that also records each delay (capped, so a check cannot hang)."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = cap

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        time.sleep(min(self.delays[-1], self.cap))


def _as_delay(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ExerciseFailed(f"with_backoff called sleep({seconds!r}); expected a number of seconds.\n"
                             "Hint: error.response.headers['retry-after'] is a string: float() it.")
    if math.isnan(seconds) or seconds < 0:
        raise ExerciseFailed(f"with_backoff called sleep({seconds!r}); a delay must be >= 0 seconds.")
    return float(seconds)


class _CountingRequest:
    """Wraps a request: counts calls and successes, keeps every error the provider sent."""

    def __init__(self, request: Callable[[], Any]) -> None:
        self.request = request
        self.calls = 0
        self.successes = 0
        self.errors: list[openai.APIStatusError] = []

    def __call__(self) -> Any:
        self.calls += 1
        try:
            result = self.request()
        except openai.APIStatusError as error:
            self.errors.append(error)
            raise
        self.successes += 1
        return result


def _run_backoff(with_backoff: Callable[..., Any], request: _CountingRequest, sleep: _Recorder,
                 **kwargs: Any) -> tuple[Any, BaseException | None]:
    """Call the learner's wrapper; return (result, the exception it let out or None)."""
    try:
        return with_backoff(request, sleep=sleep, **kwargs), None
    except NotImplementedError:
        raise
    except ExerciseFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - inspected by the caller
        return None, exc


def check_with_backoff(with_backoff: Callable[..., Any], provider: Any = None, *,
                       rpm: int = BACKOFF_RPM) -> None:
    """Check ``with_backoff(request, max_retries=4, base_delay=0.5, sleep=time.sleep)``
    against the course provider's real 429 responses.

    ``provider`` is the notebook's running course provider (``api.provider``): the check
    lowers its rate limit to ``rpm`` requests per minute per key and lifts it again at the
    end. Without one (another API is in use), the check starts its own provider serving
    TinyGPT, whatever model the notebook uses: a rate limit counts requests, not weights.
    It uses up the limit, then checks that the wrapper returns a successful call's result
    at once; retries a rate-limited request exactly ``max_retries`` times and then
    re-raises the RateLimitError; before each retry waits exactly max(that 429's
    ``retry-after``, ``base_delay * 2**attempt``) seconds (to 1e-6 s, once with a base delay
    below retry-after and once above it, so that an exponent one too high, a sum instead of the
    maximum or a linear growth each miss); re-raises other errors (a wrong key,
    a prompt too long) at once; and, really waiting, gets through once the limit allows.
    While the check runs, its ``sleep`` records the delays; only the last case really sleeps.
    """
    # 0. a request that succeeds: returned at once, no sleep (also: not attempted yet?)
    sleep = _Recorder()
    result = call_learner(with_backoff, lambda: "the result", sleep=sleep, name="with_backoff",
                          hints={TypeError: "The check calls with_backoff(request, max_retries=..., "
                                            "base_delay=..., sleep=...): keep those keyword "
                                            "arguments in your signature."})
    if result != "the result":
        fail(f"with_backoff returned {result!r:.60} for a request that succeeded at once; expected "
             "what the request returned.", "return request() when it does not raise.")
    if sleep.delays:
        fail(f"with_backoff slept {sleep.delays} before a request that had not failed.",
             "Only wait after a RateLimitError.")

    with contextlib.ExitStack() as stack:
        if provider is None:
            from glassbox.provider import start_provider

            provider = stack.enter_context(start_provider("tinygpt", rpm=rpm))
        else:
            provider.set_limits(rpm=rpm)
            stack.callback(provider.set_limits, rpm=None)
        client = stack.enter_context(provider.client(max_retries=0))
        waits = _backoff_cases(with_backoff, provider, client, rpm)
    passed(f"with_backoff: before each of 3 retries it waited max(retry-after, base_delay × 2^attempt) "
           f"seconds (to the microsecond, with a base delay below and one above retry-after), "
           f"stopped after max_retries and re-raised the 429, re-raised a 401 and a 400 at once, "
           f"and got through the provider's real rate limit ({rpm} requests per minute) after "
           f"{waits} wait(s).")


def _wait_variants(retry_afters: list[float], base_delay: float) -> list[tuple[list[float], str]]:
    """The waits of the usual back-off mistakes, each with its hint."""
    n = len(retry_afters)
    return [
        ([max(r, base_delay * 2 ** (i + 1)) for i, r in enumerate(retry_afters)],
         "Your exponent is one too high: before the first retry (attempt 0) wait base_delay × 2^0 "
         "= base_delay, then 2×, 4× it."),
        ([r + base_delay * 2 ** i for i, r in enumerate(retry_afters)],
         "You added retry-after and the back-off. Wait the larger of the two: "
         "max(retry_after, base_delay * 2 ** attempt)."),
        ([base_delay * 2 ** i for i in range(n)],
         "You ignored retry-after: the server says how long to wait. Wait at least that long: "
         "max(retry_after, base_delay * 2 ** attempt)."),
        ([max(retry_afters[0], base_delay * 2 ** i) for i in range(n)],
         "You read retry-after from the first 429 only: each 429 brings its own; read it from the "
         "error you just caught."),
        ([max(r, base_delay) for r in retry_afters],
         "The wait must double after each failure (exponential backoff): base_delay × 2^attempt."),
        ([max(r, base_delay * (i + 1)) for i, r in enumerate(retry_afters)],
         "That wait grows linearly (base_delay × (attempt + 1)); exponential backoff doubles it: "
         "base_delay × 2^attempt."),
    ]


def _check_waits(delays: list[float], errors: list[openai.APIStatusError], base_delay: float,
                 case: str) -> None:
    """Each wait must be max(that 429's retry-after, base_delay * 2**attempt), to 1e-6 s."""
    retry_afters = [_retry_after(e) for e in errors][:len(delays)]
    expected = [max(r, base_delay * 2 ** i) for i, r in enumerate(retry_afters)]

    def same(got: list[float], want: list[float]) -> bool:
        return len(got) == len(want) and all(math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-6)
                                             for g, w in zip(got, want))

    if same(delays, expected):
        return
    head = (f"{case}, with_backoff waited {[round(d, 4) for d in delays]} s before its retries; the "
            f"429s said retry-after {[round(r, 4) for r in retry_afters]} s, so the waits should be "
            f"{[round(e, 4) for e in expected]} s.")
    for waits, hint in _wait_variants(retry_afters, base_delay):
        if not same(waits, expected) and same(delays, waits):
            fail(head, hint)
    fail(head, "Before retry number attempt + 1 (attempt = 0, 1, 2, ...), wait exactly "
               "max(retry_after, base_delay * 2 ** attempt) seconds, with retry_after = "
               "float(error.response.headers['retry-after']) of the error you just caught.")


def _backoff_cases(with_backoff: Callable[..., Any], provider: Any, client: openai.OpenAI,
                   rpm: int) -> int:
    """The cases of :func:`check_with_backoff` against a running, rate-limited provider."""

    def completion() -> Any:
        return client.completions.create(model=provider.model_name, prompt="The nurse",
                                          max_tokens=1, temperature=0)

    def fake_sleep_case(**kwargs: Any) -> tuple[_CountingRequest, _Recorder, Any, BaseException | None]:
        """Run the wrapper with a recording sleep while the limit is used up.

        If the provider's allowance refilled during the case (a slow machine), so that a
        request went through, the case is run again: that is the clock's doing, not the
        learner's.
        """
        for _ in range(3):
            _rate_limited(completion, tries=5 * rpm)
            request, sleep = _CountingRequest(completion), _Recorder()
            got, raised = _run_backoff(with_backoff, request, sleep, **kwargs)
            if request.calls > 1 and not sleep.delays:
                fail(f"with_backoff retried {request.calls - 1} time(s) without calling the sleep "
                     "function it was given.",
                     "Wait with the `sleep` argument (sleep(seconds)), not time.sleep directly: "
                     "the caller (and this check) decides how waiting is done.")
            if request.successes == 0:
                return request, sleep, got, raised
        raise RuntimeError("the provider's rate limit kept refilling during the check; run it again")

    first = _rate_limited(completion, tries=5 * rpm)
    if _retry_after(first) <= 0:
        raise RuntimeError("the provider's 429 has no retry-after header")

    # 1. at most max_retries retries, then the RateLimitError itself is re-raised
    request, sleep, got, raised = fake_sleep_case(max_retries=3, base_delay=0.001)
    if raised is None:
        fail(f"with_backoff returned {got!r:.60} after {request.calls} rate-limited calls "
             "(the limit had not reset: the check's sleep does not wait).",
             "After the last retry, re-raise the RateLimitError (a bare `raise` inside "
             "`except`), so the caller knows the call failed.")
    if not isinstance(raised, openai.RateLimitError):
        fail(f"After the last retry with_backoff raised {type(raised).__name__}: {raised}",
             "Re-raise the RateLimitError itself (a bare `raise`), not a new exception.")
    if request.calls != 4:
        fail(f"With max_retries=3, with_backoff called the request {request.calls} times; "
             "expected 4 (the first try and 3 retries).",
             "Loop `for attempt in range(max_retries + 1)`, and re-raise on the last one.")
    if len(sleep.delays) != 3:
        fail(f"with_backoff slept {len(sleep.delays)} times for 3 retries; expected 3 "
             "(once before each retry, not after the last failure).")
    # 2. with a tiny base delay, every wait is that 429's own retry-after (max wins)
    _check_waits(sleep.delays, request.errors, base_delay=0.001,
                 case="With base_delay=0.001 s (smaller than every retry-after)")
    # 3. with a base delay 10 x larger than retry-after, the waits are base_delay * 2**attempt
    base = 10 * max(_retry_after(e) for e in request.errors) + 1.0
    request, sleep, _, raised = fake_sleep_case(max_retries=3, base_delay=base)
    if len(sleep.delays) != 3:
        fail(f"with_backoff slept {len(sleep.delays)} times for max_retries=3; expected 3.")
    _check_waits(sleep.delays, request.errors, base_delay=base,
                 case=f"With base_delay={base:g} s (larger than every retry-after)")

    # 4. other errors are re-raised at once, without retrying. The key is rate-limited after the
    # cases above, and a rate-limited key gets 429 before its prompt is read: wait until it can
    # send two requests again, so that the too-long prompt really meets the context check (400).
    exhausted = _rate_limited(completion, tries=5 * rpm)
    time.sleep(_retry_after(exhausted) + 60.0 / rpm + 0.5)
    with openai.OpenAI(base_url=provider.base_url, api_key="sk-not-a-real-key",
                       max_retries=0) as wrong_key:
        too_long = " village" * 4000
        others = [
            ("a wrong key (401)", openai.AuthenticationError,
             lambda: wrong_key.completions.create(model=provider.model_name, prompt="The nurse",
                                                  max_tokens=1)),
            ("a prompt longer than the context (400)", openai.BadRequestError,
             lambda: client.completions.create(model=provider.model_name, prompt=too_long,
                                               max_tokens=1)),
        ]
        for label, error_type, call in others:
            request, sleep = _CountingRequest(call), _Recorder()
            _, raised = _run_backoff(with_backoff, request, sleep, max_retries=3, base_delay=0.001)
            if not isinstance(raised, error_type) or request.calls != 1 or sleep.delays:
                outcome = f"raised {type(raised).__name__}" if raised else "returned"
                fail(f"For {label}, with_backoff called the request {request.calls} time(s), "
                     f"slept {len(sleep.delays)} time(s) and then {outcome}; expected one call, "
                     f"no sleep, and the {error_type.__name__} raised as it is.",
                     "Catch only openai.RateLimitError. Retrying a wrong key or a too-long prompt "
                     "cannot succeed, and a bare `except:` hides the real problem.")

    # 5. really waiting, a rate-limited call goes through
    _rate_limited(completion, tries=5 * rpm)
    request = _CountingRequest(completion)
    sleep = _RealSleep(cap=_retry_after(first) + 5.0)
    got, raised = _run_backoff(with_backoff, request, sleep, max_retries=4, base_delay=0.05)
    if raised is not None:
        fail(f"Really waiting, with_backoff raised {type(raised).__name__} after {request.calls} "
             f"calls and waits of {[round(d, 2) for d in sleep.delays]} s: {raised}",
             "Wait max(retry_after, base_delay * 2 ** attempt) seconds with the sleep you are "
             "given, then call the request again.")
    if getattr(got, "choices", None) is None:
        fail(f"with_backoff returned {got!r:.60}; expected the completion the request returned.")
    return len(sleep.delays)


# --------------------------------------------------------------------------- exercise 3

def reference_weights_changed(before: Mapping[str, float], after: Mapping[str, float],
                              tol: float = 1e-3) -> bool:
    """True if the top-k tokens differ or a shared token's logprob moved by more than ``tol``."""
    if set(before) != set(after):
        return True
    return any(abs(before[t] - after[t]) > tol for t in before)


def check_weights_changed(weights_changed: Callable[..., Any], before: Mapping[str, float],
                          repeat: Mapping[str, float] | None = None,
                          after: Mapping[str, float] | None = None) -> None:
    """Check ``weights_changed(before, after, tol=1e-3) -> bool`` on top-k logprob dicts.

    ``before`` and ``repeat`` are the same request sent twice to the same weights;
    ``after`` (optional) is the same request after the operator swapped the weights. The
    check adds made-up variations of ``before``: the same values in another order, a
    change below the tolerance, changes above it up and down, a token replaced, a token
    dropped, and a custom ``tol``.
    """
    check_type(before, Mapping, "before (the top-k logprobs the notebook passed)")
    if len(before) < 2:
        fail("The check needs at least 2 top-k logprobs in `before`; ask the API for logprobs=5.")
    tokens = list(before)
    last = tokens[-1]

    def moved(delta: float) -> dict[str, float]:
        return {t: before[t] + (delta if t == last else 0.0) for t in tokens}

    cases: list[tuple[str, Mapping[str, float], Mapping[str, float], float, str]] = []
    if repeat is not None and not reference_weights_changed(before, repeat):
        cases.append(("the same request sent twice to the same weights", before, repeat, 1e-3,
                      "Unchanged weights must give False."))
    swap = after is not None and reference_weights_changed(before, after)
    if swap:
        cases.append(("the same request before and after the operator's swap", before, after, 1e-3,
                      "The swap changed these logprobs: compare every token's logprob."))
    cases += [
        ("the same logprobs listed in another order", before, dict(reversed(list(before.items()))),
         1e-3, "Compare token by token (before[t] with after[t]), not the order of the lists."),
        ("one logprob moved by 0.0001 (below tol=0.001)", before, moved(1e-4), 1e-3,
         "Floating-point noise is not a new model: use the tolerance, abs(a - b) > tol, "
         "not a == b."),
        ("one logprob up by 0.01", before, moved(1e-2), 1e-3,
         "Check every token, up to the last one in the list."),
        ("one logprob down by 0.01", before, moved(-1e-2), 1e-3,
         "A logprob that went DOWN changed too: compare abs(before - after) with tol."),
        ("a token replaced by another", before,
         {**{t: before[t] for t in tokens[:-1]}, "<a token not in before>": before[last]}, 1e-3,
         "The top-k tokens themselves can change: if the two dicts do not list the same "
         "tokens, the weights (or something) changed."),
        ("a token dropped", before, {t: before[t] for t in tokens[:-1]}, 1e-3,
         "A token that disappeared from the top-k is a change: compare the sets of tokens too."),
        ("one logprob moved by 0.05 with tol=0.1", before, moved(5e-2), 0.1,
         "Use the tol argument, not a hard-coded tolerance."),
    ]
    # Made-up top-k dicts whose values are exact in binary, so that only the named distinction
    # decides: absolute against relative change, every token against sums or extremes, > against >=.
    made = {" a": -0.0078125, " b": -1.5, " c": -2.25, " d": -3.0, " e": -24.0}
    cases += [
        ("a likely token (logprob -0.0078) moved by 0.0005, below tol=0.001", made,
         {**made, " a": -0.0083125}, 1e-3,
         "tol is an absolute tolerance on the logprob: abs(a - b) > tol, not abs(a - b) / abs(a)."),
        ("an unlikely token (logprob -24) moved by 0.015625, above tol=0.001", made,
         {**made, " e": -23.984375}, 1e-3,
         "tol is an absolute tolerance on the logprob: abs(a - b) > tol, not abs(a - b) / abs(a)."),
        ("two logprobs moved by 0.25 in opposite directions", made,
         {**made, " b": -1.25, " c": -2.5}, 1e-3,
         "Changes in opposite directions cancel in a sum or a mean: compare token by token."),
        ("a token in the middle of the list moved by 0.25", made, {**made, " c": -2.0}, 1e-3,
         "Compare every token's logprob, not only the largest and the smallest."),
        ("one logprob moved by exactly tol (0.125 with tol=0.125)", made, {**made, " d": -2.875},
         0.125, "'Moved by more than tol' is abs(a - b) > tol: a change of exactly tol is not enough."),
    ]
    for label, a, b, tol, hint in cases:
        expected = reference_weights_changed(a, b, tol)
        got = call_learner(weights_changed, dict(a), dict(b), tol=tol, name="weights_changed",
                           hints={KeyError: "A token can be in one dict and not the other: "
                                            "compare the sets of tokens before looking up values.",
                                  TypeError: "The check calls weights_changed(before, after, "
                                             "tol=...): keep the tol argument."})
        if hasattr(got, "item") and not isinstance(got, bool):
            got = got.item()
        if not isinstance(got, bool):
            check_type(got, bool, f"weights_changed for {label}",
                       hint="Return True or False (a comparison gives a bool).")
        if got != expected:
            fail(f"weights_changed returned {got} for {label}; expected {expected}.", hint)
    swap_text = " (the operator's swap in your `after` included)" if swap else ""
    passed(f"weights_changed: right on {len(cases)} cases{swap_text}: order, noise below tol, "
           "changes up and down, in the middle of the list and in opposite directions, an absolute "
           "(not relative) tolerance, a change of exactly tol, a token replaced or dropped, and a "
           "custom tol.")


# --------------------------------------------------------------------------- exercise 4

@torch.no_grad()
def _log_probs(model: Any, ids: list[int], position: int = -1) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([ids])).logits[0, position].float()
    return torch.log_softmax(logits, dim=-1)


def _token_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer(token)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{token!r} is not a single token")
    return ids[0]


def reference_logprobs(model: Any, tokenizer: Any, prompt_ids: list[int],
                       tokens: Sequence[str]) -> dict[str, float]:
    """The open model's exact log-probability of each token coming next after ``prompt_ids``."""
    logprobs = _log_probs(model, prompt_ids)
    return {t: float(logprobs[_token_id(tokenizer, t)]) for t in tokens}


def check_open_model_logprobs(open_model_logprobs: Callable[..., Any], model: Any, tokenizer: Any,
                              prompt: str, api_top: Mapping[str, float]) -> None:
    """Check ``open_model_logprobs(model, tokenizer, prompt, tokens) -> dict[str, float]``.

    The model reads exactly the prompt's tokens, as the course's provider does (it adds
    nothing before them). Checked for the API's prompt and top-k tokens (those that are
    one token of this tokenizer), and for a second prompt with the model's own top 3 plus
    a token of low probability (which catches renormalising over the listed tokens only).
    Reports how far the API's numbers are from the learner's, without failing on it:
    that gap is the provider's business, not the learner's.
    """
    tokens = [t for t in api_top if len(tokenizer(t)["input_ids"]) == 1]
    if not tokens:
        fail("None of the API's top tokens is a single token of this tokenizer: the check has "
             "nothing to compare. Ask for logprobs=5 on the notebook's prompt.")
    second_prompt = "It was a sunny day in the village. The"
    second_ids = tokenizer(second_prompt)["input_ids"]
    ranked = torch.argsort(_log_probs(model, second_ids), descending=True).tolist()
    second_tokens = [tokenizer.decode([i]) for i in
                     _roundtrip(tokenizer, ranked, 0, 3) + _roundtrip(tokenizer, ranked, 1000, 1)]
    results: dict[str, float] = {}
    for label, case_prompt, case_tokens in (("the API's prompt", prompt, tokens),
                                            (f"the prompt {second_prompt!r}", second_prompt,
                                             second_tokens)):
        ids = tokenizer(case_prompt)["input_ids"]
        expected = reference_logprobs(model, tokenizer, ids, case_tokens)
        got = call_learner(open_model_logprobs, model, tokenizer, case_prompt, list(case_tokens),
                           name="open_model_logprobs", model=model,
                           hints={KeyError: "The check also asks about a second prompt and tokens the "
                                            "API never returned: compute every value from the open "
                                            "model, not from the API's numbers."})
        check_type(got, dict, f"open_model_logprobs for {label}",
                   hint="Return a dict {token: logprob}, one entry per token you were given.")
        if set(got) != set(case_tokens):
            missing = [t for t in case_tokens if t not in got]
            extra = [t for t in got if t not in case_tokens]
            fail(f"open_model_logprobs for {label} should have one entry per token given; "
                 f"missing {missing[:3]}, extra {extra[:3]}.",
                 "Use the token strings exactly as given (with their leading space) as keys.")
        values = {t: as_number(got[t], f"open_model_logprobs(...)[{t!r}] for {label}",
                               hint="Index the log-probabilities with one token id, then call .item().")
                  for t in case_tokens}
        if all(math.isclose(values[t], expected[t], abs_tol=1e-4) for t in case_tokens):
            if label == "the API's prompt":
                results = values
            continue
        _explain_logprobs(values, expected, model, tokenizer, ids, case_tokens, label)
    gap = max(abs(results[t] - api_top[t]) for t in tokens)
    passed(f"open_model_logprobs: the open model's exact log-probabilities for {len(tokens)} tokens "
           f"of the API's top {len(api_top)} and for a second prompt. Largest gap between your "
           f"numbers and the API's: {gap:.1e}.")


def _roundtrip(tokenizer: Any, ranked: list[int], start: int, count: int) -> list[int]:
    """The first ``count`` ids from ``ranked[start:]`` whose text encodes back to the same id."""
    found: list[int] = []
    for i in ranked[start:]:
        if tokenizer(tokenizer.decode([i]))["input_ids"] == [i]:
            found.append(i)
            if len(found) == count:
                break
    return found


def _explain_logprobs(values: dict[str, float], expected: dict[str, float], model: Any,
                      tokenizer: Any, ids: list[int], tokens: Sequence[str], label: str) -> None:
    token_ids = [_token_id(tokenizer, t) for t in tokens]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        first_position = _log_probs(model, ids, position=0) if len(ids) > 1 else None
    variants: list[tuple[dict[str, float], str]] = [
        ({t: math.exp(expected[t]) for t in tokens},
         "Those are probabilities. The API returns log-probabilities: use log_softmax "
         "(or torch.log of the softmax)."),
        ({t: float(logits[i]) for t, i in zip(tokens, token_ids)},
         "Those are raw logits. A log-probability is normalised over the whole vocabulary: "
         "log_softmax(logits, dim=-1)."),
        ({t: float(torch.log_softmax(logits[token_ids], dim=-1)[j]) for j, t in enumerate(tokens)},
         "You normalised over the listed tokens only. The API's logprobs are normalised over "
         "the whole vocabulary: log_softmax over all logits first, then pick the tokens."),
        ({t: expected[t] / math.log(2) for t in tokens},
         "Those are log base 2. The API uses natural logarithms (log_softmax)."),
    ]
    if first_position is not None:
        variants.append(({t: float(first_position[i]) for t, i in zip(tokens, token_ids)},
                         "Off by one position: the next token's distribution is at the LAST "
                         "position, logits[0, -1]."))
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        prefixed = _log_probs(model, [eos, *ids])
        variants.append(({t: float(prefixed[i]) for t, i in zip(tokens, token_ids)},
                         "The provider feeds the model exactly the prompt's tokens and adds "
                         "nothing before them: no <|endoftext|>."))
    for variant, hint in variants:
        if all(math.isclose(values[t], variant[t], rel_tol=1e-4, abs_tol=1e-4) for t in tokens):
            fail(f"open_model_logprobs for {label} does not match the model's log-probabilities.",
                 hint)
    worst = max(tokens, key=lambda t: abs(values[t] - expected[t]))
    fail(f"open_model_logprobs for {label}: for {worst!r} you gave {values[worst]:.5f}, the open "
         f"model gives {expected[worst]:.5f}.",
         "log_softmax(model(input_ids=...).logits[0, -1], dim=-1)[token id], for each token.")
