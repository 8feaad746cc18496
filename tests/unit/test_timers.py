"""TimerHeap: deadlines as data, fired by whoever owns the clock."""

from __future__ import annotations

from twinline.timers import COMPACT_AFTER, TimerHeap


def recorder(log: list[tuple[str, float]], name: str):  # type: ignore[no-untyped-def]
    def callback(now: float) -> None:
        log.append((name, now))

    return callback


def test_empty_heap_has_no_deadline_and_fires_nothing() -> None:
    heap = TimerHeap()
    assert heap.next_deadline() is None
    assert heap.fire_due(100.0) == 0
    assert len(heap) == 0


def test_fires_in_deadline_order_whatever_the_scheduling_order() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    heap.schedule(3.0, recorder(log, "c"))
    heap.schedule(1.0, recorder(log, "a"))
    heap.schedule(2.0, recorder(log, "b"))
    assert heap.next_deadline() == 1.0
    assert heap.fire_due(5.0) == 3
    assert log == [("a", 5.0), ("b", 5.0), ("c", 5.0)]
    assert heap.next_deadline() is None


def test_equal_deadlines_fire_in_scheduling_order() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    for name in "xyzw":
        heap.schedule(1.0, recorder(log, name))
    heap.fire_due(1.0)
    assert [n for n, _ in log] == ["x", "y", "z", "w"]


def test_fire_due_fires_only_what_is_due() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    heap.schedule(1.0, recorder(log, "a"))
    heap.schedule(2.0, recorder(log, "b"))
    assert heap.fire_due(0.999) == 0
    assert log == []
    assert heap.fire_due(1.0) == 1  # a deadline equal to now is due
    assert log == [("a", 1.0)]
    assert heap.next_deadline() == 2.0
    assert len(heap) == 1


def test_a_timer_fires_once() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    heap.schedule(1.0, recorder(log, "a"))
    heap.fire_due(1.0)
    assert heap.fire_due(2.0) == 0
    assert log == [("a", 1.0)]


def test_cancelled_timer_does_not_fire() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    a = heap.schedule(1.0, recorder(log, "a"))
    heap.schedule(2.0, recorder(log, "b"))
    a.cancel()
    assert len(heap) == 1
    assert heap.fire_due(3.0) == 1
    assert log == [("b", 3.0)]


def test_next_deadline_skips_cancelled_timers() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    a = heap.schedule(1.0, recorder(log, "a"))
    b = heap.schedule(2.0, recorder(log, "b"))
    heap.schedule(3.0, recorder(log, "c"))
    a.cancel()
    b.cancel()
    assert heap.next_deadline() == 3.0
    c_only = heap.fire_due(3.0)
    assert c_only == 1
    assert heap.next_deadline() is None


def test_cancelling_every_timer_leaves_no_deadline() -> None:
    heap = TimerHeap()
    timers = [heap.schedule(float(i), lambda now: None) for i in range(5)]
    for t in timers:
        t.cancel()
    assert heap.next_deadline() is None
    assert len(heap) == 0


def test_cancel_after_firing_is_harmless() -> None:
    heap = TimerHeap()
    a = heap.schedule(1.0, lambda now: None)
    heap.fire_due(1.0)
    a.cancel()
    assert heap.next_deadline() is None


def test_callback_may_schedule_and_cancel() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    later = heap.schedule(5.0, recorder(log, "later"))

    def first(now: float) -> None:
        log.append(("first", now))
        later.cancel()
        heap.schedule(now + 1.0, recorder(log, "rescheduled"))

    heap.schedule(1.0, first)
    heap.fire_due(1.0)
    assert log == [("first", 1.0)]
    assert heap.next_deadline() == 2.0
    heap.fire_due(10.0)
    assert log == [("first", 1.0), ("rescheduled", 10.0)]


def test_timer_scheduled_by_a_callback_for_a_past_deadline_fires_in_the_same_call() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    heap.schedule(1.0, lambda now: heap.schedule(0.5, recorder(log, "late")))
    assert heap.fire_due(2.0) == 2
    assert log == [("late", 2.0)]


def test_long_timers_cancelled_early_do_not_pile_up() -> None:
    # A no-answer timer per call, cancelled by the answer minutes before it is due:
    # the heap must not keep tens of thousands of them (and their calls) until then.
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    keep = heap.schedule(500.0, recorder(log, "kept"))
    for _ in range(10_000):
        heap.schedule(300.0, recorder(log, "cancelled")).cancel()
    heap.schedule(1.0, recorder(log, "soon"))
    assert len(heap) == 2
    assert len(heap._heap) < 2 * COMPACT_AFTER + 4
    assert heap.fire_due(1000.0) == 2
    assert log == [("soon", 1000.0), ("kept", 1000.0)]
    keep.cancel()  # fired already: no effect on the count
    assert len(heap) == 0 and heap.cancelled == 0


def test_a_cancelled_timer_lets_go_of_its_callback() -> None:
    # What the callback closes over (a call, a transaction) must not wait in the heap
    # until the cancelled timer's deadline surfaces.
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    callback = recorder(log, "cancelled")
    timer = heap.schedule(600.0, callback)
    timer.cancel()
    assert timer.callback is not callback
    assert heap.fire_due(1000.0) == 0 and log == []


def test_a_callback_that_triggers_a_rebuild_still_sees_its_timers_fire() -> None:
    heap = TimerHeap()
    log: list[tuple[str, float]] = []
    for _ in range(2 * COMPACT_AFTER):
        heap.schedule(900.0, recorder(log, "cancelled")).cancel()

    def schedules(now: float) -> None:
        # The rebuild happens here, in the middle of fire_due.
        heap.schedule(now, recorder(log, "scheduled by the callback"))

    heap.schedule(1.0, schedules)
    heap.schedule(2.0, recorder(log, "after"))
    assert heap.fire_due(5.0) == 3
    assert log == [("after", 5.0), ("scheduled by the callback", 5.0)]
    assert len(heap) == 0
