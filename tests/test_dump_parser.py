"""The dump parser against dumps made by the real pg_dump of a database filled through psycopg.

Every expectation is the Python value that was inserted (or, for hand-edited dumps, a line
number computed from the dump text), never the parser's own output.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pyarrow as pa
import pytest
from psycopg.types.json import Jsonb

from dagster_project.dump_parser import DumpFormatError, detect_format, stream_tables
from dagster_project.schema import (
    DISEASE_CODES_TABLE,
    REQUESTS_TABLE,
    SOURCE_TABLES,
    TableSpec,
)

DATABASE = "dump_parser_src"

# Text that breaks naive splitters and naive SQL scanners.
NASTY = [
    "plain",
    "",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "crlf\r\nend",
    "back\\slash",
    "\\",
    "\\\\",
    "\\.",
    "\\.\n\\.",
    "ends with backslash\\",
    "\\N",
    "NULL",
    "'single' \"double\" ''",
    "x'); INSERT INTO public.rn_requests VALUES (1",
    "COPY public.rn_requests (id) FROM stdin;",
    "$$ dollar $tag$ -- not a comment /* nor this */",
    "עברית שלום",
    "العربية",
    "emoji 🩺🧴👩🏽‍⚕️",
    "line\u2028separator",
    "next\u0085line",
    "para\u2029graph",
    "ctrl \x01\x07\x08\x0b\x0c\x1b\x7f",
    "\ttrailing tab\t",
    " spaced ",
    "octal-looking \\101 and hex \\x41",
    'json-ish {"a": "b\\"c"}',
]
IDS = [2**53 + 1, 2**63 - 1, -(2**63), 0, -5, 2**53 + 3]
TIMES = [
    datetime(2019, 3, 2, 10, 11, 12, 123456, tzinfo=timezone(timedelta(hours=2))),
    datetime(2020, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2018, 6, 30, 23, 59, 59, 999999, tzinfo=timezone(-timedelta(hours=9, minutes=30))),
    datetime(1880, 5, 1, 12, 0, tzinfo=UTC),  # a local-mean-time offset with seconds
    datetime(2024, 2, 29, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    datetime(2021, 3, 26, 1, 30, tzinfo=ZoneInfo("Asia/Jerusalem")),
    None,
]
OPTIONAL_ABSENT = TableSpec(
    "rn_requests",
    required={"id": pa.int64()},
    # vendor_upper is a generated column: its values are never in a dump
    optional={"not_in_dump": pa.string(), "vendor_upper": pa.string(), "vendor_id": pa.string()},
)
AUDIT_REQUESTS = TableSpec("rn_requests", required={"id": pa.int64()}, schema="Audit")


def _requests() -> list[dict]:
    rows = []
    for i in range(len(NASTY) + len(IDS)):
        text = NASTY[i % len(NASTY)]
        rows.append(
            {
                "id": IDS[i] if i < len(IDS) else 1000 + i,
                "uuid": str(uuid.UUID(int=i * 7919 + 1)),
                "patient_id": 2**62 + i // 2,
                "vendor_id": None if i % 11 == 5 else text,
                "is_test": [True, False, None][i % 3],
                "created_at": TIMES[i % len(TIMES)],
                "modified_at": TIMES[(i + 3) % len(TIMES)],
                "request": None
                if i % 13 == 7
                else {"version": 3, "note": text, "images": [f"gs://b/000RN/{i}.jpg"], "n": i},
                "free_text": f"secret note {text}",
                "headers": {"Authorization": "Bearer eyJ.secret", "X-Forwarded-For": "203.0.113.7"},
                "weird": text[::-1],
            }
        )
    return rows


def _annotations() -> list[dict]:
    diagnoses = [
        [{"disease": "Acne vulgaris", "icd9": "706.1"}],
        json.dumps([{"disease": "Psoriasis", "icd9": None}]),  # double-encoded: a JSON string
        [],
        [{"disease": text, "icd9": None} for text in NASTY[:6]],
    ]
    return [
        {
            "id": 2**60 + i,
            "request_id": IDS[i % len(IDS)],
            "diagnoses": diagnoses[i % len(diagnoses)],
            "modified_at": TIMES[i % len(TIMES)],
            "modified_by": f"dr{i}@example.org",
            "free_text": NASTY[i % len(NASTY)],
        }
        for i in range(12)
    ]


def _codes() -> list[dict]:
    return [
        {"code": f"{700 + i}.{i}", "name": text, "name_he": None if i % 4 == 0 else "מחלה " + text}
        for i, text in enumerate(NASTY)
    ]


SCHEMA_SQL = '''
CREATE SCHEMA "Audit";
CREATE TABLE public.rn_requests (
    vendor_id text,
    free_text text,
    modified_at timestamptz,
    "we,ird ""col""" text,
    request jsonb,
    is_test boolean,
    headers jsonb,
    patient_id bigint,
    created_at timestamptz,
    uuid uuid,
    amount numeric(10,2) DEFAULT 0,
    id bigint PRIMARY KEY,
    vendor_upper text GENERATED ALWAYS AS (upper(vendor_id)) STORED,
    CONSTRAINT vendor_length CHECK (char_length(vendor_id) < 10000)
);
CREATE TABLE public.dermatologist_annotation (
    modified_by text, diagnoses jsonb, free_text text, request_id bigint,
    modified_at timestamptz, id bigint PRIMARY KEY
);
CREATE TABLE public.disease_codes (name_he text, code text, name text);
CREATE TABLE public.sessions (token text, payload text, id bigint);
INSERT INTO public.sessions
    SELECT 'tok' || g, repeat(E'x\\ty\\n\\\\.', 20), g FROM generate_series(1, 20000) g;
INSERT INTO public.sessions VALUES (E'\\\\.', 'COPY public.rn_requests (id) FROM stdin;', -1);
CREATE TABLE "Audit".rn_requests (id bigint, uuid text);
INSERT INTO "Audit".rn_requests VALUES (424242, 'not-this-one');
CREATE FUNCTION public.tricky() RETURNS text LANGUAGE sql AS $body$
    SELECT 'x;y''z';
    -- COPY public.rn_requests (id) FROM stdin;
$body$;
ALTER DATABASE {db} SET timezone = 'Asia/Kolkata';
'''


@pytest.fixture(scope="module")
def source(postgres) -> dict:
    """The database: expected rows per table, exactly as inserted through psycopg."""
    postgres.create_database(DATABASE)
    postgres.psql(SCHEMA_SQL.replace("{db}", DATABASE), DATABASE)
    requests, annotations, codes = _requests(), _annotations(), _codes()
    dsn = f"host=127.0.0.1 port={postgres.port} user={postgres.user} dbname={DATABASE}"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO public.rn_requests (vendor_id, free_text, modified_at, "we,ird ""col""",'
            " request, is_test, headers, patient_id, created_at, uuid, id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    r["vendor_id"],
                    r["free_text"],
                    r["modified_at"],
                    r["weird"],
                    None if r["request"] is None else Jsonb(r["request"]),
                    r["is_test"],
                    Jsonb(r["headers"]),
                    r["patient_id"],
                    r["created_at"],
                    uuid.UUID(r["uuid"]),
                    r["id"],
                )
                for r in requests
            ],
        )
        cur.executemany(
            "INSERT INTO public.dermatologist_annotation"
            " (modified_by, diagnoses, free_text, request_id, modified_at, id)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    a["modified_by"],
                    Jsonb(a["diagnoses"]),
                    a["free_text"],
                    a["request_id"],
                    a["modified_at"],
                    a["id"],
                )
                for a in annotations
            ],
        )
        cur.executemany(
            "INSERT INTO public.disease_codes (name_he, code, name) VALUES (%s, %s, %s)",
            [(c["name_he"], c["code"], c["name"]) for c in codes],
        )
    return {
        "rn_requests": requests,
        "dermatologist_annotation": annotations,
        "disease_codes": codes,
    }


@pytest.fixture(scope="module")
def dumps(postgres, source, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dumps")
    made = {
        "plain": postgres.pg_dump(DATABASE, out / "plain.sql"),
        "inserts": postgres.pg_dump(DATABASE, out / "inserts.sql", ["--inserts"]),
        "column_inserts": postgres.pg_dump(
            DATABASE, out / "column_inserts.sql", ["--column-inserts", "--rows-per-insert=4"]
        ),
        "custom": postgres.pg_dump(DATABASE, out / "custom.dump", ["-Fc"]),
        "custom_uncompressed": postgres.pg_dump(DATABASE, out / "custom0.dump", ["-Fc", "-Z0"]),
        "data_only_inserts": postgres.pg_dump(
            DATABASE, out / "data_only.sql", ["--data-only", "--inserts"]
        ),
    }
    made["gz"] = out / "plain.sql.gz"
    made["gz"].write_bytes(gzip.compress(made["plain"].read_bytes()))
    # pg_dump writes timestamptz in the database's time zone: more offset spellings.
    for zone, spelling in [("UTC", b"+00\t"), ("America/St_Johns", b"-02:30\t")]:
        postgres.psql(f"ALTER DATABASE {DATABASE} SET timezone = '{zone}';")
        made[zone] = postgres.pg_dump(DATABASE, out / f"{zone.replace('/', '_')}.sql")
        assert spelling in made[zone].read_bytes()
    # With standard_conforming_strings off, pg_dump doubles backslashes inside '...' strings.
    postgres.psql(f"ALTER DATABASE {DATABASE} SET standard_conforming_strings = off;")
    made["inserts_escaped"] = postgres.pg_dump(DATABASE, out / "inserts_escaped.sql", ["--inserts"])
    assert b"SET standard_conforming_strings = off;" in made["inserts_escaped"].read_bytes()
    return made


def collect(path: Path, specs=SOURCE_TABLES, **kwargs) -> dict[str, list[dict]]:
    tables: dict[str, list[dict]] = defaultdict(list)
    by_name = {spec.name: spec for spec in specs}
    for name, batch in stream_tables(path, specs, **kwargs):
        assert batch.schema == pa.schema(list(by_name[name].columns.items()))
        tables[name].extend(batch.to_pylist())
    return tables


def check_requests(rows: list[dict], expected: list[dict]) -> None:
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in expected)
    by_id = {r["id"]: r for r in rows}
    for want in expected:
        got = by_id[want["id"]]
        assert set(got) == set(REQUESTS_TABLE.columns)
        for column in ("uuid", "patient_id", "vendor_id", "is_test", "created_at", "modified_at"):
            assert got[column] == want[column], (column, want["id"])
        request = None if got["request"] is None else json.loads(got["request"])
        assert request == want["request"]


def check_annotations(rows: list[dict], expected: list[dict]) -> None:
    assert len(rows) == len(expected)
    by_id = {r["id"]: r for r in rows}
    for want in expected:
        got = by_id[want["id"]]
        assert set(got) == {"id", "request_id", "diagnoses", "modified_at"}
        assert (got["request_id"], got["modified_at"]) == (want["request_id"], want["modified_at"])
        assert json.loads(got["diagnoses"]) == want["diagnoses"]


FORMATS = [
    "plain",
    "inserts",
    "column_inserts",
    "custom",
    "custom_uncompressed",
    "gz",
    "inserts_escaped",
    "UTC",
    "America/St_Johns",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_yields_exactly_the_inserted_rows(dumps, source, fmt):
    tables = collect(dumps[fmt], require_all=True)
    # in dump order
    assert list(tables) == ["dermatologist_annotation", "disease_codes", "rn_requests"]
    check_requests(tables["rn_requests"], source["rn_requests"])
    check_annotations(tables["dermatologist_annotation"], source["dermatologist_annotation"])
    by_code = itemgetter("code")
    assert sorted(tables["disease_codes"], key=by_code) == sorted(
        source["disease_codes"], key=by_code
    )


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("plain", "plain"),
        ("inserts", "plain"),
        ("gz", "plain.gz"),
        ("custom", "custom"),
    ],
)
def test_detect_format_by_magic_bytes(dumps, tmp_path, fmt, expected):
    renamed = tmp_path / "dump.sql.gz"  # the suffix must not matter
    renamed.write_bytes(dumps[fmt].read_bytes())
    assert detect_format(renamed) == expected


@pytest.mark.parametrize("fmt", ["plain", "inserts", "custom"])
def test_pii_columns_are_never_returned(dumps, fmt):
    tables = collect(dumps[fmt])
    text = repr(tables)
    assert "@example.org" not in text and "secret note" not in text and "Bearer" not in text


@pytest.mark.parametrize("fmt", ["plain", "column_inserts", "custom"])
def test_batches_respect_batch_rows(dumps, source, fmt):
    sizes = defaultdict(list)
    for name, batch in stream_tables(dumps[fmt], SOURCE_TABLES, batch_rows=4):
        sizes[name].append(batch.num_rows)
    for name, rows in source.items():
        assert sum(sizes[name]) == len(rows)
        assert all(size == 4 for size in sizes[name][:-1]) and 0 < sizes[name][-1] <= 4


@pytest.mark.parametrize("fmt", ["plain", "inserts", "custom"])
def test_optional_column_absent_is_null_and_schema_is_respected(dumps, source, fmt):
    rows = collect(dumps[fmt], [OPTIONAL_ABSENT])["rn_requests"]
    vendors = {r["id"]: r["vendor_id"] for r in source["rn_requests"]}
    assert {r["id"]: r["vendor_id"] for r in rows} == vendors
    assert all(r["not_in_dump"] is None and r["vendor_upper"] is None for r in rows)
    audit = collect(dumps[fmt], [AUDIT_REQUESTS])["rn_requests"]
    assert audit == [{"id": 424242}]


def test_missing_table_yields_nothing_or_fails_when_required(dumps):
    absent = TableSpec("no_such_table", required={"id": pa.int64()})
    assert collect(dumps["plain"], [absent]) == {}
    for fmt in ("plain", "custom"):
        with pytest.raises(DumpFormatError, match="no_such_table") as info:
            collect(dumps[fmt], [absent, DISEASE_CODES_TABLE], require_all=True)
        assert info.value.table == "public.no_such_table"


def test_inserts_without_column_list_need_create_table(dumps):
    with pytest.raises(DumpFormatError, match="CREATE TABLE") as info:
        collect(dumps["data_only_inserts"], [DISEASE_CODES_TABLE])
    text = dumps["data_only_inserts"].read_bytes().decode("utf-8")
    assert info.value.line == line_of(text, "INSERT INTO public.disease_codes")


def test_copy_escapes_decode_as_postgresql_does(postgres, tmp_path):
    """COPY text written by hand with every escape form; PostgreSQL itself is the oracle."""
    block = (
        "COPY public.disease_codes (code, name, name_he) FROM stdin;\n"
        "1\t\\101\\x41\\x4g\\q\\\\\\N\t\\N\n"
        "2\ta\\Nb\\b\\f\\v\\r\\n\\t\\1\\1017\t\\xe2\\x80\\xa8\\302\\205\n"
        "3\t\t\\\\.\n"
        "\\.\n"
    )
    database = "dump_parser_escapes"
    postgres.create_database(database)
    postgres.psql(
        "CREATE TABLE public.disease_codes (code text, name text, name_he text);", database
    )
    path = tmp_path / "escapes.sql"
    path.write_text(block)
    postgres.psql_file(path, database)
    dsn = f"host=127.0.0.1 port={postgres.port} user={postgres.user} dbname={database}"
    with psycopg.connect(dsn) as conn:
        expected = conn.execute(
            "SELECT code, name, name_he FROM disease_codes ORDER BY code"
        ).fetchall()
    rows = collect(path, [DISEASE_CODES_TABLE])["disease_codes"]
    assert [(r["code"], r["name"], r["name_he"]) for r in rows] == expected


def test_sql_string_literals_decode_as_postgresql_does(postgres, tmp_path):
    """INSERT literals written by hand (E'' escapes, '' quotes, multi-row); PostgreSQL is the
    oracle for the values."""
    script = (
        "CREATE TABLE public.disease_codes (code text, name text, name_he text);\n"
        "INSERT INTO public.disease_codes VALUES ('1', E'a\\\\b\\n\\t\\101\\x41\\u00e9"
        "\\U0001F600 it''s', 'x');\n"
        "INSERT INTO public.disease_codes (name_he, code, name) VALUES\n"
        "\t(NULL, '2', 'plain \\ backslash\n second line'),\n"
        "\t('', '3', e'\\\\N');\n"
    )
    database = "dump_parser_literals"
    postgres.create_database(database)
    path = tmp_path / "literals.sql"
    path.write_text(script)
    postgres.psql_file(path, database)
    dsn = f"host=127.0.0.1 port={postgres.port} user={postgres.user} dbname={database}"
    with psycopg.connect(dsn) as conn:
        expected = conn.execute("SELECT code, name, name_he FROM disease_codes ORDER BY code")
        expected = expected.fetchall()
    rows = collect(path, [DISEASE_CODES_TABLE])["disease_codes"]
    assert [(r["code"], r["name"], r["name_he"]) for r in rows] == expected


def test_old_pg_dump_search_path_and_unqualified_names(tmp_path):
    path = tmp_path / "old.sql"
    path.write_text(
        "SET search_path = public, pg_catalog;\n\n"
        "COPY disease_codes (code, name, name_he) FROM stdin;\n706.1\tAcne\tאקנה\n\\."
    )
    rows = collect(path, [DISEASE_CODES_TABLE])["disease_codes"]
    assert rows == [{"code": "706.1", "name": "Acne", "name_he": "אקנה"}]


# --- hand-edited dumps: errors name the table and the line of the dump ------------------------


def line_of(text: str, needle: str, start: int = 0) -> int:
    return text.count("\n", 0, text.index(needle, start)) + 1


def copy_block(text: str, table: str) -> tuple[int, list[str]]:
    """Offset of a table's COPY header in the dump text, and its column names."""
    header = re.search(rf"^COPY {re.escape(table)} \((.*)\) FROM stdin;$", text, re.M)
    return header.start(), re.findall(r'"(?:[^"]|"")*"|[^,\s]+', header.group(1))


def edit_row(text: str, table: str, marker: str, column: str, raw: str) -> tuple[str, int]:
    """Set one field of the COPY row holding `marker`; return the text and that row's line."""
    start, columns = copy_block(text, table)
    row_start = text.rindex("\n", 0, text.index(marker, start)) + 1
    row_end = text.index("\n", row_start)
    fields = text[row_start:row_end].split("\t")
    fields[columns.index(column)] = raw
    return text[:row_start] + "\t".join(fields) + text[row_end:], line_of(text, marker, start)


@pytest.fixture
def plain_text(dumps) -> str:
    return dumps["plain"].read_bytes().decode("utf-8")


def parse_text(tmp_path: Path, text: str | bytes, specs=SOURCE_TABLES) -> dict:
    path = tmp_path / "edited.sql"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return collect(path, specs)


MARKER = str(uuid.UUID(int=5 * 7919 + 1))  # the uuid of one rn_requests row


@pytest.mark.parametrize(
    ("column", "raw", "message"),
    [
        ("id", "12a", "not a 64-bit integer"),
        ("id", "9223372036854775808", "not a 64-bit integer"),
        ("patient_id", "1.5", "not a 64-bit integer"),
        ("is_test", "maybe", "not a boolean"),
        ("modified_at", "0044-03-15 12:00:00+00 BC", "not a timestamp"),
        ("created_at", "infinity", "not a timestamp"),
        ("created_at", "2019-02-30 10:00:00+00", "not a timestamp"),
        ("modified_at", "2019-03-02 10:11:12", "not a timestamp"),
        ("vendor_id", "abc\\", "backslash at the end"),
        ("vendor_id", "\\xff\\xfe", "invalid UTF-8"),
        ("request", '{"a": "\\377"}', "invalid UTF-8"),
    ],
)
def test_bad_value_names_table_column_and_line(tmp_path, plain_text, column, raw, message):
    text, line = edit_row(plain_text, "public.rn_requests", MARKER, column, raw)
    with pytest.raises(DumpFormatError, match=message) as info:
        parse_text(tmp_path, text)
    assert (info.value.table, info.value.line) == ("public.rn_requests", line)
    assert f"line {line}" in str(info.value) and column in str(info.value)


def test_wrong_field_count_names_the_line(tmp_path, plain_text):
    text, line = edit_row(plain_text, "public.rn_requests", MARKER, "uuid", f"{MARKER}\textra")
    with pytest.raises(DumpFormatError, match="fields") as info:
        parse_text(tmp_path, text)
    assert (info.value.table, info.value.line) == ("public.rn_requests", line)


def test_missing_required_column_names_the_copy_header(tmp_path, plain_text):
    start, _ = copy_block(plain_text, "public.rn_requests")
    header_end = plain_text.index("\n", start)
    text = (
        plain_text[:start]
        + plain_text[start:header_end].replace("patient_id", "patient_no")
        + plain_text[header_end:]
    )
    with pytest.raises(DumpFormatError, match="patient_id") as info:
        parse_text(tmp_path, text)
    header_line = text.count("\n", 0, start) + 1
    assert (info.value.table, info.value.line) == ("public.rn_requests", header_line)


def test_truncated_copy_block_is_an_error(tmp_path, plain_text):
    start, _ = copy_block(plain_text, "public.rn_requests")
    text = plain_text[: plain_text.index(MARKER, start)]
    with pytest.raises(DumpFormatError, match="truncated") as info:
        parse_text(tmp_path, text)
    header_line = text.count("\n", 0, start) + 1
    assert (info.value.table, info.value.line) == ("public.rn_requests", header_line)


def test_unrelated_tables_and_columns_are_not_decoded(tmp_path, plain_text, source):
    """Garbage in what was not asked for (another table, a PII column) must not matter."""
    text, _ = edit_row(plain_text, "public.rn_requests", MARKER, "free_text", "\\xff\\")
    start, _ = copy_block(text, "public.sessions")
    row = text.index("\n", start) + 1
    text = text[:row] + "only one field \\\n" + text[row:]
    data = text.encode("utf-8").replace(b"tok17\t", b"tok17\xff\xfe\t")
    check_requests(parse_text(tmp_path, data)["rn_requests"], source["rn_requests"])


@pytest.mark.parametrize("value", ["raw\rcarriage return", "long " * 1_000_000])
def test_raw_carriage_return_and_huge_values_stay_exact(tmp_path, plain_text, source, value):
    """A raw CR inside a value (only \\n ends a row) and a value larger than Arrow's CSV block."""
    text, _ = edit_row(plain_text, "public.rn_requests", MARKER, "vendor_id", value)
    rows = parse_text(tmp_path, text)["rn_requests"]
    expected = [
        dict(row, vendor_id=value) if row["uuid"] == MARKER else row
        for row in source["rn_requests"]
    ]
    check_requests(rows, expected)


@pytest.mark.parametrize("fmt", ["inserts", "column_inserts"])
def test_insert_errors_name_the_row_line(tmp_path, dumps, fmt):
    text = dumps[fmt].read_bytes().decode("utf-8")
    at = text.index(f"'{MARKER}'")
    row_start = 1 + max(
        text.rfind("\nINSERT INTO public.rn_requests", 0, at), text.rfind("\n\t(", 0, at)
    )
    line = text.count("\n", 0, row_start) + 1
    with pytest.raises(DumpFormatError, match="values") as info:
        parse_text(tmp_path, text.replace(f"'{MARKER}', ", "", 1))
    assert (info.value.table, info.value.line) == ("public.rn_requests", line)
    bad_id = re.sub(rf"('{MARKER}', 0\.00, )(-?\d+)", r"\1'x\2'", text, count=1)
    assert bad_id != text
    with pytest.raises(DumpFormatError, match="not a 64-bit integer") as info:
        parse_text(tmp_path, bad_id)
    assert (info.value.table, info.value.line) == ("public.rn_requests", line)


def test_custom_format_bad_value_names_the_row(tmp_path, dumps, plain_text):
    start, columns = copy_block(plain_text, "public.rn_requests")
    rows = plain_text[plain_text.index("\n", start) + 1 :].split("\n")
    row_number = next(i for i, row in enumerate(rows) if MARKER in row) + 1
    data = dumps["custom_uncompressed"].read_bytes()
    assert data.count(MARKER.encode()) == 1
    edited = tmp_path / "edited.dump"
    edited.write_bytes(data.replace(MARKER.encode(), MARKER.encode()[:-1] + b"\\"))
    with pytest.raises(DumpFormatError, match="backslash") as info:
        collect(edited)
    assert (info.value.table, info.value.line) == ("public.rn_requests", row_number)
    assert f"row {row_number}" in str(info.value)


@pytest.mark.parametrize("fmt", ["custom", "custom_uncompressed", "gz"])
def test_truncated_archives_are_errors(tmp_path, dumps, fmt):
    data = dumps[fmt].read_bytes()
    cut = data.index(MARKER.encode()) if fmt == "custom_uncompressed" else len(data) * 2 // 3
    edited = tmp_path / "cut"
    edited.write_bytes(data[:cut])
    with pytest.raises(DumpFormatError, match="truncated"):
        collect(edited)
