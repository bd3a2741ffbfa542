"""Every row of the synthetic database, table by table, with the truth recorded alongside.

Each case draws its messy values from its own random stream, so a case's rows do not depend
on how many rows came before it.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from dagster_project.synthetic.activity import request_log_rows, session_row, user_row
from dagster_project.synthetic.diseases import Vocabulary
from dagster_project.synthetic.dump_writer import DumpWriter, Json, PostgresLoader
from dagster_project.synthetic.messy import MISSING, EncodedReview, encode_request, encode_review
from dagster_project.synthetic.population import Population, Review
from dagster_project.synthetic.truth import PiiLog, TruthTable

_DERMATOLOGISTS = 12
_NOTES = (
    "Reviewed, typical presentation.",
    "Ask for a closer photo.",
    "Refer to clinic.",
    "נא לשלוח תמונה נוספת",
    "Consider biopsy if no improvement.",
)


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


def write_database(
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
    orphans_after: dict[int, list[Review]] = {}
    for review in population.orphan_reviews:
        orphans_after.setdefault(rng.randrange(len(population.cases)), []).append(review)
    seen_patients: set[int] = set()
    files: dict[str, str] = {}
    session_id, log_id = 1, 1

    def add_review(review: Review, case_rng: random.Random) -> EncodedReview:
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
