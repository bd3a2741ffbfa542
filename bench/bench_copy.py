"""Benchmark: copy_images vs a naive sequential download-then-upload loop, S3 to S3.

Starts a moto S3 server on 127.0.0.1, fills a source bucket with N objects, then times
1. the naive loop (get_object, then put_object, one object at a time),
2. copy_images (concurrent, server-side copy_object, keeping a copy record),
3. copy_images again (everything already there: nothing should be copied), with the record
   (one listing, no request per object) and without it (one HEAD per object),
and prints the throughputs, the speed-up, and the CPU time per object of this process (the
boto3 clients) and of the server: on loopback the two share the machine's cores, so CPU, not
waiting, bounds both loops. `--rtt-ms` adds a fixed delay before every request of every
client, to see the effect of the network latency that loopback lacks. The photo backup
averages ~280 KB an image (150 GB / 543K): `--size 276000`.

    python bench/bench_copy.py [--objects 2000] [--size 16384] [--workers 16] [--rtt-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path
from typing import Any, TypeVar

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3server import DUMMY_AWS_ENV, create_bucket, moto_s3_server  # noqa: E402

from dagster_project.copy_images import CopyItem, CopyReport, copy_images  # noqa: E402
from dagster_project.storage import S3Store  # noqa: E402

T = TypeVar("T")


def add_latency(client: Any, rtt_ms: float) -> None:
    if rtt_ms > 0:
        client.meta.events.register("before-send.s3", lambda **_: time.sleep(rtt_ms / 1000))


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's running children (the S3 server)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def timed(n: int, run: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """`run()`, with its wall seconds, objects/s and client/server CPU ms per object."""
    wall, client, server = time.perf_counter(), time.process_time(), children_cpu_s()
    result = run()
    wall = time.perf_counter() - wall
    return result, {
        "s": round(wall, 2),
        "objects_per_s": round(n / wall, 1),
        "client_cpu_ms": round((time.process_time() - client) / n * 1000, 2),
        "server_cpu_ms": round((children_cpu_s() - server) / n * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=16 * 1024, help="bytes per object")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    args = parser.parse_args()
    os.environ.update(DUMMY_AWS_ENV)

    with moto_s3_server() as endpoint, tempfile.TemporaryDirectory() as record_dir:
        source = S3Store(create_bucket(endpoint), "backup", endpoint_url=endpoint)
        dest_bucket = create_bucket(endpoint)
        payloads = [os.urandom(args.size) for _ in range(args.objects)]
        items = [
            CopyItem(
                f"gcs/000RN/{i:06d}.jpg", f"images/{i:06d}.jpg", sha256(data).hexdigest(), len(data)
            )
            for i, data in enumerate(payloads)
        ]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(source.write_bytes, [item.src_key for item in items], payloads))

        naive_client = boto3.client("s3", endpoint_url=endpoint)
        add_latency(naive_client, args.rtt_ms)

        def naive() -> None:
            for item in items:
                response = naive_client.get_object(
                    Bucket=source.bucket, Key=f"backup/{item.src_key}"
                )
                naive_client.put_object(
                    Bucket=dest_bucket, Key=f"naive/{item.dest_key}", Body=response["Body"].read()
                )

        dest = S3Store(dest_bucket, "curated", endpoint_url=endpoint)
        add_latency(dest.client, args.rtt_ms)
        add_latency(source.client, args.rtt_ms)
        n = args.objects
        _, naive_run = timed(n, naive)

        def copy(record: Path | None) -> CopyReport:
            return copy_images(source, dest, items, workers=args.workers, record_dir=record)

        first, first_run = timed(n, lambda: copy(Path(record_dir)))
        second, rerun = timed(n, lambda: copy(Path(record_dir)))
        third, rerun_unrecorded = timed(n, lambda: copy(None))

    assert first.copied == n and not first.failed, first.failed[:3]
    for again in (second, third):
        assert again.copied == 0 and again.skipped == n, again
    speedup = naive_run["s"] / first_run["s"]
    result = {
        "objects": n,
        "object_bytes": args.size,
        "workers": args.workers,
        "rtt_ms": args.rtt_ms,
        "naive": naive_run,
        "copy_images": first_run,
        "speedup": round(speedup, 1),
        "rerun": {**rerun, "copied": second.copied, "skipped": second.skipped},
        "rerun_without_record": rerun_unrecorded,
        "load_average": os.getloadavg(),
    }
    for name, run in (("naive sequential", naive_run), ("copy_images", first_run)):
        print(
            f"{name + ':':18s}{n} objects in {run['s']:.2f} s ({run['objects_per_s']:.0f}/s), "
            f"CPU per object: client {run['client_cpu_ms']} ms, server {run['server_cpu_ms']} ms"
        )
    print(
        f"speed-up {speedup:.1f}x; re-run: copied {second.copied}, skipped {second.skipped} "
        f"in {rerun['s']:.2f} s ({rerun_unrecorded['s']:.2f} s without the copy record)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
