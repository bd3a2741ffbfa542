"""A synthetic DermaDetect source: a pg_dump, its photo backup, and the ground truth.

`generate(out)` writes, under `out`:

- `dumps/dd_api-<YYYY_MM_DD_HH_MM_SS>.sql`: a plain-format dump as PostgreSQL 15's
  pg_dump writes it (with `via_postgres=True`, written by the real pg_dump), holding
  `rn_requests`, `dermatologist_annotation`, `disease_codes` and unrelated PII-laden tables
  (`users`, `sessions`, `request_logs`, the largest);
- `backup/<gcs bucket>/<prefix>/<image_uuid>.jpg`: the photos, as the GCS mirror holds them;
- `test_patients.json`: the configured list of test-account patient ids;
- `truth/`: what a correct pipeline must find, recorded when the values were decided:
  `expected_image_records.parquet` (schema.IMAGE_RECORDS_SCHEMA, ordered by case_uuid,
  image_uuid), `planted_duplicates.parquet` (image_uuid, original_uuid, transform),
  `bad_images.parquet` (image_uuid, expected_status) and `pii_strings.txt` (every PII string
  planted, one a line, for leak tests).

Everything is deterministic for a (seed, first_request_id).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

from dagster_project.synthetic.database import write_database
from dagster_project.synthetic.diseases import load_vocabulary
from dagster_project.synthetic.dump_writer import DumpWriter, PostgresLoader, restrict_key
from dagster_project.synthetic.images import write_backup
from dagster_project.synthetic.population import build_population, pick_bad_images, plant_duplicates
from dagster_project.synthetic.truth import PiiLog, TruthTable, write_truth

__all__ = ["GeneratedSource", "generate"]


@dataclass(frozen=True)
class GeneratedSource:
    """Where `generate` wrote each part; `n_images` counts the files in the backup."""

    dump_path: Path
    backup_dir: Path
    test_patients_path: Path
    truth_dir: Path
    n_requests: int
    n_images: int


def generate(
    out: Path,
    requests: int = 2000,
    seed: int = 0,
    images: bool = True,
    via_postgres: bool = False,
    dump_name: str | None = None,
    first_request_id: int = 1,
) -> GeneratedSource:
    """Write a synthetic dump, photo backup and ground truth under `out` (see module doc).

    `via_postgres` loads the rows into a throwaway PostgreSQL and writes the dump with the
    real pg_dump (needs PostgreSQL binaries and psycopg); `images=False` writes no photos
    (the truth still says which ones exist); `first_request_id` starts the id ranges, so two
    sources generated with different values do not collide.
    """
    out = Path(out)
    key = f"{seed}/{first_request_id}"
    population = build_population(
        requests, random.Random(f"{key}/population"), load_vocabulary(), first_request_id
    )
    plan_rng = random.Random(f"{key}/plan")
    duplicates = plant_duplicates(population, plan_rng)
    avoid = set(duplicates) | {original for original, _ in duplicates.values()}
    bad = pick_bad_images(population, avoid, plan_rng)
    last = population.cases[-1].created_at + dt.timedelta(days=1)
    name = dump_name or f"dd_api-{last.replace(hour=3, minute=0, second=0):%Y_%m_%d_%H_%M_%S}.sql"
    dump_path = out / "dumps" / name
    truth_dir = out / "truth"
    truth = TruthTable()
    sink: DumpWriter | PostgresLoader = PostgresLoader() if via_postgres else DumpWriter()
    with PiiLog(truth_dir) as pii:
        files = write_database(population, sink, truth, pii, key)
    if isinstance(sink, PostgresLoader):
        sink.finish(dump_path)
    else:
        sink.finish(dump_path, restrict_key(random.Random(f"{key}/restrict")))
    test_patients_path = out / "test_patients.json"
    test_patients_path.write_text(json.dumps(population.test_patient_ids) + "\n")
    backup_dir = out / "backup"
    backup_dir.mkdir(parents=True, exist_ok=True)
    n_images = write_backup(backup_dir, files, duplicates, bad, key) if images else 0
    write_truth(truth_dir, truth.frame(), duplicates, bad)
    return GeneratedSource(dump_path, backup_dir, test_patients_path, truth_dir, requests, n_images)
