"""Per-task-type rate limits (``rate_limit="10/s"``), enforced by each worker on its own.

A token bucket per task name: tasks start while tokens remain; otherwise the worker holds
the request until the bucket refills. Celery's syntax: ``"N/s"``, ``"N/m"``, ``"N/h"``, or a
plain number (per second).
"""

from __future__ import annotations

import time

from celeriac.exceptions import ImproperlyConfigured

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str | float | int | None) -> float | None:
    """Tasks per second for a rate string; None (or 0) means no limit.

    Raises:
        ImproperlyConfigured: The rate is not ``N``, ``N/s``, ``N/m`` or ``N/h``.
    """
    if rate is None or rate in {"", 0}:
        return None
    if isinstance(rate, int | float):
        return float(rate) or None
    amount, _, unit = rate.partition("/")
    try:
        per_unit = float(amount)
        seconds = _UNITS[unit.strip() or "s"]
    except (ValueError, KeyError):
        raise ImproperlyConfigured(
            f"Bad rate limit {rate!r}: use e.g. '10/s', '100/m' or '5/h'"
        ) from None
    return per_unit / seconds if per_unit > 0 else None


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = max(capacity, 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> float:
        """Take a token: 0 when granted, else seconds until one will be available."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimits:
    """The buckets of one worker, made on first use from each task's ``rate_limit``."""

    def __init__(self, default: str | None = None, disabled: bool = False) -> None:
        self.default = default
        self.disabled = disabled
        self._buckets: dict[str, TokenBucket | None] = {}

    def delay(self, name: str, rate: str | float | None) -> float:
        """Seconds to wait before a task of ``name`` may start (0: start now)."""
        if self.disabled:
            return 0.0
        if name not in self._buckets:
            per_second = parse_rate(rate if rate is not None else self.default)
            self._buckets[name] = TokenBucket(per_second) if per_second else None
        bucket = self._buckets[name]
        return bucket.take() if bucket is not None else 0.0
