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
from typing import Any

from dagster_project.synthetic.activity import request_log_rows, session_row, user_row
from dagster_project.synthetic.diseases import Vocabulary, load_vocabulary
from dagster_project.synthetic.dump_writer import DumpWriter, Json, PostgresLoader, restrict_key
from dagster_project.synthetic.images import write_backup
from dagster_project.synthetic.messy import (
    MISSING,
    PiiLog,
    encode_request,
    encode_review,
)
from dagster_project.synthetic.population import (
    Population,
    build_population,
    pick_bad_images,
    plant_duplicates,
)
from dagster_project.synthetic.truth import TruthTable, write_truth

__all__ = ["GeneratedSource", "generate"]

_DERMATOLOGISTS = 12
_NOTES = (
    "Reviewed, typical presentation.",
    "Ask for a closer photo.",
    "Refer to clinic.",
    "נא לשלוח תמונה נוספת",
    "Consider biopsy if no improvement.",
)


@dataclass(frozen=True)
class GeneratedSource:
    dump_path: Path
    backup_dir: Path
    test_patients_path: Path
    truth_dir: Path
    n_requests: int
    n_images: int


def _disease_code_rows(vocabulary: Vocabulary) -> list[tuple[Any, ...]]:
    rows = [
        (index, name, vocabulary.hebrew.get(name), vocabulary.codes[name], True)
        for index, name in enumerate(
            (n for n in vocabulary.names if n in vocabulary.codes), start=1
        )
    ]
    retired = ("dermatitis nos (retired)", "skin lesion nos (retired)")
    return rows + [
        (len(rows) + k, name, None, f"709.{8 + k}", False)
        for k, name in enumerate(retired, start=1)
    ]


def _review_note(rng: random.Random, pii: PiiLog) -> str:
    """A dermatologist's note: PII, with raw control characters COPY must escape."""
    note = f"{rng.choice(_NOTES)} [case note {rng.getrandbits(48):012x}]" + rng.choice(
        ("", "\r\nfollow-up\tin 2 weeks", "\x0bsee\\nprevious", "\x08\x0c", "\x01 legacy import")
    )
    pii.add(note)
    return note


def _write_database(
    population: Population,
    sink: DumpWriter | PostgresLoader,
    truth: TruthTable,
    pii: PiiLog,
    key: str,
) -> dict[str, str]:
    """Emit every row of every table; returns image_uuid -> object path in the backup."""
    rng = random.Random(f"{key}/tables")
    vocabulary = population.vocabulary
    for row in _disease_code_rows(vocabulary):
        sink.add("disease_codes", row)
    doctors = []
    for user_id in range(1, _DERMATOLOGISTS + 1):
        row = user_row(rng, user_id, dt.datetime(2018, 4, 24, 9, tzinfo=dt.UTC), pii, admin=True)
        sink.add("users", row)
        doctors.append(row[1])
    orphans_after: dict[int, list[Any]] = {}
    for review in population.orphan_reviews:
        orphans_after.setdefault(rng.randrange(len(population.cases)), []).append(review)
    seen_patients: set[int] = set()
    files: dict[str, str] = {}
    session_id, log_id = 1, 1

    def add_review(review: Any, case_rng: random.Random) -> Any:
        encoded = encode_review(review, vocabulary, case_rng)
        diagnoses = None if encoded.diagnoses is MISSING else Json(encoded.diagnoses)
        created = review.modified_at - dt.timedelta(seconds=case_rng.randrange(0, 900))
        sink.add(
            "dermatologist_annotation",
            (
                review.id,
                created,
                review.modified_at,
                review.request_id,
                case_rng.choice(doctors),
                _review_note(case_rng, pii) if case_rng.random() < 0.6 else None,
                diagnoses,
                case_rng.randrange(20, 1800),
            ),
        )
        return encoded

    for case in population.cases:
        case_rng = random.Random(f"{key}/case/{case.index}")
        patient = case.patient
        if patient.id not in seen_patients:
            seen_patients.add(patient.id)
            joined = case.created_at - dt.timedelta(days=case_rng.uniform(0, 30))
            sink.add("users", user_row(case_rng, _DERMATOLOGISTS + patient.user_id, joined, pii))
        request = encode_request(case, case_rng, pii)
        document = None if request.document is MISSING else Json(request.document)
        sink.add(
            "rn_requests",
            (
                case.request_id,
                case.uuid,
                case.created_at,
                case.modified_at,
                "reviewed" if case.reviews else "pending",
                patient.id,
                patient.vendor,
                case_rng.choice(("3.4.1", "3.2.0", "2.9.7")),
                document,
                case.is_test,
            ),
        )
        latest = case.latest
        icd9 = None
        for review in sorted(case.reviews, key=lambda r: r.id):
            encoded = add_review(review, case_rng)
            if review is latest:
                icd9 = encoded.icd9
        if case_rng.random() < 0.5:
            sink.add(
                "sessions",
                session_row(
                    case_rng,
                    session_id,
                    _DERMATOLOGISTS + patient.user_id,
                    request.token,
                    request.ip,
                    case.created_at,
                ),
            )
            session_id += 1
        for row in request_log_rows(
            case_rng,
            log_id,
            case.request_id,
            case.uuid,
            len(request.sources),
            request.token,
            request.ip,
            case.created_at,
        ):
            sink.add("request_logs", row)
            log_id += 1
        for image, url in request.sources:
            files[image] = url.removeprefix("gs://")
        if case.included:
            for image, url in request.sources:
                truth.add(
                    image_uuid=image,
                    case_uuid=case.uuid,
                    patient_id=patient.id,
                    labels=case.labels,
                    icd9=icd9,
                    metadata=request.metadata,
                    vendor_id=patient.vendor,
                    modified_at=case.modified_at,
                    source_gcs_path=url,
                )
        for review in orphans_after.get(case.index, ()):
            add_review(review, case_rng)
    return files


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
    pii = PiiLog()
    truth = TruthTable()
    sink: DumpWriter | PostgresLoader = PostgresLoader() if via_postgres else DumpWriter()
    files = _write_database(population, sink, truth, pii, key)
    if isinstance(sink, PostgresLoader):
        sink.finish(dump_path)
    else:
        sink.finish(dump_path, restrict_key(random.Random(f"{key}/restrict")))
    test_patients_path = out / "test_patients.json"
    test_patients_path.write_text(json.dumps(population.test_patient_ids) + "\n")
    backup_dir = out / "backup"
    backup_dir.mkdir(parents=True, exist_ok=True)
    n_images = write_backup(backup_dir, files, duplicates, bad, key) if images else 0
    truth_dir = out / "truth"
    write_truth(truth_dir, truth.frame(), duplicates, bad, pii.strings)
    return GeneratedSource(dump_path, backup_dir, test_patients_path, truth_dir, requests, n_images)
