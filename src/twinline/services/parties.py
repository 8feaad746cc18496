"""Who is calling and where the call has been, as the caller's INVITE says it
(`CallInfo.headers`, filled by the switch): the identity screening and translation
match on, whether the caller hides it, and the diversions the call went through
before it reached us.

Pure functions of a `CallInfo`; malformed header values count as absent, never as an
error (a service decides on what it can read).
"""

from __future__ import annotations

from dataclasses import dataclass

from twinline.link.messages import CallInfo
from twinline.sip.errors import SipParseError
from twinline.sip.message import parse_name_addr, parse_uri

ANONYMOUS = "anonymous"  # RFC 3323 4: the user part of a caller who hides its identity


def split_list(value: str) -> list[str]:
    """A header's comma-separated entries, commas inside <...> or quotes kept."""
    entries: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            entries.append(value[start:i].strip())
            start = i + 1
    entries.append(value[start:].strip())
    return [e for e in entries if e]


def _user_of(name_addr: str) -> str | None:
    try:
        return parse_uri(parse_name_addr(name_addr).uri).user or None
    except SipParseError:
        return None


def asserted_identity(info: CallInfo) -> str | None:
    """The caller's number as the network asserts it (the first P-Asserted-Identity
    with a user part), or None."""
    for entry in split_list(info.headers.get("P-Asserted-Identity", "")):
        user = _user_of(entry)
        if user is not None:
            return user
    return None


def caller_identity(info: CallInfo) -> str | None:
    """The caller's number to match lists and prefixes on: the asserted identity if
    there is one (a trunk's), else From's user part; None if neither names anyone."""
    asserted = asserted_identity(info)
    if asserted is not None:
        return asserted
    if not info.caller or info.caller.lower() == ANONYMOUS:
        return None
    return info.caller


def hides_identity(info: CallInfo) -> bool:
    """Whether the caller is anonymous to the callee: From `anonymous` (RFC 3323 4.1.1.3)
    or a Privacy header asking for `id` (RFC 3325 7) or `user` (RFC 3323)."""
    if info.caller.lower() == ANONYMOUS:
        return True
    privacy = info.headers.get("Privacy", "")
    values = {v.strip().lower() for part in privacy.split(",") for v in part.split(";")}
    return bool(values & {"id", "user"})


@dataclass(frozen=True, slots=True)
class History:
    """The diversions a call went through before it arrived (RFC 5806 Diversion,
    RFC 7044 History-Info)."""

    diverted_from: tuple[str, ...]  # user parts of the parties that diverted it
    count: int  # diversions so far (Diversion counters summed)


def diversion_history(info: CallInfo) -> History:
    parties: list[str] = []
    count = 0
    for entry in split_list(info.headers.get("Diversion", "")):
        user = _user_of(entry)
        if user is not None:
            parties.append(user)
        count += _counter(entry)
    # History-Info: an entry whose URI carries a Reason (RFC 7044 9.1) is the one
    # the call was retargeted away from.
    for entry in split_list(info.headers.get("History-Info", "")):
        if "reason=" in entry.lower():
            user = _user_of(entry)
            if user is not None:
                parties.append(user)
            count += 1
    return History(diverted_from=tuple(parties), count=count)


def _counter(entry: str) -> int:
    """A Diversion entry's `counter` (RFC 5806: default 1)."""
    _, _, params = entry.rpartition(">")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "counter":
            try:
                return max(1, int(value.strip().strip('"')))
            except ValueError:
                return 1
    return 1


def hops_left(info: CallInfo) -> int | None:
    """The caller's Max-Forwards, or None if it sent none."""
    try:
        return int(info.headers["Max-Forwards"].split(",")[0].strip())
    except (KeyError, ValueError):
        return None
