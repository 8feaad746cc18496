"""A real PostgreSQL server for the tests: Debian's binaries, `initdb` and `pg_ctl` run as an
unprivileged user in a temporary directory, on a free port of the loopback address.

PostgreSQL refuses to run as root: when the tests run as root (CI), the server runs as
the `postgres` user that Debian's package creates (else `nobody`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

USER = "twinline"  # the database superuser the tests connect as


def pg_bin() -> Path:
    """The directory of PostgreSQL's server binaries: $TWINLINE_PG_BIN, else the newest
    /usr/lib/postgresql/N/bin (Debian keeps them off PATH), else `initdb` on PATH."""
    if os.environ.get("TWINLINE_PG_BIN"):
        return Path(os.environ["TWINLINE_PG_BIN"])
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> int:
        m = re.search(r"/postgresql/(\d+)/", path)
        return int(m[1]) if m else 0

    if found:
        return Path(max(found, key=version)).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise FileNotFoundError(
        "PostgreSQL's initdb not found: install Debian's postgresql package (./dev test does)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run as")


class PgServer:
    """One PostgreSQL cluster: `start()`, `stop()` (and start again: the same data),
    `create_database()`, `destroy()`."""

    def __init__(self, *, settings: dict[str, str] | None = None, netns: str | None = None) -> None:
        self.bin = pg_bin()
        self.user = _run_as()
        self.netns = netns  # a network namespace to run the server in (root only)
        self.password = secrets.token_urlsafe(16)
        self.dir = Path(tempfile.mkdtemp(prefix="twinline-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            "max_connections": "300",
            "fsync": "off",  # the tests' data need not survive the host's power loss
            "full_page_writes": "off",
            **(settings or {}),
        }
        self._databases = 0
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.dir.chmod(0o700)

    def _run(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env = {**clean, "LC_ALL": "C", **(env or {})}
        command = [str(self.bin / args[0]), *args[1:]]
        user = self.user
        if self.netns is not None:
            as_user = ["runuser", "-u", user, "--"] if user is not None else []
            command = ["ip", "netns", "exec", self.netns, *as_user, *command]
            user = None
        result = subprocess.run(
            command,
            user=user,
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        pwfile.unlink()
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all samenet scram-sha-256\n")  # a listen address not loopback
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = '{value}'\n")

    def standby(self, *, settings: dict[str, str] | None = None) -> PgServer:
        """A streaming replica of this (running) server, made with pg_basebackup, not yet
        started; it recovers from this server and accepts only reads until promoted."""
        replica = PgServer(settings=settings)
        replica.password = self.password
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
            "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast",
            env={"PGPASSWORD": self.password},
        )  # fmt: skip
        # Read last, so these win over the primary's settings copied with the data.
        with (replica.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {replica.port}\n")
            conf.write(f"unix_socket_directories = '{replica.dir}'\n")
            conf.write("primary_conninfo = '" + self._conninfo("standby") + "'\n")
            # Promoted, it has no standby of its own to wait for.
            conf.write("synchronous_standby_names = ''\n")
        return replica

    def _conninfo(self, name: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={USER} password={self.password}"
            f" application_name={name}"
        )

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def start(self) -> None:
        if not self.data.exists():
            self.init()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """A URL without the password (the tests pass it apart, as deployments do)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(dbname), password=self.password, autocommit=True)

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its name."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name
