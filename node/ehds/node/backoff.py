"""Delays between connection attempts: exponential growth with full jitter.

Why full jitter: when the coordinator restarts, every node of the federation loses its stream at
the same instant. Delays drawn uniformly from ``[0, min(max, initial * 2**attempt)]`` spread
their reconnects over the whole window instead of sending them back in synchronised waves
(the "Exponential Backoff And Jitter" analysis by AWS).
"""

from __future__ import annotations

import random

_MAX_EXPONENT = 62


class Backoff:
    def __init__(
        self, initial_seconds: float, max_seconds: float, rng: random.Random | None = None
    ) -> None:
        if initial_seconds <= 0 or max_seconds <= 0:
            raise ValueError("backoff delays must be positive")
        self.initial_seconds = initial_seconds
        self.max_seconds = max(max_seconds, initial_seconds)
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failed attempts since the last `reset` (the exponent of the next delay's cap)."""
        return self._attempt

    def cap(self) -> float:
        """The upper bound of the next delay."""
        exponent = min(self._attempt, _MAX_EXPONENT)
        return min(self.max_seconds, self.initial_seconds * 2.0**exponent)

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self.cap())
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """After a successful connection (a Welcome): the next failure starts small again."""
        self._attempt = 0
