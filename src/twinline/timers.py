"""Deadlines as data: a heap of timers that a sans-IO core owns and an adapter drives.

The core schedules with an absolute `deadline` (the same clock as the `now` it is
given), the adapter asks `next_deadline()` and calls `fire_due(now)`; nothing here
reads a clock or sleeps. Cancelling marks the timer and leaves it in the heap, which
is cheaper than removing it: a cancelled timer is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count


class Timer:
    __slots__ = ("callback", "cancelled", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, callback: Callable[[float], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = count()

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        timer = Timer(deadline, next(self._seq), callback)
        heapq.heappush(self._heap, timer)
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
        return heap[0].deadline if heap else None

    def fire_due(self, now: float) -> int:
        """Run every timer due at `now` in deadline order; returns how many ran."""
        heap = self._heap
        fired = 0
        while heap and heap[0].deadline <= now:
            timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.cancelled = True
                fired += 1
                timer.callback(now)
        return fired

    def __len__(self) -> int:
        return sum(1 for t in self._heap if not t.cancelled)
