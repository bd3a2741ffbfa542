"""The manifest: image records joined with what the image stages learned, under the policies."""

from __future__ import annotations

from collections import Counter

import polars as pl

from dagster_project.schema import MANIFEST_SCHEMA

DUPLICATE_POLICIES = ("collapse_exact", "keep_all", "representative_only")
CONFLICT_POLICIES = ("keep", "drop")


def build_manifest(
    records: pl.DataFrame,
    files: pl.DataFrame,
    clusters: pl.DataFrame,
    splits: pl.DataFrame,
    duplicate_policy: str = "collapse_exact",
    conflict_policy: str = "keep",
) -> tuple[pl.DataFrame, Counter[str]]:
    """One row per published image, columns exactly MANIFEST_SCHEMA.

    `clusters` has one row per readable image (image_uuid, cluster_id, representative,
    homogeneous, outlier_score); `splits` one row per patient. Grouping for splits happened
    before this collapse, so every copy of a photo already shares its split.
    """
    if duplicate_policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicate_policy must be one of {DUPLICATE_POLICIES}")
    if conflict_policy not in CONFLICT_POLICIES:
        raise ValueError(f"conflict_policy must be one of {CONFLICT_POLICIES}")
    counts: Counter[str] = Counter()
    for status, n in files.filter(pl.col("status") != "ok")["status"].value_counts().iter_rows():
        counts[f"image_{status}"] = n
    image_columns = files.filter(pl.col("status") == "ok").select(
        "image_uuid", "sha256", "width", "height", "quality_score"
    )
    rows = (
        records.join(image_columns, on="image_uuid", how="inner")
        .join(
            clusters.select(
                "image_uuid", "cluster_id", "representative", "homogeneous", "outlier_score"
            ),
            on="image_uuid",
            how="left",
        )
        .join(splits.select("patient_id", "split"), on="patient_id", how="left")
    )
    unassigned = rows.filter(pl.col("split").is_null() | pl.col("cluster_id").is_null()).height
    if unassigned:
        raise ValueError(f"{unassigned} manifest rows have no split or no duplicate cluster")
    if conflict_policy == "drop":
        conflicted = pl.col("homogeneous").not_()
        counts["conflicting_cluster_dropped"] = rows.filter(conflicted).height
        rows = rows.filter(~conflicted)
    before = rows.height
    if duplicate_policy == "collapse_exact":
        rows = rows.sort("modified_at", "image_uuid", nulls_last=True).unique(
            "sha256", keep="first", maintain_order=True
        )
    elif duplicate_policy == "representative_only":
        rows = rows.filter(pl.col("representative") == pl.col("image_uuid"))
    counts[f"duplicate_{duplicate_policy}"] = before - rows.height
    manifest = rows.select(
        [pl.col(name).cast(dtype) for name, dtype in MANIFEST_SCHEMA.items()]
    ).sort("case_uuid", "image_uuid")
    return manifest, counts
