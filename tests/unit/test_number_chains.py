"""Screening, forwarding and translation chained as a carrier sells them: screening
then forwarding then basic for a subscriber, screening then translation for a toll-free
number. A member that does not decide passes the call on."""

from __future__ import annotations

from collections.abc import Callable

from twinline.link.messages import Reject, Route
from twinline.services.basic import BasicCall
from twinline.services.chain import ChainService
from twinline.services.destination import route_action
from twinline.services.forwarding import Forwarding
from twinline.services.screening import ScreeningService
from twinline.services.testing import ServiceHarness
from twinline.services.translation import Translation
from twinline.store import Store, Tx
from twinline.store import datatables as dt


def rows(**tables: list[dict[str, str]]) -> Callable[[Tx], None]:
    def setup(tx: Tx) -> None:
        for table, values in tables.items():
            for row in values:
                dt.add(tx, dt.TABLES[table], row, at=0.0)

    return setup


DATA = rows(
    screening=[
        {"subscriber": "5001", "kind": "block", "prefix": "33"},
        {"subscriber": "5009", "kind": "reject-anonymous", "prefix": ""},
        {"subscriber": "0800123", "kind": "block", "prefix": "44"},
    ],
    forwarding=[
        {"subscriber": "5001", "kind": "always", "target": "5002"},
        {"subscriber": "5002", "kind": "busy", "target": "5003"},
    ],
    numbers=[{"number": "0800123", "step": "1", "target": "7001"}],
)


def subscriber_chain(store: Store) -> ChainService:
    return ChainService([ScreeningService(store), Forwarding(store), BasicCall(store)])


def toll_free_chain(store: Store) -> ChainService:
    return ChainService([ScreeningService(store), Translation(store)])


def test_screening_then_forwarding_then_basic() -> None:
    with ServiceHarness(subscriber_chain, data=DATA) as h:
        blocked = h.offer(caller="3312", callee="5001")
        assert blocked.commands == [Reject(603, "Decline")]  # forwarding never runs
        forwarded = h.offer(caller="4420", callee="5001")
        diverted = route_action(["5002"], diversion="unconditional", diverted_from="5001")
        assert forwarded.commands == [diverted]
        h.fail(forwarded, 486, "Busy Here")  # screening passes; forwarding decides
        assert forwarded.commands[-1] == route_action(
            ["5003"], diversion="user-busy", diverted_from="5002"
        )
        h.fail(forwarded, 486, "Busy Here")  # 5003 has no plan: basic, last, rejects
        assert forwarded.commands[-1] == Reject(486, "Busy Here")
        plain = h.offer(caller="4420", callee="5008")  # no lists, no plan: basic routes
        assert plain.commands == [Route(["5008"])]
        h.fail(plain, 480, "Temporarily Unavailable")
        assert plain.commands[-1] == Reject(480, "Temporarily Unavailable")
        anonymous = h.offer(caller="anonymous", callee="5009")
        assert anonymous.commands == [Reject(433, "Anonymity Disallowed")]


def test_screening_then_translation() -> None:
    with ServiceHarness(toll_free_chain, data=DATA) as h:
        assert h.offer(caller="4420", callee="0800123").commands == [Reject(603, "Decline")]
        assert h.offer(caller="3312", callee="0800123").commands == [Route(["7001"])]
        # Not translated and last in the chain: translation answers for the number.
        assert h.offer(caller="3312", callee="0800999").commands == [Reject(404, "Not Found")]
