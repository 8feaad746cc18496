"""What a round trip to PostgreSQL costs, against the same statements in pipeline mode.

    python -m bench.pg_roundtrip         # starts a PostgreSQL of its own (tests/pgserver.py)

A short statement (a one-row SELECT by parameter) run N times, waiting for each answer,
then N times in psycopg's pipeline mode (sent back to back, answers read at the end).
Printed per mode: wall time, the client's CPU and the server's CPU per statement. On a
small virtual host most of a short statement's cost is the round trip itself (both
processes woken, system calls on each side), which is why the store sends what it need
not wait for with the next statement that waits (`Tx.send`).
"""

from __future__ import annotations

import glob
import os
import time

from tests.pgserver import PgServer

STATEMENTS = 20_000
ROUNDS = 2


def server_cpu_seconds() -> float:
    """CPU time of every postgres process on the host (the benchmark's own server)."""
    total = 0
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            stat = open(path).read()  # noqa: SIM115 - /proc, read at once
        except OSError:
            continue
        if "(postgres)" in stat:
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    server = PgServer()
    server.start()
    try:
        with server.connect(server.create_database("rt")) as conn:
            cur = conn.cursor()
            for _ in range(ROUNDS):
                for mode in ("wait for each", "pipeline"):
                    cpu, pg, wall = time.process_time(), server_cpu_seconds(), time.monotonic()
                    if mode == "pipeline":
                        with conn.pipeline():
                            for i in range(STATEMENTS):
                                cur.execute("SELECT %s::int", (i,))
                    else:
                        for i in range(STATEMENTS):
                            cur.execute("SELECT %s::int", (i,))
                    per = 1e6 / STATEMENTS
                    print(
                        f"{mode:>14}: {per * (time.monotonic() - wall):5.0f} us wall,"
                        f" client {per * (time.process_time() - cpu):4.0f} us CPU,"
                        f" server {per * (server_cpu_seconds() - pg):4.0f} us CPU per statement"
                    )
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
