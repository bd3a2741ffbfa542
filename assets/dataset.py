"""Stage `dataset`: leakage-free splits, the manifest, the image copy, the published version."""

import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from assets.common import DUMP_PARTITIONED, counts_metadata, upstream_metadata
from dagster_project.copy_images import CopyItem, copy_images
from dagster_project.datasheet import write_datasheet
from dagster_project.feature_schema import feature_schema as describe_features
from dagster_project.manifest import build_manifest
from dagster_project.publish import latest_version, publish_version, read_version_file
from dagster_project.splits import SplitConfig, assign_splits
from dagster_project.stats import dataset_stats
from resources.curation import CurationConfig
from resources.storage import BackupStore, ObjectStoreResource

DROP_SOURCES = ("raw_requests", "normalized_diagnoses", "image_records", "manifest")


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def previous_splits(store) -> pl.DataFrame | None:
    """The splits of the latest published version: patients there keep their split."""
    version = latest_version(store)
    if version is None:
        return None
    data = read_version_file(store, version, "splits.parquet")
    return pl.read_parquet(io.BytesIO(data)) if data is not None else None


@dg.asset(group_name="dataset", kinds={"polars"}, **DUMP_PARTITIONED)
def splits(
    context: dg.AssetExecutionContext,
    image_records: pl.DataFrame,
    image_files: pl.DataFrame,
    duplicate_clusters: pl.DataFrame,
    curated: ObjectStoreResource,
    curation: CurationConfig,
) -> dg.Output[pl.DataFrame]:
    """Patients to train/val/test; a patient and every copy of their photos share one split."""
    images = (
        image_records.join(
            image_files.filter(pl.col("status") == "ok").select("image_uuid"), on="image_uuid"
        )
        .join(duplicate_clusters.select("image_uuid", "cluster_id"), on="image_uuid")
        .select("image_uuid", "patient_id", "cluster_id", "diagnosis")
    )
    config = SplitConfig(ratios=tuple(curation.split_ratios), seed=curation.split_seed)
    result = assign_splits(images, config, previous=previous_splits(curated.store()))
    for move in result.moves.iter_rows(named=True):
        context.log.warning(
            f"patient {move['patient_id']} moved {move['from_split']} -> {move['to_split']}: "
            f"{move['reason']}"
        )
    return dg.Output(
        result.splits,
        metadata={
            "moves": result.moves.height,
            "moved_patients": dg.MetadataValue.json(result.moves.head(50).to_dicts()),
            **{
                f"summary/{k}": v
                for k, v in result.summary.items()
                if isinstance(v, int | float | str)
            },
        },
    )


@dg.asset(group_name="dataset", kinds={"polars"}, **DUMP_PARTITIONED)
def manifest(
    image_records: pl.DataFrame,
    image_files: pl.DataFrame,
    duplicate_clusters: pl.DataFrame,
    splits: pl.DataFrame,
    curation: CurationConfig,
) -> dg.Output[pl.DataFrame]:
    """One row per published image: metadata, label, curation columns and split; no PII."""
    rows, counts = build_manifest(
        image_records,
        image_files,
        duplicate_clusters,
        splits,
        duplicate_policy=curation.duplicate_policy,
        conflict_policy=curation.conflict_policy,
    )
    per_split = dict(rows["split"].value_counts().iter_rows())
    return dg.Output(
        rows,
        metadata={
            "images": rows.height,
            **{f"images/{name}": int(n) for name, n in sorted(per_split.items())},
            **counts_metadata(counts),
        },
    )


class CopyConfig(dg.Config):
    """`dry_run`: report what would be copied, copy nothing and publish nothing."""

    dry_run: bool = False


@dg.asset(group_name="dataset", kinds={"s3"}, output_required=False, **DUMP_PARTITIONED)
def curated_images(
    context: dg.AssetExecutionContext,
    config: CopyConfig,
    manifest: pl.DataFrame,
    backup: BackupStore,
    curated: ObjectStoreResource,
    curation: CurationConfig,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    """Every manifest photo as images/<image_uuid>.jpg; re-runs copy only what is missing."""
    mapper = backup.mapper()
    items = [
        CopyItem(
            mapper.key(row["source_gcs_path"]),
            f"images/{row['image_uuid']}.jpg",
            sha256=row["sha256"],
        )
        for row in manifest.select("source_gcs_path", "image_uuid", "sha256").iter_rows(named=True)
    ]
    verb = "would copy" if config.dry_run else "copied"
    report = copy_images(
        backup.store(),
        curated.store(),
        items,
        workers=curation.copy_workers,
        dry_run=config.dry_run,
        record_dir=curation.cache_path("copy_record"),
        progress=lambda done, total: (
            context.log.info(f"{verb} {done}/{total}")
            if done % max(1, total // 10) == 0 or done == total
            else None
        ),
    )
    if report.failed:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in report.failed[:10])
        raise RuntimeError(f"{len(report.failed)} images could not be copied: {reasons}")
    metadata = {
        "copied": report.copied,
        "skipped": report.skipped,
        "failed": 0,
        "bytes": report.bytes,
        "dry_run": config.dry_run,
    }
    if config.dry_run:
        # No materialization: dataset_version downstream is skipped, nothing is published.
        yield dg.AssetObservation(asset_key="curated_images", metadata=metadata)
    else:
        yield dg.MaterializeResult(metadata=metadata)


@dg.asset(group_name="dataset", kinds={"parquet"}, deps=[curated_images], **DUMP_PARTITIONED)
def dataset_version(
    context: dg.AssetExecutionContext,
    manifest: pl.DataFrame,
    splits: pl.DataFrame,
    duplicate_clusters: pl.DataFrame,
    disease_taxonomy: dict,
    curated: ObjectStoreResource,
    curation: CurationConfig,
) -> dg.MaterializeResult:
    """Publishes v<N> whole or not at all; an unchanged dataset publishes nothing new."""
    store = curated.store()
    drops: dict[str, int] = {}
    for asset_name in DROP_SOURCES:
        drops.update(upstream_metadata(context, asset_name))
    previous = latest_version(store)
    previous_stats_bytes = (
        read_version_file(store, previous, "stats.json") if previous is not None else None
    )
    previous_stats = json.loads(previous_stats_bytes) if previous_stats_bytes else None
    stats = dataset_stats(manifest, splits, duplicate_clusters, drops, previous_stats)
    files: dict[str, bytes] = {
        "manifest.parquet": _parquet(manifest),
        "splits.parquet": _parquet(splits.sort("patient_id")),
        "duplicate_clusters.parquet": _parquet(duplicate_clusters),
        "feature_schema.json": json.dumps(describe_features(manifest), indent=1).encode(),
        "disease_taxonomy.json": json.dumps(disease_taxonomy, indent=1, sort_keys=True).encode(),
    }
    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
    with tempfile.TemporaryDirectory() as scratch:
        stats_context = {
            "source_dump": context.partition_key,
            "digest": digest,
            "duplicate_policy": curation.duplicate_policy,
            "conflict_policy": curation.conflict_policy,
            "split_ratios": curation.split_ratios,
            "split_seed": curation.split_seed,
        }
        write_datasheet(manifest, stats, disease_taxonomy, Path(scratch), stats_context)
        for path in sorted(Path(scratch).iterdir()):
            files[path.name] = path.read_bytes()
        files["stats.json"] = json.dumps(stats, indent=1, sort_keys=True, default=str).encode()
        result = publish_version(store, files, content_digest=digest)
    return dg.MaterializeResult(
        metadata={
            "version": result.version,
            "published": result.created,
            "uri": store.uri(f"v{result.version}/"),
            "images": manifest.height,
            "digest": digest,
        }
    )
