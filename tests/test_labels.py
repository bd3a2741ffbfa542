"""Tests of label files and multi-hot targets (dagster_project.labels)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dagster_project.labels import load_label_file, multi_hot_targets

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "SOURCE_FORMAT.md"


def manifest(rows: list[tuple[str, str, list[str] | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"image_uuid": pl.String, "split": pl.String, "diagnoses_all": pl.List(pl.String)},
        orient="row",
    )


def test_common25_is_shipped_with_25_distinct_normalised_names():
    labels = load_label_file("common25")
    assert len(labels) == 25 == len(set(labels))
    assert all(name == " ".join(name.lower().split()) for name in labels)
    assert {"psoriasis", "post inflammatory hyperpigmentation", "vitiligo"} <= set(labels)


@pytest.mark.skipif(not SPEC.is_file(), reason=f"spec not found at {SPEC}")
def test_common25_matches_the_spec_list():
    text = SPEC.read_text()
    listed = re.search(r"The production list `common25`:(.*?)\n\n", text, re.S).group(1)
    expected = [" ".join(n.split()).rstrip(".") for n in listed.split(",")]
    assert load_label_file("common25") == expected


def test_label_file_from_a_path_skips_blank_lines_and_rejects_repeats(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("psoriasis\n\n  acne vulgaris \n")
    assert load_label_file(path) == ["psoriasis", "acne vulgaris"]
    assert load_label_file(str(path)) == ["psoriasis", "acne vulgaris"]
    path.write_text("psoriasis\nacne vulgaris\npsoriasis\n")
    with pytest.raises(ValueError, match=r"mine.txt, line 3: 'psoriasis' repeats line 1"):
        load_label_file(path)
    with pytest.raises(FileNotFoundError, match="nosuchlist"):
        load_label_file("nosuchlist")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no labels"):
        load_label_file(tmp_path / "empty.txt")


def test_multi_hot_over_diagnoses_all_drops_unlabelled_rows():
    m = manifest(
        [
            ("u1", "train", ["psoriasis"]),
            ("u2", "train", ["acne vulgaris", "psoriasis", "rare thing"]),
            ("u3", "val", ["rare thing"]),
            ("u4", "val", None),
            ("u5", "test", []),
            ("u6", "test", ["vitiligo"]),
        ]
    )
    targets, kept = multi_hot_targets(m, ["psoriasis", "acne vulgaris", "vitiligo"])
    assert kept.rows() == [("u1", "train"), ("u2", "train"), ("u6", "test")]
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])


def _other_manifest(n_principal: dict[str, int], n_other: dict[str, int], offset: int = 0):
    rows = []
    for split, n in n_principal.items():
        rows += [(f"p-{split}-{i}", split, ["psoriasis"]) for i in range(n)]
    for split, n in n_other.items():
        rows += [(f"o-{split}-{i + offset}", split, ["something else"]) for i in range(n)]
    return manifest(rows)


def test_other_class_is_downsampled_per_split_to_the_ratio():
    m = _other_manifest(
        {"train": 200, "val": 30, "test": 25}, {"train": 500, "val": 100, "test": 1}
    )
    targets, kept = multi_hot_targets(m, ["psoriasis"], other=True, other_ratio=0.1, seed=3)
    assert targets.shape == (kept.height, 2)
    is_other = kept["image_uuid"].str.starts_with("o-").to_numpy()
    np.testing.assert_array_equal(targets[:, 1], is_other.astype(np.float32))
    np.testing.assert_array_equal(targets[:, 0], (~is_other).astype(np.float32))
    counts = dict(kept.filter(pl.Series(is_other)).group_by("split").len().iter_rows())
    # round(0.1 x principal) per split, capped by what there is: 20, 3, min(round(2.5), 1)
    assert counts == {"train": 20, "val": 3, "test": 1}
    assert kept.filter(~pl.Series(is_other)).height == 255


def test_other_sampling_is_deterministic_for_a_seed_and_any_row_order():
    m = _other_manifest({"train": 100}, {"train": 400})
    _, a = multi_hot_targets(m, ["psoriasis"], other=True, seed=1)
    t_b, b = multi_hot_targets(
        m.sample(fraction=1.0, shuffle=True, seed=9), ["psoriasis"], other=True, seed=1
    )
    assert set(a["image_uuid"]) == set(b["image_uuid"])
    _, c = multi_hot_targets(m, ["psoriasis"], other=True, seed=2)
    assert set(a["image_uuid"]) != set(c["image_uuid"])
    # targets stay aligned with the kept rows after shuffling
    np.testing.assert_array_equal(t_b[:, 1], b["image_uuid"].str.starts_with("o-").to_numpy())


def test_bad_label_requests_are_rejected():
    m = manifest([("u1", "train", ["psoriasis"])])
    with pytest.raises(ValueError, match="'other' is in the label file"):
        multi_hot_targets(m, ["psoriasis", "other"], other=True)
    with pytest.raises(ValueError, match="distinct"):
        multi_hot_targets(m, ["psoriasis", "psoriasis"])
    with pytest.raises(ValueError, match="diagnoses_all"):
        multi_hot_targets(m.drop("diagnoses_all"), ["psoriasis"])
