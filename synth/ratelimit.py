"""Client-side flow control for API teachers: rate limits, adaptive concurrency, Retry-After.

- `TokenBucket`: requests per minute and tokens per minute. A bucket of capacity `burst`
  refilled at `rate` per second never lets more than `burst + rate * W` through in any
  window of W seconds. Token costs are estimated before sending and reconciled with the
  server's `usage` afterwards (`adjust`).
- `AdaptiveLimit`: the number of requests in flight. Halves on overload (429/503), at most
  once per cool-down, and grows by one after a window of successes (AIMD, as TCP does).
- `retry_after_s`: the wait a 429/503 asks for, from Retry-After (seconds or HTTP date),
  retry-after-ms, or the x-ratelimit-reset-* headers.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import re
import time
from collections.abc import Mapping


class TokenBucket:
    """An async token bucket. `acquire` waits (FIFO) until `amount` tokens are available."""

    def __init__(self, rate_per_s: float, capacity: float):
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate_per_s
        self.capacity = capacity
        self._tokens = capacity
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, amount: float = 1.0) -> None:
        # A request bigger than the bucket may go once the bucket is full (else it never could).
        amount = min(amount, self.capacity)
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= amount:
                    self._tokens -= amount
                    return
                await asyncio.sleep((amount - self._tokens) / self.rate)

    def adjust(self, delta: float) -> None:
        """Charge (positive) or refund (negative) tokens after the fact; may go into debt."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens - delta)


class AdaptiveLimit:
    """A concurrency limit that backs off on overload and ramps back up when healthy."""

    def __init__(self, maximum: int, minimum: int = 1, cooldown_s: float = 1.0):
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = maximum
        self.active = 0
        self.cooldown_s = cooldown_s
        self._successes = 0
        self._last_decrease = -1e9
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            while self.active >= self.limit:
                await self._cond.wait()
            self.active += 1

    async def release(self) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify()

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.maximum:
            self._successes = 0
            self.limit += 1
            # Waiters are woken by the next release; one more slot is a small, safe delay.

    def on_overload(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= self.cooldown_s:
            self._last_decrease = now
            self._successes = 0
            self.limit = max(self.minimum, self.limit // 2)


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_duration(text: str) -> float | None:
    """'1.5', '6m0s', '250ms', '1h2m3s' into seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        return None
    return sum(float(p.group("value")) * _UNITS[p.group("unit")] for p in parts)


_BUDGET_HEADERS = (
    # OpenAI (and compatible servers): remaining counts, resets as durations ("1s", "6m0s")
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    # Anthropic: remaining counts, resets as RFC 3339 times
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
)


def _reset_s(value: str, now: float | None) -> float | None:
    """A reset header's value in seconds from now: a duration ("6m0s") or a time (RFC 3339)."""
    seconds = _parse_duration(value.strip())
    if seconds is not None:
        return seconds
    try:
        when = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, when - (time.time() if now is None else now))


def budget_spent_wait(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """After a success: seconds until the budget resets when a remaining-count header says 0."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    waits = [_reset_s(lower[reset], now) for remaining, reset in _BUDGET_HEADERS
             if lower.get(remaining, "").strip() == "0" and reset in lower]
    waits = [w for w in waits if w]
    return max(waits) if waits else None


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or None when it does not say."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in lower:
        value = lower["retry-after"].strip()
        seconds = _parse_duration(value)
        if seconds is not None:
            return max(0.0, seconds)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when - (time.time() if now is None else now))
    resets = [_reset_s(lower[h], now) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens") if h in lower]
    resets = [r for r in resets if r is not None]
    return max(resets) if resets else None
