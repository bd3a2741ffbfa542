"""read_source: one pass over a dump, request batches flattened in worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_project.dump_parser import DumpFormatError
from dagster_project.source import SourceTables, read_source
from dagster_project.synthetic import generate

REQUESTS = 300


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("source"), requests=REQUESTS, images=False).dump_path


def _same(found: SourceTables, expected: SourceTables) -> None:
    assert found.requests.equals(expected.requests)
    assert found.annotations.equals(expected.annotations)
    assert found.disease_codes.equals(expected.disease_codes)
    assert found.counts == expected.counts


def test_worker_processes_read_what_one_process_reads(dump: Path) -> None:
    """Many small batches over two processes: same rows, in the dump's order, same counts."""
    alone = read_source(dump, workers=1)
    assert alone.requests.height == alone.counts["requests_read"] == REQUESTS
    assert alone.requests["request_id"].is_sorted()
    _same(read_source(dump, batch_rows=23, workers=2), alone)
    _same(read_source(dump, batch_rows=23, workers=1), alone)


def test_a_truncated_dump_fails_while_batches_are_in_flight(dump: Path, tmp_path: Path) -> None:
    text = dump.read_bytes()
    start = text.index(b"COPY public.rn_requests")
    end = text.index(b"\n\\.\n", start)
    cut = text.rindex(b"\n", start, (start + end) // 2) + 1  # half the rows, then nothing
    truncated = tmp_path / dump.name
    truncated.write_bytes(text[:cut])
    with pytest.raises(DumpFormatError, match=r"rn_requests.*truncated dump"):
        read_source(truncated, batch_rows=23, workers=2)
