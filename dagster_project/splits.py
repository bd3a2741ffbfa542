"""Leakage-free, stratified, sticky train/val/test splits.

The unit of assignment is the *group*: a connected component of "same patient" ∪ "same
duplicate cluster". Two patients who share a (near-)duplicate photo therefore always share a
split, so no image can leak from training into evaluation through a copy.

Groups are assigned to train/val/test by patient counts, stratified by the group's primary
diagnosis, with a proportional fill (Sainte-Laguë): each group, largest first, goes to the
split whose count for the group's class is furthest below its target. A class with at least
`MIN_GROUPS_TO_SPREAD` groups first gets one group in every split, so rare classes can still
be evaluated. Assignment is sticky: patients of the previous published version keep their
split; a group that now links patients of different previous splits moves wholly to train
(the DermaMNIST-C correction) and every move is reported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SPLITS = ("train", "val", "test")
MIN_GROUPS_TO_SPREAD = 3
IMAGE_COLUMNS = ("image_uuid", "patient_id", "cluster_id")


@dataclass(frozen=True)
class SplitConfig:
    """How to split: target patient ratios for (train, val, test), the seed that orders
    equally sized groups, and the column whose value is the stratum of an image."""

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    stratify_by: str = "diagnosis"

    def __post_init__(self) -> None:
        if len(self.ratios) != len(SPLITS) or any(r < 0 for r in self.ratios):
            raise ValueError(
                f"SplitConfig.ratios must be 3 non-negative numbers, got {self.ratios}"
            )
        if not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6):
            raise ValueError(f"SplitConfig.ratios must sum to 1, got {self.ratios}")


@dataclass(frozen=True)
class SplitResult:
    """`splits`: patient_id, split (every current patient, plus previous patients absent now,
    who keep their split so they cannot come back elsewhere); `image_splits`: image_uuid,
    split, group_id; `moves`: patient_id, from_split, to_split, reason; `summary`: counts."""

    splits: pl.DataFrame
    image_splits: pl.DataFrame
    moves: pl.DataFrame
    summary: dict[str, Any]


def components(n_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected-component label of each of `n_nodes` nodes of the undirected graph with
    edges (u[i], v[i])."""
    graph = coo_matrix(
        (np.ones(len(u), dtype=np.int8), (np.asarray(u, np.int64), np.asarray(v, np.int64))),
        shape=(n_nodes, n_nodes),
    )
    return connected_components(graph, directed=False)[1]


def _dense_codes(values: pl.Series) -> np.ndarray:
    """0-based codes in sorted order of the distinct values; null stays null (as -1)."""
    return (values.rank("dense").cast(pl.Int64) - 1).fill_null(-1).to_numpy()


def split_groups(
    patient_ids: Sequence | pl.Series, cluster_ids: Sequence | pl.Series
) -> np.ndarray:
    """Group id of each image: connected components of "same patient" ∪ "same cluster".

    A null cluster_id links nothing. Group ids are numbered by each group's smallest
    patient_id, so they do not depend on the order of the rows.
    """
    patients = pl.Series(patient_ids)
    clusters = pl.Series(cluster_ids)
    if len(patients) != len(clusters):
        raise ValueError(f"{len(patients)} patient_ids but {len(clusters)} cluster_ids")
    if patients.null_count():
        raise ValueError(f"{patients.null_count()} images have no patient_id")
    p_code = _dense_codes(patients)
    c_code = _dense_codes(clusters)
    n_patients = int(p_code.max()) + 1 if len(p_code) else 0
    linked = c_code >= 0
    n_nodes = n_patients + (int(c_code.max()) + 1 if linked.any() else 0)
    labels = components(n_nodes, p_code[linked], n_patients + c_code[linked])[:n_patients]
    # Renumber components by their smallest patient code (labels of patients 0..P-1).
    first = np.full(labels.max() + 1 if n_patients else 0, n_patients, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n_patients))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[labels][p_code]


def seeded_keys(seed: int, values: pl.Series) -> np.ndarray:
    """A pseudo-random uint64 per value (blake2b of seed and value): a seeded order that
    depends on neither row order nor library versions, and keeps its order for old values
    when new ones arrive."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{v}".encode(), digest_size=8).digest(), "big")
            for v in values.to_list()
        ],
        dtype=np.uint64,
    )


def _check_images(images: pl.DataFrame, stratify_by: str) -> None:
    missing = [c for c in (*IMAGE_COLUMNS, stratify_by) if c not in images.columns]
    if missing:
        raise ValueError(f"images is missing column(s) {missing} needed to assign splits")
    no_patient = images.filter(pl.col("patient_id").is_null())
    if no_patient.height:
        raise ValueError(
            f"images: {no_patient.height} rows have no patient_id "
            f"(first image_uuid {no_patient['image_uuid'][0]!r})"
        )
    dup = images.filter(pl.col("image_uuid").is_duplicated())
    if dup.height:
        raise ValueError(f"images: image_uuid {dup['image_uuid'][0]!r} appears more than once")


def _check_previous(previous: pl.DataFrame, patient_dtype: pl.DataType) -> pl.DataFrame:
    missing = [c for c in ("patient_id", "split") if c not in previous.columns]
    if missing:
        raise ValueError(f"previous splits are missing column(s) {missing}")
    previous = previous.select(pl.col("patient_id").cast(patient_dtype), "split").unique()
    bad = previous.filter(~pl.col("split").is_in(SPLITS))
    if bad.height:
        raise ValueError(
            f"previous splits: patient {bad['patient_id'][0]!r} has split "
            f"{bad['split'][0]!r}; expected one of {SPLITS}"
        )
    dup = previous.filter(pl.col("patient_id").is_duplicated())
    if dup.height:
        raise ValueError(
            f"previous splits: patient {dup['patient_id'][0]!r} is in more than one split"
        )
    return previous


def _group_table(images: pl.DataFrame, stratify_by: str, previous: pl.DataFrame) -> pl.DataFrame:
    """One row per group: size in patients, primary stratum, previous splits of its patients."""
    patients = (
        images.select("patient_id", "group_id")
        .unique()
        .join(previous.rename({"split": "prev_split"}), on="patient_id", how="left")
    )
    groups = patients.group_by("group_id").agg(
        n_patients=pl.len(),
        min_patient=pl.col("patient_id").min(),
        prev_splits=pl.col("prev_split").drop_nulls().unique().sort(),
    )
    # Primary stratum: the most frequent among the group's images; ties -> smallest value.
    primary = (
        images.group_by("group_id", stratify_by)
        .agg(n=pl.len())
        .sort(["group_id", "n", stratify_by], descending=[False, True, False], nulls_last=True)
        .group_by("group_id", maintain_order=True)
        .first()
        .select("group_id", pl.col(stratify_by).alias("stratum"))
    )
    return groups.join(primary, on="group_id").sort("group_id")


def _fill(
    strata: list[int], sizes: list[int], fixed: list[int], ratios: Sequence[float]
) -> list[int]:
    """Split index for each group; fixed[i] >= 0 pins group i to that split.

    Free groups are taken in the given order and each goes to the split minimising, in
    turn: (a) 0 if its class has >= MIN_GROUPS_TO_SPREAD groups and none in that split yet;
    (b) the class's Sainte-Laguë fill (count + size/2) / target; (c) the overall fill
    count / target; (d) the split's index. Splits with ratio 0 are never chosen.
    A class with fewer groups than 1 / (smallest ratio) cannot hold the ratios itself, so
    for it (b) and (c) swap: its groups fill the splits overall (the long tail of rare
    diagnoses would otherwise all land in train).
    """
    n_strata = max(strata, default=-1) + 1
    total = [0] * n_strata
    n_groups = [0] * n_strata
    count = [[0, 0, 0] for _ in range(n_strata)]
    overall = [0, 0, 0]
    for c, size, f in zip(strata, sizes, fixed, strict=True):
        total[c] += size
        n_groups[c] += 1
        if f >= 0:
            count[c][f] += size
            overall[f] += size
    grand_total = sum(total)
    open_splits = [s for s in range(len(SPLITS)) if ratios[s] > 0]
    out = list(fixed)
    for i, (c, size, f) in enumerate(zip(strata, sizes, fixed, strict=True)):
        if f >= 0:
            continue
        cc = count[c]
        spread = n_groups[c] >= MIN_GROUPS_TO_SPREAD
        stratify = n_groups[c] * min(ratios[s] for s in open_splits) >= 1

        def key(
            s: int,
            cc: list[int] = cc,
            c: int = c,
            size: int = size,
            spread: bool = spread,
            stratify: bool = stratify,
        ) -> tuple:
            by_class = (cc[s] + size / 2) / (ratios[s] * total[c])
            by_overall = (overall[s] + size / 2) / (ratios[s] * grand_total)
            fills = (by_class, by_overall) if stratify else (by_overall, by_class)
            return (not (spread and cc[s] == 0), *fills, s)

        best = min(open_splits, key=key)
        cc[best] += size
        overall[best] += size
        out[i] = best
    return out


def assign_splits(
    images: pl.DataFrame,
    config: SplitConfig | None = None,
    previous: pl.DataFrame | None = None,
) -> SplitResult:
    """Assign every image's group to train/val/test (see the module docstring).

    images: one row per image with image_uuid, patient_id, cluster_id (duplicate cluster,
    null = none) and the `config.stratify_by` column. previous: the previous published
    splits (patient_id, split) or None. Deterministic for a seed and the set of rows.
    """
    config = config or SplitConfig()
    _check_images(images, config.stratify_by)
    patient_dtype = images.schema["patient_id"]
    if previous is None:
        previous = pl.DataFrame(schema={"patient_id": patient_dtype, "split": pl.String})
    previous = _check_previous(previous, patient_dtype)

    img = images.select("image_uuid", "patient_id", config.stratify_by).with_columns(
        group_id=pl.Series(split_groups(images["patient_id"], images["cluster_id"]))
    )
    groups = _group_table(img, config.stratify_by, previous).with_columns(
        n_prev=pl.col("prev_splits").list.len(),
        stratum_code=pl.col("stratum").rank("dense").fill_null(0).cast(pl.Int64),
        fixed=pl.when(pl.col("prev_splits").list.len() == 1)
        .then(pl.col("prev_splits").list.first().replace_strict(SPLITS, range(3), default=-1))
        .when(pl.col("prev_splits").list.len() > 1)
        .then(0)
        .otherwise(-1),
    )
    groups = groups.with_columns(
        tiebreak=pl.Series(seeded_keys(config.seed, groups["min_patient"]))
    ).sort(["n_patients", "tiebreak", "group_id"], descending=[True, False, False])
    assigned = _fill(
        groups["stratum_code"].to_list(),
        groups["n_patients"].to_list(),
        groups["fixed"].to_list(),
        config.ratios,
    )
    groups = groups.with_columns(split=pl.Series([SPLITS[s] for s in assigned])).sort("group_id")
    group_split = groups.select("group_id", "split")

    patients = img.select("patient_id", "group_id").unique().join(group_split, on="group_id")
    absent = previous.join(patients, on="patient_id", how="anti")
    splits = pl.concat([patients.select("patient_id", "split"), absent]).sort("patient_id")
    image_splits = (
        img.join(group_split, on="group_id")
        .select("image_uuid", "split", "group_id")
        .sort("image_uuid")
    )
    moves = _moves(patients, previous, groups)
    summary = _summary(config, img, patients, groups, previous, absent, moves)
    return SplitResult(splits=splits, image_splits=image_splits, moves=moves, summary=summary)


def _moves(patients: pl.DataFrame, previous: pl.DataFrame, groups: pl.DataFrame) -> pl.DataFrame:
    """Patients whose split changed: members of groups that joined different previous splits."""
    merged = groups.filter(pl.col("n_prev") > 1).select(
        "group_id",
        reason=pl.format(
            "group {} links patients previously in {} (shared patient or duplicate cluster);"
            " moved wholly to train",
            pl.col("group_id"),
            pl.col("prev_splits").list.join(", "),
        ),
    )
    return (
        patients.join(previous.rename({"split": "from_split"}), on="patient_id")
        .filter(pl.col("from_split") != pl.col("split"))
        .join(merged, on="group_id")
        .select("patient_id", "from_split", to_split=pl.col("split"), reason=pl.col("reason"))
        .sort("patient_id")
    )


def _summary(
    config: SplitConfig,
    img: pl.DataFrame,
    patients: pl.DataFrame,
    groups: pl.DataFrame,
    previous: pl.DataFrame,
    absent: pl.DataFrame,
    moves: pl.DataFrame,
) -> dict[str, Any]:
    def per_split(df: pl.DataFrame) -> dict[str, int]:
        counts = dict(df.group_by("split").len().iter_rows())
        return {s: int(counts.get(s, 0)) for s in SPLITS}

    image_split = img.join(groups.select("group_id", "split"), on="group_id")
    n_patients = patients.height
    by_patient = per_split(patients)
    return {
        "seed": config.seed,
        "ratios": dict(zip(SPLITS, config.ratios, strict=True)),
        "stratify_by": config.stratify_by,
        "n_images": img.height,
        "n_patients": n_patients,
        "n_groups": groups.height,
        "n_new_groups": int((groups["n_prev"] == 0).sum()),
        "n_merged_groups": int((groups["n_prev"] > 1).sum()),
        "n_previous_patients_kept": int(patients.join(previous, on="patient_id").height)
        - moves.height,
        "n_previous_patients_absent": absent.height,
        "n_moved_patients": moves.height,
        "patients": by_patient,
        "images": per_split(image_split),
        "groups": per_split(groups),
        "patient_fraction": {
            s: (by_patient[s] / n_patients if n_patients else 0.0) for s in SPLITS
        },
    }
