"""The course's closed tier: an OpenAI-compatible provider serving the loaded model on this machine.

Learners call it with the official ``openai`` client and see what a real API shows:
text, logprobs, token counts and errors, under a provider-style model name. See
``python -m glassbox.provider --help`` (for a class) and :func:`start_provider` (for notebooks).

Modules: ``process`` (start_provider, ProviderHandle), ``__main__`` (the command line),
``app`` (the HTTP routes), ``gatekeeper`` (keys, body checks, request ids, the log),
``engine`` (the batched generation worker), ``schemas``, ``errors``, ``responses``,
``ratelimit``, ``requestlog``, ``chat``, ``variants``, ``tokens``, ``lifeline``, ``settings``.
Importing this package imports only the standard library.
"""

from glassbox.provider.process import ProviderError, ProviderHandle, ProviderStartError, start_provider, stop_all
from glassbox.provider.settings import DEFAULT_SERVED_NAME, LOGIT_BIAS_MODES

__all__ = [
    "start_provider",
    "ProviderHandle",
    "ProviderStartError",
    "ProviderError",
    "stop_all",
    "DEFAULT_SERVED_NAME",
    "LOGIT_BIAS_MODES",
]
