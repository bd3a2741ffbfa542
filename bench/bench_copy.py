"""Benchmark: copy_images vs a naive sequential download-then-upload loop, S3 to S3.

Starts a moto S3 server on 127.0.0.1, fills a source bucket with N small objects, then times
1. the naive loop (get_object, then put_object, one object at a time),
2. copy_images (concurrent, server-side copy_object),
3. copy_images again (everything already there: nothing should be copied),
and prints the throughputs and the speed-up. `--rtt-ms` adds a fixed delay before every
request of every client, to see the effect of real network latency that loopback lacks.

    python bench/bench_copy.py [--objects 2000] [--size 16384] [--workers 16] [--rtt-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3server import DUMMY_AWS_ENV, create_bucket, moto_s3_server  # noqa: E402

from dagster_project.copy_images import CopyItem, copy_images  # noqa: E402
from dagster_project.storage import S3Store  # noqa: E402


def add_latency(client: Any, rtt_ms: float) -> None:
    if rtt_ms > 0:
        client.meta.events.register("before-send.s3", lambda **_: time.sleep(rtt_ms / 1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size", type=int, default=16 * 1024, help="bytes per object")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    args = parser.parse_args()
    os.environ.update(DUMMY_AWS_ENV)

    with moto_s3_server() as endpoint:
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
        start = time.perf_counter()
        for item in items:
            body = naive_client.get_object(Bucket=source.bucket, Key=f"backup/{item.src_key}")[
                "Body"
            ].read()
            naive_client.put_object(Bucket=dest_bucket, Key=f"naive/{item.dest_key}", Body=body)
        naive_s = time.perf_counter() - start

        dest = S3Store(dest_bucket, "curated", endpoint_url=endpoint)
        add_latency(dest.client, args.rtt_ms)
        add_latency(source.client, args.rtt_ms)
        start = time.perf_counter()
        first = copy_images(source, dest, items, workers=args.workers)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = copy_images(source, dest, items, workers=args.workers)
        second_s = time.perf_counter() - start

    assert first.copied == args.objects and not first.failed, first.failed[:3]
    assert second.copied == 0 and second.skipped == args.objects, second
    n = args.objects
    result = {
        "objects": n,
        "object_bytes": args.size,
        "workers": args.workers,
        "rtt_ms": args.rtt_ms,
        "naive_s": round(naive_s, 2),
        "naive_objects_per_s": round(n / naive_s, 1),
        "copy_images_s": round(first_s, 2),
        "copy_images_objects_per_s": round(n / first_s, 1),
        "speedup": round(naive_s / first_s, 1),
        "rerun_s": round(second_s, 2),
        "rerun_objects_per_s": round(n / second_s, 1),
        "rerun_copied": second.copied,
        "rerun_skipped": second.skipped,
    }
    print(
        f"naive sequential: {n} objects in {naive_s:.2f} s ({n / naive_s:.0f}/s)\n"
        f"copy_images:      {n} objects in {first_s:.2f} s ({n / first_s:.0f}/s), "
        f"speed-up {naive_s / first_s:.1f}x\n"
        f"re-run:           copied {second.copied}, skipped {second.skipped} "
        f"in {second_s:.2f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
