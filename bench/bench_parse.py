"""Dump to image_records.parquet with the metadata stage's functions, vs `psql -f` restoring it.

The old pipeline restored every dump into PostgreSQL before it could read three tables. On
the same dump this times, each in a fresh process:
- `stream`: dump_parser.stream_tables reading the three tables out of the dump (what
  replaces the restore);
- `records`: the metadata stage's domain functions, as the assets call them (read_source =
  stream + flatten_requests, latest_annotations, normalize_diagnoses, build_image_records,
  validate_image_records), writing image_records.parquet;
- `restore`: `psql -f` restoring the whole dump into a fresh database of a throwaway
  PostgreSQL server: fsync, synchronous commits and full-page writes off (the restore's best
  case), or with `--durable` PostgreSQL's defaults (what a user's own server does).
Rounds interleave the three, so a load spike on a shared machine hits all of them; ratios
are of the best rounds. CPU seconds (user + system) of each child include its worker
processes: on two cores, wall time can fall no lower than about half of them. Memory is the
peak, sampled every 20 ms, of the summed PSS of the child and the worker processes it starts
(PSS shares the pages of the libraries they all map between them, where RSS would count them
once per process); Python, Arrow and polars together. Several dumps of different sizes show
whether memory grows with the dump.

    python bench/bench_parse.py DUMP [DUMP ...] [--rounds 3] [--no-restore]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import nullcontext, suppress
from pathlib import Path

import polars as pl

from dagster_project.diagnoses import latest_annotations, load_vocabulary, normalize_diagnoses
from dagster_project.dump_parser import stream_tables
from dagster_project.postgres import PostgresServer, temporary_postgres
from dagster_project.records import (
    build_image_records,
    count_orphan_annotations,
    load_test_patient_ids,
    validate_image_records,
)
from dagster_project.schema import SOURCE_TABLES
from dagster_project.source import SourceTables, read_source

CHILD_MODES = ("stream", "records")


def metadata_records(
    dump: Path, test_patients: Path | None, timings: dict[str, float]
) -> tuple[SourceTables, pl.DataFrame, Counter[str]]:
    """The source tables and image records of `dump`, as the metadata assets compute them;
    adds each step's seconds to `timings`."""
    started = time.perf_counter()
    tables = read_source(dump)
    timings["read_source"] = time.perf_counter() - started
    started = time.perf_counter()
    latest = latest_annotations(tables.annotations)
    diagnoses, counts = normalize_diagnoses(latest, tables.disease_codes, load_vocabulary())
    counts["annotations_orphaned"] = count_orphan_annotations(tables.annotations, tables.requests)
    timings["normalize_diagnoses"] = time.perf_counter() - started
    started = time.perf_counter()
    records, record_counts = build_image_records(
        tables.requests, diagnoses, load_test_patient_ids(test_patients)
    )
    validate_image_records(records)
    timings["build_image_records"] = time.perf_counter() - started
    return tables, records, counts + record_counts


def default_test_patients(dump: Path) -> Path | None:
    """The generator's test-patient list beside the dumps folder, when there is one."""
    path = dump.resolve().parent.parent / "test_patients.json"
    return path if path.is_file() else None


def child(mode: str, dump: Path, out: Path) -> None:
    """The measured work of one mode; prints a JSON report as its last line."""
    if mode == "stream":
        rows = sum(batch.num_rows for _, batch in stream_tables(dump, SOURCE_TABLES))
        print(json.dumps({"rows": rows}))
        return
    timings: dict[str, float] = {}
    _, records, _ = metadata_records(dump, default_test_patients(dump), timings)
    started = time.perf_counter()
    records.write_parquet(out / "image_records.parquet")
    timings["write_parquet"] = time.perf_counter() - started
    print(json.dumps({"rows": records.height, **{k: round(v, 1) for k, v in timings.items()}}))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    found, index = [pid], 0
    while index < len(found):
        for task in Path(f"/proc/{found[index]}/task").glob("*/children"):
            with suppress(OSError):
                found.extend(int(child) for child in task.read_text().split())
        index += 1
    return found


def tree_pss(pid: int) -> int:
    """Summed proportional set size of `pid` and its descendants, in bytes."""
    total = 0
    for member in process_tree(pid):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:  # ended meanwhile
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


class PeakMemory(threading.Thread):
    """Samples tree_pss of a process until it ends; `peak` is the largest sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, tree_pss(self.pid))


def run_child(mode: str, dump: Path) -> tuple[float, float, int, dict]:
    """Wall seconds, CPU seconds (user + system, the child with the worker processes it
    waited for), peak memory in bytes and the report of one mode run in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as out:
        command = [sys.executable, __file__, "--child", mode, str(dump), out]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        memory = PeakMemory(process.pid)
        memory.start()
        stdout = process.stdout.read()
        memory.stopped.set()
        memory.join()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{mode} of {dump} failed: {stdout[-2000:]}")
        cpu = usage.ru_utime + usage.ru_stime
        return seconds, cpu, memory.peak, json.loads(stdout.strip().splitlines()[-1])


def run_restore(server: PostgresServer, dump: Path, database: str) -> float:
    """Wall seconds of `psql -f dump` into a fresh database (dropped afterwards)."""
    server.create_database(database)
    started = time.perf_counter()
    server.psql_file(dump, database)
    seconds = time.perf_counter() - started
    server.psql(f'DROP DATABASE "{database}";')
    return seconds


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def bench_dump(server: PostgresServer | None, dump: Path, rounds: int) -> dict:
    """Interleaved rounds on one dump; the best of each and the ratios of the bests."""
    seconds: dict[str, list[float]] = {"restore": [], **{mode: [] for mode in CHILD_MODES}}
    cpu: dict[str, list[float]] = {mode: [] for mode in CHILD_MODES}
    memory: dict[str, int] = dict.fromkeys(CHILD_MODES, 0)
    for round_ in range(rounds):
        # Rotate the order, so no one always runs first or after the same neighbour.
        order = ("restore", *CHILD_MODES)[round_ % 3 :] + ("restore", *CHILD_MODES)[: round_ % 3]
        for what in order:
            if what == "restore":
                if server is not None:
                    seconds[what].append(run_restore(server, dump, f"restore_{round_}"))
                    print(f"  round {round_}: restore {seconds[what][-1]:.1f} s")
                continue
            took, used, peak, report = run_child(what, dump)
            seconds[what].append(took)
            cpu[what].append(used)
            memory[what] = max(memory[what], peak)
            print(
                f"  round {round_}: {what} {took:.1f} s, cpu {used:.1f} s, peak memory "
                f"{peak / 2**20:.0f} MiB {report} load {load_average()}"
            )
    result = {"dump": str(dump), "dump_mb": round(dump.stat().st_size / 1e6, 1)}
    for what, values in seconds.items():
        if values:
            result[f"{what}_best_s"] = round(min(values), 2)
            result[f"{what}_all_s"] = [round(value, 2) for value in values]
    result |= {f"{mode}_cpu_all_s": [round(used, 2) for used in cpu[mode]] for mode in CHILD_MODES}
    result |= {f"{mode}_peak_mib": round(memory[mode] / 2**20) for mode in CHILD_MODES}
    if seconds["restore"]:
        for mode in CHILD_MODES:
            result[f"restore_over_{mode}"] = round(min(seconds["restore"]) / min(seconds[mode]), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-restore", action="store_true", help="time the parse only")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="restore into a server with PostgreSQL's default fsync and commit settings, as a "
        "user's own server has them (default: all three off, the restore's best case)",
    )
    args = parser.parse_args()
    print(f"cores {os.cpu_count()}, load average (1/5/15 min) at start {load_average()}")
    results = []
    print(f"restore into a server with {'default' if args.durable else 'no'} durability")
    with nullcontext() if args.no_restore else temporary_postgres(args.durable) as server:
        if server is not None:
            server.psql("CREATE ROLE dd_api; CREATE ROLE readonly;")
        for dump in args.dumps:
            print(f"{dump} ({dump.stat().st_size / 1e6:.0f} MB)")
            results.append(bench_dump(server, dump, args.rounds))
            print(json.dumps(results[-1]))
    print(f"load average at end {load_average()}")
    for result in results:
        ratios = "".join(
            f"; restore/{mode} {result[f'restore_over_{mode}']}x"
            for mode in CHILD_MODES
            if f"restore_over_{mode}" in result
        )
        print(
            f"{result['dump_mb']} MB: stream {result['stream_best_s']} s, records "
            f"{result['records_best_s']} s{ratios}; peak memory stream "
            f"{result['stream_peak_mib']} MiB, records {result['records_peak_mib']} MiB"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
