"""The switch process: the sans-IO core on asyncio transports, with one timer.

`SwitchServer.run()` binds the listeners of the configuration, builds the core with
its registrar and routing plan, and runs until `stop()` (SIGTERM or SIGINT).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections import Counter
from typing import Any

import msgspec
from aiohttp import web

from twinline.config import Config, ConfigError, api_token, parse_hostport, parse_listen
from twinline.errors import StartupError
from twinline.link.aio import AioLink, serve
from twinline.link.endpoint import Closed, HelloReceived, LinkEndpoint, Received
from twinline.link.messages import Command, CtlToSwitch, Finished, Leaving, Owned
from twinline.metrics import LoopLag, make_registry
from twinline.metrics_histogram import TAKEOVER_BUCKETS, Histogram
from twinline.metrics_switch import switch_collector
from twinline.ops.figures import service_figures
from twinline.ops.http import start_http
from twinline.ops.timeline import Timeline
from twinline.sip.digest import DigestAuthenticator
from twinline.sip.message import Limits
from twinline.sip.resolver import Resolver
from twinline.sip.transaction import Address
from twinline.sip.transport import SipTransports
from twinline.store import open_database
from twinline.store.base import Store
from twinline.switch.access import (
    Admission,
    CallLimits,
    DigestGate,
    TrustedSources,
    secrets_of,
)
from twinline.switch.arbiter import Arbiter, ServicePlan, Takeovers
from twinline.switch.b2bua import SwitchCore
from twinline.switch.control import PlanControl
from twinline.switch.flood import FloodGuard
from twinline.switch.registrar import LocationService, Registrar
from twinline.switch.routing import RoutingPlan
from twinline.switch.session_timer import SessionConfig
from twinline.tls import link_contexts, sip_client_context, sip_server_context

log = logging.getLogger("twinline.switch")

SHUTDOWN_GRACE = 2.0  # seconds the stopping switch waits for its BYEs to be answered
LAG_PROBE_INTERVAL = 0.02  # seconds between two measures of the loop's lag
# A loop this late (seconds) is overloaded: well under the 300 ms in which the servers
# must hear the switch's heartbeats, and under T1 (500 ms), the first retransmission.
OVERLOAD_LAG = 0.1
OVERLOAD_PROBES = 3


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


class SwitchServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        sw = config.switch
        self.limits = Limits(
            max_message_size=sw.limits.max_message_size,
            max_headers=sw.limits.max_headers,
            max_line_length=sw.limits.max_line_length,
        )
        resolver = Resolver(
            ttl=sw.dns.ttl, negative_ttl=sw.dns.negative_ttl, timeout=sw.dns.timeout
        )
        self.transports = SipTransports(self._deliver, self._failed, self.limits, resolver=resolver)
        self.location = LocationService()
        self.core: SwitchCore | None = None
        self.guard: FloodGuard | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.store: Store | None = None
        self.arbiter: Arbiter | None = None
        self.links: dict[str, AioLink] = {}
        self._ctl_server: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self._stopping = False
        self._late_probes = 0
        # For the metrics, read at scrape time (twinline.metrics_switch).
        self.loop_lag = LoopLag()
        self.takeover_time = Histogram(TAKEOVER_BUCKETS)
        self.takeover_runs: Counter[str] = Counter()
        self.metrics = make_registry(switch_collector(self))
        self.timeline = Timeline()  # what the dashboard shows: failures, takeovers, joins
        self._joined: set[str] = set()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        sw = self.config.switch
        try:
            if sw.tls is not None:
                self.transports.tls_server = sip_server_context(sw.tls)
            if sw.tls is not None or any(r.transport == "tls" for r in self.config.routes):
                self.transports.tls_client = sip_client_context(sw.tls)
        except ConfigError as e:
            raise StartupError(f"configuration error: {e}") from None
        local: dict[str, tuple[str, int]] = {}
        for text in sw.listen:
            transport, host, port = parse_listen(text)
            try:
                bound = await self.transports.listen(transport, host, port)
            except OSError as e:
                raise StartupError(f"cannot listen on {text}: {e.strerror or e}") from None
            local.setdefault(transport, (sw.advertise or bound[0], bound[1]))
            log.info("listening on %s:%s:%s", transport, bound[0], bound[1])
        secrets = secrets_of(self.config)
        access, flood = self.config.access, self.config.flood
        # Nonces are checked statelessly with this key; a new one per start is enough
        # for a single switch (a phone whose nonce went stale simply re-authenticates).
        authenticator = DigestAuthenticator(
            sw.domain,
            os.urandom(32),
            nonce_lifetime=access.nonce_lifetime,
            algorithms=access.digest_algorithms,
        )
        trusted = TrustedSources.from_config(self.config)
        guard = FloodGuard(
            max_requests=flood.max_requests,
            window=flood.window,
            max_auth_failures=flood.max_auth_failures,
            max_user_auth_failures=flood.max_user_auth_failures,
            auth_window=flood.auth_window,
            ban_seconds=flood.ban_seconds,
            is_trusted=trusted.is_trusted,
        )
        # Unknown users are challenged and refused like a wrong password: the answers
        # must not tell a scanner which users exist.
        registrar = Registrar(
            sw.domain, secrets, authenticator, self.location,
            hide_unknown_users=True, failures=guard,
        )  # fmt: skip
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
            max_call_duration=sw.max_call_duration,
            session=SessionConfig(sw.session_expires, sw.min_se),
            registrar=registrar,
            # Time-ordered and unique per start: c<start time in ms, base 36>-<n>.
            call_id_prefix=f"c{_base36(time.time_ns() // 1_000_000)}-",
        )
        self.guard = guard
        self.core.guard = guard
        # A banned address's TCP and TLS connections are closed, not only ignored.
        guard.on_ban = self.transports.disconnect
        self.core.admission = Admission(
            self.config,
            DigestGate(authenticator, secrets, guard),
            trusted,
            CallLimits.from_config(self.config),
        )
        routing = RoutingPlan(self.config, self.location)
        if self.config.appservers:
            self.store = await open_database(self.config.database)
            self.arbiter = Arbiter(
                switch=self.core,
                routing=routing,
                services=ServicePlan(self.config.plan),
                servers=list(self.config.appservers),
                send=self._to_server,
                wall=time.time,
                recorder=self.store,
                redundancy=self.config.cluster.redundancy,
            )
            self.core.control = self.arbiter
            host, port = parse_hostport(sw.link)
            link_tls = self.config.cluster.tls
            try:
                tls = link_contexts(link_tls)[0] if link_tls is not None else None
            except ConfigError as e:
                raise StartupError(f"configuration error: {e}") from None
            try:
                self._ctl_server = await serve(
                    host, port, self._ctl_endpoint, self._on_ctl, tls=tls
                )
            except OSError as e:
                raise StartupError(
                    f"cannot listen on switch.link {sw.link}: {e.strerror or e}"
                ) from None
            log.info("call tracking links on %s%s", sw.link, " (TLS)" if tls else "")
        else:
            self.core.control = PlanControl(routing, self.core)
        host, port = parse_hostport(sw.http)
        try:
            self._http = await start_http(
                self, host, port, metrics=self.metrics, token=api_token(self.config)
            )
        except OSError as e:
            raise StartupError(
                f"cannot listen on switch.http {sw.http}: {e.strerror or e}"
            ) from None
        self._stopped = asyncio.Event()

    # --- call tracking links ----------------------------------------------------------------
    def _ctl_endpoint(self) -> LinkEndpoint:
        return LinkEndpoint(
            "acceptor",
            secret=self.config.cluster.secret.encode(),
            name="switch",
            incarnation=0,
            receives=CtlToSwitch,
            heartbeat_interval=self.config.cluster.heartbeat_interval,
            dead_after=self.config.cluster.dead_after,
            pid=os.getpid(),
        )

    def _on_ctl(self, link: AioLink, event: object) -> None:
        arbiter = self.arbiter
        assert arbiter is not None and self.loop is not None
        if isinstance(event, Received):
            msg = event.message
            if isinstance(msg, Command):
                arbiter.command(link.peer_name or "", msg, self.loop.time())
                self._arm()
            elif isinstance(msg, Finished):
                arbiter.finished(link.peer_name or "", msg)
            elif isinstance(msg, Owned):
                run = arbiter.owned_by(link.peer_name or "", msg, self.loop.time())
                if run is not None:
                    self._log_run(run)
            elif isinstance(msg, Leaving):
                name = link.peer_name or ""
                log.info(
                    "application server %s is leaving (%s): handing its calls over",
                    name,
                    msg.reason,
                )
                self._log_run(arbiter.handover(name, self.loop.time()))
        elif isinstance(event, HelloReceived):
            hello = event.hello
            if hello.name not in arbiter.servers:
                link.refuse(f"unknown application server {hello.name!r}")
                return
            old = self.links.get(hello.name)
            if old is not None and old is not link:
                old.close("replaced by a new connection")
            self.links[hello.name] = link
            live = arbiter.server_up(hello.name, hello.incarnation, hello.pid)
            link.accept(live)
            count = arbiter.reprotect()
            log.info(
                "application server %s joined (pid %d, incarnation %x): keeps %d instances, "
                "%d unprotected calls given a standby",
                hello.name, hello.pid, hello.incarnation, len(live), count,
            )  # fmt: skip
            again = hello.name in self._joined
            self._joined.add(hello.name)
            self.timeline.add(
                "rejoin" if again else "join", hello.name,
                f"{hello.name} {'rejoined' if again else 'joined'} (pid {hello.pid})",
            )  # fmt: skip
            if count:
                self.timeline.add(
                    "reprotect", hello.name, f"{count} unprotected calls given a standby"
                )
            adopted = arbiter.adopt_orphans(f"{hello.name} joined", self.loop.time())
            if adopted is not None:
                log.warning(
                    "%d calls that had lost both instances adopted from the database",
                    adopted.adopted,
                )
                self.timeline.add(
                    "adoption", hello.name,
                    f"{adopted.adopted} calls that lost both instances adopted",
                )  # fmt: skip
        elif isinstance(event, Closed):
            lost = link.peer_name
            if lost is not None and self.links.get(lost) is link:
                del self.links[lost]
                if self._stopping:
                    return
                log.warning("application server %s lost: %s", lost, event.reason)
                self.timeline.add("failure", lost, f"{lost} lost: {event.reason}")
                run = arbiter.server_down(lost, event.reason, self.loop.time())
                if run is not None:
                    self._log_run(run)
                self._arm()

    def _probe_lag(self, scheduled: float) -> None:
        """How late the loop runs a timer is how far behind it is. Past OVERLOAD_LAG for
        OVERLOAD_PROBES probes in a row (a sustained lag, not the burst of work a
        takeover makes) the switch refuses new calls (503, Retry-After) until the lag
        falls under a fifth of it: it must keep its calls' timers and heartbeats on
        time first."""
        assert self.loop is not None and self.core is not None
        now = self.loop.time()
        lag = now - scheduled - LAG_PROBE_INTERVAL
        self.loop_lag.record(lag)
        self._late_probes = self._late_probes + 1 if lag > OVERLOAD_LAG else 0
        core = self.core
        if not core.overloaded and self._late_probes >= OVERLOAD_PROBES:
            core.overloaded = True
            log.warning("overload: event loop %d ms behind; new calls get 503", lag * 1000)
        elif core.overloaded and lag < OVERLOAD_LAG / 5:
            core.overloaded = False
            log.info("overload over: new calls accepted again")
        if not self._stopping:
            self.loop.call_later(LAG_PROBE_INTERVAL, self._probe_lag, now)

    def _log_run(self, run: Takeovers) -> None:
        if not (run.calls or run.reprotected or run.unprotected or run.orphaned):
            return  # a server with nothing to move (e.g. stopping while idle)
        d = run.as_dict()
        if run.finished is not None:
            self.takeover_time.observe(run.finished - run.started)
            self.takeover_runs["handover" if run.reason == "handover" else "failure"] += 1
            self.timeline.add(
                "takeover", run.server,
                f"{run.calls} calls of {run.server} taken over in {d['duration_ms']} ms "
                f"({run.reason}): {run.reprotected} re-protected, {run.unprotected} "
                f"unprotected, {run.orphaned} orphaned",
                calls=run.calls, duration_ms=d["duration_ms"],
            )  # fmt: skip
        if run.finished is None:
            log.info(
                "moving %d calls off %s (%s): %d re-protected, %d unprotected, %d orphaned",
                run.calls, run.server, run.reason, run.reprotected, run.unprotected, run.orphaned,
            )  # fmt: skip
        else:
            log.info(
                "takeover of %d calls from %s (%s) complete in %s ms: %d re-protected, "
                "%d unprotected, %d orphaned",
                run.calls, run.server, run.reason, d["duration_ms"], run.reprotected,
                run.unprotected, run.orphaned,
            )  # fmt: skip
        if run.unprotected and run.finished is not None:
            log.warning("%d calls run unprotected: no other live server", run.unprotected)

    def drain(self, name: str, on: bool) -> dict[str, Any]:
        assert self.arbiter is not None
        self.arbiter.drain(name, on)
        count = 0 if on else self.arbiter.reprotect()
        log.info("application server %s %s", name, "drained" if on else "undrained")
        self.timeline.add(
            "drain" if on else "undrain", name, f"{name} {'drained' if on else 'undrained'}"
        )
        if count:
            self.timeline.add("reprotect", name, f"{count} unprotected calls given a standby")
        return {"server": name, "state": self.arbiter.servers[name].state.value}

    def handover(self, name: str) -> dict[str, Any]:
        assert self.arbiter is not None and self.loop is not None
        run = self.arbiter.handover(name, self.loop.time())
        self._log_run(run)
        return run.as_dict()

    def _to_server(self, name: str, msg: msgspec.Struct) -> None:
        link = self.links.get(name)
        if link is not None and not link.closed:
            link.send(msg)

    def status(self) -> dict[str, Any]:
        core = self.core
        assert core is not None
        s = core.stats
        result: dict[str, Any] = {
            "switch": {"pid": os.getpid(), "listen": list(self.config.switch.listen)},
            "servers": self.arbiter.servers_status() if self.arbiter is not None else [],
            "calls": {
                "live": core.active_calls,
                "offered": s.calls_offered,
                "answered": s.calls_answered,
                "completed": s.calls_completed,
                "rejected": s.calls_rejected,
                "cancelled": s.calls_cancelled,
                "overload_rejected": s.calls_overload_rejected,
                "routes_refused": s.routes_refused,
                "cut_at_max_duration": s.calls_cut_at_max_duration,
                "session_expired": s.calls_session_expired,
            },
            "sip": {
                "received": s.received,
                "sent": s.sent,
                "bad_requests_answered": s.bad_requests_answered,
                "malformed_dropped": s.malformed_dropped,
            },
        }
        if self.guard is not None and core.admission is not None and self.loop is not None:
            result["security"] = {
                **dataclasses.asdict(core.admission.stats),
                **self.guard.status(self.loop.time()),
            }
        if self.arbiter is not None:
            result["commands"] = dataclasses.asdict(self.arbiter.stats)
            result["calls"]["unprotected"] = self.arbiter.unprotected()
            result["calls"]["orphaned"] = self.arbiter.orphans()
            result["takeovers"] = [run.as_dict() for run in self.arbiter.runs]
            now = self.loop.time() if self.loop is not None else 0.0
            for server in result["servers"]:
                link = self.links.get(server["name"])
                up = link is not None and link.endpoint.established
                server["heartbeat_age_ms"] = (
                    round((now - link.endpoint.last_received) * 1000) if link and up else None
                )
        setup = s.setup_time
        result["calls"]["setup_ms_mean"] = (
            round(setup.total / setup.count * 1000, 1) if setup.count else None
        )
        result["timeline"] = self.timeline.latest()
        return result

    async def service_figures(self, window: float) -> dict[str, Any] | None:
        """Calls per service and prepaid spend over the last `window` seconds (dashboard)."""
        if self.store is None:
            return None
        since = time.time() - window
        return await self.store.read(lambda tx: service_figures(tx, since))

    def calls_table(
        self, *, server: str = "", number: str = "", state: str = "", limit: int = 200
    ) -> dict[str, Any]:
        """Live calls for the dashboard, filtered; at most `limit` rows, oldest first."""
        core = self.core
        assert core is not None
        owned = self.arbiter.owned if self.arbiter is not None else {}
        rows: list[dict[str, Any]] = []
        total = 0
        for call in core.calls.values():
            own = owned.get(call.id)
            primary = own.primary if own is not None else None
            standby = own.standby if own is not None else None
            if server and server not in (primary, standby):
                continue
            if number and number not in call.dialled and number not in call.caller:
                continue
            if state and call.state.value != state:
                continue
            total += 1
            if len(rows) < limit:
                rows.append(
                    {
                        "id": call.id, "caller": call.caller, "dialled": call.dialled,
                        "state": call.state.value, "primary": primary, "standby": standby,
                        "epoch": own.epoch if own is not None else None,
                        "service": own.service if own is not None else None,
                        "answered": call.answered_at is not None,
                    }
                )  # fmt: skip
        return {"total": total, "calls": rows}

    # --- the edge: bytes in, timer re-armed ----------------------------------------------
    def _deliver(self, data: bytes, source: Address, stream: bool) -> None:
        core = self.core
        if core is None or self.loop is None:
            # The listeners open before the core exists (it needs their addresses): a
            # message in that instant is dropped, and its sender retransmits it.
            return
        core.receive(data, source, self.loop.time(), stream=stream)
        self._arm()

    def _failed(self, address: Address) -> None:
        if self.core is None or self.loop is None:
            return  # nothing was sent yet: no transaction to fail
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
        self.loop.call_later(LAG_PROBE_INTERVAL, self._probe_lag, self.loop.time())
        log.info("switch ready")
        await self._stopped.wait()
        await self.close()

    async def close(self) -> None:
        assert self.loop is not None
        self._stopping = True
        if self.core is not None and self.core.calls:
            # Live calls are hung up properly, so that no phone is left holding a dead
            # line; the BYE and CANCEL transactions get a moment to complete.
            count = self.core.release_all(self.loop.time())
            self._arm()
            deadline = self.loop.time() + SHUTDOWN_GRACE
            while self.core.calls and self.loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            log.info(
                "released %d live calls at stop (%d not confirmed)", count, len(self.core.calls)
            )
        if self._timer is not None:
            self._timer.cancel()
        self.transports.close()
        for link in list(self.links.values()):
            link.close("switch stopping")
        if self._ctl_server is not None:
            self._ctl_server.close()
        if self._http is not None:
            await self._http.cleanup()
        if self.store is not None:
            await self.store.close()
        if self.core is not None:
            s = self.core.stats
            log.info(
                "switch stopped: received=%d sent=%d calls_offered=%d answered=%d "
                "rejected=%d cancelled=%d bad_requests=%d dropped=%d active=%d",
                s.received, s.sent, s.calls_offered, s.calls_answered, s.calls_rejected,
                s.calls_cancelled, s.bad_requests_answered, s.malformed_dropped,
                self.core.active_calls,
            )  # fmt: skip
