"""The replication logic, sans-IO: a primary and a standby instance wired by hand, and
the arbiter's placement and command fencing, with a fake switch."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from twinline.appserver.instance import CallInstance, Role
from twinline.appserver.runtime import MAX_RUNNING, AppServerRuntime
from twinline.config import AppServer, load_config_text
from twinline.link.messages import (
    CallInfo,
    CallRecord,
    Checkpoint,
    CheckpointAck,
    Command,
    Drop,
    Event,
    Finished,
    Forget,
    Offered,
    Owned,
    Protect,
    Reject,
    Release,
    Route,
    Takeover,
)
from twinline.services.basic import BasicCall
from twinline.switch.arbiter import Arbiter, ServicePlan
from twinline.switch.routing import RoutingPlan, Target

INFO = CallInfo(caller="alice", callee="1000", created=100.0)


def offered(role: str = "primary", call: str = "c1", epoch: int = 1) -> Offered:
    return Offered(
        call=call, epoch=epoch, role=role,  # type: ignore[arg-type]
        primary="as1", standby="as2", service="basic", info=INFO,
    )  # fmt: skip


def event(seq: int, kind: str = "progress", call: str = "c1") -> Event:
    return Event(call=call, seq=seq, kind=kind, at=100.0 + seq, status=180)  # type: ignore[arg-type]


def run_checkpoint(inst: CallInstance, event_seq: int, actions: list[Any]) -> Checkpoint:
    return inst.checkpoint(
        event_seq=event_seq,
        state_bytes=b"\x80",
        timers={},
        actions=actions,
        record=CallRecord(primaries=["as1"]),
    )


# --- the instance: checkpoint before effect ------------------------------------------------


def test_commands_are_held_until_their_checkpoint_is_acknowledged() -> None:
    primary = CallInstance(offered())
    cp = run_checkpoint(primary, 0, [Route(["1000"])])
    assert cp.version == 1
    assert [c.seq for c in cp.pending] == [1]
    # Nothing may leave before the standby's ack: an ack for an older version releases none.
    assert primary.acknowledged(0) == []
    assert primary.waiting == 1
    released = primary.acknowledged(1)
    assert released == [Command(call="c1", epoch=1, seq=1, action=Route(["1000"]))]
    assert primary.acknowledged(1) == []  # a repeated ack releases nothing twice


def test_acks_release_commands_in_checkpoint_order() -> None:
    primary = CallInstance(offered())
    run_checkpoint(primary, 0, [Route(["1000"])])
    run_checkpoint(primary, 1, [])
    run_checkpoint(primary, 2, [Release()])
    # Acks may be coalesced: the ack of version 3 covers 1 and 2.
    released = primary.acknowledged(3)
    assert [(c.seq, type(c.action)) for c in released] == [(1, Route), (2, Release)]


def test_pending_commands_ride_in_every_checkpoint_until_released() -> None:
    primary = CallInstance(offered())
    run_checkpoint(primary, 0, [Route(["1000"])])
    cp2 = run_checkpoint(primary, 1, [Reject(486, "Busy Here")])
    # The standby must be able to re-send what the switch may not have executed.
    assert [c.seq for c in cp2.pending] == [1, 2]
    primary.acknowledged(2)
    cp3 = run_checkpoint(primary, 2, [])
    assert cp3.pending == []


def test_standby_buffers_events_past_its_checkpoint() -> None:
    primary = CallInstance(offered())
    standby = CallInstance(offered("standby"))
    for seq in (1, 2, 3):
        standby.buffer_event(event(seq))
    standby.buffer_event(event(2))  # a duplicate is kept once
    assert [e.seq for e in standby.buffer] == [1, 2, 3]
    run_checkpoint(primary, 0, [Route(["1000"])])
    cp = run_checkpoint(primary, 2, [])
    ack = standby.apply_checkpoint(cp)
    assert ack == CheckpointAck(call="c1", version=2)
    assert [e.seq for e in standby.buffer] == [3]
    assert standby.event_seq == 2
    assert standby.commands_sent == 1


def test_standby_ignores_an_older_checkpoint_but_acknowledges() -> None:
    primary = CallInstance(offered())
    standby = CallInstance(offered("standby"))
    cp1 = run_checkpoint(primary, 0, [Route(["1000"])])
    cp2 = run_checkpoint(primary, 1, [])
    standby.apply_checkpoint(cp2)
    ack = standby.apply_checkpoint(cp1)  # reordered or repeated
    assert ack.version == 2
    assert standby.event_seq == 1


def test_only_a_primary_checkpoints() -> None:
    standby = CallInstance(offered("standby"))
    assert standby.role is Role.STANDBY
    with pytest.raises(AssertionError):
        run_checkpoint(standby, 0, [])


# --- the runtime: a primary and a standby wired together ----------------------------------


class Wire:
    """Two runtimes joined by an in-memory peer link that can be held."""

    def __init__(self, store: Any = None) -> None:
        self.to_switch: dict[str, list[msgspec.Struct]] = {"as1": [], "as2": []}
        self.held: list[tuple[str, str, msgspec.Struct]] = []
        self.hold = False
        self.rt: dict[str, AppServerRuntime] = {}
        for name in ("as1", "as2"):
            self.rt[name] = AppServerRuntime(
                name, {"basic": BasicCall(None)}, store,
                to_switch=self.to_switch[name].append,
                to_peer=lambda peer, msg, me=name: self._peer(me, peer, msg),
                wall=lambda: 100.0,
            )  # fmt: skip
        self.rt["as1"].peer_up("as2")
        self.rt["as2"].peer_up("as1")

    def _peer(self, sender: str, peer: str, msg: msgspec.Struct) -> bool:
        self.held.append((sender, peer, msg))
        if not self.hold:
            self.deliver()
        return True

    def deliver(self) -> None:
        while self.held:
            sender, peer, msg = self.held.pop(0)
            rt = self.rt[peer]
            if isinstance(msg, Checkpoint):
                rt.checkpoint(sender, msg)
            elif isinstance(msg, CheckpointAck):
                rt.acknowledged(msg)
            elif isinstance(msg, Forget):
                rt.forget(msg)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_runtime_releases_the_route_only_after_the_standby_acknowledged() -> None:
    async def scenario() -> None:
        wire = Wire()
        wire.hold = True
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        # The service decided (route), the checkpoint is on its way, nothing released yet.
        assert wire.to_switch["as1"] == []
        assert [type(m) for _, _, m in wire.held] == [Checkpoint]
        wire.deliver()  # the standby applies and acks; the ack releases the command
        assert wire.to_switch["as1"] == [Command(call="c1", epoch=1, seq=1, action=Route(["1000"]))]
        standby = wire.rt["as2"].instances["c1"]
        assert standby.version == 1 and standby.role is Role.STANDBY
        assert wire.to_switch["as2"] == []  # a standby never commands

    asyncio.run(scenario())


def test_a_service_error_rejects_the_call_instead_of_hanging_it() -> None:
    class Broken(BasicCall):
        async def offered(self, call: Any) -> None:
            raise RuntimeError("bug in a service")

    async def scenario() -> None:
        wire = Wire()
        wire.rt["as1"].services["basic"] = Broken(None)
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        (cmd,) = wire.to_switch["as1"]
        assert isinstance(cmd, Command) and cmd.action == Reject(500, "Service Error")
        assert wire.rt["as1"].stats.handler_errors == 1

    asyncio.run(scenario())


# --- the arbiter: placement and fencing -----------------------------------------------------


class FakeSwitch:
    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []

    def route(
        self, call: Any, targets: list[Target], now: float, *, max_duration: float = 0.0
    ) -> None:
        self.done.append(("route", [t.label for t in targets]))

    def reject(self, call: Any, status: int, reason: str, now: float) -> None:
        self.done.append(("reject", status))

    def release(self, call: Any, now: float) -> None:
        self.done.append(("release", None))


class FakeCall:
    def __init__(self, n: int) -> None:
        self.id = f"c{n}"
        self.dialled = "1000"
        self.caller = "alice"
        self.cause = "caller-bye"
        self.target: Target | None = None
        self.outcomes: tuple[tuple[str, int, str], ...] = ()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.user = ""
        self.trunk = ""
        self.trusted = True

        class Req:
            uri = "sip:1000@switch"

            def get(self, name: str) -> str:
                return "<sip:alice@x>;tag=1"

            def get_all(self, name: str) -> list[str]:
                return []

        class Txn:
            request = Req()

        self.setup = self.a_invite = Txn()


def make_arbiter(names: list[str]) -> tuple[Arbiter, FakeSwitch, list[tuple[str, Any]]]:
    config = load_config_text('[[routes]]\nprefix = "1"\ntarget = "127.0.0.1:5070"\n')
    sent: list[tuple[str, Any]] = []
    switch = FakeSwitch()
    arbiter = Arbiter(
        switch=switch,
        routing=RoutingPlan(config, location=None),  # type: ignore[arg-type]
        services=ServicePlan([]),
        servers=[AppServer(name=n, peer=f"127.0.0.1:{6000 + i}") for i, n in enumerate(names)],
        send=lambda server, msg: sent.append((server, msg)),
        wall=lambda: 100.0,
    )
    for i, name in enumerate(names):
        arbiter.server_up(name, incarnation=i + 1, pid=1000 + i)
    return arbiter, switch, sent


def test_two_servers_share_primaries_and_back_each_other_up() -> None:
    arbiter, _, sent = make_arbiter(["as1", "as2"])
    for n in range(100):
        arbiter.offered(FakeCall(n), 0.0)  # type: ignore[arg-type]
    status = {s["name"]: s for s in arbiter.servers_status()}
    assert status["as1"]["primary"] == status["as2"]["primary"] == 50
    assert status["as1"]["standby"] == status["as2"]["standby"] == 50
    for own in arbiter.owned.values():
        assert own.primary != own.standby
    # Both instances of every call were told, with their roles.
    roles = [(server, msg.role) for server, msg in sent if isinstance(msg, Offered)]
    assert len(roles) == 200


def test_three_servers_spread_each_servers_standbys_over_both_others() -> None:
    arbiter, _, _ = make_arbiter(["as1", "as2", "as3"])
    for n in range(300):
        arbiter.offered(FakeCall(n), 0.0)  # type: ignore[arg-type]
    pairs: dict[tuple[str, str], int] = {}
    for own in arbiter.owned.values():
        assert own.standby is not None and own.standby != own.primary
        pairs[(own.primary, own.standby)] = pairs.get((own.primary, own.standby), 0) + 1
    assert len(pairs) == 6  # every ordered pair is used
    assert all(count == 50 for count in pairs.values())


def test_no_live_server_means_503() -> None:
    arbiter, switch, _ = make_arbiter(["as1", "as2"])
    arbiter.server_down("as1", "test", 0.0)
    arbiter.server_down("as2", "test", 0.0)
    arbiter.offered(FakeCall(1), 0.0)  # type: ignore[arg-type]
    assert switch.done == [("reject", 503)]


def test_one_live_server_runs_calls_unprotected() -> None:
    arbiter, _, _ = make_arbiter(["as1", "as2"])
    arbiter.server_down("as2", "test", 0.0)
    arbiter.offered(FakeCall(1), 0.0)  # type: ignore[arg-type]
    assert arbiter.owned["c1"].primary == "as1"
    assert arbiter.owned["c1"].standby is None


def test_a_command_with_a_stale_epoch_or_from_the_standby_is_refused() -> None:
    arbiter, switch, _ = make_arbiter(["as1", "as2"])
    arbiter.offered(FakeCall(1), 0.0)  # type: ignore[arg-type]
    own = arbiter.owned["c1"]
    route = Route(["1000"])
    arbiter.command(own.primary, Command(call="c1", epoch=0, seq=1, action=route), 0.0)
    arbiter.command(own.standby or "", Command(call="c1", epoch=1, seq=1, action=route), 0.0)
    assert switch.done == []
    assert arbiter.stats.commands_refused_stale == 2
    arbiter.command(own.primary, Command(call="c1", epoch=1, seq=1, action=route), 0.0)
    assert switch.done == [("route", ["route:1"])]


def test_a_repeated_command_is_executed_once() -> None:
    arbiter, switch, _ = make_arbiter(["as1", "as2"])
    arbiter.offered(FakeCall(1), 0.0)  # type: ignore[arg-type]
    primary = arbiter.owned["c1"].primary
    cmd = Command(call="c1", epoch=1, seq=1, action=Reject(486, "Busy Here"))
    arbiter.command(primary, cmd, 0.0)
    arbiter.command(primary, cmd, 0.0)  # re-sent, as after a takeover
    assert switch.done == [("reject", 486)]
    assert arbiter.stats.commands_duplicate == 1


def test_events_go_to_both_instances_in_sequence() -> None:
    arbiter, _, sent = make_arbiter(["as1", "as2"])
    call = FakeCall(1)
    arbiter.offered(call, 0.0)  # type: ignore[arg-type]
    sent.clear()
    arbiter.progress(call, 180, 0.0)  # type: ignore[arg-type]
    arbiter.answered(call, 0.0)  # type: ignore[arg-type]
    arbiter.released(call, 0.0)  # type: ignore[arg-type]
    events = [(server, msg.seq, msg.kind) for server, msg in sent]
    assert sorted(events) == sorted(
        [(s, seq, kind) for s in ("as1", "as2")
         for seq, kind in ((1, "progress"), (2, "answered"), (3, "released"))]
    )  # fmt: skip
    assert arbiter.owned == {}
    assert all(s["primary"] == 0 and s["standby"] == 0 for s in arbiter.servers_status())


def test_an_unroutable_destination_reports_route_failed_to_the_service() -> None:
    arbiter, switch, sent = make_arbiter(["as1", "as2"])
    arbiter.offered(FakeCall(1), 0.0)  # type: ignore[arg-type]
    sent.clear()
    primary = arbiter.owned["c1"].primary
    arbiter.command(primary, Command(call="c1", epoch=1, seq=1, action=Route(["555"])), 0.0)
    assert switch.done == []
    assert {(msg.kind, msg.status) for _, msg in sent} == {("route_failed", 404)}


# --- takeover, step by step ---------------------------------------------------------------


def test_a_failed_primarys_calls_go_to_their_standbys_with_a_new_epoch() -> None:
    arbiter, _, sent = make_arbiter(["as1", "as2", "as3"])
    for n in range(6):
        arbiter.offered(FakeCall(n), 0.0)  # type: ignore[arg-type]
    victims = {c for c, o in arbiter.owned.items() if o.primary == "as1"}
    standbys = {c: arbiter.owned[c].standby for c in victims}
    backed_up_by_as1 = {c for c, o in arbiter.owned.items() if o.standby == "as1"}
    sent.clear()
    run = arbiter.server_down("as1", "connection lost", 10.0)
    assert run is not None and run.calls == len(victims) == 2
    takeovers = {msg.call: (server, msg) for server, msg in sent if isinstance(msg, Takeover)}
    assert set(takeovers) == victims
    for call, (server, msg) in takeovers.items():
        assert server == standbys[call]  # the standby becomes primary
        assert msg.epoch == 2
        own = arbiter.owned[call]
        assert own.primary == server and own.standby not in (None, "as1", server)
    # Each moved call got a new standby on the third server, filled by an Offered.
    offers = [(server, msg) for server, msg in sent if isinstance(msg, Offered)]
    assert {m.call for _, m in offers} >= victims
    # Calls whose standby was on as1 got a new standby too (Protect to their primary).
    protected = {msg.call for _, msg in sent if isinstance(msg, Protect)}
    assert protected == backed_up_by_as1 and protected
    assert arbiter.unprotected() == 0
    # The run completes when every new primary reports Owned.
    for call, (server, _msg) in takeovers.items():
        done = arbiter.owned_by(server, Owned(call=call, epoch=2), 10.05)
    assert done is run and run.finished == 10.05


def test_the_deposed_primary_is_fenced_and_the_new_one_deduplicated() -> None:
    arbiter, switch, _ = make_arbiter(["as1", "as2"])
    arbiter.offered(FakeCall(1), 0.0)  # type: ignore[arg-type]
    own = arbiter.owned["c1"]
    old, new = own.primary, own.standby
    assert old and new
    route = Route(["1000"])
    arbiter.command(old, Command(call="c1", epoch=1, seq=1, action=route), 0.0)
    assert switch.done == [("route", ["route:1"])]
    arbiter.server_down(old, "no heartbeat for 300 ms", 1.0)
    # The frozen primary wakes up and commands: refused, whatever the seq.
    arbiter.command(old, Command(call="c1", epoch=1, seq=2, action=Release()), 1.1)
    # The new primary re-sends the checkpoint's pending command: executed already.
    arbiter.command(new, Command(call="c1", epoch=2, seq=1, action=route), 1.1)
    assert switch.done == [("route", ["route:1"])]
    assert arbiter.stats.commands_refused_stale == 1
    assert arbiter.stats.commands_duplicate == 1
    arbiter.command(new, Command(call="c1", epoch=2, seq=2, action=Release()), 1.2)
    assert switch.done[-1] == ("release", None)
    # With no other server, the moved call runs unprotected and says so.
    assert arbiter.unprotected() == 1


def test_a_rejoining_server_is_told_what_to_keep_and_refills_the_unprotected() -> None:
    arbiter, _, sent = make_arbiter(["as1", "as2"])
    for n in range(4):
        arbiter.offered(FakeCall(n), 0.0)  # type: ignore[arg-type]
    arbiter.server_down("as1", "connection lost", 1.0)
    assert arbiter.unprotected() == 4
    live = arbiter.server_up("as1", incarnation=99, pid=4242)
    assert live == []  # it holds nothing any more: everything it had moved
    sent.clear()
    assert arbiter.reprotect() == 4
    assert arbiter.unprotected() == 0
    assert {(server, type(msg).__name__) for server, msg in sent} == {
        ("as2", "Protect"),
        ("as1", "Offered"),
    }


def test_a_call_released_before_its_cdr_is_finished_by_the_standby() -> None:
    arbiter, _, sent = make_arbiter(["as1", "as2"])
    call = FakeCall(1)
    arbiter.offered(call, 0.0)  # type: ignore[arg-type]
    own = arbiter.owned["c1"]
    old, new = own.primary, own.standby
    assert old and new
    arbiter.released(call, 1.0)  # type: ignore[arg-type]
    assert "c1" in arbiter.finishing
    sent.clear()
    arbiter.server_down(old, "connection lost", 1.1)  # before it confirmed the CDR
    ((server, msg),) = [(s, m) for s, m in sent if isinstance(m, Takeover)]
    assert server == new and msg.call == "c1"
    arbiter.finished(new, Finished(call="c1", epoch=msg.epoch))
    assert arbiter.finishing == {}


def test_the_new_primary_resends_pending_commands_and_replays_events() -> None:
    async def scenario() -> None:
        wire = Wire()
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        assert len(wire.to_switch["as1"]) == 1  # Route, released after the standby's ack
        # The switch reports ringing; the primary dies before checkpointing it.
        wire.hold = True
        for rt in wire.rt.values():
            rt.event(event(1, "progress"))
        await settle()
        wire.held.clear()  # its checkpoint is lost with it
        standby = wire.rt["as2"]
        assert [e.seq for e in standby.instances["c1"].buffer] == [1]
        # The switch executed Route (seq 1) and makes as2 primary with epoch 2.
        wire.hold = False
        standby.takeover(Takeover(call="c1", epoch=2, standby=None, executed=1, event_seq=1))
        await settle()
        inst = standby.instances["c1"]
        assert inst.role is Role.PRIMARY and inst.epoch == 2
        assert inst.event_seq == 1  # the buffered event was replayed
        assert inst.record.primaries == ["as1", "as2"]
        assert wire.to_switch["as2"] == [Owned(call="c1", epoch=2)]
        assert standby.stats.events_replayed == 1
        assert standby.stats.commands_resent == 0  # Route was executed: not re-sent

    asyncio.run(scenario())


def test_a_caught_up_standby_owns_the_call_at_once_and_re_protects_it_after() -> None:
    async def scenario() -> None:
        wire = Wire()
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        new = wire.rt["as2"]
        wire.hold = True  # catch what goes to the new standby (here as1, back again)
        new.takeover(Takeover(call="c1", epoch=2, standby="as1", executed=1, event_seq=0))
        # Nothing to replay, nothing to re-send: owned before any handler runs, and the
        # state goes to the new standby right after (a Refresh checkpoint, no handler).
        assert wire.to_switch["as2"] == [Owned(call="c1", epoch=2)]
        assert new.stats.handler_runs == 0
        assert new.instances["c1"].version == 2
        assert [(peer, type(m), m.version) for _, peer, m in wire.held] == [("as1", Checkpoint, 2)]

    asyncio.run(scenario())


def test_a_burst_of_takeovers_runs_a_bounded_number_of_handlers_at_once() -> None:
    # Thousands of takeovers at once must not all run in one loop iteration: the
    # heartbeats would wait behind them. At most MAX_RUNNING runs are under way.
    running = peak = 0
    gate = asyncio.Event()

    class Slow(BasicCall):
        async def progress(self, call: Any, status: int) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1

    async def scenario() -> None:
        rt = AppServerRuntime(
            "as2", {"basic": Slow(None)}, None,
            to_switch=lambda msg: None, to_peer=lambda peer, msg: True, wall=lambda: 100.0,
        )  # fmt: skip
        calls = 3 * MAX_RUNNING
        for i in range(calls):
            rt.offered(offered("primary", call=f"c{i}"))
        await settle()
        for i in range(calls):
            rt.event(event(1, "progress", call=f"c{i}"))
        await settle()
        assert peak == MAX_RUNNING
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert peak == MAX_RUNNING and running == 0

    asyncio.run(scenario())


def test_a_takeover_before_any_checkpoint_decides_the_call_again() -> None:
    async def scenario() -> None:
        wire = Wire()
        wire.hold = True
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        wire.held.clear()  # the primary died with its first checkpoint unsent
        assert wire.to_switch["as1"] == []
        wire.hold = False
        wire.rt["as2"].takeover(Takeover(call="c1", epoch=2, standby=None, executed=0, event_seq=0))
        await settle()
        assert wire.to_switch["as2"] == [
            Command(call="c1", epoch=2, seq=1, action=Route(["1000"])),
            Owned(call="c1", epoch=2),
        ]

    asyncio.run(scenario())


def test_an_overdue_timer_fires_at_once_on_the_new_primary() -> None:
    class Timed(BasicCall):
        async def offered(self, call: Any) -> None:
            call.set_timer("limit", after=0.0)  # due at the call's start: long overdue

        async def timer(self, call: Any, name: str) -> None:
            call.release()

    async def scenario() -> None:
        wire = Wire()
        for rt in wire.rt.values():
            rt.services["basic"] = Timed(None)
        wire.hold = True
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        wire.deliver()  # the standby holds the checkpoint with the timer
        wire.rt["as1"].instances.clear()  # as1 dies
        wire.hold = False
        wire.rt["as2"].takeover(Takeover(call="c1", epoch=2, standby=None, executed=0, event_seq=0))
        for _ in range(20):
            await asyncio.sleep(0)
        fired = [m for m in wire.to_switch["as2"] if isinstance(m, Command)]
        assert [c.action for c in fired] == [Release()]
        assert fired[0].epoch == 2

    asyncio.run(scenario())


def test_a_late_checkpoint_for_a_dropped_call_creates_no_instance() -> None:
    async def scenario() -> None:
        wire = Wire()
        wire.rt["as1"].offered(offered("primary"))
        wire.rt["as2"].offered(offered("standby"))
        await settle()
        late = wire.rt["as1"].instances["c1"]
        wire.rt["as2"].drop(Drop(call="c1"))  # the call moved on or ended
        cp = late.checkpoint(
            event_seq=1, state_bytes=b"\x80", timers={}, actions=[],
            record=CallRecord(primaries=["as1"]),
        )  # fmt: skip
        wire.rt["as2"].checkpoint("as1", cp)  # the deposed primary catching up
        assert "c1" not in wire.rt["as2"].instances
        newer = msgspec.structs.replace(cp, epoch=2, version=cp.version + 1)
        wire.rt["as2"].checkpoint("as1", newer)  # a new primary's checkpoint is taken
        assert wire.rt["as2"].instances["c1"].version == newer.version

    asyncio.run(scenario())


def test_a_call_for_a_service_this_server_lacks_is_refused_not_run_as_another() -> None:
    async def scenario() -> None:
        wire = Wire()
        unknown = msgspec.structs.replace(offered("primary"), service="nope")
        wire.rt["as1"].offered(unknown)
        wire.rt["as2"].offered(msgspec.structs.replace(unknown, role="standby"))
        await settle()
        (cmd,) = wire.to_switch["as1"]
        assert isinstance(cmd, Command) and cmd.action == Reject(500, "Service Unavailable")

    asyncio.run(scenario())
