"""Asset checks on the manifest. Blocking ones gate publication: a failure publishes nothing."""

import io

import dagster as dg
import polars as pl

from assets.dataset import manifest
from dagster_project import quality_checks
from dagster_project.labels import load_label_file
from dagster_project.partitions import dump_partitions
from dagster_project.publish import latest_version, read_version_file
from resources.curation import CurationConfig
from resources.storage import ObjectStoreResource


def _result(outcome: quality_checks.CheckOutcome, blocking: bool) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        metadata=outcome.metadata,
    )


def _manifest_check(name: str, blocking: bool, description: str):
    """A check that runs one pure function of quality_checks on the manifest."""
    logic = getattr(quality_checks, name)

    @dg.asset_check(
        asset=manifest,
        name=name,
        blocking=blocking,
        description=description,
        partitions_def=dump_partitions,
    )
    def check(manifest: pl.DataFrame) -> dg.AssetCheckResult:
        return _result(logic(manifest), blocking)

    return check


no_split_leaks = _manifest_check(
    "no_split_leaks", True, "No patient and no duplicate cluster in more than one split."
)
no_pii = _manifest_check(
    "no_pii", True, "No PII column; no value that looks like an e-mail, JWT, IP or phone."
)
unique_image_uuid = _manifest_check("unique_image_uuid", True, "image_uuid is unique.")
required_columns = _manifest_check(
    "required_columns", True, "Exactly the manifest columns, with their types."
)
ranges_hold = _manifest_check("ranges_hold", True, "Continuous values within their ranges.")


@dg.asset_check(
    asset=manifest,
    description="Split ratios (in patients) within tolerance.",
    partitions_def=dump_partitions,
    additional_ins={"splits": dg.AssetIn("splits")},
)
def split_ratios(
    manifest: pl.DataFrame, splits: pl.DataFrame, curation: CurationConfig
) -> dg.AssetCheckResult:
    outcome = quality_checks.split_ratios(splits, ratios=tuple(curation.split_ratios))
    return _result(outcome, blocking=False)


@dg.asset_check(
    asset=manifest,
    description="Every class of the label file is present in every split.",
    partitions_def=dump_partitions,
)
def labels_in_every_split(manifest: pl.DataFrame, curation: CurationConfig) -> dg.AssetCheckResult:
    outcome = quality_checks.labels_in_every_split(manifest, load_label_file(curation.label_file))
    return _result(outcome, blocking=False)


@dg.asset_check(
    asset=manifest,
    description="Row count within tolerance of the previous published version.",
    partitions_def=dump_partitions,
)
def row_count_vs_previous(
    manifest: pl.DataFrame, curated: ObjectStoreResource
) -> dg.AssetCheckResult:
    store = curated.store()
    version = latest_version(store)
    data = read_version_file(store, version, "manifest.parquet") if version is not None else None
    previous_rows = pl.read_parquet(io.BytesIO(data)).height if data is not None else None
    outcome = quality_checks.row_count_vs_previous(manifest.height, previous_rows)
    return _result(outcome, blocking=False)
