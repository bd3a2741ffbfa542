"""Stage `metadata`: diagnoses normalized, the taxonomy, one record per (case, image)."""

import dagster as dg
import polars as pl

from assets.common import DUMP_PARTITIONED, counts_metadata
from dagster_project.diagnoses import (
    disease_taxonomy as build_taxonomy,
)
from dagster_project.diagnoses import (
    latest_annotations,
    load_vocabulary,
    normalize_diagnoses,
)
from dagster_project.records import (
    build_image_records,
    count_orphan_annotations,
    load_test_patient_ids,
    validate_image_records,
)
from resources.curation import CurationConfig


@dg.asset(group_name="metadata", kinds={"polars"}, **DUMP_PARTITIONED)
def normalized_diagnoses(
    raw_annotations: pl.DataFrame,
    raw_requests: pl.DataFrame,
    disease_codes: pl.DataFrame,
    curation: CurationConfig,
) -> dg.Output[pl.DataFrame]:
    """The latest review of each case, with synonyms mapped and non-diagnoses dropped."""
    vocabulary = load_vocabulary(curation.algo_python)
    latest = latest_annotations(raw_annotations)
    diagnoses, counts = normalize_diagnoses(latest, disease_codes, vocabulary)
    counts["annotations_superseded"] = raw_annotations.height - latest.height
    counts["annotations_orphaned"] = count_orphan_annotations(raw_annotations, raw_requests)
    return dg.Output(
        diagnoses,
        metadata={
            "labeled_cases": int(diagnoses["diagnosis"].is_not_null().sum()),
            "distinct_diagnoses": int(diagnoses["diagnosis"].n_unique()),
            **counts_metadata(counts),
        },
    )


@dg.asset(group_name="metadata", kinds={"json"}, **DUMP_PARTITIONED)
def disease_taxonomy(
    disease_codes: pl.DataFrame, normalized_diagnoses: pl.DataFrame, curation: CurationConfig
) -> dg.Output[dict]:
    """ICD-9 mappings, the synonym dictionary and exclusions the labels were made with."""
    taxonomy = build_taxonomy(
        disease_codes, load_vocabulary(curation.algo_python), normalized_diagnoses
    )
    return dg.Output(taxonomy, metadata={"icd9_codes": disease_codes.height})


@dg.asset(group_name="metadata", kinds={"polars"}, **DUMP_PARTITIONED)
def image_records(
    raw_requests: pl.DataFrame, normalized_diagnoses: pl.DataFrame, curation: CurationConfig
) -> dg.Output[pl.DataFrame]:
    """One row per (case, image) of a labeled, non-test case: the manifest's metadata half."""
    test_patients = load_test_patient_ids(curation.test_patients_file)
    records, counts = build_image_records(raw_requests, normalized_diagnoses, test_patients)
    validate_image_records(records)
    return dg.Output(
        records,
        metadata={
            "images": records.height,
            "cases": int(records["case_uuid"].n_unique()),
            "patients": int(records["patient_id"].n_unique()),
            **counts_metadata(counts),
        },
    )
