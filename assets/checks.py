"""Checks on the manifest. Blocking ones gate publication: a failure publishes nothing.

All run in one step (one process on the multiprocess executor) since they read the same
manifest; each is still its own check in the UI, with its own severity.
"""

import io
from collections.abc import Iterator

import dagster as dg
import polars as pl

from dagster_project import quality_checks
from dagster_project.labels import load_label_file
from dagster_project.partitions import dump_partitions
from dagster_project.publish import latest_version, read_version_file
from resources.curation import CurationConfig
from resources.storage import ObjectStoreResource

BLOCKING = {
    "no_split_leaks": "No patient and no duplicate cluster in more than one split.",
    "no_pii": "No PII column; no value that looks like an e-mail, JWT, IP or phone.",
    "unique_image_uuid": "image_uuid is unique.",
    "required_columns": "Exactly the manifest columns, with their types.",
    "ranges_hold": "Continuous values within their ranges.",
}
WARNING = {
    "split_ratios": "Split ratios (in patients) within tolerance.",
    "labels_in_every_split": "Every class of the label file is present in every split.",
    "row_count_vs_previous": "Row count within tolerance of the previous published version.",
}


def _spec(name: str, description: str, blocking: bool) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name,
        asset="manifest",
        description=description,
        blocking=blocking,
        partitions_def=dump_partitions,
        additional_deps=["splits"],
    )


def _previous_rows(store) -> int | None:
    version = latest_version(store)
    data = read_version_file(store, version, "manifest.parquet") if version is not None else None
    return pl.read_parquet(io.BytesIO(data)).height if data is not None else None


@dg.multi_asset_check(
    specs=[_spec(name, text, True) for name, text in BLOCKING.items()]
    + [_spec(name, text, False) for name, text in WARNING.items()],
    ins={"manifest": dg.AssetIn("manifest"), "splits": dg.AssetIn("splits")},
)
def manifest_checks(
    manifest: pl.DataFrame,
    splits: pl.DataFrame,
    curation: CurationConfig,
    curated: ObjectStoreResource,
) -> Iterator[dg.AssetCheckResult]:
    outcomes = {name: getattr(quality_checks, name)(manifest) for name in BLOCKING}
    outcomes["split_ratios"] = quality_checks.split_ratios(
        splits, ratios=tuple(curation.split_ratios)
    )
    outcomes["labels_in_every_split"] = quality_checks.labels_in_every_split(
        manifest, load_label_file(curation.label_file)
    )
    outcomes["row_count_vs_previous"] = quality_checks.row_count_vs_previous(
        manifest.height, _previous_rows(curated.store())
    )
    for name, outcome in outcomes.items():
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key="manifest",
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR
            if name in BLOCKING
            else dg.AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata=outcome.metadata,
        )
