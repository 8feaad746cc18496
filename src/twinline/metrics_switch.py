"""The switch's metrics: its SIP counters, its calls, the arbiter and the servers it sees.

Read at scrape time from the switch's own objects (see `twinline.metrics`); the names
are listed in docs/operations.md. No label is per call: servers and links are labelled
by server name, SIP traffic by method and status code, calls by state and result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from twinline.metrics import Families, Field, Fields, store_metrics
from twinline.switch.call import CallState

if TYPE_CHECKING:
    from twinline.switch.server import SwitchServer

CALLS_HELP = "Calls by how their setup ended: answered, rejected, cancelled, overload (503)"
PARSE_HELP = "Malformed SIP input: answered with an error response, or dropped"
COMMANDS_HELP = "Commands from application servers by outcome"

SWITCH_FIELDS: Fields = {
    "received": Field("twinline_sip_messages_received", "SIP messages received"),
    "sent": Field("twinline_sip_messages_sent", "SIP messages sent"),
    "bad_requests_answered": Field(
        "twinline_sip_parse_errors", PARSE_HELP, labels={"outcome": "answered"}
    ),
    "malformed_dropped": Field(
        "twinline_sip_parse_errors", PARSE_HELP, labels={"outcome": "dropped"}
    ),
    "calls_offered": Field("twinline_call_attempts", "INVITEs taken as new calls"),
    "calls_answered": Field("twinline_calls", CALLS_HELP, labels={"result": "answered"}),
    "calls_rejected": Field("twinline_calls", CALLS_HELP, labels={"result": "rejected"}),
    "calls_cancelled": Field("twinline_calls", CALLS_HELP, labels={"result": "cancelled"}),
    "calls_overload_rejected": Field("twinline_calls", CALLS_HELP, labels={"result": "overload"}),
    "calls_completed": Field("twinline_calls_completed", "Answered calls that have ended"),
    "routes_refused": Field(
        "twinline_route_commands_refused", "Route commands for a call not waiting for one"
    ),
    "calls_cut_at_max_duration": Field(
        "twinline_calls_max_duration", "Answered calls the switch hung up at their maximum duration"
    ),
    "calls_session_expired": Field(
        "twinline_calls_session_expired",
        "Answered calls released because a leg's RFC 4028 session timer ran out",
    ),
    "requests": Field(
        "twinline_sip_requests_received",
        "SIP requests received, by method",
        key_label="method",
        keys=("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS"),
    ),
    "responses": Field(
        "twinline_sip_responses_received",
        "SIP responses received, by code",
        key_label="code",
        keys=("180", "200", "486", "487"),
    ),
    "setup_time": Field("twinline_call_setup_seconds", "From a call's INVITE to its answer"),
    "duration": Field("twinline_call_duration_seconds", "From a call's answer to its end"),
}

ARBITER_FIELDS: Fields = {
    "commands_executed": Field("twinline_commands", COMMANDS_HELP, labels={"outcome": "executed"}),
    "commands_refused_stale": Field(
        "twinline_commands", COMMANDS_HELP, labels={"outcome": "stale_epoch"}
    ),
    "commands_duplicate": Field(
        "twinline_commands", COMMANDS_HELP, labels={"outcome": "duplicate"}
    ),
    "commands_unknown_call": Field(
        "twinline_commands", COMMANDS_HELP, labels={"outcome": "unknown_call"}
    ),
    "calls_unplaced": Field(
        "twinline_calls_unplaced", "Calls refused 503 because no application server was up"
    ),
    "takeovers": Field("twinline_takeover_calls", "Calls taken over by their standby"),
    "reprotections": Field("twinline_reprotections", "Calls given a new standby"),
    "orphaned": Field("twinline_orphaned_calls", "Calls that lost primary and standby"),
}


ADMITTED_HELP = "New calls let in, by who is calling: a trunk, a local user, the public"
REFUSED_HELP = "New calls not let in, by how: challenged (407), refused (403, 400), limited"
ACCESS_FIELDS: Fields = {
    "trunk_calls": Field("twinline_calls_admitted", ADMITTED_HELP, labels={"caller": "trunk"}),
    "user_calls": Field("twinline_calls_admitted", ADMITTED_HELP, labels={"caller": "user"}),
    "public_calls": Field("twinline_calls_admitted", ADMITTED_HELP, labels={"caller": "public"}),
    "challenged": Field("twinline_calls_refused", REFUSED_HELP, labels={"how": "challenged"}),
    "refused": Field("twinline_calls_refused", REFUSED_HELP, labels={"how": "refused"}),
    "limited": Field("twinline_calls_refused", REFUSED_HELP, labels={"how": "limited"}),
}
BANS_HELP = "Addresses banned, by cause: request rate, failed authentications"
FLOOD_FIELDS: Fields = {
    "dropped": Field(
        "twinline_banned_messages_dropped", "Messages from banned addresses, dropped unread"
    ),
    "rate_bans": Field("twinline_bans", BANS_HELP, labels={"cause": "rate"}),
    "auth_bans": Field("twinline_bans", BANS_HELP, labels={"cause": "auth"}),
    "users_locked": Field("twinline_users_locked", "Users locked out for failed authentications"),
    "auth_failures": Field(
        "twinline_auth_failures", "Failed authentications and refused calls, all addresses"
    ),
    "ban_table_full": Field(
        "twinline_bans_not_recorded", "Bans not recorded: the table of live bans was full"
    ),
}


def switch_collector(server: SwitchServer) -> Callable[[Families], None]:
    def fill(families: Families) -> None:
        core = server.core
        if core is None:
            return
        families.stats(core.stats, SWITCH_FIELDS, prefix="twinline_switch")
        if core.admission is not None:
            families.stats(core.admission.stats, ACCESS_FIELDS, prefix="twinline_access")
        if core.guard is not None:
            families.stats(core.guard.stats, FLOOD_FIELDS, prefix="twinline_flood")
            families.gauge(
                "twinline_banned_addresses",
                "Addresses banned now",
                core.guard.banned_now(server.loop.time() if server.loop is not None else 0.0),
            )
        layer = core.layer
        families.counter(
            "twinline_sip_retransmissions",
            "SIP retransmissions: sent on a timer, or received for a known transaction",
            layer.retransmissions_sent,
            {"direction": "sent"},
        )
        families.counter(
            "twinline_sip_retransmissions",
            "",
            layer.retransmissions_received,
            {"direction": "received"},
        )
        by_state = Counter(call.state for call in core.calls.values())
        for state in CallState:
            if state is not CallState.ENDED:
                families.gauge(
                    "twinline_calls_live",
                    "Calls held now, by state",
                    by_state[state],
                    {"state": state.value},
                )
        families.gauge(
            "twinline_overloaded",
            "1 while the switch refuses new calls because its event loop lags",
            int(core.overloaded),
        )
        server.loop_lag.add_to(families)
        families.gauge(
            "twinline_registrations",
            "Contacts registered now (live bindings of every user)",
            server.location.count(server.loop.time() if server.loop is not None else 0.0),
        )
        families.histogram(
            "twinline_takeover_seconds",
            "From a failure (or handover) noticed to the last of its calls re-owned",
            server.takeover_time,
        )
        for reason in ("failure", "handover"):
            families.counter(
                "twinline_takeovers",
                "Takeover runs (one per server failure or handover) by reason",
                server.takeover_runs[reason],
                {"reason": reason},
            )
        arbiter = server.arbiter
        if arbiter is not None:
            families.stats(arbiter.stats, ARBITER_FIELDS, prefix="twinline_arbiter")
            families.gauge(
                "twinline_calls_unprotected",
                "Live calls with no standby instance (alert when not zero)",
                arbiter.unprotected(),
            )
            now = server.loop.time() if server.loop is not None else 0.0
            for entry in arbiter.servers.values():
                name = {"server": entry.name}
                for server_state in ("up", "draining", "down"):
                    families.gauge(
                        "twinline_appserver_state",
                        "1 for the state each application server is in (up, draining, down)",
                        int(entry.state.value == server_state),
                        {**name, "state": server_state},
                    )
                for role, held in (("primary", entry.primaries), ("standby", entry.standbys)):
                    families.gauge(
                        "twinline_appserver_calls",
                        "Live calls each application server holds, by role",
                        len(held),
                        {**name, "role": role},
                    )
                families.gauge(
                    "twinline_appserver_capacity",
                    "Calls each server may be primary for",
                    entry.capacity,
                    name,
                )
                link = server.links.get(entry.name)
                up = link is not None and link.endpoint.established
                families.gauge(
                    "twinline_link_up",
                    "1 while the link to a peer is established",
                    int(up),
                    {"link": "ctl", "peer": entry.name},
                )
                if link is not None and up:
                    families.gauge(
                        "twinline_link_heartbeat_age_seconds",
                        "Time since anything (a heartbeat at least) came on the link",
                        max(0.0, now - link.endpoint.last_received),
                        {"link": "ctl", "peer": entry.name},
                    )
        store = server.store
        store_metrics(families, store.stats if store is not None else None)

    return fill
