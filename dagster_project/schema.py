"""The column contracts every stage shares: the source tables and the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

# Never in any output, log line or asset metadata (SOURCE_FORMAT.md).
PII_COLUMNS = frozenset({"modified_by", "free_text", "user_crypt", "headers"})


@dataclass(frozen=True)
class TableSpec:
    """A source table the dump parser extracts: columns it must find and their Arrow types.

    Columns of the dump not named here are never decoded, so PII columns that are not
    requested never leave the parser.
    """

    name: str
    required: dict[str, pa.DataType]
    optional: dict[str, pa.DataType] = field(default_factory=dict)
    schema: str = "public"

    @property
    def columns(self) -> dict[str, pa.DataType]:
        return {**self.required, **self.optional}


TIMESTAMP = pa.timestamp("us", tz="UTC")

REQUESTS_TABLE = TableSpec(
    "rn_requests",
    required={
        "id": pa.int64(),
        "uuid": pa.string(),
        "patient_id": pa.int64(),
        "request": pa.string(),
    },
    optional={
        "vendor_id": pa.string(),
        "is_test": pa.bool_(),
        "created_at": TIMESTAMP,
        "modified_at": TIMESTAMP,
    },
)
ANNOTATIONS_TABLE = TableSpec(
    "dermatologist_annotation",
    required={
        "id": pa.int64(),
        "request_id": pa.int64(),
        "diagnoses": pa.string(),
        "modified_at": TIMESTAMP,
    },
)
DISEASE_CODES_TABLE = TableSpec(
    "disease_codes",
    required={"code": pa.string(), "name": pa.string()},
    optional={"name_he": pa.string()},
)
SOURCE_TABLES = (REQUESTS_TABLE, ANNOTATIONS_TABLE, DISEASE_CODES_TABLE)

CONTINUOUS = {
    "age": (0.0, 120.0),
    "temperature": (30.0, 45.0),
    "duration_days": (0.0, 36500.0),
    "pregnancy_week": (0.0, 45.0),
}
CATEGORICAL = (
    "gender",
    "size",
    "shape",
    "quantity",
    "topography",
    "location_primary",
    "location_secondary",
    "location_side",
    "location_coverage",
    "pain_type",
    "hair_loss_type",
)
BOOLEAN3 = (
    "itch",
    "pus",
    "cough",
    "crater",
    "vesicle",
    "bleeding",
    "swelling",
    "pregnancy",
    "widespread_face",
    "duration_from_birth",
    "widespread_palm_feet",
    "pregnancy_birth_control_pills",
    "pain_is_pain",
    "hair_loss_exist",
    "location_swelling",
)
MULTI_SELECT = (
    "color_condition",
    "texture",
    "color_pus",
    "primary_locations",
    "secondary_locations",
)

IDENTITY_SCHEMA = {"image_uuid": pl.String, "case_uuid": pl.String, "patient_id": pl.Int64}
DIAGNOSIS_SCHEMA = {
    "diagnosis": pl.String,
    "diagnosis_icd9": pl.String,
    "diagnoses_all": pl.List(pl.String),
}
METADATA_SCHEMA = {
    **{name: pl.Float64 for name in CONTINUOUS},
    **{name: pl.String for name in CATEGORICAL},
    **{name: pl.Boolean for name in BOOLEAN3},
    **{name: pl.List(pl.String) for name in MULTI_SELECT},
}
PROVENANCE_SCHEMA = {
    "vendor_id": pl.String,
    "modified_at": pl.Datetime("us", "UTC"),
    "source_gcs_path": pl.String,
}
CURATION_SCHEMA = {
    "sha256": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "cluster_id": pl.Int64,
    "outlier_score": pl.Float32,
    "quality_score": pl.Float32,
    "split": pl.String,
}

# One row per (case, image): the output of the metadata stage.
IMAGE_RECORDS_SCHEMA = {
    **IDENTITY_SCHEMA,
    **DIAGNOSIS_SCHEMA,
    **METADATA_SCHEMA,
    **PROVENANCE_SCHEMA,
}
# The published manifest: image records plus what the image stages add.
MANIFEST_SCHEMA = {**IMAGE_RECORDS_SCHEMA, **CURATION_SCHEMA}
