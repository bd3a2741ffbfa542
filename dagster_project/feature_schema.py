"""`feature_schema.json`: what each manifest column holds, its valid values and what was observed.

A model trainer reads this file to encode the metadata without opening the manifest: kinds,
ranges, category vocabularies with counts. Columns whose values identify an image, a case or
a patient are described by their counts only, so the file never carries an identity value.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from dagster_project.schema import (
    BOOLEAN3,
    CATEGORICAL,
    CONTINUOUS,
    CURATION_SCHEMA,
    DIAGNOSIS_SCHEMA,
    IDENTITY_SCHEMA,
    MULTI_SELECT,
    PROVENANCE_SCHEMA,
)

# Columns whose values point at one image, case or patient: summarized by counts only.
OPAQUE_COLUMNS = frozenset({*IDENTITY_SCHEMA, "sha256", "source_gcs_path", "cluster_id"})

_KIND_OF = {
    **{name: "identity" for name in IDENTITY_SCHEMA},
    "diagnosis": "categorical",
    "diagnosis_icd9": "categorical",
    "diagnoses_all": "multi_select",
    **{name: "continuous" for name in CONTINUOUS},
    **{name: "categorical" for name in CATEGORICAL},
    **{name: "boolean3" for name in BOOLEAN3},
    **{name: "multi_select" for name in MULTI_SELECT},
    **{name: "provenance" for name in PROVENANCE_SCHEMA},
    **{name: "curation" for name in CURATION_SCHEMA},
    "split": "categorical",
}
_GROUP_OF = {
    **{name: "identity" for name in IDENTITY_SCHEMA},
    **{name: "diagnosis" for name in DIAGNOSIS_SCHEMA},
    **{name: "provenance" for name in PROVENANCE_SCHEMA},
    **{name: "curation" for name in CURATION_SCHEMA},
}


def column_kind(name: str) -> str:
    """The kind of a manifest column; columns the schema does not name are curation columns."""
    return _KIND_OF.get(name, "curation")


def feature_schema(manifest: pl.DataFrame) -> dict[str, Any]:
    """Describe every manifest column: kind, dtype, valid range and observed values (JSON-able)."""
    return {
        "rows": manifest.height,
        "columns": {name: _describe(manifest[name]) for name in manifest.columns},
    }


def _describe(column: pl.Series) -> dict[str, Any]:
    name = column.name
    entry: dict[str, Any] = {
        "kind": column_kind(name),
        "group": _GROUP_OF.get(name, "metadata" if name in _KIND_OF else "curation"),
        "dtype": str(column.dtype),
        "null_fraction": _fraction(column.null_count(), len(column)),
    }
    if name in CONTINUOUS:
        low, high = CONTINUOUS[name]
        entry["valid_range"] = [low, high]
    if name in OPAQUE_COLUMNS or (column.dtype == pl.String and name not in _KIND_OF):
        entry["distinct"] = column.n_unique() - (1 if column.null_count() else 0)
    elif column.dtype == pl.Boolean:
        entry["counts"] = {
            "true": int(column.sum()),
            "false": int((~column).sum()),
            "null": column.null_count(),
        }
    elif column.dtype.is_numeric():
        entry.update(_numeric_summary(column))
    elif column.dtype.is_temporal():
        entry["observed_min"] = _iso(column.min())
        entry["observed_max"] = _iso(column.max())
    elif column.dtype == pl.List(pl.String):
        entry["categories"] = _category_counts(column.explode())
        entry["empty_lists"] = int((column.list.len() == 0).sum())
    else:
        entry["categories"] = _category_counts(column.cast(pl.String))
    return entry


def _numeric_summary(column: pl.Series) -> dict[str, Any]:
    values = column.cast(pl.Float64).drop_nulls()
    values = values.filter(values.is_finite())
    if values.is_empty():
        return {"observed_min": None, "observed_max": None, "observed_mean": None}
    return {
        "observed_min": _number(values.min()),
        "observed_max": _number(values.max()),
        "observed_mean": _number(values.mean()),
    }


def _category_counts(values: pl.Series) -> dict[str, int]:
    """Counts per observed value, most frequent first (ties by value), nulls left out."""
    counts = (
        values.drop_nulls()
        .value_counts(name="n")
        .sort(["n", values.name], descending=[True, False])
    )
    return dict(zip(counts[values.name].to_list(), counts["n"].to_list(), strict=True))


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 6)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()
