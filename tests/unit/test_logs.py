"""JSON log lines, and the call id they carry."""

from __future__ import annotations

import json
import logging

from twinline.ops.logs import JsonFormatter


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("twinline.test", logging.WARNING, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_line_about_a_call_carries_its_call_id() -> None:
    line = json.loads(JsonFormatter("as1").format(record("call %s: checkpoint %d lost", "c1-9", 3)))
    assert line["call_id"] == "c1-9"
    assert line["message"] == "call c1-9: checkpoint 3 lost"
    assert line["process"] == "as1" and line["level"] == "warning"
    assert line["logger"] == "twinline.test"


def test_an_explicit_call_id_wins_and_other_lines_have_none() -> None:
    fmt = JsonFormatter("switch")
    assert json.loads(fmt.format(record("moved", call_id="c2-1")))["call_id"] == "c2-1"
    assert "call_id" not in json.loads(fmt.format(record("switch ready")))
