"""The asyncio adapter of an application server's replication core.

`ReplicationCore` decides; this carries its actions out: messages leave through two
callables, `to_switch(msg)` and `to_peer(server, msg) -> bool` (False when there is no
link to that server), service handlers run as tasks (`ServiceRunner`), database saves,
loads and CDRs are awaited on the store, and one loop timer follows the core's next
deadline. Each completion goes back into the core, and its new actions are carried out
in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from twinline.appserver.core import (
    MAX_RUNNING,
    CoreAction,
    CoreStats,
    LoadCheckpoint,
    ReplicationCore,
    RunHandler,
    SaveCheckpoint,
    ToPeer,
    ToSwitch,
    WriteCdr,
)
from twinline.appserver.instance import CallInstance
from twinline.appserver.runner import ServiceRunner
from twinline.link.messages import (
    Adopt,
    Checkpoint,
    CheckpointAck,
    Drop,
    Event,
    Forget,
    LiveInstance,
    Offered,
    Protect,
    Takeover,
)
from twinline.services.api import Service
from twinline.store.base import Store
from twinline.store.errors import StoreError

log = logging.getLogger("twinline.appserver")

ToSwitchFn = Callable[[msgspec.Struct], None]
ToPeerFn = Callable[[str, msgspec.Struct], bool]

# A checkpoint the database refused (it is down, or locked out) is tried again after
# these pauses; after the last, its commands go out unprotected rather than never.
SAVE_RETRIES = (0.05, 0.2, 1.0)

__all__ = ["MAX_RUNNING", "AppServerRuntime"]


class AppServerRuntime:
    def __init__(
        self,
        name: str,
        services: dict[str, Service[Any]],
        store: Store | None,
        *,
        to_switch: ToSwitchFn,
        to_peer: ToPeerFn,
        wall: Callable[[], float],
        max_running: int = MAX_RUNNING,
        follow_timers: bool = True,
    ) -> None:
        """`follow_timers=False`: no loop timer follows the core's deadlines; the owner
        calls `tick()` (a test harness with a stepped clock)."""
        self.name = name
        self.services = services
        self.store = store
        self.to_switch = to_switch
        self.to_peer = to_peer
        self.wall = wall
        self.core = ReplicationCore(name, database=store is not None, max_running=max_running)
        self.runner = ServiceRunner(services, store)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._follow_timers = follow_timers

    @property
    def instances(self) -> dict[str, CallInstance]:
        return self.core.instances

    @property
    def stats(self) -> CoreStats:
        return self.core.stats

    def counts(self) -> tuple[int, int]:
        return self.core.counts()

    @property
    def busy(self) -> bool:
        """A handler run or a database operation is under way."""
        return bool(self._tasks)

    # --- inputs: into the core, then its actions out -----------------------------------
    def welcome(self, live: list[LiveInstance]) -> int:
        dropped = self.core.welcome(live)
        self._pump()
        return dropped

    def offered(self, msg: Offered) -> None:
        self.core.offered(msg)
        self._pump()

    def event(self, ev: Event) -> None:
        self.core.event(ev)
        self._pump()

    def takeover(self, msg: Takeover) -> bool:
        took = self.core.takeover(msg)
        self._pump()
        return took

    def adopt(self, msg: Adopt) -> None:
        self.core.adopt(msg)
        self._pump()

    def protect(self, msg: Protect) -> None:
        self.core.protect(msg)
        self._pump()

    def drop(self, msg: Drop) -> None:
        self.core.drop(msg)
        self._pump()

    def peer_up(self, server: str) -> None:
        self.core.peer_up(server)
        self._pump()

    def peer_lost(self, server: str) -> None:
        self.core.peer_lost(server)
        self._pump()

    def checkpoint(self, sender: str, cp: Checkpoint) -> None:
        self.core.checkpoint(sender, cp)
        self._pump()

    def acknowledged(self, ack: CheckpointAck) -> None:
        self.core.acknowledged(ack)
        self._pump()

    def forget(self, msg: Forget) -> None:
        self.core.forget(msg)
        self._pump()

    # --- carrying actions out -------------------------------------------------------------
    def _pump(self) -> None:
        while self.core.actions:
            for action in self.core.take_actions():
                self._do(action)
        self._follow_deadline()

    def _do(self, action: CoreAction) -> None:
        if isinstance(action, ToSwitch):
            self.to_switch(action.message)
        elif isinstance(action, ToPeer):
            self.to_peer(action.server, action.message)
        elif isinstance(action, RunHandler):
            self._spawn(self._run(action))
        elif isinstance(action, SaveCheckpoint):
            self._spawn(self._save(action))
        elif isinstance(action, LoadCheckpoint):
            self._spawn(self._load(action))
        elif isinstance(action, WriteCdr):
            self._spawn(self._write_cdr(action))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, req: RunHandler) -> None:
        outcome = await self.runner.run(req)
        self.core.run_done(req, outcome)
        self._pump()

    async def _save(self, action: SaveCheckpoint) -> None:
        cp = action.checkpoint
        assert self.store is not None
        for pause in (*SAVE_RETRIES, None):
            try:
                await self.store.save_checkpoint(cp.call, cp.epoch, cp.version, action.data)
                break
            except StoreError as e:
                if pause is None:
                    log.error("call %s: checkpoint %d not saved, going on: %s",
                              cp.call, cp.version, e)  # fmt: skip
                    break
                await asyncio.sleep(pause)
        self.core.saved(cp.call, cp.version)
        self._pump()

    async def _load(self, action: LoadCheckpoint) -> None:
        data = None
        if self.store is not None:
            try:
                saved = await self.store.load_checkpoint(action.call)
                data = saved.data if saved is not None else None
            except StoreError as e:
                log.error("call %s: adopting without its database checkpoint: %s",
                          action.call, e)  # fmt: skip
        self.core.loaded(action.call, data)
        self._pump()

    async def _write_cdr(self, action: WriteCdr) -> None:
        cdr = action.cdr
        if self.store is not None:
            self.store.write_cdr(cdr)
            await self.store.flush()
            if action.drop_checkpoint:
                try:
                    await self.store.drop_checkpoint(cdr.call_id, epoch=cdr.epoch)
                except StoreError as e:
                    log.warning("call %s: checkpoint not dropped: %s", cdr.call_id, e)
        self.core.cdr_written(cdr.call_id)
        self._pump()

    # --- the core's timers on the loop's clock ---------------------------------------------
    def tick(self) -> None:
        """Fire the core's timers due by the wall clock."""
        self.core.tick(self.wall())
        self._pump()

    async def idle(self) -> None:
        """Wait until no handler run or database operation is under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _follow_deadline(self) -> None:
        if not self._follow_timers:
            return
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.wall())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self.core.tick(self.wall())
        self._pump()
