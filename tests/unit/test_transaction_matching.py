"""Server transaction matching (RFC 3261 17.2.3, and 9.2 for CANCEL).

A request belongs to an existing server transaction only if its top Via's branch
(with the magic cookie), the sent-by of that Via and the method match (ACK and CANCEL
matched to their INVITE). Without the magic cookie, the RFC 2543 rules apply:
Request-URI, To tag, From tag, Call-ID, CSeq number and top Via. A second client that
happens to use (or copies) another's branch gets a transaction of its own, and a CANCEL
or ACK from elsewhere does not touch someone else's INVITE.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from sipfix import (
    CALLEE,
    CALLER,
    SDP_OFFER,
    Layer,
    Switch,
    parse_request,
    request_bytes,
    summaries,
)

from twinline.sip.message import response_to
from twinline.sip.transaction import ServerInviteTransaction, State

OTHER = ("udp", "127.0.0.2", 5061)
OTHER_HOST = "127.0.0.2:5061"
SHARED_BRANCH = "z9hG4bK-fixed"


def invite(
    *,
    branch: str = SHARED_BRANCH,
    via_host: str = "127.0.0.1:5061",
    call_id: str = "m-1@127.0.0.1",
    from_tag: str = "a1",
    uri: str = "sip:9555@127.0.0.1:5060",
) -> bytes:
    return request_bytes(
        "INVITE",
        uri,
        branch=branch,
        call_id=call_id,
        cseq=1,
        from_=f"<sip:alice@127.0.0.1>;tag={from_tag}",
        to="<sip:9555@127.0.0.1>",
        via_host=via_host,
        contact=f"<sip:alice@{via_host}>",
        body=SDP_OFFER,
        content_type="application/sdp",
    )


def cancel(
    *,
    branch: str = SHARED_BRANCH,
    via_host: str = "127.0.0.1:5061",
    call_id: str = "m-1@127.0.0.1",
    from_tag: str = "a1",
) -> bytes:
    return request_bytes(
        "CANCEL",
        "sip:9555@127.0.0.1:5060",
        branch=branch,
        call_id=call_id,
        cseq=1,
        from_=f"<sip:alice@127.0.0.1>;tag={from_tag}",
        to="<sip:9555@127.0.0.1>",
        via_host=via_host,
    )


def ack(
    *,
    to_tag: str,
    branch: str = SHARED_BRANCH,
    via_host: str = "127.0.0.1:5061",
    call_id: str = "m-1@127.0.0.1",
) -> bytes:
    return request_bytes(
        "ACK",
        "sip:9555@127.0.0.1:5060",
        branch=branch,
        call_id=call_id,
        cseq=1,
        from_="<sip:alice@127.0.0.1>;tag=a1",
        to=f"<sip:9555@127.0.0.1>;tag={to_tag}",
        via_host=via_host,
    )


def requests(h: Layer) -> list[object]:
    return [e[2] for e in h.tu.events if e[0] == "request"]


def server_txns(h: Layer) -> list[ServerInviteTransaction]:
    return [e[3] for e in h.tu.events if e[0] == "request" and e[2] == "INVITE"]  # type: ignore[misc]


# --- the transaction layer ---------------------------------------------------------------


def test_same_branch_from_another_sent_by_is_a_new_transaction() -> None:
    h = Layer()
    h.request(invite(), CALLER)
    h.request(invite(via_host=OTHER_HOST, call_id="m-2@127.0.0.2"), OTHER)
    assert requests(h) == ["INVITE", "INVITE"]
    first, second = server_txns(h)
    assert first is not second
    assert len(h.layer.server) == 2


def test_same_branch_and_sent_by_is_a_retransmission() -> None:
    h = Layer()
    h.request(invite(), CALLER)
    h.request(invite(), CALLER)
    assert requests(h) == ["INVITE"]


def test_sent_by_without_a_port_equals_the_default_port() -> None:
    h = Layer()
    h.request(invite(via_host="127.0.0.1:5060"), CALLER)
    h.request(invite(via_host="127.0.0.1"), CALLER)
    h.request(invite(via_host="127.0.0.1:5070"), CALLER)
    assert requests(h) == ["INVITE", "INVITE"]


def test_cancel_from_another_sent_by_does_not_find_the_invite() -> None:
    h = Layer()
    h.request(invite(), CALLER)
    stranger = parse_request(cancel(via_host=OTHER_HOST))
    assert h.layer.find_invite(stranger) is None
    own = parse_request(cancel())
    assert h.layer.find_invite(own) is server_txns(h)[0]


def test_ack_from_another_sent_by_does_not_confirm_the_invite() -> None:
    h = Layer()
    h.request(invite(), CALLER)
    txn = server_txns(h)[0]
    resp = response_to(txn.request, 486, "Busy Here", to_tag="s1")
    txn.respond(resp, 0.0)
    h.request(ack(to_tag="s1", via_host=OTHER_HOST), OTHER)
    assert txn.state is State.COMPLETED
    h.request(ack(to_tag="s1"), CALLER)
    assert txn.state is State.CONFIRMED


# --- RFC 2543 (no magic cookie) ---------------------------------------------------------------


def test_rfc2543_same_branch_other_call_id_is_a_new_transaction() -> None:
    h = Layer()
    h.request(invite(branch="1234"), CALLER)
    h.request(invite(branch="1234", call_id="m-2@127.0.0.1"), CALLER)
    h.request(invite(branch="1234", from_tag="zz"), CALLER)
    h.request(invite(branch="1234", uri="sip:9556@127.0.0.1:5060"), CALLER)
    h.request(invite(branch="1234", via_host=OTHER_HOST), OTHER)
    assert requests(h) == ["INVITE"] * 5
    h.request(invite(branch="1234"), CALLER)  # the first one again
    assert requests(h) == ["INVITE"] * 5


def test_rfc2543_without_any_branch_is_matched_on_its_identity() -> None:
    data = invite().replace(f";branch={SHARED_BRANCH}".encode(), b"")
    h = Layer()
    h.request(data, CALLER)
    h.request(data, CALLER)
    assert requests(h) == ["INVITE"]
    assert h.layer.find_invite(parse_request(cancel().replace(b";branch=z9hG4bK-fixed", b"")))


def test_rfc2543_cancel_and_ack_match_their_invite() -> None:
    h = Layer()
    h.request(invite(branch="1234"), CALLER)
    txn = server_txns(h)[0]
    assert h.layer.find_invite(parse_request(cancel(branch="1234"))) is txn
    assert h.layer.find_invite(parse_request(cancel(branch="1234", from_tag="zz"))) is None
    assert h.layer.find_invite(parse_request(cancel(branch="1234", via_host=OTHER_HOST))) is None
    txn.respond(response_to(txn.request, 486, "Busy Here", to_tag="s1"), 0.0)
    # The ACK's To tag is the one of our response (RFC 3261 17.2.3, RFC 2543 rules).
    h.request(ack(branch="1234", to_tag="other"), CALLER)
    assert txn.state is State.COMPLETED
    h.request(ack(branch="1234", to_tag="s1"), CALLER)
    assert txn.state is State.CONFIRMED


# --- the switch: the reproductions of issue 12 ------------------------------------------------


def test_two_callers_with_the_same_branch_both_get_their_calls() -> None:
    sw = Switch()
    out = sw.receive(invite(), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    out = sw.receive(invite(via_host=OTHER_HOST, call_id="m-2@127.0.0.2"), OTHER)
    assert summaries(out) == [(OTHER, "100 INVITE"), (CALLEE, "INVITE")]
    assert len(sw.core.calls) == 2
    assert sw.core.stats.calls_offered == 2


def test_cancel_from_another_sent_by_does_not_end_the_call() -> None:
    sw = Switch()
    out = sw.receive(invite(), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    out = sw.receive(cancel(via_host=OTHER_HOST), OTHER)
    assert summaries(out) == [(OTHER, "481 CANCEL")]
    assert len(sw.core.calls) == 1
    assert sw.core.stats.calls_cancelled == 0
    # The caller's own CANCEL still works.
    out = sw.receive(cancel(), CALLER)
    assert summaries(out)[:2] == [(CALLER, "200 CANCEL"), (CALLER, "487 INVITE")]
    assert sw.core.stats.calls_cancelled == 1


def test_an_ack_for_a_2xx_must_carry_the_2xx_to_tag_to_stop_its_retransmissions() -> None:
    h = Layer()
    h.request(invite(), CALLER)
    txn = server_txns(h)[0]
    txn.respond(response_to(txn.request, 200, "OK", to_tag="s1"), 0.0)
    h.request(ack(to_tag="forged", branch="z9hG4bK-other", via_host=OTHER_HOST), OTHER)
    assert not txn.acked  # the 2xx goes on being retransmitted to the real caller
    h.request(ack(to_tag="s1", branch="z9hG4bK-ack"), CALLER)
    assert txn.acked


# --- the rule as a model, against any sequence of requests --------------------------------

BRANCHES = ["z9hG4bKa", "z9hG4bKb", "1234", ""]
SENT_BY = [
    "127.0.0.1:5061",
    "127.0.0.2:5061",
    "127.0.0.1",
    "127.0.0.1:5060",
    "HOST.example",
    "host.EXAMPLE",
]
request_fields = st.tuples(
    st.sampled_from(["INVITE", "OPTIONS", "BYE"]),
    st.sampled_from(BRANCHES),
    st.sampled_from(SENT_BY),
    st.sampled_from(["sip:9555@127.0.0.1", "sip:9556@127.0.0.1"]),
    st.sampled_from(["c1@h", "c2@h"]),
    st.sampled_from(["a1", "a2"]),
    st.sampled_from([1, 2]),
)


def model_key(fields: tuple[str, str, str, str, str, str, int]) -> tuple[object, ...]:
    """RFC 3261 17.2.3, written out plainly: what makes two requests one transaction."""
    method, branch, sent_by, uri, call_id, from_tag, cseq = fields
    host, _, port = sent_by.partition(":")
    where = (host.lower(), int(port or 5060))
    if branch.startswith("z9hG4bK"):
        return ("3261", branch, where, method)
    return ("2543", uri, from_tag, call_id, cseq, where, branch, method)


def build(fields: tuple[str, str, str, str, str, str, int]) -> bytes:
    method, branch, sent_by, uri, call_id, from_tag, cseq = fields
    data = request_bytes(
        method, uri, branch=branch or "X", call_id=call_id, cseq=cseq,
        from_=f"<sip:alice@127.0.0.1>;tag={from_tag}", to="<sip:bob@127.0.0.1>",
        via_host=sent_by, contact="<sip:alice@127.0.0.1:5061>",
    )  # fmt: skip
    return data if branch else data.replace(b";branch=X", b"")


_SAME_HOST_OTHER_CASE = [
    ("INVITE", "z9hG4bKa", "HOST.example", "sip:9555@127.0.0.1", "c1@h", "a1", 1),
    ("INVITE", "z9hG4bKa", "host.EXAMPLE:5060", "sip:9555@127.0.0.1", "c2@h", "a2", 2),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(request_fields, min_size=1, max_size=12))
@example(_SAME_HOST_OTHER_CASE)
def test_requests_share_a_transaction_exactly_when_the_rfc_says(
    sequence: list[tuple[str, str, str, str, str, str, int]],
) -> None:
    h = Layer()
    first: dict[tuple[object, ...], object] = {}
    for fields in sequence:
        before = len(h.tu.events)
        h.request(build(fields), CALLER)
        new = h.tu.events[before:]
        key = model_key(fields)
        if key in first:
            assert new == [], fields  # absorbed by the transaction it belongs to
        else:
            assert [e[2] for e in new] == [fields[0]], fields
            first[key] = new[0][3]
    assert len(h.layer.server) == len(first)
