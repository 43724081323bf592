"""A real PostgreSQL server for the tests, started from Debian's `postgresql` package into a
temporary directory (`initdb`, then `pg_ctl start`), listening on a Unix socket only.

`make test` installs the package (`make system-tools`); without it the tests that need the
server fail, naming the package, rather than skip. PostgreSQL refuses to run as root, so as root
the server runs as the package's `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "running_postgres"]

USER = "forgeline"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL's server programs (initdb, pg_ctl) are missing: install Debian's "
        "`postgresql` package (`make system-tools` does)"
    )


@dataclass(frozen=True)
class PostgresServer:
    """A running server: `create_database` gives each test a database of its own."""

    socket_dir: Path
    admin_url: str

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server in a fresh directory; stop it and delete the directory at the end."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="forgeline-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(  # noqa: S603 - a fixed argument list
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    options = f"-k {sockets} -c listen_addresses='' -c fsync=off -c max_connections=200"
    # -w waits until the server accepts connections: the readiness check.
    subprocess.run(  # noqa: S603 - a fixed argument list
        [*ctl, "-o", options, "-l", str(root / "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(
            socket_dir=sockets, admin_url=f"postgresql://{USER}@/postgres?host={sockets}"
        )
    finally:
        subprocess.run([*ctl, "-m", "immediate", "-w", "stop"], capture_output=True)  # noqa: S603
        shutil.rmtree(root, ignore_errors=True)
