"""feature_schema: kinds, ranges, observed values, and no identity value in the document."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest
from test_stats import make_manifest

from dagster_project.feature_schema import column_kind, feature_schema
from dagster_project.schema import (
    BOOLEAN3,
    CATEGORICAL,
    CONTINUOUS,
    MANIFEST_SCHEMA,
    MULTI_SELECT,
)


@pytest.fixture(scope="module")
def manifest() -> pl.DataFrame:
    return make_manifest()


@pytest.fixture(scope="module")
def schema(manifest: pl.DataFrame) -> dict:
    return feature_schema(manifest)


def test_every_column_described_with_its_kind(manifest: pl.DataFrame, schema: dict) -> None:
    assert schema["rows"] == manifest.height
    columns = schema["columns"]
    assert list(columns) == list(MANIFEST_SCHEMA)
    expected = {
        "image_uuid": "identity",
        "patient_id": "identity",
        "age": "continuous",
        "gender": "categorical",
        "itch": "boolean3",
        "texture": "multi_select",
        "diagnoses_all": "multi_select",
        "vendor_id": "provenance",
        "source_gcs_path": "provenance",
        "sha256": "curation",
        "cluster_id": "curation",
        "split": "categorical",
    }
    assert {name: columns[name]["kind"] for name in expected} == expected
    assert all(columns[name]["dtype"] == str(dtype) for name, dtype in MANIFEST_SCHEMA.items())
    assert column_kind("n_annotations") == "curation"


def test_continuous_ranges_and_observed_values(manifest: pl.DataFrame, schema: dict) -> None:
    for name, (low, high) in CONTINUOUS.items():
        entry = schema["columns"][name]
        values = [v for v in manifest[name].to_list() if v is not None]
        assert entry["valid_range"] == [low, high]
        assert entry["observed_min"] == pytest.approx(min(values))
        assert entry["observed_max"] == pytest.approx(max(values))
        assert entry["observed_mean"] == pytest.approx(sum(values) / len(values), abs=1e-5)
        assert entry["null_fraction"] == pytest.approx(1 - len(values) / manifest.height, abs=1e-6)


def test_categories_are_counted_and_sorted(manifest: pl.DataFrame, schema: dict) -> None:
    for name in (*CATEGORICAL, "diagnosis", "vendor_id", "split"):
        counted = Counter(v for v in manifest[name].to_list() if v is not None)
        categories = schema["columns"][name]["categories"]
        assert categories == dict(counted)
        assert list(categories.values()) == sorted(categories.values(), reverse=True)
    for name in (*MULTI_SELECT, "diagnoses_all"):
        counted = Counter(item for items in manifest[name].drop_nulls() for item in items)
        assert schema["columns"][name]["categories"] == dict(counted)


def test_boolean_counts(manifest: pl.DataFrame, schema: dict) -> None:
    for name in BOOLEAN3:
        values = manifest[name].to_list()
        assert schema["columns"][name]["counts"] == {
            "true": values.count(True),
            "false": values.count(False),
            "null": values.count(None),
        }


def test_no_identity_values_and_strict_json(manifest: pl.DataFrame, schema: dict) -> None:
    text = json.dumps(schema, allow_nan=False)
    for name in ("image_uuid", "case_uuid", "sha256", "source_gcs_path"):
        assert not any(value in text for value in manifest[name].unique())
    assert not any(str(p) in text for p in manifest["patient_id"].unique())
    assert schema["columns"]["image_uuid"]["distinct"] == manifest.height
    assert (
        schema["columns"]["modified_at"]["observed_min"]
        == manifest["modified_at"].min().isoformat()
    )
    assert "categories" not in schema["columns"]["source_gcs_path"]


def test_unknown_string_column_is_opaque() -> None:
    frame = pl.DataFrame({"reviewer_key": ["k1", "k2", None], "n_reviews": [1, 2, 2]})
    columns = feature_schema(frame)["columns"]
    assert columns["reviewer_key"] == {
        "kind": "curation",
        "group": "curation",
        "dtype": "String",
        "null_fraction": pytest.approx(1 / 3, abs=1e-6),
        "distinct": 2,
    }
    assert columns["n_reviews"]["observed_max"] == 2
