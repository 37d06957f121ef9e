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

import os
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

    def describe(self) -> str:
        """One line saying which API this is and where its key came from (never the key)."""
        if self.is_course_provider:
            return (f"the course's own provider at {self.base_url}, serving {self.model!r} "
                    "(a local uvicorn process; the weights behind the name are not shown)")
        return f"{self.base_url}, model {self.model!r}, key from {self.key_source}"

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
