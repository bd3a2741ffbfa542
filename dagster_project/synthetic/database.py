"""Every row of the synthetic database, table by table, with the truth recorded alongside.

Each case draws its messy values from its own random stream, so a case's rows do not depend
on how many rows came before it.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from dagster_project.synthetic.activity import request_log_rows, session_row, user_row
from dagster_project.synthetic.diseases import Vocabulary
from dagster_project.synthetic.dump_writer import DumpWriter, Json, PostgresLoader
from dagster_project.synthetic.messy import MISSING, EncodedReview, encode_request, encode_review
from dagster_project.synthetic.population import Case, Population, Review
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


class _Emitter:
    """Writes rows to the sink and the truth; holds what spans cases (ids, users seen)."""

    def __init__(
        self,
        population: Population,
        sink: DumpWriter | PostgresLoader,
        truth: TruthTable,
        pii: PiiLog,
        keys: Sequence[str],
        doctors: list[str],
    ) -> None:
        self.vocabulary = population.vocabulary
        self.sink, self.truth, self.pii, self.keys, self.doctors = sink, truth, pii, keys, doctors
        self.seen_patients: set[int] = set()
        self.files: dict[str, str] = {}
        self.session_id, self.log_id = 1, 1

    def late_rng(self, review: Review) -> random.Random:
        """The stream of a review added to a case of an earlier dump (its row and value)."""
        return random.Random(f"{self.keys[review.step]}/review/{review.id}")

    def review(self, review: Review, rng: random.Random) -> EncodedReview:
        encoded = encode_review(review, self.vocabulary, rng)
        diagnoses = None if encoded.diagnoses is MISSING else Json(encoded.diagnoses)
        created = review.modified_at - dt.timedelta(seconds=rng.randrange(0, 900))
        self.sink.add(
            "dermatologist_annotation",
            (
                review.id,
                created,
                review.modified_at,
                review.request_id,
                rng.choice(self.doctors),
                _review_note(rng, self.pii) if rng.random() < 0.6 else None,
                diagnoses,
                rng.randrange(20, 1800),
            ),
        )
        return encoded

    def case(self, case: Case, orphans: Sequence[Review]) -> None:
        """The rows of a request as first dumped, its reviews of that dump, then `orphans`.

        The truth row uses the case's latest review of all, which may be of a later dump.
        """
        sink = self.sink
        case_rng = random.Random(f"{self.keys[case.step]}/case/{case.index}")
        patient = case.patient
        if patient.id not in self.seen_patients:
            self.seen_patients.add(patient.id)
            joined = case.created_at - dt.timedelta(days=case_rng.uniform(0, 30))
            sink.add(
                "users", user_row(case_rng, _DERMATOLOGISTS + patient.user_id, joined, self.pii)
            )
        request = encode_request(case, case_rng, self.pii)
        document = None if request.document is MISSING else Json(request.document)
        own = sorted((r for r in case.reviews if r.step == case.step), key=lambda r: r.id)
        sink.add(
            "rn_requests",
            (
                case.request_id,
                case.uuid,
                case.created_at,
                case.modified_at,
                "reviewed" if own else "pending",
                patient.id,
                patient.vendor,
                case_rng.choice(("3.4.1", "3.2.0", "2.9.7")),
                document,
                case.is_test,
            ),
        )
        latest = case.latest
        icd9 = None
        for review in own:
            encoded = self.review(review, case_rng)
            if review is latest:
                icd9 = encoded.icd9
        if latest is not None and latest.step != case.step:
            icd9 = encode_review(latest, self.vocabulary, self.late_rng(latest)).icd9
        if case_rng.random() < 0.5:
            sink.add(
                "sessions",
                session_row(
                    case_rng,
                    self.session_id,
                    _DERMATOLOGISTS + patient.user_id,
                    request.token,
                    request.ip,
                    case.created_at,
                ),
            )
            self.session_id += 1
        for row in request_log_rows(
            case_rng,
            self.log_id,
            case.request_id,
            case.uuid,
            len(request.sources),
            request.token,
            request.ip,
            case.created_at,
        ):
            sink.add("request_logs", row)
            self.log_id += 1
        for image, url in request.sources:
            self.files[image] = url.removeprefix("gs://")
        if case.included:
            for image, url in request.sources:
                self.truth.add(
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
        for review in orphans:
            self.review(review, case_rng)


def write_database(
    population: Population,
    sink: DumpWriter | PostgresLoader,
    truth: TruthTable,
    pii: PiiLog,
    keys: Sequence[str],
) -> dict[str, str]:
    """Emit every row of every table; returns image_uuid -> object path in the backup.

    `keys[n]` seeds the rows of dump step n (0: `generate`, n: the n-th `grow`). The rows
    of step n follow those of every earlier step in each table, so an earlier dump's rows
    are a prefix of each of the later dump's tables: new reviews of older cases first, then
    the new requests. Orphan reviews belong to step 0.
    """
    rng = random.Random(f"{keys[0]}/tables")
    for row in _disease_code_rows(population.vocabulary):
        sink.add("disease_codes", row)
    doctors = []
    for user_id in range(1, _DERMATOLOGISTS + 1):
        row = user_row(rng, user_id, dt.datetime(2018, 4, 24, 9, tzinfo=dt.UTC), pii, admin=True)
        sink.add("users", row)
        doctors.append(row[1])
    emit = _Emitter(population, sink, truth, pii, keys, doctors)
    first = [case for case in population.cases if case.step == 0]
    orphans_after: dict[int, list[Review]] = {}
    for review in population.orphan_reviews:
        orphans_after.setdefault(rng.randrange(len(first)), []).append(review)
    for case in first:
        emit.case(case, orphans_after.get(case.index, ()))
    for step in range(1, len(keys)):
        late = [r for c in population.cases if c.step < step for r in c.reviews if r.step == step]
        for review in sorted(late, key=lambda r: r.id):
            emit.review(review, emit.late_rng(review))
        for case in population.cases:
            if case.step == step:
                emit.case(case, ())
    return emit.files
