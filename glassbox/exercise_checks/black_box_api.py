"""Checks for chapter 06, "Using a model you cannot see": each reference is computed from real ``usage``
objects and the dated price table, the course provider's real 429s, or the open model's distribution."""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import torch
from openai.types import CompletionUsage

from glassbox.exercise_checks.feedback import (ExerciseFailed, as_number, call_learner, check_number, check_type,
                                               fail, mistakes_from, passed)
from glassbox.paths import DATA_DIR

__all__ = ["PRICE_COLUMNS", "check_batch_cost", "check_open_model_logprobs", "check_weights_changed",
           "check_with_backoff", "read_prices", "reference_batch_cost", "reference_logprobs",
           "reference_weights_changed"]

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


def _cost(usages: Sequence[Any], price: Mapping[str, Any], prompt_at: str = "in", completion_at: str = "out",
          per: float = 1e6, per_call: bool = False) -> float:
    """The batch's cost (defaults), or a mistake: tokens at another price ("", "in", "out", "both"), another unit."""
    rates = {"": 0.0, "in": price["usd_per_1m_input"], "out": price["usd_per_1m_output"]}
    rates["both"] = rates["in"] + rates["out"]
    cost = sum(u.prompt_tokens * rates[prompt_at] + u.completion_tokens * rates[completion_at] for u in usages) / per
    return cost / max(len(usages), 1) if per_call else cost


def reference_batch_cost(usages: Sequence[Any], price: Mapping[str, Any]) -> float:
    """Dollars for a batch of calls: prompt tokens at the input price, completion tokens at the output price."""
    return _cost(usages, price)


_COST_MISTAKES = [
    (dict(prompt_at="out", completion_at="in"), "The input and output prices are swapped: prompt_tokens are "
                                                "input, completion_tokens are output."),
    (dict(completion_at="in"), "You charged every token at the input price. Output (completion) tokens have "
                               "their own, higher price."),
    (dict(prompt_at="out"), "You charged every token at the output price. Prompt tokens are charged at the "
                            "input price."),
    (dict(completion_at=""), "You left out the completion (output) tokens."),
    (dict(prompt_at=""), "You left out the prompt (input) tokens."),
    (dict(prompt_at="both", completion_at="both"), "You charged every token twice, at both prices. Use "
                                                   "prompt_tokens and completion_tokens, not total_tokens."),
    (dict(per=1e3), "The table's prices are per MILLION tokens: divide by 1,000,000, not 1,000."),
    (dict(per=1.0), "The table's prices are per million tokens: divide by 1,000,000."),
    (dict(per_call=True), "That is the average cost of one call: the batch costs the sum over all its calls."),
]

_USAGE_HINT = ("Each usage is an object: usage.prompt_tokens and usage.completion_tokens "
               "(attributes, not usage['prompt_tokens']). The price row is a dict of floats: "
               "price['usd_per_1m_input'] and price['usd_per_1m_output'].")


def check_batch_cost(batch_cost: Callable[..., Any], usages: Sequence[Any],
                     prices: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Check ``batch_cost(usages, price) -> float`` (US dollars) at every price of the table."""
    rows = list(prices) if prices is not None else read_prices()
    usages = list(usages)
    for usage in usages:
        if not hasattr(usage, "prompt_tokens"):
            fail(f"The check needs the `usage` objects of your calls (response.usage), got {type(usage).__name__}.")
    made_up = [CompletionUsage(prompt_tokens=1200, completion_tokens=300, total_tokens=1500),
               CompletionUsage(prompt_tokens=7, completion_tokens=1, total_tokens=8)]
    cases = [(f"your {len(usages)} calls priced as {row['model']} (as of {row['as_of']})", usages, row) for row in rows]
    cases += [("a made-up batch of 1,207 prompt and 301 completion tokens", made_up, rows[0]),
              ("an empty batch", [], rows[0])]
    for label, batch, row in cases:
        got = call_learner(batch_cost, list(batch), row, name="batch_cost",
                           hints={AttributeError: _USAGE_HINT, TypeError: _USAGE_HINT})
        check_number(got, _cost(batch, row), f"batch_cost for {label}", rel_tol=1e-9, abs_tol=1e-15,
                     known_mistakes=mistakes_from(lambda **s: _cost(batch, row, **s), _COST_MISTAKES),
                     hint="cost = (sum of prompt_tokens × input price + sum of completion_tokens "
                          "× output price) / 1,000,000.")
    first = rows[0]
    passed(f"batch_cost: right for your {len(usages)} calls at all {len(rows)} prices of the table "
           f"(e.g. ${_cost(usages, first):.6f} at {first['model']}'s price as of "
           f"{first['as_of']}), for a made-up batch and for an empty one.")


# --------------------------------------------------------------------------- exercise 2

BACKOFF_RPM = 20
"""The rate limit of the back-off check's real-waiting case: one request every 3 seconds."""

RETRY_AFTERS: tuple[float, ...] = (3.0, 1.0, 7.0, 2.0)
"""The retry-after of each 429 the check replays in turn: each differs from the one before, so only an
answer that reads the header of every 429 waits right."""


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


def _replaying(real: openai.RateLimitError) -> Callable[[], Any]:
    """A request that raises the provider's real 429 again and again, with the retry-afters of RETRY_AFTERS."""
    seconds = iter(RETRY_AFTERS * 4)

    def request() -> Any:
        wait = next(seconds)
        headers = {**real.response.headers, "retry-after": f"{wait:g}", "retry-after-ms": f"{wait * 1000:g}"}
        response = httpx.Response(429, headers=headers, content=real.response.content, request=real.response.request)
        raise openai.RateLimitError(real.message, response=response, body=real.body)
    return request


class _Sleep:
    """The ``sleep`` the check hands over: records each delay, and really sleeps (capped) if ``cap`` is set."""

    def __init__(self, cap: float | None = None) -> None:
        self.delays: list[float] = []
        self.cap = cap

    def __call__(self, seconds: Any) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ExerciseFailed(f"with_backoff called sleep({seconds!r}); expected a number of seconds.\n"
                                 "Hint: error.response.headers['retry-after'] is a string: float() it.")
        if math.isnan(seconds) or seconds < 0:
            raise ExerciseFailed(f"with_backoff called sleep({seconds!r}); a delay must be >= 0 seconds.")
        self.delays.append(float(seconds))
        if self.cap is not None:
            time.sleep(min(float(seconds), self.cap))


def _run_backoff(with_backoff: Callable[..., Any], request: Callable[[], Any], sleep: _Sleep,
                 **kwargs: Any) -> tuple[SimpleNamespace, Any, BaseException | None]:
    """Call the learner's wrapper on ``request``; return (its calls and the errors they raised, the result,
    the exception the wrapper let out or None)."""
    log = SimpleNamespace(calls=0, errors=[])

    def counted() -> Any:
        log.calls += 1
        try:
            return request()
        except openai.APIStatusError as error:
            log.errors.append(error)
            raise
    try:
        return log, with_backoff(counted, sleep=sleep, **kwargs), None
    except (NotImplementedError, ExerciseFailed):
        raise
    except Exception as exc:  # noqa: BLE001 - inspected by the caller
        return log, None, exc


def check_with_backoff(with_backoff: Callable[..., Any], provider: Any = None, *, rpm: int = BACKOFF_RPM) -> None:
    """Check ``with_backoff(request, max_retries=4, base_delay=0.5, sleep=time.sleep)`` on the provider's 429s.

    ``provider`` is the notebook's running course provider (its rate limit is set to ``rpm`` and lifted at
    the end); without one the check starts its own, serving TinyGPT. The provider's real 429 is replayed with
    the retry-afters of RETRY_AFTERS while the check's ``sleep`` only records; the last case really waits.
    """
    sleep = _Sleep()
    result = call_learner(with_backoff, lambda: "the result", sleep=sleep, name="with_backoff",
                          hints={TypeError: "The check calls with_backoff(request, max_retries=..., base_delay=..., "
                                            "sleep=...): keep those keyword arguments in your signature."})
    if result != "the result":
        fail(f"with_backoff returned {result!r:.60} for a request that succeeded at once; expected "
             "what the request returned.", "return request() when it does not raise.")
    if sleep.delays:
        fail(f"with_backoff slept {sleep.delays} before a request that had not failed.",
             "Only wait after a RateLimitError.")
    with contextlib.ExitStack() as stack:
        if provider is None:
            from glassbox.provider import start_provider

            provider = stack.enter_context(start_provider("tinygpt"))
        stack.callback(provider.set_limits, rpm=None)
        client = stack.enter_context(provider.client(max_retries=0))
        waits = _backoff_cases(with_backoff, provider, client, rpm)
    passed("with_backoff: before each of 3 retries it waited max(that 429's retry-after, base_delay × 2^attempt) "
           f"seconds (to the microsecond, for retry-afters of {RETRY_AFTERS[:3]} s, with a base delay below and one "
           "above them), stopped after max_retries and re-raised the 429, re-raised a 401 and a 400 at once, and got "
           f"through the provider's real rate limit ({rpm} requests per minute) after {waits} wait(s).")


def _waits(retry_afters: list[float], base: float, shift: int = 0, add: bool = False, header: str = "each",
           growth: Callable[[int], float] = lambda i: 2 ** i) -> list[float]:
    """The right waits, max(retry-after, base × 2^attempt) (defaults), or a mistake: one setting changed."""
    read = {"each": retry_afters, "first": retry_afters[:1] * len(retry_afters), "none": [0.0] * len(retry_afters)}
    return [r + base * growth(i + shift) if add else max(r, base * growth(i + shift))
            for i, r in enumerate(read[header])]


_WAIT_MISTAKES: list[tuple[dict[str, Any], str]] = [
    (dict(shift=1), "Your exponent is one too high: before the first retry (attempt 0) wait base_delay × 2^0 "
                    "= base_delay, then 2×, 4× it."),
    (dict(add=True), "You added retry-after and the back-off. Wait the larger of the two: "
                     "max(retry_after, base_delay * 2 ** attempt)."),
    (dict(header="none"), "You ignored retry-after: the server says how long to wait. Wait at least that long: "
                          "max(retry_after, base_delay * 2 ** attempt)."),
    (dict(header="first"), "You read retry-after from the first 429 only: each 429 brings its own; read it "
                           "from the error you just caught."),
    (dict(growth=lambda i: 1), "The wait must double after each failure (exponential backoff): base_delay × "
                               "2^attempt."),
    (dict(growth=lambda i: i + 1), "That wait grows linearly (base_delay × (attempt + 1)); exponential backoff "
                                   "doubles it: base_delay × 2^attempt."),
]


def _check_waits(delays: list[float], errors: list[openai.APIStatusError], base_delay: float, case: str) -> None:
    """Each wait must be max(that 429's retry-after, base_delay * 2**attempt), to 1e-6 s."""
    retry_afters = [_retry_after(e) for e in errors][:len(delays)]
    expected = _waits(retry_afters, base_delay)

    def same(got: list[float], want: list[float]) -> bool:
        return len(got) == len(want) and all(math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-6) for g, w in zip(got, want))

    if same(delays, expected):
        return
    head = (f"{case}, with_backoff waited {[round(d, 4) for d in delays]} s before its retries; the "
            f"429s said retry-after {[round(r, 4) for r in retry_afters]} s, so the waits should be "
            f"{[round(e, 4) for e in expected]} s.")
    for setting, hint in _WAIT_MISTAKES:
        waits = _waits(retry_afters, base_delay, **setting)
        if not same(waits, expected) and same(delays, waits):
            fail(head, hint)
    fail(head, "Before retry number attempt + 1 (attempt = 0, 1, 2, ...), wait exactly "
               "max(retry_after, base_delay * 2 ** attempt) seconds, with retry_after = "
               "float(error.response.headers['retry-after']) of the error you just caught.")


def _backoff_cases(with_backoff: Callable[..., Any], provider: Any, client: openai.OpenAI, rpm: int) -> int:
    """The cases of :func:`check_with_backoff` against a running provider; returns the real waits."""

    def completion() -> Any:
        return client.completions.create(model=provider.model_name, prompt="The nurse", max_tokens=1, temperature=0)

    # 1. other errors are re-raised at once, without retrying (no rate limit yet: the too-long
    # prompt really meets the context check, 400)
    provider.set_limits(rpm=None)
    with openai.OpenAI(base_url=provider.base_url, api_key="sk-not-a-real-key", max_retries=0) as wrong_key:
        too_long = " village" * 4000
        others = [
            ("a wrong key (401)", openai.AuthenticationError,
             lambda: wrong_key.completions.create(model=provider.model_name, prompt="The nurse", max_tokens=1)),
            ("a prompt longer than the context (400)", openai.BadRequestError,
             lambda: client.completions.create(model=provider.model_name, prompt=too_long, max_tokens=1)),
        ]
        for label, error_type, call in others:
            sleep = _Sleep()
            request, _, raised = _run_backoff(with_backoff, call, sleep, max_retries=3, base_delay=0.001)
            if not isinstance(raised, error_type) or request.calls != 1 or sleep.delays:
                outcome = f"raised {type(raised).__name__}" if raised else "returned"
                fail(f"For {label}, with_backoff called the request {request.calls} time(s), "
                     f"slept {len(sleep.delays)} time(s) and then {outcome}; expected one call, "
                     f"no sleep, and the {error_type.__name__} raised as it is.",
                     "Catch only openai.RateLimitError. Retrying a wrong key or a too-long prompt "
                     "cannot succeed, and a bare `except:` hides the real problem.")
    provider.set_limits(rpm=rpm)
    real = _rate_limited(completion, tries=5 * rpm)
    if _retry_after(real) <= 0:
        raise RuntimeError("the provider's 429 has no retry-after header")

    def replayed(base_delay: float) -> tuple[SimpleNamespace, _Sleep, Any, BaseException | None]:
        sleep = _Sleep()
        request, got, raised = _run_backoff(with_backoff, _replaying(real), sleep, max_retries=3, base_delay=base_delay)
        if request.calls > 1 and not sleep.delays:
            fail(f"with_backoff retried {request.calls - 1} time(s) without calling the sleep function it was given.",
                 "Wait with the `sleep` argument (sleep(seconds)), not time.sleep directly: "
                 "the caller (and this check) decides how waiting is done.")
        return request, sleep, got, raised

    # 2. at most max_retries retries, then the RateLimitError itself is re-raised
    request, sleep, got, raised = replayed(base_delay=0.001)
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
    # 3. with a tiny base delay, every wait is that 429's own retry-after (max wins); with a base delay
    # 10 x larger than every retry-after, the waits are base_delay * 2**attempt
    _check_waits(sleep.delays, request.errors, base_delay=0.001,
                 case="With base_delay=0.001 s (smaller than every retry-after)")
    base = 10 * max(RETRY_AFTERS) + 1.0
    request, sleep, _, _ = replayed(base_delay=base)
    if len(sleep.delays) != 3:
        fail(f"with_backoff slept {len(sleep.delays)} times for max_retries=3; expected 3.")
    _check_waits(sleep.delays, request.errors, base_delay=base,
                 case=f"With base_delay={base:g} s (larger than every retry-after)")

    # 4. really waiting, a rate-limited call goes through
    _rate_limited(completion, tries=5 * rpm)
    sleep = _Sleep(cap=_retry_after(real) + 5.0)
    request, got, raised = _run_backoff(with_backoff, completion, sleep, max_retries=4, base_delay=0.05)
    if raised is not None:
        fail(f"Really waiting, with_backoff raised {type(raised).__name__} after {request.calls} "
             f"calls and waits of {[round(d, 2) for d in sleep.delays]} s: {raised}",
             "Wait max(retry_after, base_delay * 2 ** attempt) seconds with the sleep you are "
             "given, then call the request again.")
    if getattr(got, "choices", None) is None:
        fail(f"with_backoff returned {got!r:.60}; expected the completion the request returned.")
    return len(sleep.delays)


# --------------------------------------------------------------------------- exercise 3

def reference_weights_changed(before: Mapping[str, float], after: Mapping[str, float], tol: float = 1e-3) -> bool:
    """True if the top-k tokens differ or a shared token's logprob moved by more than ``tol``."""
    return set(before) != set(after) or any(abs(before[t] - after[t]) > tol for t in before)


def check_weights_changed(weights_changed: Callable[..., Any], before: Mapping[str, float],
                          repeat: Mapping[str, float] | None = None, after: Mapping[str, float] | None = None) -> None:
    """Check ``weights_changed(before, after, tol=1e-3) -> bool`` on the learner's and made-up top-k dicts."""
    check_type(before, Mapping, "before (the top-k logprobs the notebook passed)")
    if len(before) < 2:
        fail("The check needs at least 2 top-k logprobs in `before`; ask the API for logprobs=5.")
    tokens, last = list(before), list(before)[-1]

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
         "Floating-point noise is not a new model: use the tolerance, abs(a - b) > tol, not a == b."),
        ("one logprob up by 0.01", before, moved(1e-2), 1e-3, "Check every token, up to the last one in the list."),
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
        got = got.item() if hasattr(got, "item") and not isinstance(got, bool) else got
        check_type(got, bool, f"weights_changed for {label}", hint="Return True or False (a comparison gives a bool).")
        if got != expected:
            fail(f"weights_changed returned {got} for {label}; expected {expected}.", hint)
    swap_text = " (the operator's swap in your `after` included)" if swap else ""
    passed(f"weights_changed: right on {len(cases)} cases{swap_text}: order, noise below tol, changes up and down, in "
           "the middle of the list and in opposite directions, an absolute (not relative) tolerance, a change of "
           "exactly tol, a token replaced or dropped, and a custom tol.")


# --------------------------------------------------------------------------- exercise 4

@torch.no_grad()
def _logprobs(model: Any, tokenizer: Any, ids: list[int], tokens: Sequence[str], *, kind: str = "log_softmax",
              position: int = -1, eot: bool = False, over_listed: bool = False) -> dict[str, float]:
    """Each token's log-probability after ``ids`` (defaults), or a mistake: one setting changed."""
    token_ids = [tokenizer(t)["input_ids"] for t in tokens]
    if any(len(i) != 1 for i in token_ids):
        raise ValueError(f"not all of {list(tokens)!r} are single tokens")
    token_ids = [i[0] for i in token_ids]
    if eot and tokenizer.eos_token_id is None:
        raise ValueError("no <|endoftext|> token")
    logits = model(input_ids=torch.tensor([[tokenizer.eos_token_id, *ids] if eot else ids])).logits[0, position]
    if over_listed:
        logits, token_ids = logits[token_ids], list(range(len(tokens)))
    logits = logits.float()
    values = {"log_softmax": logits.log_softmax(-1), "softmax": logits.softmax(-1), "logits": logits,
              "log2": logits.log_softmax(-1) / math.log(2)}[kind]
    return {t: float(values[i]) for t, i in zip(tokens, token_ids)}


def reference_logprobs(model: Any, tokenizer: Any, prompt_ids: list[int], tokens: Sequence[str]) -> dict[str, float]:
    """The open model's exact log-probability of each token coming next after ``prompt_ids``."""
    return _logprobs(model, tokenizer, prompt_ids, tokens)


_LOGPROB_MISTAKES: list[tuple[dict[str, Any], str]] = [
    (dict(kind="softmax"), "Those are probabilities. The API returns log-probabilities: use log_softmax "
                           "(or torch.log of the softmax)."),
    (dict(kind="logits"), "Those are raw logits. A log-probability is normalised over the whole vocabulary: "
                          "log_softmax(logits, dim=-1)."),
    (dict(over_listed=True), "You normalised over the listed tokens only. The API's logprobs are normalised "
                             "over the whole vocabulary: log_softmax over all logits first, then pick the tokens."),
    (dict(kind="log2"), "Those are log base 2. The API uses natural logarithms (log_softmax)."),
    (dict(position=0), "Off by one position: the next token's distribution is at the LAST position, logits[0, -1]."),
    (dict(eot=True), "The provider feeds the model exactly the prompt's tokens and adds nothing before them: "
                     "no <|endoftext|>."),
]


def _roundtrip(tokenizer: Any, ranked: list[int], start: int, count: int) -> list[int]:
    """The first ``count`` ids from ``ranked[start:]`` whose text encodes back to the same id."""
    return list(itertools.islice((i for i in ranked[start:] if tokenizer(tokenizer.decode([i]))["input_ids"] == [i]),
                                 count))


def check_open_model_logprobs(open_model_logprobs: Callable[..., Any], model: Any, tokenizer: Any,
                              prompt: str, api_top: Mapping[str, float]) -> None:
    """Check ``open_model_logprobs(model, tokenizer, prompt, tokens) -> dict[str, float]`` on two prompts."""
    tokens = [t for t in api_top if len(tokenizer(t)["input_ids"]) == 1]
    if not tokens:
        fail("None of the API's top tokens is a single token of this tokenizer: the check has "
             "nothing to compare. Ask for logprobs=5 on the notebook's prompt.")
    second_prompt = "It was a sunny day in the village. The"
    with torch.no_grad():
        last = model(input_ids=torch.tensor([tokenizer(second_prompt)["input_ids"]])).logits[0, -1]
    ranked = torch.argsort(last, descending=True).tolist()
    second_tokens = [tokenizer.decode([i]) for i in
                     _roundtrip(tokenizer, ranked, 0, 3) + _roundtrip(tokenizer, ranked, 1000, 1)]
    results: dict[str, float] = {}
    for label, case_prompt, case_tokens in (("the API's prompt", prompt, tokens),
                                            (f"the prompt {second_prompt!r}", second_prompt, second_tokens)):
        ids = tokenizer(case_prompt)["input_ids"]
        expected = _logprobs(model, tokenizer, ids, case_tokens)
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
            results = results or values
            continue
        for setting, hint in _LOGPROB_MISTAKES:
            try:
                variant = _logprobs(model, tokenizer, ids, case_tokens, **setting)
            except (RuntimeError, ValueError, IndexError):
                continue
            if all(math.isclose(values[t], variant[t], rel_tol=1e-4, abs_tol=1e-4) for t in case_tokens):
                fail(f"open_model_logprobs for {label} does not match the model's log-probabilities.", hint)
        worst = max(case_tokens, key=lambda t: abs(values[t] - expected[t]))
        fail(f"open_model_logprobs for {label}: for {worst!r} you gave {values[worst]:.5f}, the open "
             f"model gives {expected[worst]:.5f}.",
             "log_softmax(model(input_ids=...).logits[0, -1], dim=-1)[token id], for each token.")
    gap = max(abs(results[t] - api_top[t]) for t in tokens)
    passed(f"open_model_logprobs: the open model's exact log-probabilities for {len(tokens)} tokens of the API's top "
           f"{len(api_top)} and for a second prompt. Largest gap between your numbers and the API's: {gap:.1e}.")
