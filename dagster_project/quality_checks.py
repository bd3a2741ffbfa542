"""The asset checks' logic: each check is a pure function of the published tables.

Each returns a `CheckOutcome` the Dagster `@asset_check`s turn into an `AssetCheckResult`
(blocking where noted: a bad output must not be published). Metadata holds counts and at
most `MAX_EXAMPLES` examples; an example names the image, patient or column, never a PII
value it found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from dagster_project.schema import CONTINUOUS, MANIFEST_SCHEMA, PII_COLUMNS
from dagster_project.splits import SPLITS
from dagster_project.stats import require_columns

MAX_EXAMPLES = 5

# Parts of a column name that mark it as PII whatever the rest of the name says.
PII_NAME_PARTS = (
    "email", "e_mail", "phone", "header", "token", "crypt", "password", "secret",
    "ip_address", "free_text", "modified_by",
)  # fmt: skip

# Rust-regex patterns (no look-around). Where a pattern could also match inside a uuid, a
# hash, a path or a longer number, it must start and end at a character that cannot
# continue such a token: "(?:^|[^...])" and "(?:[^...]|$)" stand in for look-around.
_NOT_TOKEN = r"[^0-9A-Za-z_.:/\-]"
_START = rf"(?:^|{_NOT_TOKEN})"
_END = rf"(?:{_NOT_TOKEN}|$)"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HEX4 = r"[0-9A-Fa-f]{1,4}"
PII_PATTERNS: dict[str, str] = {
    "e-mail": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    "JWT": r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
    "IPv4 address": rf"{_START}{_OCTET}(?:\.{_OCTET}){{3}}{_END}",
    # Full eight groups, or a "::" compressed form with at least one group after it.
    "IPv6 address": (
        rf"(?:^|[^0-9A-Za-z_:])(?:(?:{_HEX4}:){{7}}{_HEX4}"
        rf"|(?:(?:{_HEX4}:){{1,6}}|:):(?:{_HEX4}:){{0,5}}{_HEX4})(?:[^0-9A-Za-z_:]|$)"
    ),
    # International (+972-54-123-4567), Israeli (054-1234567, 03-1234567, 0541234567) and
    # North-American ((555) 123-4567, 555-123-4567) numbers.
    "phone number": (
        rf"{_START}(?:\+[0-9]{{1,3}}(?:[ .\-]?\(?[0-9]{{2,4}}\)?){{2,5}}"
        rf"|0[0-9]{{1,2}}[ \-][0-9]{{3}}\-?[0-9]{{4}}|05[0-9]{{8}}"
        rf"|\([0-9]{{3}}\) ?[0-9]{{3}}[ .\-][0-9]{{4}}|[0-9]{{3}}[.\-][0-9]{{3}}[.\-][0-9]{{4}})"
        rf"{_END}"
    ),
}
_ANY_PII = "|".join(f"(?:{pattern})" for pattern in PII_PATTERNS.values())


@dataclass(frozen=True)
class CheckOutcome:
    """What a check found: pass/fail, one line for the UI, JSON-able counts and examples."""

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def no_split_leaks(manifest: pl.DataFrame) -> CheckOutcome:
    """Blocking: a patient or a duplicate cluster in two splits leaks test images into training.

    Rows without a split fail the check too: they could hide a leak.
    """
    require_columns(manifest, ("image_uuid", "patient_id", "cluster_id", "split"), "manifest")
    unassigned = manifest.filter(pl.col("split").is_null())
    leaks = {key: _leaking(manifest, key) for key in ("patient_id", "cluster_id")}
    metadata: dict[str, Any] = {
        "unassigned_rows": unassigned.height,
        "unassigned_examples": unassigned["image_uuid"].head(MAX_EXAMPLES).to_list(),
    }
    for key, leaking in leaks.items():
        metadata[f"leaking_{key}s"] = leaking.height
        metadata[f"leaking_{key}_examples"] = [
            {key: row[key], "splits": sorted(row["splits"])}
            for row in leaking.head(MAX_EXAMPLES).iter_rows(named=True)
        ]
    passed = unassigned.height == 0 and all(leaking.is_empty() for leaking in leaks.values())
    description = (
        "every patient and duplicate cluster is in one split"
        if passed
        else f"{leaks['patient_id'].height} patient(s) and {leaks['cluster_id'].height} "
        f"duplicate cluster(s) span several splits; {unassigned.height} row(s) have no split"
    )
    return CheckOutcome(passed, description, metadata)


def _leaking(manifest: pl.DataFrame, key: str) -> pl.DataFrame:
    return (
        manifest.filter(pl.col(key).is_not_null() & pl.col("split").is_not_null())
        .group_by(key)
        .agg(pl.col("split").unique().alias("splits"))
        .filter(pl.col("splits").list.len() > 1)
        .sort(key)
    )


def no_pii(manifest: pl.DataFrame) -> CheckOutcome:
    """Blocking: no PII column, and no string value that looks like contact or secret data.

    Every string and list-of-string column is scanned for e-mails, JWTs, IP addresses and
    phone numbers. Examples name the column, the row and the kind, never the value.
    """
    pii_columns = sorted(
        name
        for name in manifest.columns
        if name in PII_COLUMNS or any(part in name.lower() for part in PII_NAME_PARTS)
    )
    hits: dict[str, dict[str, int]] = {}
    examples: list[dict[str, Any]] = []
    # The row's image_uuid names an example, unless that uuid is itself what was flagged.
    example_uuid = (
        [
            pl.when(_matches("image_uuid", pl.String(), _ANY_PII))
            .then(None)
            .otherwise(pl.col("image_uuid"))
            .alias("image_uuid")
        ]
        if "image_uuid" in manifest.columns
        else []
    )
    for name, dtype in _text_columns(manifest).items():
        suspects = manifest.with_row_index("row").filter(_matches(name, dtype, _ANY_PII))
        if suspects.is_empty():
            continue
        kinds = suspects.select(
            "row",
            *(_matches(name, dtype, pattern).alias(kind) for kind, pattern in PII_PATTERNS.items()),
            *example_uuid,
        )
        hits[name] = {kind: int(kinds[kind].sum()) for kind in PII_PATTERNS if kinds[kind].any()}
        for row in kinds.head(MAX_EXAMPLES - len(examples)).iter_rows(named=True):
            kind = next(kind for kind in PII_PATTERNS if row[kind])
            examples.append(
                {
                    "column": name,
                    "row": row["row"],
                    "image_uuid": row.get("image_uuid"),
                    "looks_like": kind,
                }
            )
    flagged_values = sum(sum(kinds.values()) for kinds in hits.values())
    passed = not pii_columns and not hits
    description = (
        "no PII column and no value that looks like PII"
        if passed
        else f"{len(pii_columns)} PII column(s); {flagged_values} value(s) in {len(hits)} "
        "column(s) look like e-mails, JWTs, IP addresses or phone numbers"
    )
    metadata = {
        "pii_columns": pii_columns,
        "flagged_values": flagged_values,
        "flagged_by_column": hits,
        "examples": examples,
    }
    return CheckOutcome(passed, description, metadata)


def _text_columns(frame: pl.DataFrame) -> dict[str, pl.DataType]:
    """The string-like columns (plain or list of strings) a PII value could hide in."""
    text = (pl.String, pl.Categorical, pl.Enum)
    return {
        name: dtype
        for name, dtype in frame.schema.items()
        if isinstance(dtype, text) or (isinstance(dtype, pl.List) and isinstance(dtype.inner, text))
    }


def _matches(name: str, dtype: pl.DataType, pattern: str) -> pl.Expr:
    """Whether the string (or any string of the list) in column `name` matches `pattern`."""
    if isinstance(dtype, pl.List):
        return pl.col(name).list.eval(pl.element().cast(pl.String).str.contains(pattern)).list.any()
    return pl.col(name).cast(pl.String).str.contains(pattern)


def unique_image_uuid(manifest: pl.DataFrame) -> CheckOutcome:
    """Blocking: `image_uuid` is the key of the manifest and of the curated file names."""
    require_columns(manifest, ("image_uuid",), "manifest")
    uuids = manifest["image_uuid"]
    repeated = uuids.drop_nulls().value_counts(name="n").filter(pl.col("n") > 1).sort("image_uuid")
    nulls = uuids.null_count()
    passed = repeated.is_empty() and nulls == 0
    description = (
        "image_uuid is unique and never null"
        if passed
        else f"{repeated.height} image_uuid(s) repeated, {nulls} null"
    )
    metadata = {
        "repeated_uuids": repeated.height,
        "extra_rows": int(repeated["n"].sum() - repeated.height),
        "null_uuids": nulls,
        "examples": repeated["image_uuid"].head(MAX_EXAMPLES).to_list(),
    }
    return CheckOutcome(passed, description, metadata)


def required_columns(
    manifest: pl.DataFrame, schema: Mapping[str, pl.DataType] = MANIFEST_SCHEMA
) -> CheckOutcome:
    """Blocking: the manifest has exactly the schema's columns with exactly their dtypes."""
    missing = [name for name in schema if name not in manifest.columns]
    unexpected = [name for name in manifest.columns if name not in schema]
    wrong = {
        name: {"expected": str(schema[name]), "found": str(dtype)}
        for name, dtype in manifest.schema.items()
        if name in schema and dtype != schema[name]
    }
    passed = not (missing or unexpected or wrong)
    description = (
        f"all {len(schema)} columns present with their types"
        if passed
        else f"{len(missing)} column(s) missing, {len(unexpected)} unexpected, "
        f"{len(wrong)} of the wrong type"
    )
    metadata = {"missing": missing, "unexpected": unexpected, "wrong_type": wrong}
    return CheckOutcome(passed, description, metadata)


def ranges_hold(
    manifest: pl.DataFrame, ranges: Mapping[str, tuple[float, float]] = CONTINUOUS
) -> CheckOutcome:
    """Continuous fields lie within their validation ranges (ends included), never NaN."""
    require_columns(manifest, ranges, "manifest")
    out_of_range: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    for name, (low, high) in ranges.items():
        value = pl.col(name)
        bad = manifest.filter(value.is_nan() | (value < low) | (value > high))
        if bad.is_empty():
            continue
        out_of_range[name] = bad.height
        examples.extend(
            {"column": name, "image_uuid": uuid, "value": _json_number(v), "range": [low, high]}
            for uuid, v in bad.select("image_uuid", name).head(MAX_EXAMPLES).iter_rows()
        )
    passed = not out_of_range
    description = (
        "every continuous value within its range"
        if passed
        else f"{sum(out_of_range.values())} value(s) out of range in {len(out_of_range)} column(s)"
    )
    metadata = {"out_of_range": out_of_range, "examples": examples[:MAX_EXAMPLES]}
    return CheckOutcome(passed, description, metadata)


def _json_number(value: float) -> float | str:
    """NaN and infinities as text: strict JSON has no literal for them."""
    return value if math.isfinite(value) else str(value)


def split_ratios(
    splits: pl.DataFrame,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    tolerance: float = 0.02,
) -> CheckOutcome:
    """Warn: the share of patients in train/val/test is within `tolerance` of `ratios`."""
    require_columns(splits, ("patient_id", "split"), "splits table")
    if len(ratios) != len(SPLITS):
        raise ValueError(f"ratios must give one share per split {SPLITS}, got {list(ratios)}")
    total = splits["patient_id"].n_unique()
    per_split = splits.group_by("split").agg(pl.col("patient_id").n_unique().alias("patients"))
    counts = dict(zip(per_split["split"], per_split["patients"], strict=True))
    observed = {split: counts.get(split, 0) / total if total else 0.0 for split in SPLITS}
    off = {
        split: round(observed[split] - expected, 6)
        for split, expected in zip(SPLITS, ratios, strict=True)
        if abs(observed[split] - expected) > tolerance
    }
    others = sorted(str(split) for split in counts if split not in SPLITS)
    passed = total > 0 and not off and not others
    description = (
        f"patient shares within {tolerance} of {list(ratios)}"
        if passed
        else f"patient shares off by more than {tolerance}: {off or 'no patients'}"
        + (f"; unknown splits {others}" if others else "")
    )
    metadata = {
        "patients": total,
        "patients_per_split": {split: counts.get(split, 0) for split in SPLITS},
        "observed": {split: round(share, 6) for split, share in observed.items()},
        "expected": dict(zip(SPLITS, ratios, strict=True)),
        "off_by": off,
        "unknown_splits": others,
    }
    return CheckOutcome(passed, description, metadata)


def labels_in_every_split(manifest: pl.DataFrame, labels: Sequence[str]) -> CheckOutcome:
    """Warn: every class of the label file has images in train, val and test."""
    require_columns(manifest, ("diagnosis", "split"), "manifest")
    present = (
        manifest.filter(pl.col("diagnosis").is_in(list(labels)))
        .group_by("split")
        .agg(pl.col("diagnosis").unique())
    )
    found = dict(zip(present["split"], present["diagnosis"].to_list(), strict=True))
    missing = {split: sorted(set(labels) - set(found.get(split, []))) for split in SPLITS}
    missing = {split: names for split, names in missing.items() if names}
    n_missing = sum(len(names) for names in missing.values())
    passed = not missing
    description = (
        f"all {len(set(labels))} labels present in every split"
        if passed
        else f"{n_missing} (label, split) pair(s) without images"
    )
    metadata = {
        "labels": len(set(labels)),
        "missing_pairs": n_missing,
        "missing_per_split": {split: len(names) for split, names in missing.items()},
        "examples": [
            {"split": split, "label": name} for split, names in missing.items() for name in names
        ][:MAX_EXAMPLES],
    }
    return CheckOutcome(passed, description, metadata)


def row_count_vs_previous(
    current_rows: int, previous_rows: int | None, tolerance: float = 0.2
) -> CheckOutcome:
    """Warn: a version whose row count moved by more than `tolerance` suggests a bad dump."""
    if previous_rows is None:
        return CheckOutcome(True, "no previous version to compare with", {"rows": current_rows})
    if previous_rows == 0:
        change = 0.0 if current_rows == 0 else float("inf")
    else:
        change = (current_rows - previous_rows) / previous_rows
    passed = abs(change) <= tolerance
    description = f"{current_rows} rows vs {previous_rows} before" + (
        "" if passed else f": moved by more than {tolerance:.0%}"
    )
    metadata = {
        "rows": current_rows,
        "previous_rows": previous_rows,
        "relative_change": round(change, 6) if previous_rows else None,
        "tolerance": tolerance,
    }
    return CheckOutcome(passed, description, metadata)
