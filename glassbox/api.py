"""Where the API lives: one setting for the notebooks that call a model they cannot see.

The chapters on the closed tier (01, 06, 07, 08) call an API with the official ``openai``
client, and always through ``open_endpoint()``::

    from glassbox.api import open_endpoint

    with open_endpoint() as api:
        reply = api.client.completions.create(model=api.model, prompt="The nurse", max_tokens=5)

Which API that is comes from the environment, so the same cells run anywhere:

1. ``GLASSBOX_API_BASE`` (and ``GLASSBOX_API_KEY``, and optionally ``GLASSBOX_API_MODEL``):
   any OpenAI-compatible server, for example one a teacher runs for the class (the course's
   provider, vLLM, llama.cpp's server, Ollama);
2. ``GLASSBOX_REAL_API=1`` with ``OPENAI_API_KEY``: the real OpenAI API. This is an explicit
   opt-in: a key in the environment alone is never used, because real calls cost money;
3. otherwise the course's own provider, started on this machine for the duration of the
   ``with`` block (a real uvicorn process serving the loaded model on 127.0.0.1).

A key is read from the environment (or made up for the local provider) and never printed.
Experiments that need the course's own provider (swapping the weights, switching the
``logit_bias`` behaviour, reading the provider's request log) ask
``api.require_course_provider(...)`` first and are skipped, with a message, elsewhere.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai

#: The environment variables that choose the API, in the order they are looked at.
API_BASE_VARIABLE = "GLASSBOX_API_BASE"
API_KEY_VARIABLE = "GLASSBOX_API_KEY"
API_MODEL_VARIABLE = "GLASSBOX_API_MODEL"
REAL_API_VARIABLE = "GLASSBOX_REAL_API"

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: The model used on the real OpenAI API unless GLASSBOX_API_MODEL names another. The course's
#: chapters use the legacy completions endpoint (logprobs, echo), which this model serves.
OPENAI_DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
CONNECT_TIMEOUT_SECONDS = 10.0


class EndpointError(RuntimeError):
    """The API cannot be used; the message says which setting to change."""


@dataclass
class Endpoint:
    """An API to call: the ``openai`` client, the model name to send, and where it is."""

    client: openai.OpenAI
    model: str
    base_url: str
    is_course_provider: bool
    provider: Any = None
    key_source: str = field(default="", repr=False)

    _capabilities: Any = field(default=None, repr=False)

    @property
    def shown_url(self) -> str:
        """The base URL to print: the local provider's port changes every run, so it is a placeholder."""
        if self.is_course_provider:
            return re.sub(r":\d+(?=/|$)", ":<port>", self.base_url, count=1)
        return self.base_url

    def describe(self) -> str:
        """One line saying which API this is and where its key came from (never the key)."""
        if self.is_course_provider:
            return (f"the course's own provider at {self.shown_url}, serving {self.model!r} "
                    "(a local uvicorn process; the weights behind the name are not shown)")
        return f"{self.base_url}, model {self.model!r}, key from {self.key_source}"

    def capabilities(self) -> "Capabilities":
        """What this endpoint really does (:func:`probe_endpoint`), probed once and remembered."""
        if self._capabilities is None:
            self._capabilities = probe_endpoint(self.client, self.model, self.shown_url)
        return self._capabilities

    def sample(self, prompt: str, n: int, *, seed: int, **options: Any) -> tuple[list[Any], list[Any], int]:
        """``n`` sampled choices for ``prompt`` on any endpoint (:func:`sample_completions`)."""
        return sample_completions(self.client, self.model, self.capabilities(), prompt, n, seed=seed, **options)

    def complete_each(self, prompts: list[str], **options: Any) -> tuple[list[Any], list[Any]]:
        """One choice per prompt on any endpoint (:func:`complete_each`)."""
        return complete_each(self.client, self.model, self.capabilities(), prompts, **options)

    def require_course_provider(self, what: str) -> bool:
        """True on the course's own provider; elsewhere print why ``what`` is skipped and return False."""
        if self.is_course_provider:
            return True
        print(f"Skipped: {what} needs the course's own provider (an operator control that no public "
              f"API offers), and this notebook is using {self.base_url}. Unset {API_BASE_VARIABLE} "
              f"and {REAL_API_VARIABLE} to run it on your own machine.")
        return False


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _client(base_url: str, api_key: str, max_retries: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries,
                         timeout=openai.Timeout(120.0, connect=CONNECT_TIMEOUT_SECONDS))


def _external(base_url: str, api_key: str, key_source: str, model: str | None,
              max_retries: int, setting: str) -> Endpoint:
    """Connect to an API that is already running elsewhere, and check that it answers."""
    client = _client(base_url, api_key, max_retries)
    try:
        served = [m.id for m in client.with_options(max_retries=0).models.list()]
    except openai.AuthenticationError:
        raise EndpointError(f"The API at {base_url} refused the key from {key_source} (401). "
                            f"Set {key_source} to a valid key.") from None
    except openai.APIConnectionError as error:
        raise EndpointError(f"Cannot reach the API at {base_url} ({error.__cause__ or error}). Check "
                            f"{setting}, or unset it to use the course's own provider on this "
                            "machine.") from None
    except openai.APIError as error:
        raise EndpointError(f"The API at {base_url} did not list its models ({type(error).__name__}: "
                            f"{error}). Check {setting}.") from None
    if model is None:
        if not served:
            raise EndpointError(f"The API at {base_url} serves no model. Set {API_MODEL_VARIABLE} to "
                                "the model to call.")
        model = served[0]
    return Endpoint(client=client, model=model, base_url=base_url, is_course_provider=False,
                    key_source=key_source)


@contextmanager
def open_endpoint(*, max_retries: int = 2, **provider_options: Any) -> Iterator[Endpoint]:
    """Open the API the environment names (see the module docstring) for the ``with`` block.

    ``max_retries`` is the ``openai`` client's own retry count (2 is the client's default;
    0 shows every 429 as it comes). ``provider_options`` go to
    ``glassbox.provider.start_provider`` when the course's own provider is started, for
    example ``rpm=3`` or ``logit_bias_mode="pre-2024"``; other APIs ignore them.
    Raises :class:`EndpointError` with one clear message when the API cannot be used.
    """
    base_url = os.environ.get(API_BASE_VARIABLE, "").strip()
    model = os.environ.get(API_MODEL_VARIABLE, "").strip() or None
    if base_url:
        api_key = os.environ.get(API_KEY_VARIABLE, "").strip()
        if not api_key:
            raise EndpointError(f"{API_BASE_VARIABLE} is set to {base_url}, but {API_KEY_VARIABLE} is "
                                "empty: set it to your key for that API.")
        yield _external(base_url, api_key, API_KEY_VARIABLE, model, max_retries, API_BASE_VARIABLE)
        return
    if _truthy(os.environ.get(REAL_API_VARIABLE)):
        api_key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not api_key:
            raise EndpointError(f"{REAL_API_VARIABLE}=1 asks for the real OpenAI API, but OPENAI_API_KEY "
                                "is not set. Set it, or unset GLASSBOX_REAL_API to use the course's "
                                "own provider.")
        yield _external(OPENAI_BASE_URL, api_key, "OPENAI_API_KEY", model or OPENAI_DEFAULT_MODEL,
                        max_retries, REAL_API_VARIABLE)
        return
    try:
        from glassbox.provider import start_provider
    except ImportError as error:
        raise EndpointError(f"The course's own provider cannot be imported ({error}). Reinstall the "
                            "course (pip install -r requirements.txt), or set GLASSBOX_API_BASE to "
                            "another OpenAI-compatible server.") from None
    with start_provider(**provider_options) as provider:
        client = _client(provider.base_url, provider.api_key, max_retries)
        try:
            yield Endpoint(client=client, model=provider.model_name, base_url=provider.base_url,
                           is_course_provider=True, provider=provider,
                           key_source="a key made up for this session")
        finally:
            client.close()


# ----- What does this endpoint really do? ------------------------------------------------------
#
# "OpenAI-compatible" is a spectrum. llama.cpp's server, for example, ignores `n`, refuses a
# list of prompts with a 500, accepts out-of-range values unchecked and echoes prompt
# log-probabilities shifted by one position. A notebook that trusts such a server prints wrong
# statistics without noticing. So the notebooks ask `probe_endpoint` first, and use its answers:
# one request per sample when `n` is ignored, one request per prompt when lists are refused,
# and one clear sentence instead of an experiment whose feature is missing or wrong.

#: Short prompts only: some servers crash on a prompt longer than their context.
PROBE_PROMPT = "The nurse"
#: Two log-probabilities of the same token, once generated and once echoed, must agree this well.
ECHO_TOLERANCE = 1e-2
#: OpenAI's documented limits that the limits probe tries to break (each should give a 400).
OPENAI_LIMITS = {
    "logprobs": ("completions logprobs=6 (OpenAI's limit is 5)", {"logprobs": 6}),
    "temperature": ("temperature=2.5 (OpenAI's range is 0 to 2)", {"temperature": 2.5}),
    "logit_bias": ("a logit_bias of 101 (OpenAI's range is -100 to 100)", {"logit_bias": {"13": 101}}),
}


@dataclass
class Finding:
    """One probed feature: whether it works as OpenAI documents, and one sentence saying what was seen."""

    feature: str
    expected: str  #: what OpenAI's API does
    works: bool | None  #: True as documented, False missing or different, None not checked
    seen: str  #: one sentence: what this endpoint did
    fallback: str = ""  #: what the notebooks do about it

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: "not checked"}[self.works]


#: The features in the order the table shows them, with what OpenAI documents and what the
#: notebooks do when the endpoint differs.
FEATURES = {
    "models.retrieve": ("GET /v1/models/{id}, which describes one model",
                        "the notebooks use the name from the model list instead"),
    "n": ("`n`: several choices from one request",
          "one request per sample (same number of paid queries, more requests)"),
    "prompt list": ("a list of prompts in one request, one choice each",
                    "one request per prompt"),
    "logprobs": ("completions `logprobs`: the top 5 alternatives of each token",
                 "experiments that read log-probabilities are skipped"),
    "echo": ("`echo=True` giving each prompt token its own log-probability",
             "membership inference through the API is skipped"),
    "chat top_logprobs": ("chat `top_logprobs` up to 20, and a 400 beyond",
                          "the chat comparison says what came back"),
    "limits": ("a 400 for out-of-range values (logprobs=6, temperature=2.5, logit_bias 101)",
               "no request that could crash the server (e.g. a prompt longer than the context) is sent"),
    "system_fingerprint": ("a `system_fingerprint` on chat replies",
                           "the pinning section says the field is absent"),
    "responses": ("the Responses API (POST /v1/responses, `client.responses.create`)",
                  "the Responses API example is skipped"),
}


@dataclass
class Capabilities:
    """What an endpoint does, feature by feature (from :func:`probe_endpoint`)."""

    base_url: str
    model: str
    findings: dict[str, Finding]

    def works(self, feature: str) -> bool:
        """True only when ``feature`` was checked and behaves as OpenAI documents."""
        return self.findings[feature].works is True

    def require(self, feature: str, what: str) -> bool:
        """True when ``feature`` works; otherwise print one sentence saying why ``what`` is skipped."""
        if self.works(feature):
            return True
        finding = self.findings[feature]
        print(f"Skipped: {what} needs {finding.expected}, and this endpoint failed that check: "
              f"{finding.seen}")
        return False

    def table(self, where: str | None = None) -> str:
        """The findings as a fixed-width text table, one row per feature."""
        rows = [("feature", "as OpenAI documents?", "what this endpoint did")]
        rows += [(f.feature, f.verdict, f.seen) for f in self.findings.values()]
        width = max(len(r[0]) for r in rows)
        lines = [f"Probe of {where or self.base_url}, model {self.model!r}:"]
        lines += [f"  {a:<{width}}  {b:<20}  {c}" for a, b, c in rows]
        return "\n".join(lines)

    def rows(self) -> list[dict[str, str]]:
        """The findings as rows (feature, expected, works, seen, fallback), e.g. for a CSV file."""
        return [{"feature": f.feature, "openai_documents": f.expected, "works": f.verdict,
                 "seen": f.seen, "notebooks_do": f.fallback} for f in self.findings.values()]


def _short_error(error: BaseException) -> str:
    """One line for an error, without the request body or a key."""
    if isinstance(error, openai.APIStatusError):
        message = ""
        body = error.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            message = inner.get("message", "") if isinstance(inner, dict) else str(inner)
        message = " ".join(str(message or error.message).split())[:120]
        return f"HTTP {error.status_code} ({message})" if message else f"HTTP {error.status_code}"
    if isinstance(error, openai.APIConnectionError):
        return f"no answer ({type(error).__name__})"
    return f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"


def _probe_models_retrieve(client: openai.OpenAI, model: str) -> tuple[bool, str]:
    try:
        found = client.models.retrieve(model)
    except Exception as error:  # noqa: BLE001 - any failure is a finding, never a traceback
        return False, f"models.retrieve({model!r}) gave {_short_error(error)}."
    return True, f"models.retrieve returned id {getattr(found, 'id', None)!r}."


def _probe_n(client: openai.OpenAI, model: str) -> tuple[bool, str]:
    try:
        reply = client.completions.create(model=model, prompt=PROBE_PROMPT, max_tokens=1, n=3,
                                          temperature=1, seed=0)
    except Exception as error:  # noqa: BLE001
        return False, f"n=3 gave {_short_error(error)}."
    count = len(reply.choices or [])
    if count == 3:
        return True, "n=3 returned 3 choices."
    return False, f"n=3 returned {count} choice(s): n is ignored."


def _probe_prompt_list(client: openai.OpenAI, model: str) -> tuple[bool, str]:
    prompts = [PROBE_PROMPT, "It was a"]
    try:
        reply = client.completions.create(model=model, prompt=prompts, max_tokens=1, temperature=0)
    except Exception as error:  # noqa: BLE001
        return False, f"a list of 2 prompts gave {_short_error(error)}."
    indices = sorted(choice.index for choice in reply.choices or [])
    if indices == [0, 1]:
        return True, "a list of 2 prompts returned one choice for each."
    return False, f"a list of 2 prompts returned choices with indices {indices}."


def _top_of(choice: Any) -> dict[str, float] | None:
    logprobs = getattr(choice, "logprobs", None)
    tops = getattr(logprobs, "top_logprobs", None) if logprobs is not None else None
    if not tops or not isinstance(tops[0], dict):
        return None
    return dict(tops[0])


def _probe_logprobs(client: openai.OpenAI, model: str) -> tuple[bool, str, Any]:
    try:
        reply = client.completions.create(model=model, prompt=PROBE_PROMPT, max_tokens=1,
                                          temperature=0, logprobs=5)
    except Exception as error:  # noqa: BLE001
        return False, f"logprobs=5 gave {_short_error(error)}.", None
    choice = reply.choices[0] if reply.choices else None
    top = _top_of(choice)
    lp = getattr(choice, "logprobs", None)
    if top is None or not getattr(lp, "token_logprobs", None):
        return False, "logprobs=5 returned no log-probabilities.", None
    if len(top) < 5:
        return False, f"logprobs=5 returned {len(top)} alternative(s).", None
    return True, f"logprobs=5 returned {len(top)} alternatives.", choice


def _probe_echo(client: openai.OpenAI, model: str, generated: Any) -> tuple[bool | None, str]:
    """Echo the prompt plus the token the model generated after it: both log-probabilities must agree."""
    if generated is None:
        return None, "not checked: this endpoint returned no log-probabilities to compare with."
    token = generated.logprobs.tokens[0] if generated.logprobs.tokens else generated.text
    logprob = generated.logprobs.token_logprobs[0]
    if not token or logprob is None:
        return None, "not checked: the generated token came back without its log-probability."
    text = PROBE_PROMPT + token
    try:
        reply = client.completions.create(model=model, prompt=text, max_tokens=1, temperature=0,
                                          logprobs=1, echo=True)
    except Exception as error:  # noqa: BLE001
        return False, f"echo=True gave {_short_error(error)}."
    lp = getattr(reply.choices[0], "logprobs", None) if reply.choices else None
    tokens, values = getattr(lp, "tokens", None), getattr(lp, "token_logprobs", None)
    if not tokens or not values:
        return False, "echo=True returned no prompt log-probabilities."
    joined = ""
    for position, piece in enumerate(tokens):
        if joined == PROBE_PROMPT and piece == token:
            echoed = values[position]
            break
        joined += piece
    else:
        return False, f"echo=True did not send back the prompt {text!r} token by token."
    if echoed is None or abs(echoed - logprob) > ECHO_TOLERANCE:
        shown = "nothing" if echoed is None else f"{echoed:.3f}"
        return False, (f"{token!r} after {PROBE_PROMPT!r} has logprob {logprob:.3f} when generated "
                       f"but {shown} when echoed: echo's log-probabilities are not those of their tokens.")
    return True, f"echo gives {token!r} after {PROBE_PROMPT!r} the logprob it has when generated (±{ECHO_TOLERANCE:g})."


def _probe_chat(client: openai.OpenAI, model: str) -> tuple[tuple[bool, str], tuple[bool, str]]:
    """Chat top_logprobs (20 allowed, 21 refused) and the system_fingerprint of the same reply."""
    messages = [{"role": "user", "content": "Hello"}]
    try:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=1,
                                               temperature=0, logprobs=True, top_logprobs=20)
    except Exception as error:  # noqa: BLE001
        seen = f"chat with top_logprobs=20 gave {_short_error(error)}."
        return (False, seen), (False, "not seen: " + seen)
    fingerprint = getattr(reply, "system_fingerprint", None)
    fingerprint_finding = ((True, f"system_fingerprint {fingerprint!r}.") if fingerprint
                           else (False, "chat replies carry no system_fingerprint."))
    content = getattr(getattr(reply.choices[0], "logprobs", None), "content", None) if reply.choices else None
    count = len(content[0].top_logprobs or []) if content else 0
    if count != 20:
        return (False, f"top_logprobs=20 returned {count} alternatives."), fingerprint_finding
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0,
                                       logprobs=True, top_logprobs=21)
    except openai.BadRequestError:
        return (True, "top_logprobs=20 returned 20 alternatives; 21 was refused (400)."), fingerprint_finding
    except Exception as error:  # noqa: BLE001
        return (False, f"top_logprobs=20 returned 20; 21 gave {_short_error(error)}, not a 400."), fingerprint_finding
    return (False, "top_logprobs=20 returned 20 alternatives, and 21 was accepted too."), fingerprint_finding


def _probe_limits(client: openai.OpenAI, model: str) -> tuple[bool, str]:
    accepted, failed = [], []
    for what, options in OPENAI_LIMITS.values():
        try:
            client.completions.create(model=model, prompt=PROBE_PROMPT, max_tokens=1, **options)
        except openai.BadRequestError:
            continue
        except Exception as error:  # noqa: BLE001
            failed.append(f"{what} gave {_short_error(error)}")
            continue
        accepted.append(what)
    if not accepted and not failed:
        return True, "each out-of-range value was refused with a 400."
    parts = ([f"accepted unchecked: {', '.join(accepted)}"] if accepted else []) + failed
    return False, "; ".join(parts) + "."


def _probe_responses(client: openai.OpenAI, model: str) -> tuple[bool, str]:
    try:
        reply = client.responses.create(model=model, input=PROBE_PROMPT, max_output_tokens=16,
                                        temperature=0)
    except Exception as error:  # noqa: BLE001
        return False, f"client.responses.create gave {_short_error(error)}."
    text = getattr(reply, "output_text", None)
    if not isinstance(text, str):
        return False, "client.responses.create answered without output text."
    return True, f"client.responses.create answered {text[:30]!r}."


def probe_endpoint(client: openai.OpenAI, model: str, base_url: str = "") -> Capabilities:
    """Ask an endpoint what it really does, with a few short requests, never a traceback.

    Each feature of :data:`FEATURES` becomes a :class:`Finding`. Requests are made without the
    client's retries (a server that answers 500 to a prompt list would otherwise be asked three
    times) and with short prompts only (some servers crash on a prompt longer than their context).
    """
    quiet = client.with_options(max_retries=0)
    results: dict[str, tuple[bool | None, str]] = {}
    results["models.retrieve"] = _probe_models_retrieve(quiet, model)
    results["n"] = _probe_n(quiet, model)
    results["prompt list"] = _probe_prompt_list(quiet, model)
    works, seen, generated = _probe_logprobs(quiet, model)
    results["logprobs"] = (works, seen)
    results["echo"] = _probe_echo(quiet, model, generated)
    results["chat top_logprobs"], results["system_fingerprint"] = _probe_chat(quiet, model)
    results["limits"] = _probe_limits(quiet, model)
    results["responses"] = _probe_responses(quiet, model)
    findings = {name: Finding(name, expected, results[name][0], results[name][1],
                              "" if results[name][0] else fallback)
                for name, (expected, fallback) in FEATURES.items()}
    return Capabilities(base_url=base_url or str(client.base_url), model=model, findings=findings)


# ----- Requests that work on every endpoint ---------------------------------------------------


def sample_completions(client: openai.OpenAI, model: str, capabilities: Capabilities, prompt: str,
                       n: int, *, seed: int, **options: Any) -> tuple[list[Any], list[Any], int]:
    """``n`` sampled choices for one prompt: (choices, usages, requests).

    With ``n`` honoured, one request (or one per 128 choices); otherwise one request per
    sample, each with its own seed, so the sample size is what was asked for on any endpoint.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    choices, usages = [], []
    if capabilities.works("n"):
        for start in range(0, n, 128):
            reply = client.completions.create(model=model, prompt=prompt, n=min(128, n - start),
                                              seed=seed + start, **options)
            choices += list(reply.choices)
            usages.append(reply.usage)
    else:
        for i in range(n):
            reply = client.completions.create(model=model, prompt=prompt, seed=seed + i, **options)
            choices += list(reply.choices[:1])
            usages.append(reply.usage)
    return choices, usages, len(usages)


def complete_each(client: openai.OpenAI, model: str, capabilities: Capabilities, prompts: list[str],
                  **options: Any) -> tuple[list[Any], list[Any]]:
    """One choice per prompt, in the prompts' order: (choices, usages).

    One request with the whole list where lists work; otherwise one request per prompt.
    """
    if capabilities.works("prompt list"):
        reply = client.completions.create(model=model, prompt=list(prompts), **options)
        by_index = {choice.index: choice for choice in reply.choices}
        return [by_index[i] for i in range(len(prompts))], [reply.usage]
    choices, usages = [], []
    for text in prompts:
        reply = client.completions.create(model=model, prompt=text, **options)
        choices.append(reply.choices[0])
        usages.append(reply.usage)
    return choices, usages


# ----- Reading a share off the top-k log-probabilities ----------------------------------------


def pair_share(top_logprobs: dict[str, float], target: str, other: str) -> tuple[float, float]:
    """The share P(target) / (P(target) + P(other)) from one position's top-k log-probabilities.

    Returns ``(low, high)``. When both tokens are among the top k the share is exact
    (``low == high``). A token missing from the top k has a probability somewhere between 0 and
    the smallest probability that was shown, so the share is then only bounded; with both
    missing, nothing is known: ``(0.0, 1.0)``. Token strings must be the API's own (for example
    ``' herself'`` with its leading space).
    """
    if not top_logprobs:
        return 0.0, 1.0
    floor = math.exp(min(top_logprobs.values()))  # nothing outside the top k is more likely
    p_target = math.exp(top_logprobs[target]) if target in top_logprobs else None
    p_other = math.exp(top_logprobs[other]) if other in top_logprobs else None
    if p_target is not None and p_other is not None:
        share = p_target / (p_target + p_other)
        return share, share
    if p_target is not None:
        return p_target / (p_target + floor), 1.0
    if p_other is not None:
        return 0.0, floor / (floor + p_other)
    return 0.0, 1.0
