"""Deadlines as data: a heap of timers that a sans-IO core owns and an adapter drives.

The core schedules with an absolute `deadline` (the same clock as the `now` it is
given), the adapter asks `next_deadline()` and calls `fire_due(now)`; nothing here
reads a clock or sleeps. Cancelling marks the timer and leaves it in the heap, which
is cheaper than removing it: a cancelled timer is skipped when it surfaces. Long
timers cancelled early (a call's no-answer timer, cancelled by the answer) would
pile up for minutes, each holding its callback's call; when they are over half the
heap, it is rebuilt without them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count

COMPACT_AFTER = 1024  # cancelled timers in the heap before a rebuild is worth it


def _nothing(now: float) -> None:
    pass


class Timer:
    __slots__ = ("callback", "cancelled", "deadline", "heap", "seq")

    def __init__(
        self, deadline: float, seq: int, callback: Callable[[float], None], heap: TimerHeap
    ) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.cancelled = False
        self.heap = heap

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _nothing  # what it would have called may be freed now
            self.heap.cancelled += 1

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = count()
        self.cancelled = 0  # cancelled timers still in the heap

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        if self.cancelled > COMPACT_AFTER and 2 * self.cancelled > len(self._heap):
            self._compact()
        timer = Timer(deadline, next(self._seq), callback, self)
        heapq.heappush(self._heap, timer)
        return timer

    def _compact(self) -> None:
        # In place: `fire_due` may be running the callback that scheduled this timer.
        self._heap[:] = [t for t in self._heap if not t.cancelled]
        heapq.heapify(self._heap)
        self.cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
            self.cancelled -= 1
        return heap[0].deadline if heap else None

    def fire_due(self, now: float) -> int:
        """Run every timer due at `now` in deadline order; returns how many ran."""
        heap = self._heap
        fired = 0
        while heap and heap[0].deadline <= now:
            timer = heapq.heappop(heap)
            if timer.cancelled:
                self.cancelled -= 1
            else:
                timer.cancelled = True  # fired: a later cancel() is a no-op
                fired += 1
                timer.callback(now)
        return fired

    def __len__(self) -> int:
        return len(self._heap) - self.cancelled
