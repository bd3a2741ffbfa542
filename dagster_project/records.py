"""Image records: one row per (case, image) of a labeled, non-test case (SOURCE_FORMAT.md rule 1).

Counter keys of ``build_image_records``; each dropped case is counted once, by the first
filter it fails, in this order:

- ``cases``: flattened requests seen;
- ``cases_is_test``: ``is_test`` is true;
- ``cases_test_patient``: not flagged, but the patient is in the configured test list;
- ``cases_missing_identity``: a NULL ``case_uuid`` or ``patient_id``;
- ``cases_unannotated``: no annotation at all;
- ``cases_unlabeled``: the latest annotation yields no diagnosis after normalization;
- ``cases_without_images``: labeled, but no usable image;
- ``cases_emitted`` and ``image_records``: what is left, in cases and in rows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import NoReturn

import polars as pl

from dagster_project.schema import CONTINUOUS, IMAGE_RECORDS_SCHEMA

_INTEGER = re.compile(r"[+-]?[0-9]+")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def load_test_patient_ids(path: str | Path | None) -> frozenset[int]:
    """The configured test-patient ids: a JSON list of integers or numeric strings.

    ``None`` means no list (empty set). Bad content is a ValueError naming the file and the
    offending position.
    """
    if path is None:
        return frozenset()
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"test patient list {path}: not valid JSON ({exc})") from exc
    if not isinstance(document, list):
        raise ValueError(f"test patient list {path}: expected a JSON list of patient ids")
    ids = set()
    for index, item in enumerate(document):
        if isinstance(item, int) and not isinstance(item, bool):
            ids.add(item)
        elif isinstance(item, str) and _INTEGER.fullmatch(item.strip()):
            ids.add(int(item.strip()))
        else:
            raise ValueError(
                f"test patient list {path}: item {index} is not an integer id: {item!r}"
            )
    return frozenset(ids)


def count_orphan_annotations(annotations: pl.DataFrame, requests: pl.DataFrame) -> int:
    """Annotations whose ``request_id`` is not a request of the dump (dropped by the join).

    ``requests`` is the output of ``flatten_requests`` (column ``request_id``).
    """
    known = requests.get_column("request_id").unique()
    return annotations.filter(~pl.col("request_id").is_in(known.implode())).height


def build_image_records(
    requests: pl.DataFrame, diagnoses: pl.DataFrame, test_patient_ids: frozenset[int]
) -> tuple[pl.DataFrame, Counter[str]]:
    """Join flattened requests with normalized diagnoses, filter, and explode the images.

    ``requests`` is the output of ``flatten_requests``, ``diagnoses`` that of
    ``normalize_diagnoses``. The result has exactly the columns of
    ``schema.IMAGE_RECORDS_SCHEMA``, in order, with their dtypes.
    """
    counts: Counter[str] = Counter(cases=requests.height)
    test_ids = pl.Series(sorted(test_patient_ids), dtype=pl.Int64).implode()
    listed = pl.col("patient_id").is_in(test_ids).fill_null(False)
    labels = diagnoses.select(
        "request_id", "diagnosis", "diagnosis_icd9", "diagnoses_all", annotated=pl.lit(True)
    )
    cases = requests.join(labels, on="request_id", how="left")
    steps = (
        ("cases_is_test", pl.col("is_test")),
        ("cases_test_patient", listed),
        ("cases_missing_identity", pl.col("case_uuid").is_null() | pl.col("patient_id").is_null()),
        ("cases_unannotated", pl.col("annotated").is_null()),
        ("cases_unlabeled", pl.col("diagnosis").is_null()),
        ("cases_without_images", pl.col("images").list.len() == 0),
    )
    for key, dropped in steps:
        counts[key] = cases.select(dropped.sum()).item()
        cases = cases.filter(~dropped)
    counts["cases_emitted"] = cases.height
    records = (
        cases.explode("images")
        .unnest("images")
        .select([pl.col(name).cast(dtype) for name, dtype in IMAGE_RECORDS_SCHEMA.items()])
    )
    counts["image_records"] = records.height
    return records, counts


def _fail(column: str, problem: str) -> NoReturn:
    raise ValueError(f"image_records column {column!r}: {problem}")


def validate_image_records(df: pl.DataFrame) -> None:
    """Raise a ValueError naming the column when image records break their contract.

    Checks: exactly the columns and dtypes of ``schema.IMAGE_RECORDS_SCHEMA``; identity and
    diagnosis present; ``image_uuid`` a lower-case UUID; continuous values within
    ``schema.CONTINUOUS`` (end points included); (``image_uuid``, ``case_uuid``) unique.
    """
    expected = list(IMAGE_RECORDS_SCHEMA)
    if df.columns != expected:
        extra = [name for name in df.columns if name not in IMAGE_RECORDS_SCHEMA]
        missing = [name for name in expected if name not in df.columns]
        misplaced = [want for have, want in zip(df.columns, expected, strict=False) if have != want]
        _fail((extra or missing or misplaced)[0], "columns differ from schema.IMAGE_RECORDS_SCHEMA")
    for name, dtype in IMAGE_RECORDS_SCHEMA.items():
        if df.schema[name] != dtype:
            _fail(name, f"dtype {df.schema[name]}, expected {dtype}")
    for name in ("image_uuid", "case_uuid", "patient_id", "diagnosis", "source_gcs_path"):
        if df.get_column(name).null_count():
            _fail(name, "null values")
    bad_uuids = df.filter(~pl.col("image_uuid").str.contains(_UUID.pattern)).height
    if bad_uuids:
        _fail("image_uuid", f"{bad_uuids} value(s) are not lower-case UUIDs")
    for name, (low, high) in CONTINUOUS.items():
        outside = df.filter(~pl.col(name).is_between(low, high)).height
        if outside:
            _fail(name, f"{outside} value(s) outside [{low}, {high}]")
    duplicated = df.select("image_uuid", "case_uuid").is_duplicated().sum()
    if duplicated:
        _fail("image_uuid", f"{duplicated} rows repeat an (image_uuid, case_uuid) pair")
