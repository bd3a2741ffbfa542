"""Tests of the split audit (dagster_project.audit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dagster_project.audit import (
    LeakCount,
    audit_split,
    read_pairs_csv,
    read_split_csv,
    render_markdown,
    write_report,
)

# Hand-built: lesion -> [(image, split)].
LESIONS = {
    "L1": [("a1", "train"), ("a2", "train"), ("a3", "val")],
    "L2": [("b1", "train"), ("b2", "test"), ("b3", "test"), ("b4", "val")],
    "L3": [("c1", "val"), ("c2", "test")],
    "L4": [("d1", "train")],
    "L5": [("e1", "test")],
    "L6": [("f1", "val")],
    "L7": [("g1", "val")],
    "L8": [("h1", "test")],
    "L9": [("i1", "train")],
}
PAIRS = [("d1", "e1"), ("f1", "e1"), ("a1", "a2")]


@pytest.fixture()
def example() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rows = [(img, lesion, split) for lesion, imgs in LESIONS.items() for img, split in imgs]
    metadata = pl.DataFrame(
        [(i, les) for i, les, _ in rows], schema=["image_id", "lesion_id"], orient="row"
    )
    split = pl.DataFrame([(i, s) for i, _, s in rows], schema=["image_id", "split"], orient="row")
    pairs = pl.DataFrame(PAIRS, schema=["image_a", "image_b"], orient="row")
    return metadata, split, pairs


def by_splits(rows: list[LeakCount]) -> dict[str, tuple]:
    return {"-".join(r.splits): (r.groups, r.images, r.tuples, r.pairs) for r in rows}


def test_group_leaks_are_counted_as_published_audits_count_them(example):
    metadata, split, _ = example
    report = audit_split(metadata, split, "lesion_id")
    # (groups spanning, their images in those splits, image tuples, pairs)
    assert by_splits(report.leaks.by_group) == {
        "train-val": (2, 5, 3, None),  # L1: 2 train x 1 val; L2: 1 x 1
        "train-test": (1, 3, 2, None),  # L2: 1 train x 2 test
        "val-test": (2, 5, 3, None),  # L2: 1 val x 2 test; L3: 1 x 1
        "train-val-test": (1, 4, 2, None),  # L2: 1 x 1 x 2
    }
    assert report.leaks.by_pair is None
    assert report.sizes == {"train": 5, "val": 5, "test": 5}


def test_pair_and_combined_leaks(example):
    metadata, split, pairs = example
    report = audit_split(metadata, split, "lesion_id", pairs=pairs)
    assert report.n_pairs == 3
    assert report.n_pairs_across_groups == 2  # a1-a2 share L1
    # pair graph components: {d1 train, e1 test, f1 val}, {a1, a2 both train}
    assert by_splits(report.leaks.by_pair) == {
        "train-val": (1, 2, 1, 0),
        "train-test": (1, 2, 1, 1),  # d1-e1
        "val-test": (1, 2, 1, 1),  # f1-e1
        "train-val-test": (1, 3, 1, None),
    }
    # union components: L1+{a1,a2}, L2, L3, {d1,e1,f1}, and clean singletons
    assert by_splits(report.leaks.combined) == {
        "train-val": (3, 7, 4, 0),  # L1 2x1, L2 1x1, def 1x1
        "train-test": (2, 5, 3, 1),  # L2 1x2, def 1x1
        "val-test": (3, 7, 4, 1),  # L2 1x2, L3 1x1, def 1x1
        "train-val-test": (2, 7, 3, None),  # L2 1x1x2, def 1x1x1
    }
    assert [g["group"] for g in report.leaking_groups] == ["L1", "L2", "L3"]


def test_correction_moves_spanning_components_wholly_to_train(example):
    metadata, split, pairs = example
    report = audit_split(metadata, split, "lesion_id", pairs=pairs)
    corrected = dict(report.corrected_split.iter_rows())
    moved = {"a3", "b4", "c1", "f1", "b2", "b3", "c2", "e1"}
    assert {i for i, s in corrected.items() if s == "train"} == moved | {
        "a1",
        "a2",
        "b1",
        "d1",
        "i1",
    }
    assert corrected["g1"] == "val" and corrected["h1"] == "test"
    assert report.moved_to_train == {"val": 4, "test": 4}
    assert report.corrected_sizes == {"train": 13, "val": 1, "test": 1}
    assert not report.leaks.clean
    assert report.corrected_leaks.clean
    again = audit_split(metadata, report.corrected_split, "lesion_id", pairs=pairs)
    assert again.leaks.clean
    assert again.corrected_sizes == report.corrected_sizes


def test_images_not_listed_take_the_default_split_or_stay_out(example):
    metadata, split, _ = example
    val_test = split.filter(pl.col("split") != "train")
    with_default = audit_split(metadata, val_test, "lesion_id", default_split="train")
    full = audit_split(metadata, split, "lesion_id")
    assert with_default.leaks == full.leaks
    assert with_default.n_unassigned == 0
    without = audit_split(metadata, val_test, "lesion_id")
    assert without.n_unassigned == 5
    assert without.sizes["train"] == 0
    assert by_splits(without.leaks.by_group)["val-test"] == (2, 5, 3, None)


def test_counts_match_a_brute_force_join_on_random_splits():
    rng = np.random.default_rng(0)
    n = 3000
    metadata = pl.DataFrame(
        {"image_id": [f"i{k}" for k in range(n)], "lesion": rng.integers(0, 1200, n).astype(str)}
    )
    split = metadata.select("image_id", split=pl.Series(rng.choice(["train", "val", "test"], n)))
    report = audit_split(metadata, split, "lesion")
    df = metadata.join(split, on="image_id")
    parts = {s: df.filter(pl.col("split") == s).select("lesion") for s in ("train", "val", "test")}
    for row in report.leaks.by_group:
        joined = parts[row.splits[0]].join(parts[row.splits[1]], on="lesion")
        if len(row.splits) == 3:
            joined = joined.join(parts[row.splits[2]], on="lesion")
        assert row.tuples == joined.height
        assert row.groups == joined["lesion"].n_unique()
    assert audit_split(metadata, report.corrected_split, "lesion").leaks.clean


def test_null_group_is_its_own_group():
    metadata = pl.DataFrame(
        {"image_id": ["a", "b"], "lesion": [None, None]}, schema_overrides={"lesion": pl.String}
    )
    split = pl.DataFrame({"image_id": ["a", "b"], "split": ["train", "test"]})
    assert audit_split(metadata, split, "lesion").leaks.clean


def test_readers_accept_both_layouts_and_strip_extensions(tmp_path):
    (tmp_path / "split.csv").write_text("split,index,image_id\nval,0,x1\ntest,1,x2\n")
    assert read_split_csv(tmp_path / "split.csv").rows() == [("x1", "val"), ("x2", "test")]
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    (pairs_dir / "a.csv").write_text("similarity,from_img,to_img\n0.9,x1.jpg,x2.JPG\n")
    (pairs_dir / "b.csv").write_text("image_a,image_b,note\nx3,x4,seen twice\n")
    pairs = read_pairs_csv(pairs_dir)
    assert pairs.select("image_a", "image_b").rows() == [("x1", "x2"), ("x3", "x4")]


def test_bad_inputs_are_named(tmp_path, example):
    metadata, split, _ = example
    (tmp_path / "bad.csv").write_text("image_id,split\na1,train\na2,valid\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: image 'a2' has split 'valid'"):
        read_split_csv(tmp_path / "bad.csv")
    (tmp_path / "nosplit.csv").write_text("image_id\na1\n")
    with pytest.raises(ValueError, match=r"nosplit.csv: missing column"):
        read_split_csv(tmp_path / "nosplit.csv")
    (tmp_path / "pairs.csv").write_text("left,right\na,b\n")
    with pytest.raises(ValueError, match="pairs.csv: expected columns"):
        read_pairs_csv(tmp_path / "pairs.csv")
    extra = pl.concat([split, pl.DataFrame({"image_id": ["zz"], "split": ["val"]})])
    with pytest.raises(ValueError, match="not in the metadata.*'zz'"):
        audit_split(metadata, extra, "lesion_id")
    with pytest.raises(ValueError, match="'a1' is listed more than once"):
        audit_split(metadata, pl.concat([split, split.head(1)]), "lesion_id")
    with pytest.raises(ValueError, match="image_b ids are not in the metadata.*'nope'"):
        audit_split(
            metadata,
            split,
            "lesion_id",
            pairs=pl.DataFrame({"image_a": ["a1"], "image_b": ["nope"]}),
        )
    with pytest.raises(ValueError, match="metadata is missing column"):
        audit_split(metadata, split, "patient")


def test_write_report_writes_json_markdown_and_corrected_csv(tmp_path, example):
    metadata, split, pairs = example
    report = audit_split(metadata, split, "lesion_id", pairs=pairs)
    write_report(report, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["corrected_sizes"] == {"train": 13, "val": 1, "test": 1}
    assert data["corrected_leaks"]["clean"] is True and data["leaks"]["clean"] is False
    assert "| train-val-test | 1 | 4 | 2 |" in (tmp_path / "out" / "report.md").read_text()
    csv = pl.read_csv(tmp_path / "out" / "corrected_split.csv")
    assert csv.columns == ["image_id", "split"] and csv.height == 15
    assert render_markdown(report) == (tmp_path / "out" / "report.md").read_text()


REAL = Path(os.environ.get("DERMA_REAL_DATA", "/work/shared/datasets"))


@pytest.mark.skipif(not (REAL / "dermamnist").is_dir(), reason=f"real data not found at {REAL}")
def test_real_dermamnist_split_leaks_and_correction_is_clean():
    metadata = pl.read_csv(REAL / "ham10000_subset" / "HAM10000_metadata.csv")
    split = read_split_csv(REAL / "dermamnist" / "dermamnist_val_test_split.csv")
    pairs = read_pairs_csv(REAL / "ham10000_known_duplicates")
    report = audit_split(metadata, split, "lesion_id", pairs=pairs, default_split="train")
    assert report.n_images == metadata.height and report.n_unassigned == 0
    # cross-check the lesion tuples against a plain join, the way the published audit counts
    df = metadata.join(split, on="image_id", how="left").with_columns(
        pl.col("split").fill_null("train")
    )
    train, test = (df.filter(pl.col("split") == s).select("lesion_id") for s in ("train", "test"))
    assert (
        by_splits(report.leaks.by_group)["train-test"][2] == train.join(test, on="lesion_id").height
    )
    assert all(r.groups > 0 for r in report.leaks.by_group)
    assert sum(r.pairs or 0 for r in report.leaks.by_pair) > 0
    assert report.corrected_leaks.clean
    assert sum(report.corrected_sizes.values()) == metadata.height
