"""Per-key rate limits: a token bucket for requests per minute and one for tokens per minute.

Each bucket holds up to a minute's allowance and refills continuously. A request costs one
request and (prompt tokens + max_tokens x choices) tokens, as OpenAI counts it up front.
When either bucket is short, the answer is 429 ``rate_limit_exceeded`` with ``retry-after``
(seconds), ``retry-after-ms`` and OpenAI's ``x-ratelimit-*`` headers, which also come with
every successful response.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from glassbox.provider.errors import APIError


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

    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self._lock = threading.Lock()
        self.rpm = rpm
        self.tpm = tpm
        self._buckets: dict[tuple[str, str], Bucket] = {}

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
        now = time.monotonic() if now is None else now
        with self._lock:
            checks = []
            if self.rpm is not None:
                checks.append(("requests", self._bucket(key_id, "requests", self.rpm, now), 1))
            if self.tpm is not None:
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
                "Send fewer or shorter prompts, or a smaller max_tokens.",
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
