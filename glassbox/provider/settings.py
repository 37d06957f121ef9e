"""The provider's documented limits and defaults, and its API keys (standard library only).

Both sides use this module: the notebook process (``start_provider``, which must start
quickly and import nothing heavy) and the server process.

The limits copy OpenAI's documented ones where OpenAI documents them (``logprobs`` up
to 5, ``top_logprobs`` up to 20, ``logit_bias`` at most 300 entries from -100 to 100,
at most 4 ``stop`` sequences, ``n`` up to 128, at most 2,048 prompts in one request)
and add the ones a small server on a laptop needs (body size, JSON depth).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

#: The name the model is served under. Like a provider's model name, it does not say
#: which weights are behind it (and stays the same when the operator swaps them).
DEFAULT_SERVED_NAME = "glassbox-chat-1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

LOGIT_BIAS_MODES = ("pre-2024", "post-2024")
DEFAULT_LOGIT_BIAS_MODE = "post-2024"

# --- request limits (documented in the README and in `python -m glassbox.provider --help`) ---
MAX_BODY_BYTES = 2 * 1024 * 1024  #: a larger body gets 413
MAX_JSON_DEPTH = 32  #: deeper nesting gets 400
MAX_PROMPTS = 2048  #: items in a `prompt` list (OpenAI's limit)
MAX_N = 128  #: choices per prompt (OpenAI's limit)
MAX_CHOICES = 2048  #: prompts x n in one request
MAX_STOP = 4  #: stop sequences (OpenAI's limit)
MAX_STOP_CHARS = 256  #: characters in one stop sequence
MAX_LOGPROBS = 5  #: completions: `logprobs` (OpenAI's limit)
MAX_TOP_LOGPROBS = 20  #: chat: `top_logprobs` (OpenAI's limit)
MAX_LOGIT_BIAS = 300  #: entries in `logit_bias` (OpenAI's limit)
LOGIT_BIAS_RANGE = (-100, 100)  #: values of `logit_bias` (OpenAI's limit)
MAX_MESSAGES = 2048  #: chat messages in one request
DEFAULT_MAX_TOKENS = 16  #: completions without `max_tokens` (OpenAI's default)
DEFAULT_CHAT_MAX_TOKENS = 128  #: chat without `max_tokens`: this many, or what is left of the context
MAX_PENDING_SEQUENCES = 50_000  #: sequences waiting for the model; more gets 503 (server overloaded)
#: What one request may make the model compute: prompts x n x (prompt tokens + max_tokens), echo included.
DEFAULT_MAX_REQUEST_TOKENS = 32_768
HEADER_TIMEOUT_SECONDS = 10.0  #: a connection that has not sent a whole request head by then is closed
#: A request head (request line and headers) up to this size is read whole wherever TCP splits it (h11's own
#: 16 KiB limit applied only to a head that arrived in pieces: the same long URL got 401 or 400 by chance).
MAX_HEAD_BYTES = 256 * 1024
BODY_TIMEOUT_SECONDS = 30.0  #: a request body not received whole by then gets 408

# --- the generation engine ---
DEFAULT_MAX_BATCH = 64  #: sequences decoded together in one forward pass
DEFAULT_THREADS = 1  #: torch CPU threads (more threads on a busy 2-core machine made generation 4-13x slower here)
PREFILL_TOKENS = 4096  #: prompt tokens (padded) read in one forward pass

#: Start-up: how long ``start_provider`` waits for ``GET /health`` (a download of GPT-2 takes a while).
DEFAULT_STARTUP_TIMEOUT = 600.0

LIMITS_TEXT = f"""\
limits (each gets an OpenAI-shaped 4xx):
  request body        at most {MAX_BODY_BYTES:,} bytes (413), JSON nested at most {MAX_JSON_DEPTH} deep
  prompt              a string, a list of at most {MAX_PROMPTS:,} strings, or token ids;
                      prompt tokens + max_tokens <= the model's context (400 context_length_exceeded)
  n                   1..{MAX_N}; prompts x n at most {MAX_CHOICES:,}
  max_tokens          >= 1 (completions default {DEFAULT_MAX_TOKENS}; chat default {DEFAULT_CHAT_MAX_TOKENS} or the rest of the context)
  stop                at most {MAX_STOP} sequences of at most {MAX_STOP_CHARS} characters
  logprobs            completions 0..{MAX_LOGPROBS}; chat top_logprobs 0..{MAX_TOP_LOGPROBS} (needs logprobs: true)
  logit_bias          at most {MAX_LOGIT_BIAS} entries, token id -> {LOGIT_BIAS_RANGE[0]}..{LOGIT_BIAS_RANGE[1]}
  temperature 0..2, top_p 0..1, presence/frequency_penalty -2..2; chat messages 1..{MAX_MESSAGES}
  waiting sequences   at most {MAX_PENDING_SEQUENCES:,} in the whole server (503 server_overloaded)
  request cost        prompts x n x (prompt tokens + max_tokens), echo included: what the model computes;
                      at most --max-request-tokens (default {DEFAULT_MAX_REQUEST_TOKENS:,}) per request (400 request_too_large)
  rate limits         --rpm/--tpm per key: 429 rate_limit_exceeded with retry-after and x-ratelimit-* headers;
                      every request counts against --rpm, also one that is then refused as invalid;
                      --tpm counts the request cost above
  fairness            the keys take turns: each key's waiting sequences are started in turn, each key runs
                      at most its share of the batch (--max-batch / keys with work) while others work, and a
                      key below its share starts at the next step (keys above it are paused, then resumed)
  request head        at most {MAX_HEAD_BYTES:,} bytes (longer: a plain 400 and the connection closed, before
                      any key is read, so not in the request log)
  timeouts            request head within {HEADER_TIMEOUT_SECONDS:g} s (else the connection is closed), body within {BODY_TIMEOUT_SECONDS:g} s (408)
"""


class KeyFileError(ValueError):
    """A keys file or key could not be used; the message says which line and why."""


@dataclass(frozen=True)
class ApiKey:
    """One key and its label. The label (``key_id``) is not secret: it is what the log shows."""

    key_id: str
    secret: str = ""

    def __repr__(self) -> str:  # never show the secret, even by accident
        return f"ApiKey(key_id={self.key_id!r})"


_KEY_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


def new_key(prefix: str = "sk-glassbox-") -> str:
    """A fresh random key (192 bits)."""
    return prefix + secrets.token_urlsafe(24)


def check_key(secret: str, where: str) -> str:
    """Return ``secret`` if it can be a key (printable, no spaces); raise :class:`KeyFileError` otherwise."""
    if not secret:
        raise KeyFileError(f"{where}: the key is empty.")
    if any(ch.isspace() for ch in secret) or not secret.isprintable() or not secret.isascii():
        raise KeyFileError(f"{where}: a key must be printable ASCII without spaces.")
    return secret


def parse_keys_file(path: str | Path) -> list[ApiKey]:
    """Read a keys file: one key per line, or ``label key``; blank lines and ``#`` comments are skipped.

    Keys without a label get ``key-1``, ``key-2``... in file order (counting every key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise KeyFileError(f"Cannot read the keys file {path}: {error.strerror or error}.") from None
    keys: list[ApiKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{path.name}, line {number}"
        if len(parts) == 1:
            keys.append(ApiKey(f"key-{len(keys) + 1}", check_key(parts[0], where)))
        elif len(parts) == 2:
            label, secret = parts
            if not _KEY_ID.match(label):
                raise KeyFileError(f"{where}: the label {label!r} may use only letters, digits and _ . : @ - (at most 64).")
            keys.append(ApiKey(label, check_key(secret, where)))
        else:
            raise KeyFileError(f"{where}: expected `key` or `label key`, found {len(parts)} words.")
    if not keys:
        raise KeyFileError(f"The keys file {path} holds no key (only blank lines and comments): write one key per line, "
                           "or `label key`. (Without any key the server would make one up, and nobody in the class "
                           "could use it.)")
    return keys


def read_secret_file(path: str | Path) -> str:
    """The first non-empty, non-comment line of a file holding one secret (the admin key)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise KeyFileError(f"Cannot read the admin key file {path}: {error.strerror or error}.") from None
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            return check_key(line, path.name)
    raise KeyFileError(f"The admin key file {path} holds no key.")


def check_keys(keys: list[ApiKey], admin_key: str) -> None:
    """Every key and label unique, and no learner key equal to the admin key."""
    seen_ids: set[str] = set()
    seen: set[str] = set()
    for key in keys:
        if key.key_id in seen_ids or key.key_id == "admin":
            raise KeyFileError(f"The key label {key.key_id!r} is used twice (or is the reserved label 'admin').")
        if key.secret in seen:
            raise KeyFileError(f"The key labelled {key.key_id!r} repeats an earlier key: every key must differ.")
        if secrets.compare_digest(key.secret.encode(), admin_key.encode()):
            raise KeyFileError(f"The key labelled {key.key_id!r} is the admin key: a learner key must differ from it.")
        seen_ids.add(key.key_id)
        seen.add(key.secret)
