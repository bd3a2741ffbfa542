"""Write the synthetic database as PostgreSQL 15 `pg_dump -Fp` would, or load it into a real one.

Two sinks take the same rows: `DumpWriter` writes the plain-format dump itself (fast, no
server needed) and `PostgresLoader` loads the rows into a real PostgreSQL through psycopg's
COPY (its own value encoding) and lets the real `pg_dump` write the file. With the same rows
both files are byte-identical except for the random `\\restrict` key and the version lines,
which is how the tests prove the writer's fidelity.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import pickle
import random
import shutil
import string
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from dagster_project.postgres import temporary_postgres

# The server's TimeZone: pg_dump prints timestamptz in it (offsets +02 / +03 across DST).
DUMP_TIMEZONE = "Asia/Jerusalem"
OWNER = "dd_api"
READER = "readonly"
SERVER_VERSION = "15.18 (Debian 15.18-0+deb12u1)"
_TZ = ZoneInfo(DUMP_TIMEZONE)


@dataclass(frozen=True)
class Json:
    """A jsonb value: the writer prints it the way jsonb does, the loader sends plain JSON."""

    value: Any


@dataclass(frozen=True)
class Table:
    """One table of the synthetic database, declared the way pg_dump prints it."""

    name: str
    columns: tuple[tuple[str, str], ...]
    sequence: bool = True
    unique: tuple[tuple[str, str], ...] = ()
    indexes: tuple[tuple[str, str], ...] = ()
    foreign_keys: tuple[tuple[str, str, str], ...] = ()
    readable: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def sequence_name(self) -> str:
        return f"{self.name}_id_seq"


_TS = "timestamp with time zone"
TABLES: tuple[Table, ...] = (
    Table(
        "rn_requests",
        (
            ("id", "bigint NOT NULL"),
            ("uuid", "uuid NOT NULL"),
            ("created_at", _TS),
            ("modified_at", _TS),
            ("status", "text"),
            ("patient_id", "bigint"),
            ("vendor_id", "text"),
            ("app_version", "character varying(32)"),
            ("request", "jsonb"),
            ("is_test", "boolean"),
        ),
        unique=(("rn_requests_uuid_key", "uuid"),),
        indexes=(("ix_rn_requests_patient_id", "patient_id"),),
        readable=True,
    ),
    Table(
        "dermatologist_annotation",
        (
            ("id", "bigint NOT NULL"),
            ("created_at", _TS),
            ("modified_at", _TS),
            ("request_id", "bigint"),
            ("modified_by", "text"),
            ("free_text", "text"),
            ("diagnoses", "jsonb"),
            ("review_seconds", "integer"),
        ),
        indexes=(("ix_dermatologist_annotation_request_id", "request_id"),),
        readable=True,
    ),
    Table(
        "disease_codes",
        (
            ("id", "integer NOT NULL"),
            ("name", "text NOT NULL"),
            ("name_he", "text"),
            ("code", "text NOT NULL"),
            ("is_active", "boolean DEFAULT true NOT NULL"),
        ),
        sequence=False,
        readable=True,
    ),
    Table(
        "users",
        (
            ("id", "bigint NOT NULL"),
            ("email", "text NOT NULL"),
            ("phone", "text"),
            ("full_name", "text"),
            ("password_hash", "text"),
            ("created_at", f"{_TS} DEFAULT now()"),
            ("is_admin", "boolean DEFAULT false NOT NULL"),
        ),
        unique=(("users_email_key", "email"),),
    ),
    Table(
        "sessions",
        (
            ("id", "bigint NOT NULL"),
            ("user_id", "bigint NOT NULL"),
            ("token", "text NOT NULL"),
            ("ip_address", "inet"),
            ("user_agent", "text"),
            ("created_at", _TS),
            ("expires_at", _TS),
        ),
        foreign_keys=(("sessions_user_id_fkey", "user_id", "users"),),
    ),
    Table(
        "request_logs",
        (
            ("id", "bigint NOT NULL"),
            ("request_id", "bigint"),
            ("logged_at", "timestamp without time zone"),
            ("method", "character varying(8)"),
            ("path", "text"),
            ("status_code", "integer"),
            ("duration_ms", "integer"),
            ("client_ip", "inet"),
            ("headers", "jsonb"),
            ("body", "text"),
        ),
        indexes=(("ix_request_logs_request_id", "request_id"),),
        readable=True,
    ),
)
TABLES_BY_NAME = {table.name: table for table in TABLES}

_HEADER_SETTINGS = """SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

"""
_COPY_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"}
)


def _entry(name: str, kind: str, body: str, owned: str | None = None) -> str:
    """One TOC entry as pg_dump prints it: comment block, body, optional OWNER statement."""
    body = body.rstrip("\n")
    text = f"--\n-- Name: {name}; Type: {kind}; Schema: public; Owner: {OWNER}\n--\n\n{body}\n\n\n"
    return f"{text}{owned}\n\n" if owned else text


def _jsonb_order(value: Any) -> Any:
    """Re-key objects in jsonb's storage order (shorter keys first, then bytewise)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: _jsonb_order(value[key]) for key in keys}
    if isinstance(value, list):
        return [_jsonb_order(item) for item in value]
    if isinstance(value, float) and ("e" in repr(value) or "n" in repr(value)):
        raise ValueError(f"float {value!r} has no jsonb text identical to its JSON text")
    return value


def jsonb_text(value: Any) -> str:
    """The text PostgreSQL prints for a jsonb value (key order, separators, escapes)."""
    return json.dumps(_jsonb_order(value), ensure_ascii=False, separators=(", ", ": "))


def _timestamp_text(value: dt.datetime) -> str:
    """timestamptz in the dump's TimeZone (or a plain timestamp), DateStyle ISO."""
    local = value.astimezone(_TZ) if value.tzinfo is not None else value
    text = f"{local:%Y-%m-%d %H:%M:%S}"
    if local.microsecond:
        text += f".{local.microsecond:06d}".rstrip("0")
    if value.tzinfo is None:
        return text
    offset = int(local.utcoffset().total_seconds())  # type: ignore[union-attr]
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    text += f"{sign}{hours:02d}"
    if minutes or seconds:
        text += f":{minutes:02d}"
    return text + (f":{seconds:02d}" if seconds else "")


def copy_field(value: Any) -> str:
    """One COPY text-format field (PostgreSQL's CopyAttributeOutText escaping)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, Json):
        return jsonb_text(value.value).translate(_COPY_ESCAPES)
    if isinstance(value, dt.datetime):
        return _timestamp_text(value)
    raise TypeError(f"no COPY text for a {type(value).__name__}: {value!r}")


def restrict_key(rng: random.Random) -> str:
    """A `\\restrict` key like pg_dump's (63 random alphanumerics), reproducible from rng."""
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(63))


def _pre_data(tables: tuple[Table, ...]) -> str:
    items: list[tuple[str, str]] = []
    for table in tables:
        columns = ",\n".join(f"    {name} {decl}" for name, decl in table.columns)
        items.append(
            (
                table.name,
                _entry(
                    table.name,
                    "TABLE",
                    f"CREATE TABLE public.{table.name} (\n{columns}\n);\n",
                    f"ALTER TABLE public.{table.name} OWNER TO {OWNER};",
                ),
            )
        )
        if table.sequence:
            seq = table.sequence_name
            body = (
                f"CREATE SEQUENCE public.{seq}\n    START WITH 1\n    INCREMENT BY 1\n"
                "    NO MINVALUE\n    NO MAXVALUE\n    CACHE 1;\n"
            )
            items.append(
                (
                    seq,
                    _entry(seq, "SEQUENCE", body, f"ALTER TABLE public.{seq} OWNER TO {OWNER};")
                    + _entry(
                        seq,
                        "SEQUENCE OWNED BY",
                        f"ALTER SEQUENCE public.{seq} OWNED BY public.{table.name}.id;",
                    ),
                )
            )
    text = "".join(entry for _, entry in sorted(items))
    for table in sorted(tables, key=lambda t: t.name):
        if table.sequence:
            text += _entry(
                f"{table.name} id",
                "DEFAULT",
                f"ALTER TABLE ONLY public.{table.name} ALTER COLUMN id SET DEFAULT "
                f"nextval('public.{table.sequence_name}'::regclass);",
            )
    return text


def _sequence_sets(tables: tuple[Table, ...], last_ids: dict[str, int]) -> list[tuple[str, str]]:
    """(sequence name, setval statement): each sequence at its table's largest id."""
    return [
        (
            t.sequence_name,
            f"SELECT pg_catalog.setval('public.{t.sequence_name}', "
            + (f"{last_ids[t.name]}, true);" if t.name in last_ids else "1, false);"),
        )
        for t in sorted(tables, key=lambda t: t.sequence_name)
        if t.sequence
    ]


def _constraints(tables: tuple[Table, ...]) -> list[tuple[str, str, str]]:
    """(table, constraint name, definition) of primary keys and unique constraints."""
    found = [(t.name, f"{t.name}_pkey", "PRIMARY KEY (id)") for t in tables]
    found += [(t.name, name, f"UNIQUE ({col})") for t in tables for name, col in t.unique]
    return sorted(found, key=lambda item: (item[1], item[0]))


def _post_data_statements(tables: tuple[Table, ...]) -> list[tuple[str, str, str]]:
    """(TOC name, TOC type, SQL) of everything pg_dump prints after the data, in its order."""
    out = [
        (
            f"{table} {name}",
            "CONSTRAINT",
            f"ALTER TABLE ONLY public.{table}\n    ADD CONSTRAINT {name} {definition};",
        )
        for table, name, definition in _constraints(tables)
    ]
    indexes = sorted((name, t.name, col) for t in tables for name, col in t.indexes)
    out += [
        (name, "INDEX", f"CREATE INDEX {name} ON public.{table} USING btree ({col});")
        for name, table, col in indexes
    ]
    fks = sorted((name, t.name, col, ref) for t in tables for name, col, ref in t.foreign_keys)
    out += [
        (
            f"{table} {name}",
            "FK CONSTRAINT",
            f"ALTER TABLE ONLY public.{table}\n    ADD CONSTRAINT "
            f"{name} FOREIGN KEY ({col}) REFERENCES public.{ref}(id) ON DELETE CASCADE;",
        )
        for name, table, col, ref in fks
    ]
    out += [
        (f"TABLE {t.name}", "ACL", f"GRANT SELECT ON TABLE public.{t.name} TO {READER};")
        for t in sorted(tables, key=lambda t: t.name)
        if t.readable
    ]
    return out


class _Spool(abc.ABC):
    """Rows spooled per table to disk (memory stays flat), with the counts a dump needs."""

    suffix = ""

    def __init__(self, tables: tuple[Table, ...] = TABLES) -> None:
        self.tables = tables
        self._dir = tempfile.TemporaryDirectory(prefix="dermacurate-spool-")
        self._files: dict[str, IO[bytes]] = {
            t.name: open(self._path(t.name), "wb")  # noqa: SIM115 (closed by _close)
            for t in tables
        }
        self.last_ids: dict[str, int] = {}
        self.row_counts: dict[str, int] = dict.fromkeys(self._files, 0)

    def _path(self, table: str) -> Path:
        return Path(self._dir.name) / f"{table}{self.suffix}"

    @abc.abstractmethod
    def _write(self, handle: IO[bytes], row: tuple[Any, ...]) -> None: ...

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        """Append one row (values in the table's column order; the first is its id)."""
        self._write(self._files[table], row)
        self.row_counts[table] += 1
        self.last_ids[table] = max(self.last_ids.get(table, row[0]), row[0])

    def _close(self) -> None:
        for handle in self._files.values():
            handle.close()


class DumpWriter(_Spool):
    """Writes the plain-format dump itself, COPY rows escaped as PostgreSQL does."""

    suffix = ".copy"

    def _write(self, handle: IO[bytes], row: tuple[Any, ...]) -> None:
        handle.write(("\t".join(map(copy_field, row)) + "\n").encode())

    def finish(self, path: Path, key: str) -> Path:
        """Assemble header, schema, COPY blocks, sequence values, constraints and footer."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._close()
        with open(path, "wb") as out:
            out.write(
                f"--\n-- PostgreSQL database dump\n--\n\n\\restrict {key}\n\n"
                f"-- Dumped from database version {SERVER_VERSION}\n"
                f"-- Dumped by pg_dump version {SERVER_VERSION}\n\n{_HEADER_SETTINGS}".encode()
            )
            out.write(_pre_data(self.tables).encode())
            for table in sorted(self.tables, key=lambda t: t.name):
                out.write(
                    f"--\n-- Data for Name: {table.name}; Type: TABLE DATA; Schema: public; "
                    f"Owner: {OWNER}\n--\n\nCOPY public.{table.name} "
                    f"({', '.join(table.column_names)}) FROM stdin;\n".encode()
                )
                with open(self._path(table.name), "rb") as rows:
                    shutil.copyfileobj(rows, out)
                out.write(b"\\.\n\n\n")
            for name, statement in _sequence_sets(self.tables, self.last_ids):
                out.write(_entry(name, "SEQUENCE SET", statement).encode())
            for name, kind, sql in _post_data_statements(self.tables):
                out.write(_entry(name, kind, sql).encode())
            out.write(
                f"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict {key}\n\n".encode()
            )
        self._dir.cleanup()
        return path


class PostgresLoader(_Spool):
    """Loads the rows into a real PostgreSQL and dumps it with the real pg_dump.

    Values go through psycopg's own COPY adaptation, jsonb values as JSON text in Python's
    key order and spacing, so nothing of the writer's encoding is reused.
    """

    suffix = ".pickle"

    def _write(self, handle: IO[bytes], row: tuple[Any, ...]) -> None:
        pickle.dump(row, handle, protocol=pickle.HIGHEST_PROTOCOL)

    def _rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        with open(self._path(table), "rb") as handle:
            for _ in range(self.row_counts[table]):
                row = pickle.load(handle)
                yield tuple(json.dumps(v.value) if isinstance(v, Json) else v for v in row)

    def finish(self, path: Path) -> Path:
        import psycopg  # a dev dependency: only this path needs it

        self._close()
        with temporary_postgres() as server:
            server.psql(f"CREATE ROLE {OWNER}; CREATE ROLE {READER};")
            server.create_database("dd_api")
            server.psql(f"ALTER DATABASE dd_api SET timezone TO '{DUMP_TIMEZONE}';")
            conninfo = f"host=127.0.0.1 port={server.port} user={server.user} dbname=dd_api"
            with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
                for table in self.tables:
                    columns = ", ".join(f"{n} {d}" for n, d in table.columns)
                    cur.execute(f"CREATE TABLE public.{table.name} ({columns})")
                    cur.execute(f"ALTER TABLE public.{table.name} OWNER TO {OWNER}")
                    if table.sequence:
                        seq = table.sequence_name
                        cur.execute(f"CREATE SEQUENCE public.{seq}")
                        cur.execute(f"ALTER TABLE public.{seq} OWNER TO {OWNER}")
                        cur.execute(f"ALTER SEQUENCE public.{seq} OWNED BY public.{table.name}.id")
                        cur.execute(
                            f"ALTER TABLE ONLY public.{table.name} ALTER COLUMN id SET "
                            f"DEFAULT nextval('public.{seq}'::regclass)"
                        )
                    names = ", ".join(table.column_names)
                    with cur.copy(f"COPY public.{table.name} ({names}) FROM STDIN") as copy:
                        for row in self._rows(table.name):
                            copy.write_row(row)
                for _, statement in _sequence_sets(self.tables, self.last_ids):
                    cur.execute(statement)
                for _, _, sql in _post_data_statements(self.tables):
                    cur.execute(sql)
            server.pg_dump("dd_api", path)
        self._dir.cleanup()
        return path
