"""The application server process: its call tracking link, its peer links, its runtime.

Links: one CTL to the switch (this server connects), and one peer link per other
server. Each pair of servers has one link, opened by the server whose name sorts first.
Every link is re-opened while the process runs, every 0.5 s until it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
import time
from typing import Any

import msgspec

from twinline.appserver.runtime import AppServerRuntime
from twinline.config import Config, ConfigError, parse_hostport
from twinline.errors import StartupError
from twinline.link.aio import AioLink, connect, serve
from twinline.link.endpoint import Closed, Established, HelloReceived, LinkEndpoint, Received
from twinline.link.messages import (
    Adopt,
    Checkpoint,
    CheckpointAck,
    CtlToServer,
    Drop,
    Event,
    Forget,
    Leaving,
    Offered,
    PeerMessage,
    Protect,
    Takeover,
    Welcome,
)
from twinline.metrics import LoopLag, make_registry, start_metrics_http
from twinline.metrics_appserver import CheckpointLag, appserver_collector
from twinline.services.registry import load_services
from twinline.store import open_store
from twinline.tls import link_contexts

log = logging.getLogger("twinline.appserver")

RECONNECT_INTERVAL = 0.5
HANDOVER_TIMEOUT = 10.0  # seconds a stopping server waits for its calls to move
SWITCH_PATIENCE = 10  # a server gives the switch this many times cluster.dead_after


class AppServerProcess:
    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.me = config.appserver(name)
        # A new incarnation per start lets the switch tell a restart from a reconnect.
        self.incarnation = random.getrandbits(62)
        self.secret = config.cluster.secret.encode()
        self.store = open_store(config.database)  # opened in run()
        self.services = load_services(config, self.store)
        self.runtime = AppServerRuntime(
            name, self.services, self.store,
            to_switch=self._to_switch, to_peer=self._to_peer, wall=time.time,
        )  # fmt: skip
        self.ctl: AioLink | None = None
        self.peers: dict[str, AioLink] = {}
        # (acceptor, connector) TLS contexts of the links, built in run().
        self.tls: tuple[ssl.SSLContext, ssl.SSLContext] | tuple[None, None] = (None, None)
        self.dropped_to_switch = 0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.loop_lag = LoopLag()
        self.checkpoint_lag = CheckpointLag()
        self.metrics = make_registry(appserver_collector(self))

    def _endpoint(self, role: str, receives: Any, expect: str | None = None) -> LinkEndpoint:
        dead_after = self.config.cluster.dead_after
        if expect == "switch":
            # The switch decides who owns calls and detects a failed server within
            # dead_after heartbeats; a server only needs to notice a dead switch to
            # reconnect, and dropping the link to a switch that is merely busy would
            # make it take this server's calls away. So the server waits longer.
            dead_after *= SWITCH_PATIENCE
        return LinkEndpoint(
            role,  # type: ignore[arg-type]
            secret=self.secret,
            name=self.name,
            incarnation=self.incarnation,
            receives=receives,
            heartbeat_interval=self.config.cluster.heartbeat_interval,
            dead_after=dead_after,
            expect_peer=expect,
            pid=os.getpid(),
        )

    # --- outbound ------------------------------------------------------------------------
    def _to_switch(self, msg: msgspec.Struct) -> None:
        ctl = self.ctl
        if ctl is None or not ctl.endpoint.established:
            self.dropped_to_switch += 1
            return
        ctl.send(msg)

    def _to_peer(self, server: str, msg: msgspec.Struct) -> bool:
        link = self.peers.get(server)
        if link is None or not link.endpoint.established:
            return False
        link.send(msg)
        if isinstance(msg, Checkpoint):
            self.checkpoint_lag.sent(server, msg.call, msg.version, time.monotonic())
        return True

    # --- the call tracking link -------------------------------------------------------------
    def _on_ctl(self, link: AioLink, event: object) -> None:
        if isinstance(event, Received):
            msg = event.message
            if isinstance(msg, Event):
                self.runtime.event(msg)
            elif isinstance(msg, Offered):
                self.runtime.offered(msg)
            elif isinstance(msg, Takeover):
                self.runtime.takeover(msg)
            elif isinstance(msg, Adopt):
                self.runtime.adopt(msg)
            elif isinstance(msg, Protect):
                self.runtime.protect(msg)
            elif isinstance(msg, Drop):
                self.runtime.drop(msg)
        elif isinstance(event, Established):
            assert isinstance(event.message, Welcome)
            self.ctl = link
            dropped = self.runtime.welcome(event.message.live)
            log.info(
                "call tracking link to the switch is up: %d instances kept, %d stale ones dropped",
                len(self.runtime.instances), dropped,
            )  # fmt: skip
        elif isinstance(event, Closed):
            if self.ctl is link:
                self.ctl = None
            log.warning("call tracking link to the switch closed: %s", event.reason)

    async def _keep_ctl(self) -> None:
        host, port = parse_hostport(self.me.ctl or self.config.switch.link)
        while not self._stopping:
            if self.ctl is None or self.ctl.closed:
                self.ctl = None
                with contextlib.suppress(OSError):  # the switch is not up (yet): retry
                    self.ctl = await connect(
                        host, port, self._endpoint("connector", CtlToServer, "switch"),
                        self._on_ctl, tls=self.tls[1],
                    )  # fmt: skip
            if self.ctl is not None:
                primary, standby = self.runtime.counts()
                self.ctl.endpoint.set_load(active=primary, standby=standby)
            await asyncio.sleep(RECONNECT_INTERVAL)

    # --- peer links -----------------------------------------------------------------------------
    def _on_peer(self, link: AioLink, event: object) -> None:
        if isinstance(event, Received):
            msg = event.message
            peer = link.peer_name or ""
            if isinstance(msg, CheckpointAck):
                self.checkpoint_lag.acknowledged(msg.call, msg.version, time.monotonic())
                self.runtime.acknowledged(msg)
            elif isinstance(msg, Checkpoint):
                self.runtime.checkpoint(peer, msg)
            elif isinstance(msg, Forget):
                self.runtime.forget(msg)
        elif isinstance(event, HelloReceived):
            name = event.hello.name
            if name == self.name or name not in {s.name for s in self.config.appservers}:
                link.refuse(f"unknown application server {name!r}")
            else:
                link.accept()
        elif isinstance(event, Established):
            old = self.peers.get(event.peer_name)
            if old is not None and old is not link:
                old.close("replaced by a new connection")
            self.peers[event.peer_name] = link
            log.info("peer link to %s is up", event.peer_name)
            self.runtime.peer_up(event.peer_name)
        elif isinstance(event, Closed):
            gone = link.peer_name
            if gone is not None and self.peers.get(gone) is link:
                del self.peers[gone]
                log.warning("peer link to %s closed: %s", gone, event.reason)
                self.checkpoint_lag.peer_lost(gone)
                self.runtime.peer_lost(gone)

    async def _keep_peer(self, name: str, host: str, port: int) -> None:
        while not self._stopping:
            link = self.peers.get(name)
            if link is None or link.closed:
                with contextlib.suppress(OSError):
                    await connect(
                        host, port, self._endpoint("connector", PeerMessage, name),
                        self._on_peer, tls=self.tls[1],
                    )  # fmt: skip
            await asyncio.sleep(RECONNECT_INTERVAL)

    # --- life cycle ---------------------------------------------------------------------------
    async def _hand_over(self) -> None:
        """Before exiting, ask the switch to move this server's calls elsewhere and wait
        until it has (every instance dropped), so that stopping affects no call."""
        ctl = self.ctl
        if ctl is None or not ctl.endpoint.established or not self.runtime.instances:
            return
        count = len(self.runtime.instances)
        ctl.send(Leaving(reason="SIGTERM"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOVER_TIMEOUT
        # Instances go away by several paths (Drop, Forget, calls ending): poll the count.
        while self.runtime.instances and loop.time() < deadline and not ctl.closed:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = len(self.runtime.instances)
        if left:
            log.warning("stopping with %d of %d instances not handed over", left, count)
        else:
            log.info("handed over %d instances; stopping", count)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.config.cluster.tls is not None:
            try:
                self.tls = link_contexts(self.config.cluster.tls)
            except ConfigError as e:
                raise StartupError(f"configuration error: {e}") from None
        mhost, mport = self.me.metrics_address()
        try:
            metrics = await start_metrics_http(self.metrics, mhost, mport)
        except OSError as e:
            raise StartupError(
                f"cannot listen on appservers {self.name}'s metrics address "
                f"{mhost}:{mport}: {e.strerror or e}"
            ) from None
        await self.store.open()
        host, port = parse_hostport(self.me.peer)
        server = await serve(
            host, port, lambda: self._endpoint("acceptor", PeerMessage), self._on_peer,
            tls=self.tls[0],
        )  # fmt: skip
        for peer in self.config.appservers:
            if peer.name > self.name:
                phost, pport = parse_hostport(peer.peer)
                self._tasks.append(loop.create_task(self._keep_peer(peer.name, phost, pport)))
        self._tasks.append(loop.create_task(self._keep_ctl()))
        self._tasks.append(loop.create_task(self.loop_lag.probe()))
        log.info("application server %s up (peers on %s:%s)", self.name, host, port)
        await stop.wait()
        await self._hand_over()
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self.ctl is not None:
            self.ctl.close("server stopping")
        for link in list(self.peers.values()):
            link.close("server stopping")
        server.close()
        await metrics.cleanup()
        await self.store.close()
        s = self.runtime.stats
        log.info(
            "application server %s stopped: handler_runs=%d checkpoints_sent=%d applied=%d "
            "commands=%d cdrs=%d errors=%d",
            self.name, s.handler_runs, s.checkpoints_sent, s.checkpoints_applied,
            s.commands_released, s.cdrs_written, s.handler_errors,
        )  # fmt: skip
