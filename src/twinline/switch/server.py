"""The switch process: the sans-IO core on asyncio transports, with one timer.

`SwitchServer.run()` binds the listeners of the configuration, builds the core with
its registrar and routing plan, and runs until `stop()` (SIGTERM or SIGINT).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from twinline.config import Config, parse_listen
from twinline.sip.digest import DigestAuthenticator
from twinline.sip.message import Limits
from twinline.sip.transaction import Address
from twinline.sip.transport import SipTransports
from twinline.switch.b2bua import SwitchCore
from twinline.switch.control import PlanControl
from twinline.switch.registrar import LocationService, Registrar
from twinline.switch.routing import RoutingPlan

log = logging.getLogger("twinline.switch")


class StartupError(Exception):
    """The switch cannot start (a port in use, an address not on this host)."""


class SwitchServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        sw = config.switch
        self.limits = Limits(
            max_message_size=sw.limits.max_message_size,
            max_headers=sw.limits.max_headers,
            max_line_length=sw.limits.max_line_length,
        )
        self.transports = SipTransports(self._deliver, self._failed, self.limits)
        self.location = LocationService()
        self.core: SwitchCore | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        sw = self.config.switch
        local: dict[str, tuple[str, int]] = {}
        for text in sw.listen:
            transport, host, port = parse_listen(text)
            try:
                bound = await self.transports.listen(transport, host, port)
            except OSError as e:
                raise StartupError(f"cannot listen on {text}: {e.strerror or e}") from None
            local.setdefault(transport, (sw.advertise or bound[0], bound[1]))
            log.info("listening on %s:%s:%s", transport, bound[0], bound[1])
        passwords = {u.name: u.password for u in self.config.users}
        # Nonces are checked statelessly with this key; a new one per start is enough
        # for a single switch (a phone whose nonce went stale simply re-authenticates).
        authenticator = DigestAuthenticator(sw.domain, os.urandom(32))
        registrar = Registrar(sw.domain, passwords, authenticator, self.location)
        self.core = SwitchCore(
            send=self.transports.send,
            local=local,
            limits=self.limits,
            t1=sw.timers.t1,
            t2=sw.timers.t2,
            t4=sw.timers.t4,
            max_calls=sw.max_calls,
            retry_after=sw.retry_after,
            no_answer_timeout=sw.no_answer_timeout,
            registrar=registrar,
        )
        self.core.control = PlanControl(RoutingPlan(self.config, self.location), self.core)
        self._stopped = asyncio.Event()

    # --- the edge: bytes in, timer re-armed ----------------------------------------------
    def _deliver(self, data: bytes, source: Address, stream: bool) -> None:
        core = self.core
        assert core is not None and self.loop is not None
        core.receive(data, source, self.loop.time(), stream=stream)
        self._arm()

    def _failed(self, address: Address) -> None:
        assert self.core is not None and self.loop is not None
        self.core.transport_failed(address, self.loop.time())
        self._arm()

    def _arm(self) -> None:
        assert self.core is not None and self.loop is not None
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self.core is not None and self.loop is not None
        self._timer = None
        self._timer_at = None
        self.core.fire_timers(self.loop.time())
        self._arm()

    # --- life cycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def run(self) -> None:
        await self.start()
        assert self.loop is not None and self._stopped is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        log.info("switch ready")
        await self._stopped.wait()
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.transports.close()
        if self.core is not None:
            s = self.core.stats
            log.info(
                "switch stopped: received=%d sent=%d calls_offered=%d answered=%d "
                "rejected=%d cancelled=%d bad_requests=%d dropped=%d active=%d",
                s.received, s.sent, s.calls_offered, s.calls_answered, s.calls_rejected,
                s.calls_cancelled, s.bad_requests_answered, s.malformed_dropped,
                self.core.active_calls,
            )  # fmt: skip
