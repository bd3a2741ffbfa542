"""`stats.json`: the numbers a maintainer compares between dataset versions.

Counts per class and split, patients/images/cases per split, what earlier stages dropped and
why, field completeness, duplicate clusters, demographics, and the change against the
previous published version, so a bad dump shows up as a jump in a number. Counts only:
no identity value ever appears here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from dagster_project.splits import SPLITS

UNASSIGNED = "unassigned"
UNKNOWN = "unknown"
OLDEST_GROUP = 80
# Sections of the stats whose numbers are compared with the previous version.
DELTA_SECTIONS = (
    "totals",
    "per_split",
    "split_patients",
    "class_counts",
    "drops",
    "completeness",
    "duplicate_clusters",
)


def require_columns(frame: pl.DataFrame, columns: Iterable[str], what: str) -> None:
    """Fail with the names of the missing columns, before a cryptic polars error would."""
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}")


def ordered_splits(names: Iterable[str]) -> list[str]:
    """train, val, test first, then any other split name alphabetically."""
    present = set(names)
    return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))


def age_group(age: pl.Expr) -> pl.Expr:
    """Decades of age (`0-9`, `10-19`, ...), `80+` at the top, `unknown` where missing."""
    low = ((age.fill_nan(None) // 10) * 10).clip(0, OLDEST_GROUP).cast(pl.Int64)
    return (
        pl.when(low >= OLDEST_GROUP)
        .then(pl.lit(f"{OLDEST_GROUP}+"))
        .otherwise(pl.format("{}-{}", low, low + 9))
        .fill_null(UNKNOWN)
    )


def dataset_stats(
    manifest: pl.DataFrame,
    splits: pl.DataFrame,
    clusters: pl.DataFrame,
    drops: Mapping[str, int],
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Summary statistics of one dataset version (JSON-able), with deltas vs `previous`.

    `splits` is the (patient_id, split) table, `clusters` the duplicate cluster table (one
    row per member image, with `cluster_id` and `homogeneous`), `drops` the counts of rows
    and values earlier stages dropped or nulled, by reason. `previous` is the stats of the
    previous published version as read back from its `stats.json`.
    """
    require_columns(
        manifest,
        (
            "image_uuid",
            "case_uuid",
            "patient_id",
            "diagnosis",
            "split",
            "age",
            "gender",
            "vendor_id",
        ),
        "manifest",
    )
    require_columns(splits, ("patient_id", "split"), "splits table")
    require_columns(clusters, ("cluster_id", "homogeneous"), "duplicate cluster table")
    rows = manifest.with_columns(
        pl.col("split").fill_null(UNASSIGNED), pl.col("diagnosis").fill_null(UNKNOWN)
    )
    stats: dict[str, Any] = {
        "totals": _counts(rows),
        "per_split": {
            split: _counts(rows.filter(pl.col("split") == split))
            for split in ordered_splits(rows["split"].unique())
        },
        "split_patients": _split_patients(splits),
        "class_counts": _class_counts(rows),
        "images_per_patient": _images_per_patient(rows),
        "drops": {
            "by_reason": {reason: int(drops[reason]) for reason in sorted(drops)},
            "total": int(sum(drops.values())),
        },
        "completeness": {
            name: round(1 - manifest[name].null_count() / manifest.height, 6)
            if manifest.height
            else 0.0
            for name in manifest.columns
        },
        "duplicate_clusters": _cluster_stats(clusters),
        "demographics": _demographics(rows),
    }
    if previous is not None:
        stats["deltas"] = {
            section: _numeric_delta(stats.get(section), previous.get(section))
            for section in DELTA_SECTIONS
        }
    return stats


def _counts(rows: pl.DataFrame) -> dict[str, int]:
    return {
        "images": rows.height,
        "cases": rows["case_uuid"].n_unique(),
        "patients": rows["patient_id"].n_unique(),
        "classes": rows["diagnosis"].n_unique(),
    }


def _split_patients(splits: pl.DataFrame) -> dict[str, Any]:
    per_split = splits.group_by(pl.col("split").fill_null(UNASSIGNED)).agg(
        pl.col("patient_id").n_unique().alias("patients")
    )
    counts = dict(zip(per_split["split"], per_split["patients"], strict=True))
    total = splits["patient_id"].n_unique()
    return {
        "patients": {split: counts[split] for split in ordered_splits(counts)},
        "fractions": {
            split: round(counts[split] / total, 6) if total else 0.0
            for split in ordered_splits(counts)
        },
    }


def _class_counts(rows: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Images per class and split, classes by total descending (ties by name)."""
    split_names = ordered_splits(rows["split"].unique())
    table = (
        rows.group_by("diagnosis", "split")
        .len()
        .pivot(on="split", index="diagnosis", values="len")
        .fill_null(0)
    )
    table = table.with_columns(pl.sum_horizontal(split_names).alias("total")).sort(
        ["total", "diagnosis"], descending=[True, False]
    )
    return {
        row["diagnosis"]: {name: int(row[name]) for name in (*split_names, "total")}
        for row in table.iter_rows(named=True)
    }


def _images_per_patient(rows: pl.DataFrame) -> dict[str, Any]:
    per_patient = rows.group_by("patient_id").len()["len"]
    if per_patient.is_empty():
        return {"histogram": {}, "min": 0, "median": 0, "mean": 0, "max": 0}
    return {
        "histogram": _histogram(per_patient),
        "min": int(per_patient.min()),
        "median": float(per_patient.median()),
        "mean": round(float(per_patient.mean()), 6),
        "max": int(per_patient.max()),
    }


def _cluster_stats(clusters: pl.DataFrame) -> dict[str, Any]:
    per_cluster = clusters.group_by("cluster_id").agg(
        pl.len().alias("size"), pl.col("homogeneous").all().alias("homogeneous")
    )
    multi = per_cluster.filter(pl.col("size") > 1)
    mixed = multi.filter(~pl.col("homogeneous"))
    return {
        "clusters": per_cluster.height,
        "images": clusters.height,
        "size_histogram": _histogram(per_cluster["size"]),
        "multi_image_clusters": multi.height,
        "images_in_multi_image_clusters": int(multi["size"].sum()),
        "homogeneous": multi.height - mixed.height,
        "non_homogeneous": mixed.height,
        "images_in_non_homogeneous": int(mixed["size"].sum()),
    }


def _demographics(rows: pl.DataFrame) -> dict[str, Any]:
    """Age group x gender per case (age and gender belong to a case), and per vendor."""
    cases = rows.unique("case_uuid", keep="first").select(
        age_group(pl.col("age")).alias("age_group"),
        pl.col("gender").fill_null(UNKNOWN),
    )
    table = cases.group_by("age_group", "gender").len()
    age_gender: dict[str, dict[str, int]] = {}
    for group, gender, n in table.sort("age_group", "gender").iter_rows():
        age_gender.setdefault(group, {})[gender] = n
    vendors = (
        rows.group_by(pl.col("vendor_id").fill_null(UNKNOWN))
        .agg(
            pl.len().alias("images"),
            pl.col("case_uuid").n_unique().alias("cases"),
            pl.col("patient_id").n_unique().alias("patients"),
        )
        .sort(["images", "vendor_id"], descending=[True, False])
    )
    return {
        "age_group_by_gender_cases": dict(sorted(age_gender.items(), key=_age_order)),
        "vendors": {
            vendor: {"images": images, "cases": cases, "patients": patients}
            for vendor, images, cases, patients in vendors.iter_rows()
        },
    }


def _age_order(item: tuple[str, Any]) -> float:
    label = item[0]
    return float("inf") if label == UNKNOWN else float(label.split("-")[0].rstrip("+"))


def _histogram(values: pl.Series) -> dict[str, int]:
    """Counts of each integer value, in increasing order of the value (string keys: JSON)."""
    counts = values.value_counts(name="n").sort(values.name)
    return {str(value): int(n) for value, n in counts.iter_rows()}


def _numeric_delta(current: Any, previous: Any) -> Any:
    """current - previous for every number in two nested dicts; unchanged entries left out.

    A key present on one side only counts as 0 on the other, so new and vanished classes
    show up as their full count.
    """
    if isinstance(current, Mapping) or isinstance(previous, Mapping):
        now = current if isinstance(current, Mapping) else {}
        before = previous if isinstance(previous, Mapping) else {}
        keys = [*now, *(key for key in before if key not in now)]
        deltas = {key: _numeric_delta(now.get(key), before.get(key)) for key in keys}
        return {key: delta for key, delta in deltas.items() if delta}
    if not (_is_number(current) or _is_number(previous)):
        return None
    delta = (current if _is_number(current) else 0) - (previous if _is_number(previous) else 0)
    return round(delta, 6) if isinstance(delta, float) else delta


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
