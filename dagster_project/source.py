"""One streaming pass over a dump: the three source tables, with PII gone at this first step."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
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


Flattened = tuple[pl.DataFrame, Counter[str]]


def _frame(batches: list[pa.RecordBatch], spec: TableSpec) -> pl.DataFrame:
    schema = pa.schema(list(spec.columns.items()))
    return pl.from_arrow(pa.Table.from_batches(batches, schema=schema))


def default_workers() -> int:
    """One flattening process per core this process may run on."""
    return len(os.sched_getaffinity(0))


class _RequestFlattener:
    """Flattens request batches in worker processes while the dump is still being read.

    Decoding the request JSON is most of the parse's CPU time and would otherwise wait for the
    reading. At most two batches per worker are in flight, so memory holds a few batches of
    JSON, not the dump's. A dump of a single batch is flattened here: starting the processes
    would cost more than it saves.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.waiting: pa.RecordBatch | None = None  # the first batch, until a second comes
        self.running: deque[Future[Flattened]] = deque()
        self.done: list[Flattened] = []

    def add(self, batch: pa.RecordBatch) -> None:
        if self.workers < 2:
            self.done.append(flatten_requests(batch))
            return
        if self.pool is None and self.waiting is None:
            self.waiting = batch
            return
        if self.pool is None:
            # spawn, not fork: the caller may be a threaded Dagster process.
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self.running.append(self.pool.submit(flatten_requests, self.waiting))
            self.waiting = None
        self.running.append(self.pool.submit(flatten_requests, batch))
        while len(self.running) > 2 * self.workers:
            self.done.append(self.running.popleft().result())

    def results(self) -> list[Flattened]:
        """Every batch's outcome, in the dump's order."""
        if self.waiting is not None:
            self.done.append(flatten_requests(self.waiting))
            self.waiting = None
        while self.running:
            self.done.append(self.running.popleft().result())
        return self.done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def read_source(
    path: str | Path, batch_rows: int = 10_000, workers: int | None = None
) -> SourceTables:
    """Parse `path` once; request batches are flattened by `workers` processes (default: one
    per core) as they are read, so the request JSON is never all held."""
    flattener = _RequestFlattener(default_workers() if workers is None else workers)
    batches: dict[str, list[pa.RecordBatch]] = {
        ANNOTATIONS_TABLE.name: [],
        DISEASE_CODES_TABLE.name: [],
    }
    specs = (REQUESTS_TABLE, ANNOTATIONS_TABLE, DISEASE_CODES_TABLE)
    try:
        for table, batch in stream_tables(path, specs, batch_rows=batch_rows, require_all=True):
            if table == REQUESTS_TABLE.name:
                flattener.add(batch)
            else:
                batches[table].append(batch)
        flattened = flattener.results()
    finally:
        flattener.close()
    counts: Counter[str] = Counter()
    for _, batch_counts in flattened:
        counts.update(batch_counts)
    annotations = _frame(batches[ANNOTATIONS_TABLE.name], ANNOTATIONS_TABLE)
    codes = _frame(batches[DISEASE_CODES_TABLE.name], DISEASE_CODES_TABLE)
    requests = pl.concat([frame for frame, _ in flattened], how="vertical")
    counts["requests_read"] = requests.height
    counts["annotations_read"] = annotations.height
    return SourceTables(requests, annotations, codes, counts)
