"""The whole metadata stage on one dump: parse, flatten, normalize, validate, split, join.

Runs what the assets run between the dump and the manifest, without images: read_source
(parse + flatten), latest_annotations + normalize_diagnoses, build_image_records +
validate_image_records, assign_splits, then build_manifest's joins. No images exist, so each
image is its own duplicate cluster (cluster_id = row index) and the image facts are stand-ins
(sha256 = image_uuid, fixed size and quality); splits then group by patient only. Target: at
most 5 minutes for a full-scale dump (225K requests). The baseline measured in the same run
is `psql -f` restoring the dump (see bench_parse.py), which the old pipeline needed before
any of this could start.

    python bench/bench_metadata_stage.py DUMP [--no-restore]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_parse import (  # noqa: E402
    default_test_patients,
    load_average,
    metadata_records,
    run_restore,
)

from dagster_project.manifest import build_manifest  # noqa: E402
from dagster_project.postgres import temporary_postgres  # noqa: E402
from dagster_project.splits import assign_splits  # noqa: E402


def stand_in_image_stages(records: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """image_files and duplicate_clusters frames as the image stages would give them when
    every photo is readable and unique."""
    images = records.select("image_uuid").unique(maintain_order=True)
    files = images.select(
        "image_uuid",
        status=pl.lit("ok"),
        sha256=pl.col("image_uuid"),
        width=pl.lit(1024, pl.Int64),
        height=pl.lit(768, pl.Int64),
        quality_score=pl.lit(0.5),
    )
    clusters = images.select(
        "image_uuid",
        cluster_id=pl.int_range(pl.len(), dtype=pl.Int64),
        representative=pl.col("image_uuid"),
        homogeneous=pl.lit(True),
        outlier_score=pl.lit(0.0),
    )
    return files, clusters


def metadata_stage(dump: Path, test_patients: Path | None) -> tuple[dict[str, float], dict]:
    """Seconds per step and the sizes of what each step produced."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    tables, records, _ = metadata_records(dump, test_patients, timings)
    step = time.perf_counter()
    files, clusters = stand_in_image_stages(records)
    split = assign_splits(
        records.join(clusters.select("image_uuid", "cluster_id"), on="image_uuid")
    )
    timings["assign_splits"] = time.perf_counter() - step
    step = time.perf_counter()
    manifest, _ = build_manifest(records, files, clusters, split.splits)
    timings["build_manifest"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    sizes = {
        "requests": tables.requests.height,
        "annotations": tables.annotations.height,
        "image_records": records.height,
        "patients": split.splits.height,
        "manifest_rows": manifest.height,
    }
    return timings, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path)
    parser.add_argument(
        "--test-patients", type=Path, help="default: test_patients.json beside dumps/"
    )
    parser.add_argument("--no-restore", action="store_true", help="skip the psql baseline")
    args = parser.parse_args()
    test_patients = args.test_patients or default_test_patients(args.dump)
    size = args.dump.stat().st_size / 1e6
    print(f"{args.dump.name}: {size:.0f} MB; cores {os.cpu_count()}, load average {load_average()}")

    timings, sizes = metadata_stage(args.dump, test_patients)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    print(f"metadata stage: {steps}; peak RSS {peak:.0f} MiB")
    print(f"sizes: {sizes}")
    result = {"total_s": round(timings["total"], 1), "target_met": timings["total"] <= 300}
    if not args.no_restore:
        with temporary_postgres() as server:
            server.psql("CREATE ROLE dd_api; CREATE ROLE readonly;")
            restore = run_restore(server, args.dump, "restore")
        result |= {
            "restore_s": round(restore, 1),
            "restore_over_stage": round(restore / timings["total"], 2),
        }
        print(f"psql restore alone: {restore:.1f} s ({restore / timings['total']:.2f}x the stage)")
    print(f"load average at end {load_average()}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
