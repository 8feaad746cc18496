"""How the long-running processes use Python's cycle collector.

A call's objects live for seconds to minutes (its legs, and its transactions for 64*T1
after it ends), so at a few hundred calls/s hundreds of thousands of them reach the
oldest generation. CPython collects that generation whenever a quarter of it is new:
under steady load every few seconds, and each pass stops the event loop while it walks
every object (measured: 300-450 ms at 700 calls/s in the switch, every 4 s, so one call
setup in a hundred was late by that much).

Our objects are freed by reference counting: the hot path builds no reference cycles
(where one forms, between a call and its transactions, the switch breaks it when the
transaction or the call ends). So the young generations are collected as usual, the
objects of the start (modules, configuration) are moved out of the collector's way
(`gc.freeze`), and the oldest generation is collected only after many young
collections: minutes apart under load instead of seconds. Whatever cyclic garbage
there is waits that long; a full pass still stops the loop when it comes.
"""

from __future__ import annotations

import gc

YOUNG = 700  # objects allocated before generation 0 is collected (CPython's default)
MIDDLE = 10  # generation-0 collections per generation-1 collection (the default)
OLDEST = 10_000  # generation-1 collections per full collection (the default is 10)


def apply() -> None:
    """Call once the process has started (imports done, configuration loaded)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLDEST)
