"""Image records: test-case removal, label join, image explosion, validation (rule 1)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from dagster_project.diagnoses import latest_annotations, load_vocabulary, normalize_diagnoses
from dagster_project.flatten import flatten_requests
from dagster_project.records import (
    build_image_records,
    count_orphan_annotations,
    load_test_patient_ids,
    validate_image_records,
)
from dagster_project.schema import (
    ANNOTATIONS_TABLE,
    DISEASE_CODES_TABLE,
    IMAGE_RECORDS_SCHEMA,
    REQUESTS_TABLE,
)

UTC = dt.UTC
BUCKET = "gs://dermadetect-20180424.appspot.com/000RN"
U1 = "a1111111-1111-4111-8111-11111111111a"
U2 = "b2222222-2222-4222-8222-22222222222b"
U3 = "c3333333-3333-4333-8333-33333333333c"
BIG = 2**53


def write_json(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "test_patients.json"
    path.write_text(content, encoding="utf-8")
    return path


def test_load_test_patient_ids(tmp_path: Path) -> None:
    path = write_json(tmp_path, json.dumps([5, "6", " 7 ", str(BIG + 1), BIG + 3, 5]))
    assert load_test_patient_ids(path) == {5, 6, 7, BIG + 1, BIG + 3}
    assert load_test_patient_ids(str(path)) == {5, 6, 7, BIG + 1, BIG + 3}
    assert load_test_patient_ids(None) == frozenset()
    assert load_test_patient_ids(write_json(tmp_path, "[]")) == frozenset()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"ids": [1]}', "expected a JSON list"),
        ("[1, 2", "not valid JSON"),
        ('[1, "abc"]', "item 1 is not an integer id"),
        ("[1.5]", "item 0 is not an integer id"),
        ("[true]", "item 0 is not an integer id"),
        ("[3, null]", "item 1 is not an integer id"),
        ('["1e3"]', "item 0 is not an integer id"),
    ],
)
def test_load_test_patient_ids_bad_content(tmp_path: Path, content: str, message: str) -> None:
    path = write_json(tmp_path, content)
    with pytest.raises(ValueError, match=message) as error:
        load_test_patient_ids(path)
    assert str(path) in str(error.value)


def requests_batch(rows: list[tuple[int, str, int, Any, bool | None]]) -> pa.RecordBatch:
    """(id, uuid, patient_id, request, is_test) rows as the dump parser yields them."""
    schema = pa.schema(list(REQUESTS_TABLE.columns.items()))
    when = dt.datetime(2020, 2, 3, 4, 5, 6, tzinfo=UTC)
    data: dict[str, list[Any]] = {name: [] for name in REQUESTS_TABLE.columns}
    for request_id, uuid, patient_id, request, is_test in rows:
        data["id"].append(request_id)
        data["uuid"].append(uuid)
        data["patient_id"].append(patient_id)
        data["request"].append(request if isinstance(request, str) else json.dumps(request))
        data["vendor_id"].append("maccabi")
        data["is_test"].append(is_test)
        data["created_at"].append(when)
        data["modified_at"].append(when)
    return pa.RecordBatch.from_pydict(data, schema=schema)


def annotations_batch(rows: list[tuple[int, int, list[dict[str, Any]]]]) -> pa.RecordBatch:
    schema = pa.schema(list(ANNOTATIONS_TABLE.columns.items()))
    when = dt.datetime(2020, 3, 1, tzinfo=UTC)
    data = {
        "id": [row[0] for row in rows],
        "request_id": [row[1] for row in rows],
        "diagnoses": [json.dumps(row[2]) for row in rows],
        "modified_at": [when] * len(rows),
    }
    return pa.RecordBatch.from_pydict(data, schema=schema)


CODES = pa.RecordBatch.from_pydict(
    {"code": ["696.1"], "name": ["Psoriasis"], "name_he": [None]},
    schema=pa.schema(list(DISEASE_CODES_TABLE.columns.items())),
)
A_REQUEST = {
    "images": [f"{BUCKET}/{U1}.jpg", {"url": f"{BUCKET}/{U2}.jpg"}, f"{BUCKET}/{U1}.jpg"],
    "patient": {"age": "34", "gender": "Female"},
    "answers": {"itch": "yes", "texture": "Scaly", "location": {"primary": "Face"}},
    "free_text": "SECRET notes",
}
PSORIASIS = [{"disease": "Plaque psoriasis", "icd9": None}]
ACNE = [{"disease": "acne", "icd9": "706.1"}]


@pytest.fixture(scope="module")
def pipeline() -> dict[str, Any]:
    requests, _ = flatten_requests(
        requests_batch(
            [
                (1, "case-a", 100, A_REQUEST, None),
                (2, "case-b", 101, {"images": [f"{BUCKET}/{U3}.jpg"]}, True),
                (3, "case-c", 102, {"images": [f"{BUCKET}/{U3}.jpg"]}, None),
                (4, "case-d", 103, {"images": [f"{BUCKET}/{U3}.jpg"]}, False),
                (5, "case-e", 104, {"images": [f"{BUCKET}/{U3}.jpg"]}, False),
                (6, "case-f", 105, {"images": []}, False),
                (7, "case-g", 106, "{not json", False),
                (BIG + 1, "case-h", BIG + 1, {"images": [f"{BUCKET}/{U1}.jpg"]}, False),
            ]
        )
    )
    annotations = annotations_batch(
        [
            (1, 1, PSORIASIS),
            (2, 2, PSORIASIS),
            (3, 3, PSORIASIS),
            (5, 5, [{"disease": "unclear image", "icd9": None}]),
            (6, 6, PSORIASIS),
            (7, 7, PSORIASIS),
            (8, BIG + 1, ACNE),
            (9, 999, PSORIASIS),
            (10, 999, ACNE),
        ]
    )
    latest = latest_annotations(annotations)
    diagnoses, _ = normalize_diagnoses(latest, pl.from_arrow(CODES), load_vocabulary())
    records, counts = build_image_records(requests, diagnoses, frozenset({102, BIG}))
    return {
        "requests": requests,
        "annotations": pl.from_arrow(annotations),
        "records": records,
        "counts": counts,
    }


def test_image_records_rows(pipeline: dict[str, Any]) -> None:
    records: pl.DataFrame = pipeline["records"]
    assert records.columns == list(IMAGE_RECORDS_SCHEMA)
    assert records.schema == pl.Schema(IMAGE_RECORDS_SCHEMA)
    rows = records.sort("case_uuid", "image_uuid").to_dicts()
    identity = [(r["image_uuid"], r["case_uuid"], r["patient_id"]) for r in rows]
    assert identity == [(U1, "case-a", 100), (U2, "case-a", 100), (U1, "case-h", BIG + 1)]
    first = rows[0]
    assert first["diagnosis"] == "psoriasis"
    assert first["diagnosis_icd9"] == "696.1"
    assert first["diagnoses_all"] == ["psoriasis"]
    assert (first["age"], first["gender"], first["itch"]) == (34.0, "female", True)
    assert (first["texture"], first["location_primary"]) == (["scaly"], "face")
    assert first["vendor_id"] == "maccabi"
    assert first["modified_at"] == dt.datetime(2020, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert first["source_gcs_path"] == f"{BUCKET}/{U1}.jpg"
    assert rows[1]["source_gcs_path"] == f"{BUCKET}/{U2}.jpg"
    assert (rows[2]["diagnosis"], rows[2]["diagnosis_icd9"]) == ("acne vulgaris", "706.1")
    assert "SECRET" not in json.dumps(rows, default=str)


def test_image_records_counts(pipeline: dict[str, Any]) -> None:
    assert dict(pipeline["counts"]) == {
        "cases": 8,
        "cases_is_test": 1,
        "cases_test_patient": 1,
        "cases_missing_identity": 0,
        "cases_unannotated": 1,
        "cases_unlabeled": 1,
        "cases_without_images": 2,
        "cases_emitted": 2,
        "image_records": 3,
    }


def test_orphan_annotations_counted(pipeline: dict[str, Any]) -> None:
    assert count_orphan_annotations(pipeline["annotations"], pipeline["requests"]) == 2


def test_cases_missing_identity_dropped() -> None:
    requests, _ = flatten_requests(
        pl.DataFrame(
            {
                "id": [1, 2],
                "uuid": [None, "case-b"],
                "patient_id": [5, None],
                "request": [json.dumps({"images": [f"{BUCKET}/{U1}.jpg"]})] * 2,
            },
            schema={
                "id": pl.Int64,
                "uuid": pl.String,
                "patient_id": pl.Int64,
                "request": pl.String,
            },
        )
    )
    diagnoses = pl.DataFrame(
        {
            "request_id": [1, 2],
            "diagnosis": ["psoriasis"] * 2,
            "diagnosis_icd9": [None, None],
            "diagnoses_all": [["psoriasis"]] * 2,
        },
        schema={
            "request_id": pl.Int64,
            "diagnosis": pl.String,
            "diagnosis_icd9": pl.String,
            "diagnoses_all": pl.List(pl.String),
        },
    )
    records, counts = build_image_records(requests, diagnoses, frozenset())
    assert records.height == 0
    assert counts["cases_missing_identity"] == 2


def test_validate_accepts_the_built_records(pipeline: dict[str, Any]) -> None:
    validate_image_records(pipeline["records"])


def test_validate_accepts_range_end_points_and_shared_images(pipeline: dict[str, Any]) -> None:
    records: pl.DataFrame = pipeline["records"]
    edges = records.with_columns(
        age=pl.Series([0.0, 120.0, None]),
        temperature=pl.Series([30.0, 45.0, None]),
        duration_days=pl.Series([0.0, 36500.0, None]),
        pregnancy_week=pl.Series([0.0, 45.0, None]),
    )
    validate_image_records(edges)


FIRST_ROW = pl.int_range(pl.len()) == 0
BREAKAGES: list[tuple[str, Any, str]] = [
    ("pii column added", lambda r: r.with_columns(free_text=pl.lit("x")), "free_text"),
    ("column missing", lambda r: r.drop("texture"), "texture"),
    ("columns reordered", lambda r: r.select("case_uuid", pl.exclude("case_uuid")), "image_uuid"),
    ("wrong dtype", lambda r: r.with_columns(pl.col("patient_id").cast(pl.Float64)), "patient_id"),
    ("age", lambda r: r.with_columns(age=pl.when(FIRST_ROW).then(120.5)), "age"),
    ("temperature", lambda r: r.with_columns(temperature=pl.lit(29.99)), "temperature"),
    ("duration", lambda r: r.with_columns(duration_days=pl.lit(-1.0)), "duration_days"),
    ("pregnancy", lambda r: r.with_columns(pregnancy_week=pl.lit(45.5)), "pregnancy_week"),
    ("no label", lambda r: r.with_columns(diagnosis=pl.lit(None, pl.String)), "diagnosis"),
    ("no patient", lambda r: r.with_columns(patient_id=pl.lit(None, pl.Int64)), "patient_id"),
    ("upper uuid", lambda r: r.with_columns(pl.col("image_uuid").str.to_uppercase()), "image_uuid"),
    ("null uuid", lambda r: r.with_columns(image_uuid=pl.lit(None, pl.String)), "image_uuid"),
    ("same pair", lambda r: r.with_columns(case_uuid=pl.lit("same")), "image_uuid"),
    ("repeated row", lambda r: pl.concat([r, r.head(1)]), "image_uuid"),
]


@pytest.mark.parametrize(
    ("transform", "column"),
    [pytest.param(transform, column, id=name) for name, transform, column in BREAKAGES],
)
def test_validate_rejects_and_names_the_column(
    pipeline: dict[str, Any], transform: Any, column: str
) -> None:
    with pytest.raises(ValueError, match=f"column '{column}'"):
        validate_image_records(transform(pipeline["records"]))
