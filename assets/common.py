"""Small helpers shared by the asset modules."""

from collections.abc import Mapping

import dagster as dg

from dagster_project.partitions import dump_partitions

DUMP_PARTITIONED = {"partitions_def": dump_partitions}


def counts_metadata(counts: Mapping[str, int], prefix: str = "count") -> dict[str, int]:
    """Counts of dropped / nulled things as metadata entries the UI shows one by one.

    Keys come from code (reason names), never from data, so no PII can pass through here.
    """
    return {f"{prefix}/{reason}": int(value) for reason, value in sorted(counts.items())}


def upstream_metadata(
    context: dg.AssetExecutionContext, asset: str, prefix: str = "count/"
) -> dict[str, int]:
    """The counts an upstream asset recorded for this partition (for stats and the datasheet)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset),
            asset_partitions=[context.partition_key] if context.has_partition_key else None,
        ),
        limit=1,
    ).records
    if not records:
        return {}
    metadata = records[0].asset_materialization.metadata
    return {
        key[len(prefix) :]: int(value.value)
        for key, value in metadata.items()
        if key.startswith(prefix)
    }
