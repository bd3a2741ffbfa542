"""Tests of the leakage-free, stratified, sticky splits (dagster_project.splits)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from dagster_project.splits import SPLITS, SplitConfig, assign_splits, split_groups


def images_frame(rows: list[tuple[str, int, int | None, str]]) -> pl.DataFrame:
    """rows: (image_uuid, patient_id, cluster_id, diagnosis)."""
    return pl.DataFrame(
        rows,
        schema={
            "image_uuid": pl.String,
            "patient_id": pl.Int64,
            "cluster_id": pl.Int64,
            "diagnosis": pl.String,
        },
        orient="row",
    )


def random_images(seed: int, n_patients: int, n_classes: int = 8) -> pl.DataFrame:
    """Random patients with 1-5 images, Zipf-like classes, 5% of images in clusters of 2-3
    drawn across patients."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 6, n_patients)
    patient = np.repeat(rng.permutation(10 * n_patients)[:n_patients], per)
    weights = 1.0 / np.arange(1, n_classes + 1)
    dx = rng.choice(n_classes, n_patients, p=weights / weights.sum())
    n = len(patient)
    cluster = np.full(n, -1)
    chosen = rng.permutation(n)[: n // 20]
    cluster[chosen] = rng.integers(0, max(1, len(chosen) // 2), len(chosen))
    return pl.DataFrame(
        {
            "image_uuid": [f"u{seed}-{i}" for i in range(n)],
            "patient_id": patient.astype(np.int64),
            "cluster_id": pl.Series(cluster).replace(-1, None),
            "diagnosis": [f"d{d}" for d in np.repeat(dx, per)],
        }
    )


def assert_no_leak(images: pl.DataFrame, image_splits: pl.DataFrame) -> None:
    df = images.join(image_splits, on="image_uuid", how="left")
    assert df["split"].null_count() == 0
    assert set(df["split"].unique()) <= set(SPLITS)
    for key in ("patient_id", "cluster_id"):
        spans = df.drop_nulls(key).group_by(key).agg(pl.col("split").n_unique())
        assert spans["split"].max() == 1, f"a {key} spans splits"


def test_groups_join_shared_patients_and_transitive_cluster_chains():
    images = images_frame(
        [
            ("a", 1, 10, "x"),
            ("b", 2, 10, "x"),  # patient 2 shares cluster 10 with patient 1
            ("c", 2, 11, "x"),
            ("d", 3, 11, "x"),  # patient 3 shares cluster 11 with patient 2: chain 1-2-3
            ("e", 4, None, "x"),
            ("f", 4, 12, "x"),  # patient 4: two images, one unclustered
            ("g", 5, 13, "x"),
            ("h", 6, 13, "x"),  # patients 5 and 6 share cluster 13
            ("i", 7, None, "x"),
        ]
    )
    groups = dict(
        zip(
            images["image_uuid"],
            split_groups(images["patient_id"], images["cluster_id"]),
            strict=True,
        )
    )
    assert groups["a"] == groups["b"] == groups["c"] == groups["d"]
    assert groups["e"] == groups["f"]
    assert groups["g"] == groups["h"]
    assert len({groups["a"], groups["e"], groups["g"], groups["i"]}) == 4
    # numbered by smallest patient id: {1,2,3} -> 0, {4} -> 1, {5,6} -> 2, {7} -> 3
    assert [groups[k] for k in "aegi"] == [0, 1, 2, 3]


def test_group_ids_do_not_depend_on_row_order():
    images = random_images(1, 300)
    shuffled = images.sample(fraction=1.0, shuffle=True, seed=7)
    g1 = dict(
        zip(
            images["image_uuid"],
            split_groups(images["patient_id"], images["cluster_id"]),
            strict=True,
        )
    )
    g2 = dict(
        zip(
            shuffled["image_uuid"],
            split_groups(shuffled["patient_id"], shuffled["cluster_id"]),
            strict=True,
        )
    )
    assert g1 == g2


@pytest.mark.parametrize("seed", range(8))
def test_no_patient_or_cluster_spans_splits_on_random_inputs(seed):
    images = random_images(seed, 200 + 50 * seed, n_classes=3 + seed)
    result = assign_splits(images, SplitConfig(seed=seed))
    assert_no_leak(images, result.image_splits)
    assert (
        result.splits["patient_id"].n_unique()
        == result.splits.height
        == images["patient_id"].n_unique()
    )


def test_patient_ratios_within_tolerance():
    images = random_images(3, 5000)
    summary = assign_splits(images).summary
    for split, target in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(summary["patient_fraction"][split] - target) < 0.01, summary["patient_fraction"]
    other = assign_splits(images, SplitConfig(ratios=(0.7, 0.15, 0.15))).summary
    for split, target in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert abs(other["patient_fraction"][split] - target) < 0.01, other["patient_fraction"]


def test_classes_are_stratified_and_rare_classes_spread():
    rng = np.random.default_rng(5)
    rows = []
    sizes = {"common": 600, "medium": 120, "rare3": 3, "rare5": 5, "single": 1}
    pid = 0
    for dx, n_patients in sizes.items():
        for _ in range(n_patients):
            for k in range(int(rng.integers(1, 4))):
                rows.append((f"{pid}-{k}", pid, None, dx))
            pid += 1
    images = images_frame(rows)
    result = assign_splits(images)
    per = (
        result.splits.join(images.select("patient_id", "diagnosis").unique(), on="patient_id")
        .group_by("diagnosis", "split")
        .len()
    )
    counts = {(d, s): n for d, s, n in per.iter_rows()}
    for dx in ("common", "medium"):
        for split, target in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
            share = counts.get((dx, split), 0) / sizes[dx]
            assert abs(share - target) <= 0.02, (dx, split, share)
    for dx in ("rare3", "rare5"):  # >= 3 groups: one in every split at least
        assert all(counts.get((dx, s), 0) >= 1 for s in SPLITS), counts
    assert counts.get(("rare5", "train"), 0) == 3


def test_primary_diagnosis_is_the_most_frequent_among_the_group_images():
    # One group (shared cluster) of 3 "b" images and 2 "a" images, plus 20 singleton "a"
    # and 2 singleton "b" groups: with stratum "b" the group is one of 3 "b" groups, so
    # the rare-class spread puts the 3 "b" groups in 3 different splits.
    rows = [
        ("g1", 1, 7, "a"),
        ("g2", 1, 7, "a"),
        ("g3", 2, 7, "b"),
        ("g4", 2, None, "b"),
        ("g5", 3, 7, "b"),
    ]
    rows += [(f"a{i}", 100 + i, None, "a") for i in range(20)]
    rows += [("b1", 200, None, "b"), ("b2", 201, None, "b")]
    result = assign_splits(images_frame(rows))
    splits = dict(result.image_splits.select("image_uuid", "split").iter_rows())
    assert {splits["g1"], splits["b1"], splits["b2"]} == set(SPLITS)


def test_same_input_in_any_row_order_gives_the_same_splits():
    images = random_images(11, 800)
    config = SplitConfig(seed=3)
    a = assign_splits(images, config)
    b = assign_splits(images.sample(fraction=1.0, shuffle=True, seed=1), config)
    assert a.splits.equals(b.splits)
    assert a.image_splits.equals(b.image_splits)
    assert a.summary == b.summary


def test_seed_changes_the_assignment_but_not_the_guarantees():
    images = random_images(12, 800)
    a = assign_splits(images, SplitConfig(seed=1))
    b = assign_splits(images, SplitConfig(seed=2))
    assert not a.splits.equals(b.splits)
    assert_no_leak(images, b.image_splits)


def test_old_patients_keep_their_split_and_new_ones_fill_the_ratios():
    images = random_images(21, 2000)
    first = assign_splits(images)
    new = random_images(22, 500).with_columns(
        pl.col("patient_id") + 1_000_000, pl.col("cluster_id") + 1_000_000
    )
    second = assign_splits(pl.concat([images, new]), previous=first.splits)
    kept = first.splits.join(second.splits, on="patient_id", suffix="_new")
    assert kept.height == first.splits.height
    assert (kept["split"] == kept["split_new"]).all()
    assert second.moves.height == 0
    new_patients = second.splits.filter(pl.col("patient_id") >= 1_000_000)
    share = new_patients.group_by("split").len().with_columns(pl.col("len") / new_patients.height)
    shares = dict(share.iter_rows())
    assert abs(shares["train"] - 0.8) < 0.05 and abs(shares["val"] - 0.1) < 0.04


def test_a_new_duplicate_bridging_two_splits_moves_the_group_to_train_and_reports_it():
    previous = pl.DataFrame({"patient_id": [1, 2, 3], "split": ["val", "test", "val"]})
    images = images_frame(
        [
            ("p1", 1, 50, "x"),
            ("p2", 2, 60, "x"),
            ("p3", 3, None, "x"),
            ("new-a", 9, 50, "x"),  # new patient 9 has a copy of patient 1's photo ...
            ("new-b", 9, 60, "x"),  # ... and of patient 2's: patients 1, 2, 9 form one group
        ]
    )
    result = assign_splits(images, previous=previous)
    splits = dict(result.splits.iter_rows())
    assert splits[1] == splits[2] == splits[9] == "train"
    assert splits[3] == "val"
    moves = result.moves.sort("patient_id")
    assert moves.select("patient_id", "from_split", "to_split").rows() == [
        (1, "val", "train"),
        (2, "test", "train"),
    ]
    assert all("test, val" in r and "train" in r for r in moves["reason"])
    assert result.summary["n_moved_patients"] == 2
    assert_no_leak(images, result.image_splits)


def test_a_new_patient_joining_an_old_group_takes_its_split():
    previous = pl.DataFrame({"patient_id": [1, 2], "split": ["test", "test"]})
    images = images_frame(
        [
            ("p1", 1, 50, "x"),
            ("p2", 2, 51, "x"),
            ("n1", 7, 50, "x"),
            ("n2", 8, 51, "x"),
            ("n3", 8, 50, "x"),
        ]
    )
    result = assign_splits(images, previous=previous)
    assert dict(result.splits.iter_rows()) == {1: "test", 2: "test", 7: "test", 8: "test"}
    assert result.moves.height == 0


def test_previous_patients_absent_now_keep_their_row():
    previous = pl.DataFrame({"patient_id": [1, 5], "split": ["val", "test"]})
    result = assign_splits(images_frame([("p1", 1, None, "x")]), previous=previous)
    assert dict(result.splits.iter_rows()) == {1: "val", 5: "test"}
    assert result.summary["n_previous_patients_absent"] == 1


def test_bad_inputs_are_named():
    good = images_frame([("p1", 1, None, "x")])
    with pytest.raises(ValueError, match="cluster_id"):
        assign_splits(good.drop("cluster_id"))
    with pytest.raises(ValueError, match="no patient_id.*'p2'"):
        assign_splits(pl.concat([good, images_frame([("p2", None, None, "x")])]))
    with pytest.raises(ValueError, match="'p1' appears more than once"):
        assign_splits(pl.concat([good, good]))
    with pytest.raises(ValueError, match="patient 1 has split 'dev'"):
        assign_splits(good, previous=pl.DataFrame({"patient_id": [1], "split": ["dev"]}))
    with pytest.raises(ValueError, match="patient 1 is in more than one split"):
        assign_splits(good, previous=pl.DataFrame({"patient_id": [1, 1], "split": ["val", "test"]}))
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(ratios=(0.8, 0.1, 0.2))


def test_a_long_tail_of_rare_classes_still_fills_every_split():
    # 300 patients, one image each, 150 classes of two patients: no class can hold 80/10/10
    # by itself, so the ratios must come from filling the splits overall.
    n = 300
    images = pl.DataFrame(
        {
            "image_uuid": [f"img{i}" for i in range(n)],
            "patient_id": list(range(n)),
            "cluster_id": list(range(n)),
            "diagnosis": [f"disease {i // 2}" for i in range(n)],
        }
    )
    splits = assign_splits(images, SplitConfig(seed=3)).splits
    shares = dict(splits["split"].value_counts(normalize=True).iter_rows())
    for name, target in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(shares[name] - target) <= 0.01, shares
