"""Label files and multi-hot training targets.

Models train on a label file of 25 to 40 diagnosis names (SOURCE_FORMAT.md section 5), one
per line; `common25` is the production list and ships with the package. An image's targets
are the label-file names among its `diagnoses_all`; with `other=True`, images with none of
them form an extra `other` class, downsampled so it cannot swamp the principal classes.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import polars as pl

from dagster_project.splits import seeded_keys

OTHER = "other"
MANIFEST_COLUMNS = ("image_uuid", "split", "diagnoses_all")


def shipped_label_file(name: str) -> Path:
    """Path of a label file shipped in dagster_project/data/labels (e.g. "common25")."""
    return Path(str(files("dagster_project") / "data" / "labels" / f"{name}.txt"))


def load_label_file(path_or_name: str | Path) -> list[str]:
    """Label names, one per non-blank line, in file order.

    A bare name such as "common25" resolves to the shipped file of that name. Blank lines
    are skipped; a repeated name is an error naming the file and line.
    """
    path = Path(path_or_name)
    if isinstance(path_or_name, str) and path.parent == Path(".") and not path.suffix:
        shipped = shipped_label_file(path_or_name)
        if shipped.is_file():
            path = shipped
    if not path.is_file():
        raise FileNotFoundError(f"label file {str(path_or_name)!r} not found (nor shipped)")
    labels: list[str] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise ValueError(f"{path}, line {line_no}: {name!r} repeats line {seen[name]}")
        seen[name] = line_no
        labels.append(name)
    if not labels:
        raise ValueError(f"{path}: no labels")
    return labels


def multi_hot_targets(
    manifest: pl.DataFrame,
    labels: list[str],
    other: bool = False,
    other_ratio: float = 0.10,
    seed: int = 0,
) -> tuple[np.ndarray, pl.DataFrame]:
    """Multi-hot float32 targets over `labels` from each image's `diagnoses_all`.

    Images with at least one label are the principal samples and are all kept. Images with
    none are dropped, or, with `other=True`, get an extra last column `other` and are
    downsampled per split to round(other_ratio x the split's principal samples), picked by a
    seeded hash of image_uuid (deterministic, independent of row order, and stable for old
    images when new ones arrive). Returns the targets and the kept rows (image_uuid, split),
    aligned, in manifest order.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest is missing column(s) {missing} needed for targets")
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be a non-empty list of distinct names, got {labels}")
    if other and OTHER in labels:
        raise ValueError(
            f"label {OTHER!r} is in the label file and also requested as the extra class"
        )
    if other_ratio < 0:
        raise ValueError(f"other_ratio must be >= 0, got {other_ratio}")

    hits = (
        manifest.select(pl.col("diagnoses_all"))
        .with_row_index("row")
        .explode("diagnoses_all")
        .filter(pl.col("diagnoses_all").is_in(labels))
        .select("row", col=pl.col("diagnoses_all").replace_strict(labels, range(len(labels))))
    )
    targets = np.zeros((manifest.height, len(labels) + other), dtype=np.float32)
    targets[hits["row"].to_numpy(), hits["col"].to_numpy()] = 1.0
    principal = targets.any(axis=1)

    keep = principal
    if other:
        keep = principal | _sample_other(manifest, principal, other_ratio, seed)
        targets[~principal, -1] = 1.0
    kept = manifest.select("image_uuid", "split").filter(pl.Series(keep))
    return targets[keep], kept


def _sample_other(
    manifest: pl.DataFrame, principal: np.ndarray, ratio: float, seed: int
) -> np.ndarray:
    """Mask of the non-principal rows kept: per split, those with the smallest seeded hash."""
    rows = manifest.select("image_uuid", "split").with_columns(principal=pl.Series(principal))
    quota = rows.group_by("split").agg(
        quota=(pl.col("principal").sum() * ratio).round().cast(pl.Int64)
    )
    others = (
        rows.with_row_index("row")
        .filter(~pl.col("principal"))
        .with_columns(
            key=pl.Series(seeded_keys(seed, rows["image_uuid"].filter(~rows["principal"])))
        )
        .join(quota, on="split", how="left", nulls_equal=True)
        .filter(pl.col("key").rank("ordinal").over("split") <= pl.col("quota"))
    )
    mask = np.zeros(manifest.height, dtype=bool)
    mask[others["row"].to_numpy()] = True
    return mask
