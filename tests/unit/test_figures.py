"""The dashboard's services figures, read from a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from twinline.ops.figures import service_figures
from twinline.store import open_store
from twinline.store.records import Cdr


def cdr(call_id: str, service: str, disposition: str, ended_at: float) -> Cdr:
    return Cdr(
        call_id=call_id, caller="alice", callee="1000", service=service, started_at=ended_at - 5,
        answered_at=ended_at - 4 if disposition == "answered" else None, ended_at=ended_at,
        disposition=disposition, status=200 if disposition == "answered" else 403,
        cause="caller-bye", primaries=("as1",), standby_servers=("as2",), epoch=1,
    )  # fmt: skip


def test_calls_per_service_by_outcome_within_the_window(tmp_path: Path) -> None:
    async def body() -> dict[str, object]:
        store = open_store(f"sqlite:///{tmp_path / 't.db'}")
        await store.open()
        try:
            for i, (service, disposition, ended) in enumerate(
                [
                    ("basic", "answered", 1000.0),
                    ("prepaid", "answered", 1000.0),
                    ("prepaid", "failed", 1001.0),
                    ("prepaid", "cancelled", 1002.0),
                    ("prepaid", "failed", 10.0),
                ]
            ):
                store.write_cdr(cdr(f"c{i}", service, disposition, ended))
            await store.flush()
            return await store.read(lambda tx: service_figures(tx, since=500.0))
        finally:
            await store.close()

    figures = asyncio.run(body())
    assert figures["services"] == [
        {"service": "basic", "calls": 1, "answered": 1, "refused": 0},
        {"service": "prepaid", "calls": 3, "answered": 1, "refused": 1},
    ]
    assert figures["prepaid"] == {"debits": 0, "spend": "0.00"}
