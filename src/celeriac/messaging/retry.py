"""Retrying broker operations on recoverable errors, with Celery's ``retry_policy`` keys.

The schedule is written once (``RetryPolicy.intervals``) and driven by a synchronous and an
asynchronous loop, which differ only in how they sleep.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from celeriac.exceptions import ImproperlyConfigured, OperationalError

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_retries: Retries after the first attempt; None retries forever.
        interval_start: Seconds before the first retry.
        interval_step: Seconds added for each further retry.
        interval_max: Longest wait between retries.
    """

    max_retries: int | None = 3
    interval_start: float = 0.0
    interval_step: float = 0.2
    interval_max: float = 1.0

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any] | RetryPolicy | None) -> RetryPolicy:
        """A policy from Celery's ``retry_policy`` dict (missing keys take the defaults).

        Raises:
            ImproperlyConfigured: The dict has a key that is not a policy setting.
        """
        if policy is None:
            return cls()
        if isinstance(policy, RetryPolicy):
            return policy
        known = [f.name for f in fields(cls)]
        for key in policy:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ImproperlyConfigured(f"Unknown retry_policy key {key!r}{hint}")
        return cls(**dict(policy))

    def intervals(self) -> Iterator[float]:
        """The wait before each retry, in order; finite unless ``max_retries`` is None."""
        interval = self.interval_start
        retries = 0
        while self.max_retries is None or retries < self.max_retries:
            yield min(interval, self.interval_max)
            interval += self.interval_step
            retries += 1


#: What is being retried, for the log and the final error: text, or a function making it
#: (called only when an attempt failed, so the happy path builds no message).
Describe = str | Callable[[], str]


def _text(describe: Describe) -> str:
    return describe if isinstance(describe, str) else describe()


def _exhausted(describe: Describe, attempts: int, exc: BaseException) -> OperationalError:
    noun = "attempt" if attempts == 1 else "attempts"
    return OperationalError(f"{_text(describe)}: failed after {attempts} {noun}: {exc!r}")


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    errors: tuple[type[BaseException], ...],
    describe: Describe,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds or the policy is exhausted.

    Args:
        fn: The operation.
        policy: The retry schedule.
        errors: Exceptions that are worth a retry; others propagate at once.
        describe: What is being done and to whom (password masked), for the log and the
            final error; a function is called only once an attempt failed.
        on_retry: Called with the error before each retry (e.g. to reconnect).

    Raises:
        OperationalError: Every attempt failed; chained to the last error.
    """
    schedule = policy.intervals()
    attempts = 0
    while True:
        attempts += 1
        try:
            return fn()
        except errors as exc:
            interval = next(schedule, None)
            if interval is None:
                raise _exhausted(describe, attempts, exc) from exc
            logger.warning("%s: %r; retrying in %.2fs", _text(describe), exc, interval)
            if on_retry is not None:
                on_retry(exc)
            time.sleep(interval)


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    errors: tuple[type[BaseException], ...],
    describe: Describe,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """The asynchronous twin of ``call_with_retry``: same schedule, sleeps without blocking."""
    schedule = policy.intervals()
    attempts = 0
    while True:
        attempts += 1
        try:
            return await fn()
        except errors as exc:
            interval = next(schedule, None)
            if interval is None:
                raise _exhausted(describe, attempts, exc) from exc
            logger.warning("%s: %r; retrying in %.2fs", _text(describe), exc, interval)
            if on_retry is not None:
                on_retry(exc)
            await asyncio.sleep(interval)
