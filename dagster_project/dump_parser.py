"""Stream the tables the pipeline needs out of a `pg_dump` file, as typed Arrow batches.

Reads plain dumps (COPY blocks, or `--inserts` / `--column-inserts` statements), their gzip,
and custom-format archives (`-Fc`), without loading the file or any unrelated table into
memory (SOURCE_FORMAT.md section 1). Only the columns a `TableSpec` names are decoded, so PII
columns of the dump never leave this module. Unrelated COPY blocks are skipped with
`bytes.find` over large chunks. Wanted COPY text is split into columns by Arrow's CSV reader
(TAB-separated, no quoting) and decoded with Arrow compute; only values with escapes other
than an escaped backslash are visited in Python.

pgdumplib is not used for `-Fc`: it copies every table's data into temporary files and reads
each one whole into memory, strips trailing tabs off rows, and rejects archives of PostgreSQL
16 and later. The container format is small enough to read here, block by block.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dagster_project.schema import TIMESTAMP, TableSpec

__all__ = ["DumpFormatError", "detect_format", "stream_tables"]

_CHUNK = 8 << 20  # bytes read at a time
_MAX_PENDING = 256 << 20  # longest statement or COPY line accepted (bounds memory)
_MARKER_HOPS = 64  # backslashes visited in Python before one in 256 bytes is "dense"
_NUMPY_SPAN = 1 << 20  # bytes compared at a time when counting lines


class DumpFormatError(ValueError):
    """A dump that cannot be read exactly. Names the file, the table and the 1-based line of
    the dump (for custom-format archives, the row number within the table's data)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        table: str | None = None,
        line: int | None = None,
        unit: str = "line",
    ) -> None:
        self.path = str(path)
        self.table = table
        self.line = line
        where = "".join(
            [
                f", table {table}" if table is not None else "",
                f", {unit} {line}" if line is not None else "",
            ]
        )
        super().__init__(f"{self.path}{where}: {reason}")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The dump's format by its magic bytes (never its suffix): "plain", "plain.gz" or "custom"."""
    if Path(path).is_dir():
        raise DumpFormatError(
            path, "directory-format dumps (-Fd) are not supported; use -Fp or -Fc"
        )
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PGDMP"):
        return "custom"
    if head.startswith(b"\x1f\x8b"):
        with gzip.open(path, "rb") as inner:
            if _read(inner, 5, path) == b"PGDMP":
                raise DumpFormatError(path, "a gzip-compressed custom-format dump is not supported")
        return "plain.gz"
    if head[257:262] == b"ustar":
        raise DumpFormatError(path, "tar-format dumps (-Ft) are not supported; use -Fp or -Fc")
    return "plain"


def stream_tables(
    path: str | os.PathLike[str],
    specs: Sequence[TableSpec],
    batch_rows: int = 50_000,
    *,
    require_all: bool = False,
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Yield (table name, batch) for the requested tables, in dump order, streaming.

    Each batch has at most `batch_rows` rows and exactly `spec.columns` (an optional column
    the dump lacks is all null). A table with no rows yields nothing. With `require_all`, a
    table that the dump never defines raises DumpFormatError once the whole file was read.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    wanted = {(spec.schema, spec.name): spec for spec in specs}
    if len({spec.name for spec in specs}) != len(specs):
        raise ValueError("two specs share a table name: the yielded names would be ambiguous")
    for spec in specs:
        unsupported = [name for name, kind in spec.columns.items() if kind not in _CONVERTERS]
        if unsupported:
            raise ValueError(f"table {spec.name}: unsupported column types for {unsupported}")
    seen: set[tuple[str, str]] = set()
    fmt = detect_format(path)
    if fmt == "custom":
        with open(path, "rb") as handle:
            yield from _CustomArchive(handle, path, wanted, batch_rows, seen).tables()
    else:
        opener = gzip.open if fmt == "plain.gz" else open
        with opener(path, "rb") as handle:
            yield from _PlainDump(handle, path, wanted, batch_rows, seen).tables()
    if require_all:
        missing = [key for key in wanted if key not in seen]
        if missing:
            raise DumpFormatError(path, "required table not found in the dump", _label(missing[0]))


# --- values: COPY / SQL escapes and typed Arrow conversion ------------------------------------


class _BadValue(Exception):
    """A value that cannot be decoded; `index` is its row among the values converted."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


_SIMPLE_ESCAPES = {
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
}
_SIMPLE_COPY_ESCAPES = [(b"\\" + letter, char) for letter, char in _SIMPLE_ESCAPES.items()]
# The COPY escapes left once `\\\\` and the one-letter ones are replaced (_unescape_copy).
_COPY_ESCAPE = re.compile(
    rb"\\(?:(?P<octal>[0-7]{1,3})|x(?P<hex>[0-9A-Fa-f]{1,2})|(?P<other>.))", re.S
)
# Escapes of E'...' strings (and of '...' when standard_conforming_strings is off).
_SQL_ESCAPE = re.compile(
    rb"\\(?:(?P<octal>[0-7]{1,3})|x(?P<hex>[0-9A-Fa-f]{1,2})"
    rb"|u(?P<unicode>[0-9A-Fa-f]{4})|U(?P<unicode8>[0-9A-Fa-f]{8})"
    rb"|(?P<simple>[bfnrt])|(?P<other>.))",
    re.S,
)


def _replace_escape(match: re.Match[bytes]) -> bytes:
    kind = match.lastgroup
    text = match.group(kind)
    if kind == "octal":
        return bytes([int(text, 8) & 0xFF])
    if kind == "hex":
        return bytes([int(text, 16)])
    if kind in ("unicode", "unicode8"):
        try:
            return chr(int(text, 16)).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            raise ValueError(f"invalid Unicode escape {match.group().decode()}") from None
    if kind == "simple":
        return _SIMPLE_ESCAPES[text]
    return text


_BACKSLASH_N = pa.scalar(b"\\N", pa.binary())
_NULL_BINARY = pa.scalar(None, pa.binary())
_EMPTY_BINARY = pa.scalar(b"", pa.binary())
_BACKSLASH = re.compile(rb"\\")


def _has_backslash(column: pa.BinaryArray) -> bool:
    """Whether any value may hold a backslash: one scan of the data buffer, never copied
    (bytes outside the array's slice can only give a false positive)."""
    data = column.buffers()[2]
    return data is not None and _BACKSLASH.search(memoryview(data)) is not None


def _decode_copy_column(column: pa.BinaryArray) -> pa.BinaryArray:
    """COPY text fields to bytes: `\\N` is NULL, escapes decoded (PostgreSQL's rules).

    Vectorized. Most escapes are escaped backslashes (JSON's own `\"` arrives as `\\"`):
    fields holding only those are decoded by one Arrow replace; only fields with other
    escapes are visited in Python.
    """
    nulls = pc.equal(column, _BACKSLASH_N)
    if not _has_backslash(column):
        return pc.if_else(nulls, _NULL_BINARY, column)
    others = _other_escapes(column, nulls)
    decoded = pc.replace_substring(column, "\\\\", "\\")
    if others is not None:
        indices = pc.indices_nonzero(others)
        raws = column.take(indices).to_pylist()
        values = [_unescape_copy(raw, i) for raw, i in zip(raws, indices.to_pylist(), strict=True)]
        decoded = pc.replace_with_mask(decoded, others, pa.array(values, pa.binary()))
    return pc.if_else(nulls, _NULL_BINARY, decoded)


def _other_escapes(column: pa.BinaryArray, nulls: pa.BooleanArray) -> pa.BooleanArray | None:
    """Which non-NULL fields hold an escape other than an escaped backslash; None when no
    field does (checked on the whole column first, so the per-field search is rare)."""
    unescaped = pc.replace_substring(pc.if_else(nulls, _EMPTY_BINARY, column), "\\\\", "")
    if not _has_backslash(unescaped):
        return None
    return pc.match_substring(unescaped, "\\")


def _unescape_copy(raw: bytes, index: int) -> bytes:
    """Decode the escapes of one COPY field (`index`: its row, for the error).

    Split on the escaped backslashes, every backslash left starts an escape, so the
    one-letter escapes are replaced independently and a regex handles the rest (octal, hex,
    any other character).
    """
    if (len(raw) - len(raw.rstrip(b"\\"))) % 2:
        raise _BadValue(index, "backslash at the end of a field (bad escape)")
    parts = raw.split(b"\\\\")
    for i in [i for i, part in enumerate(parts) if b"\\" in part]:
        part = parts[i]
        for escape, char in _SIMPLE_COPY_ESCAPES:
            part = part.replace(escape, char)
        parts[i] = _COPY_ESCAPE.sub(_replace_escape, part) if b"\\" in part else part
    return b"\\".join(parts)


def _first_bad(column: pa.Array, is_good: Callable[[bytes], bool]) -> tuple[int, bytes]:
    """The first non-null value failing `is_good` (for the error after a vectorized cast)."""
    for index, value in enumerate(column.to_pylist()):
        if value is not None and not is_good(value):
            return index, value
    raise AssertionError("a vectorized cast failed but every value is valid")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _to_string(column: pa.BinaryArray) -> pa.Array:
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        index, _ = _first_bad(column, _is_utf8)
        raise _BadValue(index, "invalid UTF-8") from None


_INT64 = re.compile(rb"-?[0-9]{1,19}")


def _is_int64(value: bytes) -> bool:
    return bool(_INT64.fullmatch(value)) and -(2**63) <= int(value) < 2**63


def _to_int64(column: pa.BinaryArray) -> pa.Array:
    try:
        return column.cast(pa.int64())
    except pa.ArrowInvalid:
        index, value = _first_bad(column, _is_int64)
        raise _BadValue(index, f"{_shown(value)} is not a 64-bit integer") from None


_TRUE, _FALSE = pa.array(["t", "true"]), pa.array(["f", "false"])


def _to_bool(column: pa.BinaryArray) -> pa.Array:
    lower = pc.ascii_lower(_to_string(column))
    true, false = pc.is_in(lower, _TRUE), pc.is_in(lower, _FALSE)
    if pc.any(pc.and_not(pc.is_valid(lower), pc.or_(true, false))).as_py():
        index, value = _first_bad(column, lambda v: v.lower() in (b"t", b"true", b"f", b"false"))
        raise _BadValue(index, f"{_shown(value)} is not a boolean")
    return pc.if_else(pc.is_valid(lower), true, pa.scalar(None, pa.bool_()))


def _to_timestamp(column: pa.BinaryArray) -> pa.Array:
    """PostgreSQL's timestamptz text (any UTC offset, also with seconds) to UTC microseconds."""
    try:
        return _to_string(column).cast(TIMESTAMP)
    except pa.ArrowInvalid:  # offsets with seconds (before 1900), or bad values
        values = column.to_pylist()
        return pa.array(
            [None if v is None else _timestamptz(v, i) for i, v in enumerate(values)], TIMESTAMP
        )


def _timestamptz(value: bytes, index: int) -> dt.datetime:
    try:
        stamp = dt.datetime.fromisoformat(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise _BadValue(
            index, f"{_shown(value)} is not a timestamp with time zone (years 1-9999, no BC)"
        )
    return stamp


def _shown(value: bytes) -> str:
    """A short rendering of a bad non-text value for an error message."""
    return repr(value[:40].decode("utf-8", "replace"))


_CONVERTERS: dict[pa.DataType, Callable[[pa.BinaryArray], pa.Array]] = {
    pa.string(): _to_string,
    pa.int64(): _to_int64,
    pa.bool_(): _to_bool,
    TIMESTAMP: _to_timestamp,
}


# --- binding a table spec to the dump's columns, and building batches ---------------------------


class _Binding:
    """Where a spec's columns sit in the dump's rows, and how to pick them out of a row."""

    def __init__(
        self, spec: TableSpec, columns: Sequence[str | None], fail: Callable[[str], Exception]
    ):
        index = {name: i for i, name in enumerate(columns)}
        missing = [name for name in spec.required if name not in index]
        if missing:
            raise fail(f"required column(s) {', '.join(missing)} missing from the dump")
        present = [name for name in spec.columns if name in index]
        slot = {name: i for i, name in enumerate(present)}
        self.spec = spec
        self.key = (spec.schema, spec.name)
        self.width = len(columns)  # number of fields of the dump's rows
        # per spec column: its index among the picked fields, None when the dump lacks it
        self.slots = tuple(slot.get(name) for name in spec.columns)
        positions = [index[name] for name in present]
        self.pick: Callable[[Sequence[bytes | None]], tuple[bytes | None, ...]] = (
            itemgetter(*positions) if len(positions) > 1 else lambda row: (row[positions[0]],)
        )
        # Arrow's CSV reader splits COPY text in C++: TAB-separated, no quoting, every field
        # kept as raw bytes (escapes and \N are decoded afterwards), only wanted columns built.
        names = [f"f{i}" for i in range(self.width)]
        self.csv_options = (
            pacsv.ReadOptions(column_names=names, block_size=_CSV_BLOCK, use_threads=False),
            _CSV_PARSE,
            pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.binary()),
                include_columns=[names[position] for position in positions],
                null_values=[],
                strings_can_be_null=False,
                check_utf8=False,
            ),
        )

    def copy_fields(
        self, region: bytes, count: int, first: int, fail: Callable[[str, int], Exception]
    ) -> list[pa.Array]:
        """The wanted raw fields of `count` COPY lines (`region` ends with a newline), one
        binary array per picked column. `first` is the line (or row) number of the first."""
        # Arrow would also end rows at a CR and skip a leading BOM: such regions, and those
        # Arrow rejects (a malformed row), take the exact path below, which names the line.
        if b"\r" not in region and not region.startswith(b"\xef\xbb\xbf"):
            try:
                table = pacsv.read_csv(pa.py_buffer(region), *self.csv_options)
            except pa.ArrowInvalid:
                table = None
            if table is not None and table.num_rows == count:
                return [column.combine_chunks() for column in table.columns]
        rows = [line.split(b"\t") for line in region[:-1].split(b"\n")]
        if set(map(len, rows)) != {self.width}:
            index = next(i for i, row in enumerate(rows) if len(row) != self.width)
            raise fail(f"row has {len(rows[index])} fields, COPY names {self.width}", first + index)
        return [pa.array(column, pa.binary()) for column in zip(*map(self.pick, rows), strict=True)]


_CSV_BLOCK = 4 << 20
_CSV_PARSE = pacsv.ParseOptions(
    delimiter="\t",
    quote_char=False,
    double_quote=False,
    escape_char=False,
    newlines_in_values=False,
    ignore_empty_lines=False,
)
_INSERT_GROUP = 10_000  # INSERT rows converted to Arrow at a time


class _Batches:
    """Converts one table's wanted fields to typed batches; yields (table, batch) of at most
    `batch_rows` rows. `fail(reason, line)` builds the error for a bad row at `line` (the row
    number for -Fc); `copy_text` says whether fields still hold COPY escapes and `\\N`."""

    def __init__(
        self,
        binding: _Binding,
        batch_rows: int,
        fail: Callable[[str, int], Exception],
        copy_text: bool,
    ) -> None:
        self.binding = binding
        self.batch_rows = batch_rows
        self.fail = fail
        self.copy_text = copy_text
        self.schema = pa.schema(list(binding.spec.columns.items()))
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows: list[tuple[bytes | None, ...]] = []  # INSERT rows not yet converted
        self.row_lines: list[int] = []

    def add_copy(
        self, region: bytes, count: int, first: int
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Add `count` COPY lines (`region` ends with a newline); `first`: the first's number."""
        if count:
            columns = self.binding.copy_fields(region, count, first, self.fail)
            yield from self.add(columns, range(first, first + count))

    def add_row(
        self, row: tuple[bytes | None, ...], line: int
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Add the picked values of one INSERT row (decoded already, NULL as None)."""
        self.rows.append(row)
        self.row_lines.append(line)
        if len(self.rows) >= _INSERT_GROUP:
            yield from self._add_rows()

    def _add_rows(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        if self.rows:
            columns = [pa.array(column, pa.binary()) for column in zip(*self.rows, strict=True)]
            lines, self.rows, self.row_lines = self.row_lines, [], []
            yield from self.add(columns, lines)

    def add(
        self, columns: list[pa.Array], lines: Sequence[int]
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Add raw binary columns (in picked order); `lines` gives each row's line number."""
        count = len(lines)
        arrays = []
        for (name, kind), slot in zip(
            self.binding.spec.columns.items(), self.binding.slots, strict=True
        ):
            try:
                if slot is None:
                    arrays.append(pa.nulls(count, kind))
                elif self.copy_text:
                    arrays.append(_CONVERTERS[kind](_decode_copy_column(columns[slot])))
                else:
                    arrays.append(_CONVERTERS[kind](columns[slot]))
            except _BadValue as bad:
                raise self.fail(f"column {name}: {bad.reason}", lines[bad.index]) from None
        self.pending.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.pending_rows += count
        if self.pending_rows >= self.batch_rows:
            yield from self._emit(final=False)

    def finish(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        yield from self._add_rows()
        yield from self._emit(final=True)

    def _emit(self, final: bool) -> Iterator[tuple[str, pa.RecordBatch]]:
        table = pa.Table.from_batches(self.pending, self.schema)
        size = self.batch_rows
        ready = table.num_rows if final else table.num_rows // size * size
        for start in range(0, ready, size):
            yield self.binding.spec.name, table.slice(start, size).combine_chunks().to_batches()[0]
        rest = table.slice(ready)
        self.pending, self.pending_rows = rest.to_batches(), rest.num_rows


# --- SQL of plain dumps -------------------------------------------------------------------------

_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_NAME = rb"(?P<name>" + _IDENT + rb"(?:\s*\.\s*" + _IDENT + rb")?)"
_IDENT_LIST = rb"(?P<columns>" + _IDENT + rb"(?:\s*,\s*" + _IDENT + rb")*)"
_IDENTS = re.compile(_IDENT)

_TAG = rb"(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?"
# One SQL statement up to its `;`, honouring quotes, dollar quotes and comments. Possessive, so
# a statement cut by the end of the buffer fails fast instead of backtracking.
_STATEMENT = re.compile(
    rb"(?:[^;'\"$-]++|'[^']*+'|\"[^\"]*+\"|--[^\n]*+|-"
    rb"|\$(" + _TAG + rb")\$.*?\$\1\$|\$(?!" + _TAG + rb"\$))*+;",
    re.S,
)
# Whitespace, comment lines and psql meta-commands (\restrict, \connect) between statements.
_GAP = re.compile(rb"(?:[ \t\r\n]++|--[^\n]*+\n|\\[^\n]*+\n)*+")

_COPY = re.compile(
    rb"COPY\s+" + _NAME + rb"\s*(?:\(\s*" + _IDENT_LIST + rb"\s*\))?\s*FROM\s+stdin\s*;", re.I
)
_INSERT = re.compile(
    rb"INSERT\s+INTO\s+" + _NAME + rb"\s*(?:\(\s*" + _IDENT_LIST + rb"\s*\))?"
    rb"\s*(?:OVERRIDING\s+(?:SYSTEM|USER)\s+VALUE\s+)?VALUES\s*",
    re.I,
)
_CREATE_TABLE = re.compile(rb"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+" + _NAME + rb"\s*\(", re.I)
_SET = re.compile(rb"SET\s+(?P<setting>\w+)\s*(?:=|TO)\s*(?P<value>[^;]*);", re.I)

_VALUE = re.compile(
    rb"\s*(?:(?P<prefix>[A-Za-z])?'(?P<quoted>[^']*+(?:''[^']*+)*+)'|(?P<bare>[^\s,()']++))"
    rb"\s*(?P<end>[,)])"
)
_DEFAULT = object()  # the DEFAULT keyword: --inserts writes it for generated columns
_KEYWORD_VALUES = {b"NULL": None, b"DEFAULT": _DEFAULT}
_ROW_START = re.compile(rb"\s*\(")
_ROW_END = re.compile(rb"\s*(?P<sep>[,;])")
_TABLE_ITEM = re.compile(rb"'[^']*+'|\"(?:[^\"]|\"\")*+\"|[(),]|[^'\"(),]++")
_GENERATED = re.compile(rb"\bGENERATED\s+ALWAYS\s+AS\s*\(", re.I)
_NOT_COLUMNS = {"constraint", "check", "unique", "primary", "foreign", "exclude", "like"}


def _identifier(raw: bytes) -> str:
    if raw.startswith(b'"'):
        return raw[1:-1].replace(b'""', b'"').decode("utf-8")
    return raw.decode("utf-8").lower()


def _identifiers(raw: bytes) -> list[str]:
    return [_identifier(part) for part in _IDENTS.findall(raw)]


def _qualified(raw: bytes, default_schema: str) -> tuple[str, str]:
    parts = _identifiers(raw)
    return (parts[0], parts[1]) if len(parts) == 2 else (default_schema, parts[0])


def _create_table_columns(statement: bytes, body_start: int) -> list[str | None]:
    """Column names of a CREATE TABLE in order, table constraints left out. A generated column
    is None: its values are not in the dump (--inserts writes DEFAULT in its place)."""
    items: list[bytes] = []
    current: list[bytes] = []
    depth = 1
    for token in _TABLE_ITEM.finditer(statement, body_start):
        text = token.group()
        depth += {b"(": 1, b")": -1}.get(text, 0)
        if depth == 0:
            break
        if text == b"," and depth == 1:
            items.append(b"".join(current).strip())
            current = []
        else:
            current.append(text)
    items.append(b"".join(current).strip())
    columns: list[str | None] = []
    for item in items:
        first = _IDENTS.match(item)
        name = _identifier(first.group()) if first else None
        if name is not None and (item.startswith(b'"') or name not in _NOT_COLUMNS):
            columns.append(None if _GENERATED.search(item) else name)
    return columns


def _check_encoding(value: str, fail: Callable[[str], Exception]) -> None:
    if value.strip().strip("'\"").upper().replace("-", "") not in ("UTF8", "SQL_ASCII"):
        raise fail(f"dump encoding {value.strip()} is not supported (UTF8 only)")


def _read(handle: BinaryIO, size: int, path: str | os.PathLike[str]) -> bytes:
    """Read from a plain or gzip file; a damaged gzip stream becomes a DumpFormatError."""
    try:
        return handle.read(size)
    except (EOFError, OSError, zlib.error) as exc:
        raise DumpFormatError(path, f"corrupt or truncated dump data ({exc})") from None


class _PlainDump:
    """A plain SQL dump, read statement by statement through a sliding buffer."""

    def __init__(
        self,
        handle: BinaryIO,
        path: str | os.PathLike[str],
        wanted: dict[tuple[str, str], TableSpec],
        batch_rows: int,
        seen: set[tuple[str, str]],
    ) -> None:
        self.handle, self.path, self.wanted = handle, path, wanted
        self.batch_rows, self.seen = batch_rows, seen
        self.buf, self.pos, self.line, self.eof = b"", 0, 1, False
        self.schema = "public"  # for unqualified names (SET search_path of old pg_dump)
        self.standard_strings = True
        self.create_columns: dict[tuple[str, str], list[str | None]] = {}
        self.inserts: _Batches | None = None  # rows of consecutive INSERTs into one table
        self.bindings: dict[tuple[tuple[str, str], bytes | None], _Binding] = {}

    def _error(
        self, reason: str, table: str | None = None, line: int | None = None
    ) -> DumpFormatError:
        return DumpFormatError(self.path, reason, table, line)

    def _fill(self) -> bool:
        """Append the next chunk to the buffer; False at end of file."""
        if self.eof:
            return False
        chunk = _read(self.handle, _CHUNK, self.path)
        if not chunk:
            self.eof = True
            return False
        if len(self.buf) - self.pos > _MAX_PENDING:
            raise self._error(
                f"a statement or row longer than {_MAX_PENDING >> 20} MB (unbalanced quote?)",
                line=self.line,
            )
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def _advance(self, end: int, newlines: int | None = None) -> None:
        """Move to `end`, counting lines (`newlines`: how many, when already counted)."""
        self.line += _count_newlines(self.buf, self.pos, end) if newlines is None else newlines
        self.pos = end

    def _at_statement(self) -> bool:
        """Skip to the start of the next statement; False at the end of the file."""
        while True:
            self._advance(_GAP.match(self.buf, self.pos).end())
            if self.buf.find(b"\n", self.pos) != -1:
                return True
            if not self._fill():
                rest = self.buf[self.pos :]
                return bool(rest.strip()) and not rest.startswith((b"--", b"\\"))

    def tables(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        while self._at_statement():
            line = self.line
            while (match := _STATEMENT.match(self.buf, self.pos)) is None:
                if not self._fill():
                    raise self._error("unterminated SQL statement (truncated dump?)", line=line)
            statement = match.group()
            self._advance(match.end())
            insert = _INSERT.match(statement)
            if self.inserts and (insert is None or self._key(insert) != self.inserts.binding.key):
                yield from self._finish_inserts()
            if insert:
                yield from self._insert(insert, statement, line)
            elif copy := _COPY.match(statement):
                yield from self._copy(copy, line)
            elif create := _CREATE_TABLE.match(statement):
                key = self._key(create)
                if key in self.wanted:
                    self.seen.add(key)
                    self.create_columns[key] = _create_table_columns(statement, create.end())
            elif setting := _SET.match(statement):
                self._set(setting, line)
        yield from self._finish_inserts()

    def _key(self, match: re.Match[bytes]) -> tuple[str, str]:
        return _qualified(match.group("name"), self.schema)

    def _set(self, setting: re.Match[bytes], line: int) -> None:
        name = setting.group("setting").lower()
        value = setting.group("value").decode("utf-8", "replace")
        if name == b"search_path":
            first = _IDENTS.search(setting.group("value"))
            if first:
                self.schema = _identifier(first.group())
        elif name == b"standard_conforming_strings":
            self.standard_strings = value.strip().strip("'").lower() in ("on", "true")
        elif name == b"client_encoding":
            _check_encoding(value, lambda reason: self._error(reason, line=line))

    def _binding(self, key: tuple[str, str], listed: bytes | None, line: int) -> _Binding:
        """The wanted table's columns from the statement's list, else from its CREATE TABLE."""
        if (key, listed) not in self.bindings:
            table = _label(key)
            if listed is None and key not in self.create_columns:
                raise self._error("data without a column list and no CREATE TABLE", table, line)
            columns = _identifiers(listed) if listed is not None else self.create_columns[key]
            fail = lambda reason: self._error(reason, table, line)  # noqa: E731
            self.bindings[(key, listed)] = _Binding(self.wanted[key], columns, fail)
        return self.bindings[(key, listed)]

    def _batches(self, binding: _Binding, copy_text: bool) -> _Batches:
        table = _label(binding.key)
        fail = lambda reason, line: self._error(reason, table, line)  # noqa: E731
        return _Batches(binding, self.batch_rows, fail, copy_text)

    def _copy(self, copy: re.Match[bytes], line: int) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Decode a COPY block of a wanted table; skip any other with bytes.find."""
        key = self._key(copy)
        batches = None
        if key in self.wanted:
            self.seen.add(key)
            batches = self._batches(self._binding(key, copy.group("columns"), line), True)
        table = _label(key)
        while (end_of_line := self.buf.find(b"\n", self.pos)) == -1:
            if not self._fill():
                raise self._error("COPY header without data (truncated dump)", table, line)
        self._advance(end_of_line + 1)
        while True:
            buf, pos = self.buf, self.pos
            end = pos if self.eof and buf[pos:] == b"\\." else _end_marker(buf, pos)
            stop = end if end != -1 else max(buf.rfind(b"\n", pos) + 1, pos)
            count = _count_newlines(buf, pos, stop)
            if batches:
                yield from batches.add_copy(buf[pos:stop], count, self.line)
            self._advance(stop, count)
            if end != -1:
                self._advance(min(stop + 3, len(self.buf)))
                if batches:
                    yield from batches.finish()
                return
            if not self._fill() and self.buf[self.pos :] != b"\\.":
                raise self._error(
                    "COPY data has no terminating \\. line before the end of the file "
                    f"(line {self.line}): truncated dump",
                    table,
                    line,
                )

    def _insert(
        self, insert: re.Match[bytes], statement: bytes, line: int
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        key = self._key(insert)
        if key not in self.wanted:
            return
        self.seen.add(key)
        binding = self._binding(key, insert.group("columns"), line)
        if self.inserts and self.inserts.binding.slots != binding.slots:
            yield from self._finish_inserts()
        if not self.inserts:
            self.inserts = self._batches(binding, copy_text=False)
        for row, row_line in self._insert_rows(statement, insert.end(), binding, line):
            yield from self.inserts.add_row(row, row_line)

    def _insert_rows(
        self, statement: bytes, pos: int, binding: _Binding, line: int
    ) -> Iterator[tuple[tuple[bytes | None, ...], int]]:
        """The wanted values of each row of an INSERT, with the line where the row starts."""
        table, width = _label(binding.key), binding.width
        counted = 0  # newlines before this offset of the statement are in `line`
        while True:
            opening = _ROW_START.match(statement, pos)
            if opening is None:
                raise self._error("malformed INSERT statement", table, line)
            line += statement.count(b"\n", counted, opening.end())
            counted = opening.end()
            values, end = self._insert_values(statement, opening.end(), table, line)
            if len(values) != width:
                raise self._error(
                    f"row has {len(values)} values, the table has {width} columns", table, line
                )
            picked = binding.pick(values)
            if _DEFAULT in picked:
                raise self._error("DEFAULT instead of a value of a wanted column", table, line)
            yield picked, line
            separator = _ROW_END.match(statement, end)
            if separator is None:
                raise self._error("malformed INSERT statement", table, line)
            if separator.group("sep") == b";":
                return
            pos = separator.end()

    def _insert_values(
        self, statement: bytes, pos: int, table: str, line: int
    ) -> tuple[list[object], int]:
        """The values of one parenthesized row (bytes, None or _DEFAULT), and the offset
        after its `)`."""
        values: list[object] = []
        while True:
            token = _VALUE.match(statement, pos)
            if token is None:
                raise self._error("malformed value in INSERT statement", table, line)
            quoted = token.group("quoted")
            if quoted is not None:
                text = quoted.replace(b"''", b"'")
                prefix = (token.group("prefix") or b"").upper()
                if prefix == b"E" or (not self.standard_strings and b"\\" in text):
                    try:
                        text = _SQL_ESCAPE.sub(_replace_escape, text)
                    except ValueError as exc:
                        raise self._error(str(exc), table, line) from None
                values.append(text)
            else:
                bare = token.group("bare")
                values.append(_KEYWORD_VALUES.get(bare.upper(), bare))
            pos = token.end()
            if token.group("end") == b")":
                return values, pos

    def _finish_inserts(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        if self.inserts:
            batches, self.inserts = self.inserts, None
            yield from batches.finish()


# --- custom-format archives (pg_dump -Fc) --------------------------------------------------------

_BLOCK_DATA, _BLOCK_BLOBS = 1, 3
_COMPRESSION_NONE, _COMPRESSION_GZIP = 0, 1
_DATA_STATES_WITH_DATA = (1, 2)  # offset not set / offset set (3: no data)


@dataclass(frozen=True)
class _TocEntry:
    desc: str
    schema: str
    table: str
    copy: str
    has_data: bool


class _CustomArchive:
    """A custom-format archive: header, table of contents, then data blocks in file order.

    Blocks are read in order rather than by their offsets, so archives written to a pipe
    (offsets unset) read the same way; unwanted blocks are skipped with seeks.
    """

    def __init__(
        self,
        handle: BinaryIO,
        path: str | os.PathLike[str],
        wanted: dict[tuple[str, str], TableSpec],
        batch_rows: int,
        seen: set[tuple[str, str]],
    ) -> None:
        self.handle, self.path, self.wanted = handle, path, wanted
        self.batch_rows, self.seen = batch_rows, seen
        self.size = os.fstat(handle.fileno()).st_size
        self.int_size = self.off_size = 4

    def _error(
        self, reason: str, table: str | None = None, row: int | None = None
    ) -> DumpFormatError:
        return DumpFormatError(self.path, reason, table, row, unit="row")

    def _truncated(self) -> DumpFormatError:
        return self._error(f"archive ends early at byte {self.handle.tell()} (truncated dump)")

    def _read(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise self._truncated()
        return data

    def _int(self) -> int:
        raw = self._read(1 + self.int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def _str(self) -> str | None:
        size = self._int()
        return None if size < 0 else self._read(size).decode("utf-8")

    def _header(self) -> tuple[tuple[int, int, int], int]:
        magic, vmaj, vmin, vrev, self.int_size, self.off_size, fmt = (
            self._read(5),
            *self._read(6),
        )
        version = (vmaj, vmin, vrev)
        if magic != b"PGDMP" or fmt != 1:
            raise self._error("not a custom-format archive")
        if not (1, 12, 0) <= version < (1, 17, 0):
            raise self._error(f"unsupported archive version {vmaj}.{vmin}.{vrev}")
        if version >= (1, 15, 0):
            compression = self._read(1)[0]
        else:
            compression = _COMPRESSION_GZIP if self._int() != 0 else _COMPRESSION_NONE
        for _ in range(7):  # creation time
            self._int()
        for _ in range(3):  # database name, server version, pg_dump version
            self._str()
        return version, compression

    def _toc(self, version: tuple[int, int, int]) -> dict[int, _TocEntry]:
        """Table and table-data entries by dump id (checks the encoding on the way)."""
        entries = {}
        for _ in range(self._int()):
            dump_id = self._int()
            self._int()  # had dumper
            _table_oid, _oid = self._str(), self._str()
            tag, desc = self._str() or "", self._str() or ""
            self._int()  # section
            definition, _drop, copy, namespace, _tablespace = (self._str() for _ in range(5))
            if version >= (1, 14, 0):
                self._str()  # table access method
            if version >= (1, 16, 0):
                self._int()  # relkind
            _owner, _with_oids = self._str(), self._str()
            while self._str() is not None:  # dependencies
                pass
            data_state = self._read(1 + self.off_size)[0]
            if desc == "ENCODING" and definition:
                setting = _SET.search(definition.encode("utf-8"))
                if setting:
                    _check_encoding(setting.group("value").decode(), self._error)
            if desc in ("TABLE", "TABLE DATA"):
                has_data = data_state in _DATA_STATES_WITH_DATA
                entries[dump_id] = _TocEntry(desc, namespace or "", tag, copy or "", has_data)
        return entries

    def _chunks(self) -> Iterator[bytes]:
        while (size := self._int()) != 0:
            if size < 0:
                raise self._error("corrupt data block in custom-format archive")
            yield self._read(size)

    def _skip_chunks(self) -> None:
        while (size := self._int()) != 0:
            if size < 0:
                raise self._error("corrupt data block in custom-format archive")
            if self.handle.seek(size, os.SEEK_CUR) > self.size:
                raise self._truncated()

    def tables(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        version, compression = self._header()
        entries = self._toc(version)
        for entry in entries.values():
            if entry.desc == "TABLE" and (entry.schema, entry.table) in self.wanted:
                self.seen.add((entry.schema, entry.table))
        unread = {
            dump_id
            for dump_id, entry in entries.items()
            if entry.desc == "TABLE DATA"
            and entry.has_data
            and (entry.schema, entry.table) in self.wanted
        }
        while block := self.handle.read(1):
            dump_id = self._int()
            if block[0] == _BLOCK_BLOBS:
                while self._int() != 0:  # large object oid, 0 ends the block
                    self._skip_chunks()
                continue
            if block[0] != _BLOCK_DATA:
                raise self._error(f"unknown block type {block[0]} in custom-format archive")
            if dump_id not in unread:
                self._skip_chunks()
                continue
            unread.discard(dump_id)
            entry = entries[dump_id]
            self.seen.add((entry.schema, entry.table))
            yield from self._table(self.wanted[(entry.schema, entry.table)], entry, compression)
        if unread:
            entry = entries[min(unread)]
            table = _label((entry.schema, entry.table))
            raise self._error("archive ends before the table's data (truncated dump)", table)

    def _table(
        self, spec: TableSpec, entry: _TocEntry, compression: int
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        table = _label((spec.schema, spec.name))
        header = _COPY.match(entry.copy.encode("utf-8"))
        if header is None or header.group("columns") is None:
            raise self._error("table data is not COPY text with a column list", table)
        columns = _identifiers(header.group("columns"))
        binding = _Binding(spec, columns, lambda reason: self._error(reason, table))
        fail = lambda reason, row: self._error(reason, table, row)  # noqa: E731
        batches = _Batches(binding, self.batch_rows, fail, copy_text=True)
        row = 1
        for region in self._copy_text(compression, table):
            count = _count_newlines(region)
            yield from batches.add_copy(region, count, row)
            row += count
        yield from batches.finish()

    def _copy_text(self, compression: int, table: str) -> Iterator[bytes]:
        """The data block's COPY text in regions of whole lines, up to its `\\.` line."""
        if compression not in (_COMPRESSION_NONE, _COMPRESSION_GZIP):
            raise self._error(
                "archive compressed with lz4 or zstd is not supported; dump with -Z gzip", table
            )
        inflate = zlib.decompressobj() if compression == _COMPRESSION_GZIP else None
        pieces: list[bytes] = []
        size, ended = 0, False
        for chunk in self._chunks():  # read to the block's end, also past the `\.` line
            if ended:
                continue
            try:
                pieces.append(inflate.decompress(chunk) if inflate else chunk)
            except zlib.error as exc:
                raise self._error(f"corrupt compressed data ({exc})", table) from None
            size += len(pieces[-1])
            if size >= _CHUNK:
                data = b"".join(pieces)
                cut = data.rfind(b"\n") + 1
                marker = _end_marker(data[:cut])
                ended = marker != -1
                yield data[:marker] if ended else data[:cut]
                pieces, size = [data[cut:]], 0  # next cut after _CHUNK more bytes
        if not ended:
            if inflate:
                pieces.append(inflate.flush())
            data = b"".join(pieces)
            if data and not data.endswith(b"\n"):
                data += b"\n"
            marker = _end_marker(data)
            yield data[:marker] if marker != -1 else data


def _label(key: tuple[str, str]) -> str:
    return ".".join(key)


def _end_marker(data: bytes, start: int = 0) -> int:
    """Offset of the `\\.` line that ends COPY data, from `start` (a line start), or -1.

    Hops from backslash to backslash (a one-byte `find` runs at memchr speed, several times
    faster than searching the four-byte marker, which ends in the commonest byte); where
    backslashes are dense, searches the marker instead.
    """
    if data.startswith(b"\\.\n", start):
        return start
    found, hops = start, 0
    while hops <= _MARKER_HOPS + ((found - start) >> 8):
        found = data.find(b"\\", found + 1)
        if found == -1:
            return -1
        if data[found - 1] == 0x0A and data.startswith(b".\n", found + 1):
            return found
        hops += 1
    found = data.find(b"\n\\.\n", found - 1)
    return found + 1 if found != -1 else -1


def _count_newlines(data: bytes, start: int = 0, stop: int | None = None) -> int:
    """`data.count(b"\\n", start, stop)`, three times faster on long spans: bytes.count visits
    a byte at a time, numpy compares a megabyte at a time with SIMD."""
    stop = len(data) if stop is None else stop
    if stop - start < _NUMPY_SPAN:
        return data.count(b"\n", start, stop)
    view = np.frombuffer(data, np.uint8, stop - start, start)
    return sum(
        int(np.count_nonzero(view[at : at + _NUMPY_SPAN] == 0x0A))
        for at in range(0, len(view), _NUMPY_SPAN)
    )
