"""The services' figures for the dashboard, read from the database (never on a call's
path): calls per service by how they ended, and the prepaid money debited, over the
last `window` seconds. A read-only transaction on the switch's store, run when the
dashboard asks (every 10 s per open page)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import twinline.services  # noqa: F401 - first: the services and their data import each other
from twinline.store.base import Tx
from twinline.store.servicedata import from_units


def service_figures(tx: Tx, since: float) -> dict[str, Any]:
    services: dict[str, dict[str, int]] = {}
    rows = tx.fetchall(
        "SELECT service, disposition, count(*) AS calls FROM cdrs"
        " WHERE ended_at >= ? GROUP BY service, disposition",
        (since,),
    )
    for row in rows:
        service, disposition, calls = row["service"], row["disposition"], row["calls"]
        assert isinstance(service, str) and isinstance(disposition, str)
        assert isinstance(calls, int)
        figures = services.setdefault(service, {"calls": 0, "answered": 0, "refused": 0})
        figures["calls"] += calls
        if disposition == "answered":
            figures["answered"] += calls
        elif disposition not in ("cancelled", "busy", "no-answer"):
            figures["refused"] += calls  # refused by the service or unreachable
    debit = tx.fetchone(
        "SELECT count(*) AS debits, coalesce(sum(amount), 0) AS units FROM ledger"
        " WHERE kind = 'debit' AND at >= ?",
        (since,),
    )
    debits = int(debit["debits"] or 0) if debit else 0
    units = int(debit["units"] or 0) if debit else 0
    spend: Decimal = abs(from_units(units))
    return {
        "since": since,
        "services": [{"service": name, **f} for name, f in sorted(services.items())],
        "prepaid": {"debits": debits, "spend": str(spend)},
    }
