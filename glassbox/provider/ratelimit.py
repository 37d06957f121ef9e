"""Per-key rate limits: a token bucket for requests per minute and one for tokens per minute.

Each bucket holds up to a minute's allowance and refills continuously. The two are taken
at different moments, cheapest first:

* the request is taken as soon as the key is known, before the body is even read
  (:meth:`RateLimiter.take_request`), so a request that then fails validation still
  costs one: a key over its limit gets 429 however malformed its requests are;
* the tokens are taken once the request is understood (:meth:`RateLimiter.take_tokens`):
  what it will make the model compute, ``prompts x n x (prompt tokens + max_tokens)``
  (each choice reads its prompt and writes up to ``max_tokens``; see ``app.request_cost``).

When a bucket is short, the answer is 429 ``rate_limit_exceeded`` with ``retry-after``
(seconds), ``retry-after-ms`` and OpenAI's ``x-ratelimit-*`` headers, which also come with
every successful response. A 429 takes nothing.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from glassbox.provider.errors import APIError
from glassbox.provider.settings import DEFAULT_MAX_REQUEST_TOKENS

#: Who is asking, for the engine's fair scheduling: the gatekeeper sets it for each request
#: (the key's label, "admin", or None), and ``Engine.submit`` reads it, so each key's
#: sequences queue on their own and the keys take turns.
REQUEST_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("glassbox_request_key", default=None)
#: The engine jobs of the current request (``Engine.submit`` appends), for its log line.
REQUEST_JOBS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("glassbox_request_jobs", default=None)


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest}s"


@dataclass
class Bucket:
    """A token bucket: ``capacity`` units, refilled at ``capacity`` per minute."""

    capacity: int
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (``inf`` if never)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def reset_seconds(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate


class RateLimiter:
    """Token buckets per key id; ``None`` limits mean unlimited. Thread-safe."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None,
                 max_request_tokens: int | None = DEFAULT_MAX_REQUEST_TOKENS) -> None:
        self._lock = threading.Lock()
        self.rpm = rpm
        self.tpm = tpm
        self.max_request_tokens = max_request_tokens
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def check_cost(self, tokens: int) -> None:
        """The per-request ceiling, for every key (the admin's too): 400 ``request_too_large`` above it."""
        if self.max_request_tokens is not None and tokens > self.max_request_tokens:
            raise APIError(
                400,
                f"This request would make the model compute {tokens:,} tokens, counted as prompts x n x (prompt tokens + "
                f"max_tokens); this server allows at most {self.max_request_tokens:,} per request. Send fewer or shorter "
                "prompts, a smaller n, or a smaller max_tokens.",
                param=None, code="request_too_large",
            )

    def set_limits(self, rpm: int | None, tpm: int | None) -> None:
        """Change the limits; every bucket starts full again."""
        with self._lock:
            self.rpm, self.tpm = rpm, tpm
            self._buckets.clear()

    def _bucket(self, key_id: str, kind: str, capacity: int, now: float) -> Bucket:
        bucket = self._buckets.get((key_id, kind))
        if bucket is None or bucket.capacity != capacity:
            bucket = self._buckets[(key_id, kind)] = Bucket(capacity, float(capacity), now)
        bucket.refill(now)
        return bucket

    def admit(self, key_id: str, tokens: int, now: float | None = None) -> dict[str, str]:
        """Take one request and ``tokens`` tokens from ``key_id``'s buckets and return the headers to send.

        Raises :class:`APIError` 429 (nothing is taken) when either bucket is short.
        """
        return self._take(key_id, {"requests": 1, "tokens": tokens}, now)

    def take_request(self, key_id: str, now: float | None = None) -> dict[str, str]:
        """Take one request from ``key_id``'s request bucket (the x-ratelimit-*-requests headers); 429 if empty."""
        return self._take(key_id, {"requests": 1}, now)

    def take_tokens(self, key_id: str, tokens: int, now: float | None = None) -> dict[str, str]:
        """Take ``tokens`` from ``key_id``'s token bucket (the x-ratelimit-*-tokens headers); 429 if short."""
        return self._take(key_id, {"tokens": tokens}, now)

    def _take(self, key_id: str, wanted: dict[str, int], now: float | None) -> dict[str, str]:
        now = time.monotonic() if now is None else now
        tokens = wanted.get("tokens", 0)
        with self._lock:
            checks = []
            if self.rpm is not None and "requests" in wanted:
                checks.append(("requests", self._bucket(key_id, "requests", self.rpm, now), wanted["requests"]))
            if self.tpm is not None and "tokens" in wanted:
                checks.append(("tokens", self._bucket(key_id, "tokens", self.tpm, now), tokens))
            waits = {kind: bucket.wait_for(amount) for kind, bucket, amount in checks}
            short = [kind for kind, wait in waits.items() if wait > 0]
            if not short:
                for _, bucket, amount in checks:
                    bucket.level -= amount
            headers = self._headers(checks)
        if not short:
            return headers
        kind = "requests" if "requests" in short else "tokens"
        wait = max(waits[k] for k in short)
        if math.isinf(wait):
            raise APIError(
                429,
                f"Request too large: it needs {tokens:,} tokens, but this key's limit is {self.tpm:,} tokens per minute. "
                "Send fewer or shorter prompts, a smaller n, or a smaller max_tokens.",
                type="tokens", code="rate_limit_exceeded", headers={**headers, "x-should-retry": "false"},
            )
        limit = self.rpm if kind == "requests" else self.tpm
        used = "1 request" if kind == "requests" else f"{tokens:,} tokens"
        headers.update({"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))})
        raise APIError(
            429,
            f"Rate limit reached for this key on {kind} per minute: limit {limit:,}, this request needs {used}. "
            f"Please try again in {format_reset(wait)}.",
            type=kind, code="rate_limit_exceeded", headers=headers,
        )

    @staticmethod
    def _headers(checks: list[tuple[str, Bucket, int]]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, bucket, _ in checks:
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
            headers[f"x-ratelimit-reset-{kind}"] = format_reset(bucket.reset_seconds())
        return headers
