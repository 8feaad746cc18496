"""The replication core driven step by step: inputs and a stepped clock in, actions out,
no event loop. Service handler runs are answered by hand (`done`)."""

from __future__ import annotations

import msgspec

from twinline.appserver.core import (
    Adopt,
    LoadCheckpoint,
    ReplicationCore,
    RunHandler,
    RunOutcome,
    SaveCheckpoint,
    TimerDue,
    ToPeer,
    ToSwitch,
    WriteCdr,
)
from twinline.link.messages import (
    Action,
    CallInfo,
    CallRecord,
    Checkpoint,
    CheckpointAck,
    Command,
    Event,
    Finished,
    Forget,
    Offered,
    Owned,
    Release,
    Route,
    Takeover,
)

INFO = CallInfo(caller="alice", callee="bob", created=1000.0)


def offered(call: str = "c1", role: str = "primary", standby: str | None = "as2") -> Offered:
    return Offered(
        call=call, epoch=1, role=role, primary="as1",  # type: ignore[arg-type]
        standby=standby, service="s", info=INFO,
    )  # fmt: skip


def event(seq: int, kind: str, at: float, call: str = "c1", **fields: object) -> Event:
    return Event(call=call, seq=seq, kind=kind, at=at, **fields)  # type: ignore[arg-type]


def done(
    core: ReplicationCore,
    run: RunHandler,
    *,
    actions: list[Action] | None = None,
    timers: dict[str, float] | None = None,
    released: bool = False,
) -> None:
    inst = run.instance
    core.run_done(
        run,
        RunOutcome(
            state_bytes=msgspec.msgpack.encode({"ran": run.run}), timers=timers or {},
            actions=actions or [], record=inst.record, released=released,
        ),
    )  # fmt: skip


def one(actions: list[object], kind: type) -> object:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_a_run_is_asked_for_and_its_commands_wait_for_the_standby() -> None:
    core = ReplicationCore("as1")
    core.peer_up("as2")
    core.offered(offered())
    run = one(core.take_actions(), RunHandler)
    assert isinstance(run, RunHandler) and run.run == "offer" and run.now == 1000.0
    done(core, run, actions=[Route(["bob"])])
    cp = one(core.take_actions(), ToPeer)
    assert isinstance(cp, ToPeer) and cp.server == "as2" and isinstance(cp.message, Checkpoint)
    assert core.take_actions() == []  # nothing to the switch before the ack
    core.acknowledged(CheckpointAck(call="c1", version=1))
    assert core.take_actions() == [
        ToSwitch(Command(call="c1", epoch=1, seq=1, action=Route(["bob"])))
    ]


def test_without_a_standby_the_database_holds_the_checkpoint_first() -> None:
    core = ReplicationCore("as1")
    core.offered(offered(standby=None))
    run = one(core.take_actions(), RunHandler)
    assert isinstance(run, RunHandler)
    done(core, run, actions=[Route(["bob"])])
    save = one(core.take_actions(), SaveCheckpoint)
    assert isinstance(save, SaveCheckpoint) and save.checkpoint.version == 1
    core.event(event(1, "progress", 1001.0))
    assert core.take_actions() == []  # the call waits for its save: one thing at a time
    core.saved("c1", 1)
    out = core.take_actions()
    assert out[0] == ToSwitch(Command(call="c1", epoch=1, seq=1, action=Route(["bob"])))
    assert isinstance(out[1], RunHandler) and out[1].run == "e1"


def test_timers_are_deadlines_fired_by_the_clock_it_is_given() -> None:
    core = ReplicationCore("as1", database=False)
    core.offered(offered(standby=None))
    run = one(core.take_actions(), RunHandler)
    assert isinstance(run, RunHandler)
    done(core, run, actions=[Route(["bob"])], timers={"credit": 1060.0})
    core.take_actions()
    assert core.next_deadline() == 1060.0
    core.tick(1059.9)
    assert core.take_actions() == []
    core.tick(1060.0)
    fired = one(core.take_actions(), RunHandler)
    assert isinstance(fired, RunHandler) and fired.item == TimerDue("credit", 1060.0)
    assert fired.run == "t:credit@1060.000000" and fired.now == 1060.0


def test_a_timer_due_before_an_event_runs_first() -> None:
    core = ReplicationCore("as1", database=False)
    core.offered(offered(standby=None))
    run = one(core.take_actions(), RunHandler)
    assert isinstance(run, RunHandler)
    done(core, run, timers={"t": 1005.0})
    core.take_actions()
    # The event happened at 1006, after the timer's due time; the clock did not tick yet.
    core.event(event(1, "progress", 1006.0))
    first = one(core.take_actions(), RunHandler)
    assert isinstance(first, RunHandler) and first.item == TimerDue("t", 1005.0)
    done(core, first)
    second = one(core.take_actions(), RunHandler)
    assert isinstance(second, RunHandler) and second.run == "e1"


def test_at_most_max_running_calls_run_at_once() -> None:
    core = ReplicationCore("as1", database=False, max_running=2)
    for n in range(5):
        core.offered(offered(f"c{n}", standby=None))
    runs = [a for a in core.take_actions() if isinstance(a, RunHandler)]
    assert [r.instance.call for r in runs] == ["c0", "c1"]
    done(core, runs[0])
    more = [a for a in core.take_actions() if isinstance(a, RunHandler)]
    assert [r.instance.call for r in more] == ["c2"]


def test_a_takeover_replays_the_switchs_events_past_the_checkpoint_in_order() -> None:
    standby = ReplicationCore("as2")
    standby.offered(offered(role="standby"))
    standby.event(event(2, "answered", 1002.0))  # only event 2 reached the standby
    cp = Checkpoint(call="c1", epoch=1, version=1, event_seq=0, offered=offered(),
                    service_state=b"\x80", pending=[Command(call="c1", epoch=1, seq=1,
                    action=Route(["bob"]))], commands_sent=1)  # fmt: skip
    standby.checkpoint("as1", cp)
    standby.take_actions()
    events = [event(1, "progress", 1001.0), event(2, "answered", 1002.0)]
    took = standby.takeover(
        Takeover(call="c1", epoch=2, standby=None, executed=0, event_seq=2, events=events)
    )
    assert took
    out = standby.take_actions()
    # The checkpoint's unacknowledged route is re-sent with the new epoch...
    assert out[0] == ToSwitch(Command(call="c1", epoch=2, seq=1, action=Route(["bob"])))
    # ...then event 1 (which only the switch had) replays, then event 2.
    run = one(out, RunHandler)
    assert isinstance(run, RunHandler) and run.run == "e1"
    standby.database = False
    done(standby, run)
    run2 = one(standby.take_actions(), RunHandler)
    assert isinstance(run2, RunHandler) and run2.run == "e2"
    done(standby, run2)
    assert ToSwitch(Owned(call="c1", epoch=2)) in standby.take_actions()


def test_adoption_starts_from_the_database_checkpoint_and_replays_past_it() -> None:
    core = ReplicationCore("as3")
    first = offered()
    saved = Checkpoint(call="c1", epoch=2, version=3, event_seq=2, offered=first,
                       service_state=b"\x80", commands_sent=1,
                       record=CallRecord(primaries=["as1"], answered_at=1002.0))  # fmt: skip
    events = [event(1, "progress", 1001.0), event(2, "answered", 1002.0),
              event(3, "released", 1030.0, cause="caller-bye")]  # fmt: skip
    core.adopt(Adopt(call="c1", epoch=3, standby=None, executed=1, offered=first, events=events))
    assert core.take_actions() == [LoadCheckpoint("c1")]
    core.event(event(3, "released", 1030.0, cause="caller-bye"))  # waits for the load
    assert core.take_actions() == []
    core.loaded("c1", msgspec.msgpack.encode(saved))
    run = one(core.take_actions(), RunHandler)
    assert isinstance(run, RunHandler) and run.run == "e3"  # 1 and 2 are in the checkpoint
    assert core.instances["c1"].epoch == 3
    done(core, run, released=True)
    cdr = one(core.take_actions(), WriteCdr)
    assert isinstance(cdr, WriteCdr) and cdr.cdr.primaries == ("as1", "as3")
    assert cdr.cdr.disposition == "answered" and cdr.cdr.epoch == 3
    assert cdr.drop_checkpoint  # adopted from the database: its checkpoint goes
    core.cdr_written("c1")
    assert core.take_actions() == [ToSwitch(Finished(call="c1", epoch=3))]
    assert "c1" not in core.instances


def test_the_end_writes_the_cdr_before_the_standby_forgets() -> None:
    core = ReplicationCore("as1")
    core.peer_up("as2")
    core.offered(offered())
    run = one(core.take_actions(), RunHandler)
    assert isinstance(run, RunHandler)
    done(core, run, actions=[Release()])
    core.take_actions()
    core.event(event(1, "released", 1010.0, cause="released"))
    end = one(core.take_actions(), RunHandler)
    assert isinstance(end, RunHandler)
    done(core, end, released=True)
    assert [type(a) for a in core.take_actions()] == [WriteCdr]
    core.cdr_written("c1")
    assert core.take_actions() == [
        ToSwitch(Finished(call="c1", epoch=1)),
        ToPeer("as2", Forget(call="c1")),
    ]
