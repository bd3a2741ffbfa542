"""Benchmark: sticky stratified group splits vs scikit-learn's StratifiedGroupKFold.

Synthetic data shaped like the real dataset: 100K patients, ~400K images, a Zipf class
distribution, and duplicate clusters whose members are drawn across patients (so groups
chain patients together). Prints, for our `assign_splits` and for a 10-fold
StratifiedGroupKFold (8 folds train, 1 val, 1 test) on the same groups and strata: run time,
leaks (patients or clusters in more than one split), patient ratios, and the stratification
error (max over classes with >= 20 groups and over splits of |class share in split - overall
share of that split|). Usage: python bench/bench_splits.py [--patients N] [--classes K]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedGroupKFold

from dagster_project.splits import SPLITS, SplitConfig, assign_splits, split_groups


def synthetic_images(n_patients: int, n_classes: int, seed: int) -> pl.DataFrame:
    """One row per image: 1 + Poisson(3) images per patient, Zipf(1.1) diagnoses (a patient's
    images mostly share one), 3% of images in 2-4 image duplicate clusters across patients."""
    rng = np.random.default_rng(seed)
    per_patient = 1 + rng.poisson(3, n_patients)
    patient = np.repeat(np.arange(n_patients), per_patient)
    n_images = len(patient)
    zipf = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    zipf /= zipf.sum()
    patient_dx = rng.choice(n_classes, n_patients, p=zipf)
    image_dx = np.where(
        rng.random(n_images) < 0.9, patient_dx[patient], rng.choice(n_classes, n_images, p=zipf)
    )
    cluster = np.full(n_images, -1)
    in_cluster = rng.permutation(n_images)[: int(0.03 * n_images)]
    sizes = rng.integers(2, 5, len(in_cluster) // 3)
    ends = np.cumsum(sizes)
    ends = ends[ends <= len(in_cluster)]
    starts = np.concatenate([[0], ends[:-1]])
    for cid, (a, b) in enumerate(zip(starts, ends, strict=True)):
        cluster[in_cluster[a:b]] = cid
    return pl.DataFrame(
        {
            "image_uuid": [f"img-{i:07d}" for i in range(n_images)],
            "patient_id": patient.astype(np.int64),
            "cluster_id": pl.Series(cluster).replace(-1, None),
            "diagnosis": [f"dx{d:03d}" for d in image_dx],
        }
    )


def quality(patient_split: pl.DataFrame, patient_class: pl.DataFrame, min_groups: int) -> dict:
    """Patient ratios and the max per-class share deviation (classes with >= min_groups)."""
    df = patient_split.join(patient_class, on="patient_id")
    overall = df.group_by("split").len().with_columns(share=pl.col("len") / df.height)
    big = (
        df.group_by("stratum")
        .agg(pl.col("group_id").n_unique().alias("n_groups"))
        .filter(pl.col("n_groups") >= min_groups)["stratum"]
    )
    per_class = (
        df.filter(pl.col("stratum").is_in(big.implode()))
        .group_by("stratum", "split")
        .len()
        .with_columns(share=pl.col("len") / pl.col("len").sum().over("stratum"))
    )
    full = (
        pl.DataFrame({"stratum": big})
        .join(pl.DataFrame({"split": list(SPLITS)}), how="cross")
        .join(per_class.select("stratum", "split", "share"), on=["stratum", "split"], how="left")
        .fill_null(0.0)
        .join(overall.select("split", overall_share="share"), on="split")
    )
    dev = (full["share"] - full["overall_share"]).abs()
    ratios = dict(overall.select("split", "share").iter_rows())
    return {
        "classes": len(big),
        "max_dev": float(dev.max()),
        "mean_dev": float(dev.mean()),
        "ratios": {s: round(ratios.get(s, 0.0), 4) for s in SPLITS},
    }


def leaks(images: pl.DataFrame, image_split: pl.DataFrame) -> tuple[int, int]:
    """Patients and duplicate clusters whose images lie in more than one split."""
    df = images.join(image_split, on="image_uuid")
    spans = [
        df.drop_nulls(key).group_by(key).agg(pl.col("split").n_unique())["split"]
        for key in ("patient_id", "cluster_id")
    ]
    return int((spans[0] > 1).sum()), int((spans[1] > 1).sum())


def sklearn_split(patient_class: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Fold 0 -> test, fold 1 -> val, folds 2-9 -> train; samples are patients."""
    fold = np.empty(patient_class.height, dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
    y = patient_class["stratum"].to_numpy()
    groups = patient_class["group_id"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes with fewer than 10 members
        for k, (_, test_idx) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
            fold[test_idx] = k
    names = np.where(fold == 0, "test", np.where(fold == 1, "val", "train"))
    return patient_class.select("patient_id").with_columns(split=pl.Series(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-groups", type=int, default=20)
    args = parser.parse_args()

    images = synthetic_images(args.patients, args.classes, args.seed)
    print(
        f"data: {images['patient_id'].n_unique()} patients, {images.height} images, "
        f"{images['cluster_id'].n_unique() - 1} duplicate clusters, {args.classes} classes"
    )

    t0 = time.perf_counter()
    ours = assign_splits(images, SplitConfig(seed=args.seed))
    t_ours = time.perf_counter() - t0
    print(f"groups: {ours.summary['n_groups']}")

    # Same groups and strata for both methods: each patient carries its group's primary class.
    patient_group = images.select(
        "patient_id", group_id=pl.Series(split_groups(images["patient_id"], images["cluster_id"]))
    ).unique()
    primary = (
        images.join(patient_group, on="patient_id")
        .group_by("group_id", "diagnosis")
        .len()
        .sort(["group_id", "len", "diagnosis"], descending=[False, True, False])
        .group_by("group_id", maintain_order=True)
        .first()
        .select("group_id", stratum="diagnosis")
    )
    patient_class = patient_group.join(primary, on="group_id").sort("patient_id")

    t0 = time.perf_counter()
    theirs = sklearn_split(patient_class, args.seed)
    t_sk = time.perf_counter() - t0
    theirs_images = images.join(theirs, on="patient_id").select("image_uuid", "split")

    q_ours = quality(ours.splits, patient_class, args.min_groups)
    q_sk = quality(theirs, patient_class, args.min_groups)
    rows = [
        ("", "assign_splits", "StratifiedGroupKFold"),
        ("time (s)", f"{t_ours:.2f}", f"{t_sk:.2f}"),
        (
            "leaks (patients, clusters)",
            leaks(images, ours.image_splits),
            leaks(images, theirs_images),
        ),
        ("patient ratios", tuple(q_ours["ratios"].values()), tuple(q_sk["ratios"].values())),
        ("max class deviation", f"{q_ours['max_dev']:.4f}", f"{q_sk['max_dev']:.4f}"),
        ("mean class deviation", f"{q_ours['mean_dev']:.4f}", f"{q_sk['mean_dev']:.4f}"),
    ]
    for name, a, b in rows:
        print(f"{name:28}{str(a):>26}{str(b):>26}")
    print(
        f"classes with >= {args.min_groups} groups: {q_ours['classes']}; max deviation "
        f"sklearn/ours: {q_sk['max_dev'] / q_ours['max_dev']:.2f}x; "
        f"time sklearn/ours: {t_sk / t_ours:.1f}x"
    )

    # Sticky rebuild: 10% of the patients are new; the rest keep their published split.
    new = set(range(0, args.patients, 10))
    previous = ours.splits.filter(~pl.col("patient_id").is_in(list(new)))
    t0 = time.perf_counter()
    again = assign_splits(images, SplitConfig(seed=args.seed), previous=previous)
    t_again = time.perf_counter() - t0
    kept = previous.join(again.splits, on="patient_id", suffix="_new")
    changed = kept.filter(pl.col("split") != pl.col("split_new")).height
    print(
        f"sticky rebuild (10% new patients): {t_again:.2f}s, old patients changed: {changed}, "
        f"moves: {again.moves.height}, leaks: {leaks(images, again.image_splits)}, "
        f"ratios: {quality(again.splits, patient_class, args.min_groups)['ratios']}"
    )


if __name__ == "__main__":
    main()
