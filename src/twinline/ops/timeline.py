"""What happened to the cluster, latest first: failures, takeovers, re-protections, joins.

The switch adds an entry at each such moment (never per call); the dashboard shows
the latest. Bounded: the oldest entries fall off.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

KINDS = ("join", "rejoin", "failure", "takeover", "reprotect", "adoption", "drain", "undrain")


class Timeline:
    def __init__(self, size: int = 100, wall: Callable[[], float] = time.time) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._wall = wall
        self._seq = 0

    def add(self, kind: str, server: str, text: str, **figures: Any) -> None:
        assert kind in KINDS, kind
        self._seq += 1
        self._entries.appendleft(
            {"seq": self._seq, "at": self._wall(), "kind": kind, "server": server,
             "text": text, **figures}
        )  # fmt: skip

    def latest(self, count: int = 30) -> list[dict[str, Any]]:
        return [dict(e) for e in list(self._entries)[:count]]
