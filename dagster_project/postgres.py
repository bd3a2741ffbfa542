"""A throwaway PostgreSQL server on 127.0.0.1, for making real `pg_dump` files.

The generator uses it to produce dumps through the real `pg_dump` (the gold standard of the
source contract) and tests use it to make dumps the parser has never seen.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def postgres_bin_dir() -> Path | None:
    """The directory holding initdb/postgres/pg_dump, or None when PostgreSQL is absent."""
    configured = os.environ.get("PG_BIN_DIR")
    candidates = [configured] if configured else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    bin_dir: Path
    port: int
    user: str
    run_as: str | None

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _conn_args(self, database: str) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database]

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql (stdin), stopping at the first error."""
        result = subprocess.run(
            self._cmd(
                "psql", *self._conn_args(database), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"
            ),
            input=sql.encode(),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode(errors='replace')[-2000:]}")
        return result.stdout.decode()

    def psql_file(self, path: Path, database: str = "postgres") -> None:
        with open(path, "rb") as handle:
            result = subprocess.run(
                self._cmd("psql", *self._conn_args(database), "-X", "-q", "-v", "ON_ERROR_STOP=1"),
                stdin=handle,
                capture_output=True,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode(errors='replace')[-2000:]}")

    def create_database(self, name: str) -> None:
        self.psql(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0;")

    def pg_dump(self, database: str, out: Path, args: Sequence[str] = ()) -> Path:
        """Dump `database` to `out` with the real pg_dump (extra args: -Fc, --inserts, ...)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as handle:
            result = subprocess.run(
                self._cmd("pg_dump", *self._conn_args(database), *args),
                stdout=handle,
                stderr=subprocess.PIPE,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {result.stderr.decode(errors='replace')}")
        return out


_NOT_DURABLE = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


@contextmanager
def temporary_postgres(durable: bool = False) -> Iterator[PostgresServer]:
    """Start a fresh cluster on 127.0.0.1 (trust auth), yield it, stop and delete it.

    A throwaway cluster needs no crash safety, so unless `durable` it runs without fsync,
    synchronous commits and full-page writes; `durable` keeps PostgreSQL's defaults, as an
    ordinary server has them. PostgreSQL refuses to run as root, so as root the server runs
    as the `postgres` user.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL binaries (initdb, postgres, pg_dump) not found; "
            "install postgresql or set PG_BIN_DIR"
        )
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        pwd.getpwnam(run_as)
    workdir = Path(tempfile.mkdtemp(prefix="dermacurate-pg-"))
    data_dir = workdir / "data"
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
        os.chmod(workdir, 0o700)
    server = PostgresServer(bin_dir, _free_port(), "postgres", run_as)
    subprocess.run(
        server._cmd(
            "initdb",
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ),
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        server._cmd(
            "postgres",
            "-D",
            str(data_dir),
            "-p",
            str(server.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={workdir}",
            *([] if durable else _NOT_DURABLE),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(server.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
