"""Tags, branches and Call-IDs: cryptographic by default, injectable for exact bytes."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator

import pytest
from sipfix import CALLEE, CALLER, SDP_OFFER, Switch, request_bytes, summaries, wire

from twinline.sip import ids
from twinline.sip.ids import RandomPool, new_branch, new_call_id, new_tag, source_of


def counting() -> ids.RandomBytes:
    """Draw k (from 1) is k repeated: the identifiers say in which order they were made."""
    draws = iter(range(1, 256))

    def take(n: int) -> bytes:
        return bytes([next(draws)]) * n

    return take


@pytest.fixture
def counted() -> Iterator[None]:
    with source_of(counting()):
        yield


def test_forms() -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", new_tag())
    assert re.fullmatch(r"z9hG4bK[0-9a-f]{16}", new_branch())
    assert re.fullmatch(r"[0-9a-f]{24}@sw\.example", new_call_id("sw.example"))


def test_default_source_does_not_follow_the_random_module() -> None:
    # With `random`, a peer that recovers the generator's state (624 outputs of
    # Mersenne Twister) predicts every later identifier; reseeding shows the link.
    random.seed(7)
    first = [new_branch(), new_tag(), new_call_id("h")]
    random.seed(7)
    second = [new_branch(), new_tag(), new_call_id("h")]
    assert all(a != b for a, b in zip(first, second, strict=True))


def test_default_source_never_repeats_across_pool_refills() -> None:
    branches = {new_branch() for _ in range(5000)}  # ~10 refills of the 4 KiB pool
    assert len(branches) == 5000


def test_pool_hands_out_each_byte_once_and_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = iter([bytes(range(10)), bytes(range(100, 110)), bytes(range(200, 230))])
    monkeypatch.setattr(ids.os, "urandom", lambda n: next(blocks))
    pool = RandomPool(size=10)
    assert pool.take(4) == bytes([0, 1, 2, 3])
    assert pool.take(4) == bytes([4, 5, 6, 7])
    assert pool.take(4) == bytes(range(100, 104))  # 2 bytes left: a new block
    assert pool.take(20) == bytes(range(200, 220))  # more than a block: a block that big


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_repeat_its_parents_identifiers() -> None:
    new_branch()  # the pool holds bytes the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_branch().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != new_branch()


def test_injected_source_gives_exact_identifiers(counted: None) -> None:
    assert new_tag() == "01" * 6
    assert new_branch() == "z9hG4bK" + "02" * 8
    assert new_call_id("127.0.0.1") == "03" * 12 + "@127.0.0.1"


def test_source_of_restores_the_previous_source() -> None:
    with source_of(lambda n: b"\xaa" * n):
        assert new_tag() == "aa" * 6
    assert new_tag() != "aa" * 6


def test_callee_invite_exact_bytes_with_an_injected_source(counted: None) -> None:
    sw = Switch()
    invite = request_bytes(
        "INVITE",
        "sip:9555@127.0.0.1:5060",
        branch="z9hG4bKa1",
        call_id="a-call-1@127.0.0.1",
        cseq=1,
        contact="<sip:alice@127.0.0.1:5061>",
        body=SDP_OFFER,
        content_type="application/sdp",
    )
    out = sw.receive(invite, CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    # Draws in order: the A-leg's To tag, the B-leg's Call-ID, From tag and branch.
    assert out[1].data == wire(
        "INVITE sip:555@127.0.0.1:5062 SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{'04' * 8};rport"),
            ("Max-Forwards", "69"),
            ("From", f"<sip:alice@127.0.0.1>;tag={'03' * 6}"),
            ("To", "<sip:555@127.0.0.1:5062>"),
            ("Call-ID", f"{'02' * 12}@127.0.0.1"),
            ("CSeq", "1 INVITE"),
            ("Contact", "<sip:127.0.0.1:5060>"),
            ("Content-Type", "application/sdp"),
        ],
        SDP_OFFER,
    )
    assert sw.core.calls[next(iter(sw.core.calls))].a.local_tag == "01" * 6


def test_other_threads_get_bytes_of_their_own() -> None:
    import threading

    pool = RandomPool()
    taken: list[bytes] = []
    thread = threading.Thread(target=lambda: taken.extend(pool.take(8) for _ in range(50)))
    thread.start()
    mine = [pool.take(8) for _ in range(50)]
    thread.join()
    assert len(set(mine + taken)) == 100
