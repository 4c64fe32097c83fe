"""A Lamport clock: a counter that orders events across processes without shared time.

Each sender moves its clock forward for every event it sends; each receiver moves its own
past every clock value it sees. So if event A could have caused event B, A's clock is
smaller, whatever the wall clocks of the two hosts say.
"""

from __future__ import annotations

import threading


class LamportClock:
    """A thread-safe Lamport clock.

    Args:
        initial: The starting value.
    """

    def __init__(self, initial: int = 0) -> None:
        self._value = initial
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        """The current value."""
        return self._value

    def forward(self) -> int:
        """Advance for a local event; returns the new value."""
        with self._lock:
            self._value += 1
            return self._value

    def adjust(self, other: int) -> int:
        """Move past a value received from elsewhere; returns the new value."""
        with self._lock:
            self._value = max(self._value, other) + 1
            return self._value

    def __repr__(self) -> str:
        return f"<LamportClock {self._value}>"
