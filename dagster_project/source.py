"""One streaming pass over a dump: the three source tables, with PII gone at this first step."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from dagster_project.dump_parser import stream_tables
from dagster_project.flatten import flatten_requests
from dagster_project.schema import ANNOTATIONS_TABLE, DISEASE_CODES_TABLE, REQUESTS_TABLE, TableSpec


@dataclass(frozen=True)
class SourceTables:
    requests: pl.DataFrame
    annotations: pl.DataFrame
    disease_codes: pl.DataFrame
    counts: Counter[str]


def _frame(batches: list[pa.RecordBatch], spec: TableSpec) -> pl.DataFrame:
    schema = pa.schema(list(spec.columns.items()))
    return pl.from_arrow(pa.Table.from_batches(batches, schema=schema))


def read_source(path: str | Path, batch_rows: int = 50_000) -> SourceTables:
    """Parse `path` once, flattening requests batch by batch so the JSON is never all held."""
    requests: list[pl.DataFrame] = []
    batches: dict[str, list[pa.RecordBatch]] = {
        ANNOTATIONS_TABLE.name: [],
        DISEASE_CODES_TABLE.name: [],
    }
    counts: Counter[str] = Counter()
    specs = (REQUESTS_TABLE, ANNOTATIONS_TABLE, DISEASE_CODES_TABLE)
    for table, batch in stream_tables(path, specs, batch_rows=batch_rows, require_all=True):
        if table == REQUESTS_TABLE.name:
            frame, batch_counts = flatten_requests(batch)
            requests.append(frame)
            counts.update(batch_counts)
        else:
            batches[table].append(batch)
    annotations = _frame(batches[ANNOTATIONS_TABLE.name], ANNOTATIONS_TABLE)
    codes = _frame(batches[DISEASE_CODES_TABLE.name], DISEASE_CODES_TABLE)
    counts["requests_read"] = sum(frame.height for frame in requests)
    counts["annotations_read"] = annotations.height
    return SourceTables(pl.concat(requests, how="vertical"), annotations, codes, counts)
