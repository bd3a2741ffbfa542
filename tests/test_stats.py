"""dataset_stats: numbers checked against hand counts; also the seeded manifest factory that
test_feature_schema, test_quality_checks and test_datasheet import."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from dagster_project.schema import (
    BOOLEAN3,
    CATEGORICAL,
    MANIFEST_SCHEMA,
    MULTI_SELECT,
)
from dagster_project.stats import age_group, dataset_stats

CLASSES = {
    "psoriasis": "696.1",
    "acne vulgaris": "706.1",
    "eczema uns": "692.9",
    "seborrheic dermatitis": "690.1",
    "urticaria": "708.9",
    "tinea versicolor": "111.0",
    "verruca vulgaris": "078.1",
    "insect bite": None,
}
VOCABULARY = {
    "gender": ["female", "male"],
    "size": ["coin", "palm", "pinhead"],
    "shape": ["round", "oval", "irregular"],
    "quantity": ["single", "few", "many"],
    "topography": ["flat", "raised"],
    "location_primary": ["face", "arm", "leg", "trunk"],
    "location_secondary": ["cheek", "elbow", "knee", "back"],
    "location_side": ["left", "right", "both"],
    "location_coverage": ["localized", "widespread"],
    "pain_type": ["burning", "stinging"],
    "hair_loss_type": ["patchy", "diffuse"],
    "color_condition": ["red", "brown", "white", "purple"],
    "texture": ["scaly", "smooth", "rough"],
    "color_pus": ["yellow", "white"],
    "primary_locations": ["face", "arm", "leg"],
    "secondary_locations": ["cheek", "nose", "knee"],
}
SPLIT_SHARES = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def make_manifest(n_patients: int = 120, seed: int = 7) -> pl.DataFrame:
    """A realistic manifest (a few hundred rows) with MANIFEST_SCHEMA's columns and dtypes.

    Patients are assigned 80/10/10; the j-th patient of each split gets class j for its
    first case, so every class appears in every split. Duplicate clusters join images of
    one patient, and a few join two patients of the same split: no leak.
    """
    rng = random.Random(seed)
    patients = [10**15 + rng.randrange(10**12) for _ in range(n_patients)]
    split_of: dict[int, str] = {}
    start = 0
    for split, share in SPLIT_SHARES:
        end = n_patients if split == "test" else start + round(share * n_patients)
        split_of.update(dict.fromkeys(patients[start:end], split))
        start = end
    rank_in_split: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    cluster = 0
    class_names = list(CLASSES)
    for patient in patients:
        split = split_of[patient]
        rank = rank_in_split.get(split, 0)
        rank_in_split[split] = rank + 1
        for case_index in range(rng.choice((1, 1, 2, 3))):
            case = _case(rng)
            forced = case_index == 0 and rank < len(class_names)
            diagnosis = class_names[rank] if forced else rng.choice(class_names)
            for _ in range(rng.choice((1, 1, 2, 4))):
                cluster += 1
                rows.append(_image(rng, case, patient, diagnosis, split, cluster))
    # Near-duplicates: some images of one patient share a cluster, some across patients of
    # the same split (a family account).
    for i in range(0, len(rows) - 1, 9):
        if rows[i + 1]["split"] == rows[i]["split"]:
            rows[i + 1]["cluster_id"] = rows[i]["cluster_id"]
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def _case(rng: random.Random) -> dict[str, Any]:
    def maybe(value: Any, p_null: float = 0.15) -> Any:
        return None if rng.random() < p_null else value

    case: dict[str, Any] = {
        "case_uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "age": maybe(float(rng.randrange(0, 96)) + rng.choice((0.0, 0.5))),
        "temperature": maybe(round(rng.uniform(35.5, 40.0), 1), 0.6),
        "duration_days": maybe(float(rng.choice((1, 3, 7, 14, 30, 365, 3650)))),
        "pregnancy_week": maybe(float(rng.randrange(4, 40)), 0.95),
        "vendor_id": rng.choice(("maccabi", "maccabi", "yeledoctor")),
        "modified_at": datetime(2019, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(10**6)),
    }
    for name in CATEGORICAL:
        case[name] = maybe(rng.choice(VOCABULARY[name]), 0.3)
    for name in BOOLEAN3:
        case[name] = rng.choice((True, False, None))
    for name in MULTI_SELECT:
        case[name] = maybe(rng.sample(VOCABULARY[name], rng.randrange(0, 3)), 0.3)
    return case


def _image(
    rng: random.Random, case: dict, patient: int, diagnosis: str, split: str, cluster: int
) -> dict[str, Any]:
    image_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    others = [name for name in CLASSES if name != diagnosis]
    return {
        **case,
        "image_uuid": image_uuid,
        "patient_id": patient,
        "diagnosis": diagnosis,
        "diagnosis_icd9": CLASSES[diagnosis],
        "diagnoses_all": [diagnosis, *rng.sample(others, rng.choice((0, 0, 1)))],
        "source_gcs_path": f"gs://dermadetect-20180424.appspot.com/000RN/{image_uuid}.jpg",
        "sha256": f"{rng.getrandbits(256):064x}",
        "width": rng.choice((640, 1024, 3024)),
        "height": rng.choice((480, 768, 4032)),
        "cluster_id": cluster,
        "outlier_score": rng.uniform(0.3, 0.95),
        "quality_score": rng.uniform(0.1, 1.0),
        "split": split,
    }


def make_splits(manifest: pl.DataFrame) -> pl.DataFrame:
    """The (patient_id, split) table that goes with a manifest."""
    return manifest.select("patient_id", "split").unique().sort("patient_id")


def make_clusters(manifest: pl.DataFrame) -> pl.DataFrame:
    """The duplicate cluster table: one row per image, homogeneous where labels agree."""
    return manifest.select(
        "image_uuid",
        "cluster_id",
        pl.len().over("cluster_id").alias("cluster_size"),
        (pl.col("diagnosis").n_unique().over("cluster_id") == 1).alias("homogeneous"),
        pl.col("image_uuid").first().over("cluster_id").alias("representative"),
    )


def tiny_manifest() -> pl.DataFrame:
    """Six images, four cases, three patients: small enough to count by hand."""
    rows = [
        ("a1", "c1", 1, "psoriasis", "train", 34.0, "female", "maccabi"),
        ("a2", "c1", 1, "psoriasis", "train", 34.0, "female", "maccabi"),
        ("a3", "c2", 1, "acne vulgaris", "train", 35.0, "female", "maccabi"),
        ("a4", "c3", 2, "psoriasis", "val", 70.0, "male", "yeledoctor"),
        ("a5", "c4", 3, "acne vulgaris", "test", None, None, "maccabi"),
        ("a6", "c4", 3, "acne vulgaris", "test", None, None, "maccabi"),
    ]
    keys = ("image_uuid", "case_uuid", "patient_id", "diagnosis", "split", "age", "gender")
    return pl.DataFrame(
        [{**dict(zip(keys, row[:7], strict=True)), "vendor_id": row[7]} for row in rows],
        schema=MANIFEST_SCHEMA,
    )


TINY_SPLITS = pl.DataFrame({"patient_id": [1, 2, 3, 4], "split": ["train", "val", "test", "train"]})
# a7 is an exact copy collapsed out of the manifest; cluster 13 disagrees on its label.
TINY_CLUSTERS = pl.DataFrame(
    {
        "image_uuid": ["a1", "a2", "a3", "a4", "a5", "a6", "a7"],
        "cluster_id": [10, 10, 11, 12, 13, 13, 13],
        "homogeneous": [True, True, True, True, False, False, False],
    }
)
TINY_DROPS = {"test_account": 2, "no_images": 3}


@pytest.fixture
def tiny_stats() -> dict[str, Any]:
    return dataset_stats(tiny_manifest(), TINY_SPLITS, TINY_CLUSTERS, TINY_DROPS)


def test_counts_per_split_and_totals(tiny_stats: dict[str, Any]) -> None:
    assert tiny_stats["totals"] == {"images": 6, "cases": 4, "patients": 3, "classes": 2}
    assert tiny_stats["per_split"] == {
        "train": {"images": 3, "cases": 2, "patients": 1, "classes": 2},
        "val": {"images": 1, "cases": 1, "patients": 1, "classes": 1},
        "test": {"images": 2, "cases": 1, "patients": 1, "classes": 1},
    }
    assert list(tiny_stats["per_split"]) == ["train", "val", "test"]
    assert tiny_stats["split_patients"] == {
        "patients": {"train": 2, "val": 1, "test": 1},
        "fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
    }


def test_class_counts_per_split(tiny_stats: dict[str, Any]) -> None:
    # Both classes have 3 images: the tie is broken by name.
    assert tiny_stats["class_counts"] == {
        "acne vulgaris": {"train": 1, "val": 0, "test": 2, "total": 3},
        "psoriasis": {"train": 2, "val": 1, "test": 0, "total": 3},
    }
    assert list(tiny_stats["class_counts"]) == ["acne vulgaris", "psoriasis"]


def test_images_per_patient_drops_and_completeness(tiny_stats: dict[str, Any]) -> None:
    assert tiny_stats["images_per_patient"] == {
        "histogram": {"1": 1, "2": 1, "3": 1},
        "min": 1,
        "median": 2.0,
        "mean": 2.0,
        "max": 3,
    }
    assert tiny_stats["drops"] == {"by_reason": {"no_images": 3, "test_account": 2}, "total": 5}
    completeness = tiny_stats["completeness"]
    assert set(completeness) == set(MANIFEST_SCHEMA)
    assert completeness["image_uuid"] == 1.0
    assert completeness["age"] == pytest.approx(4 / 6, abs=1e-6)
    assert completeness["gender"] == pytest.approx(4 / 6, abs=1e-6)
    assert completeness["temperature"] == 0.0


def test_duplicate_clusters(tiny_stats: dict[str, Any]) -> None:
    assert tiny_stats["duplicate_clusters"] == {
        "clusters": 4,
        "images": 7,
        "size_histogram": {"1": 2, "2": 1, "3": 1},
        "multi_image_clusters": 2,
        "images_in_multi_image_clusters": 5,
        "homogeneous": 1,
        "non_homogeneous": 1,
        "images_in_non_homogeneous": 3,
    }


def test_demographics_count_cases(tiny_stats: dict[str, Any]) -> None:
    demographics = tiny_stats["demographics"]
    assert demographics["age_group_by_gender_cases"] == {
        "30-39": {"female": 2},
        "70-79": {"male": 1},
        "unknown": {"unknown": 1},
    }
    assert demographics["vendors"] == {
        "maccabi": {"images": 5, "cases": 3, "patients": 2},
        "yeledoctor": {"images": 1, "cases": 1, "patients": 1},
    }


def test_age_groups_at_their_edges() -> None:
    ages = pl.DataFrame({"age": [0.0, 9.5, 10.0, 79.9, 80.0, 120.0, None, float("nan")]})
    groups = ages.select(age_group(pl.col("age")).alias("group"))["group"].to_list()
    assert groups == ["0-9", "0-9", "10-19", "70-79", "80+", "80+", "unknown", "unknown"]


def test_deltas_against_previous_version() -> None:
    previous = {
        "totals": {"images": 4, "cases": 4, "patients": 3, "classes": 1},
        "class_counts": {
            "psoriasis": {"train": 1, "val": 1, "test": 0, "total": 2},
            "eczema uns": {"train": 1, "total": 1},
        },
        "drops": {"by_reason": {"no_images": 3}, "total": 3},
    }
    stats = dataset_stats(tiny_manifest(), TINY_SPLITS, TINY_CLUSTERS, TINY_DROPS, previous)
    deltas = stats["deltas"]
    assert deltas["totals"] == {"images": 2, "classes": 1}
    assert deltas["class_counts"] == {
        "acne vulgaris": {"train": 1, "test": 2, "total": 3},
        "psoriasis": {"train": 1, "total": 1},
        "eczema uns": {"train": -1, "total": -1},
    }
    assert deltas["drops"] == {"by_reason": {"test_account": 2}, "total": 2}
    # A section the previous version lacks shows the current numbers in full.
    assert deltas["per_split"]["val"] == {"images": 1, "cases": 1, "patients": 1, "classes": 1}
    assert "deltas" not in dataset_stats(tiny_manifest(), TINY_SPLITS, TINY_CLUSTERS, {})


def test_same_version_has_no_deltas_and_round_trips_json() -> None:
    manifest = make_manifest()
    args = (manifest, make_splits(manifest), make_clusters(manifest), TINY_DROPS)
    stats = dataset_stats(*args)
    reread = json.loads(json.dumps(stats, allow_nan=False))
    again = dataset_stats(*args, previous=reread)
    assert all(delta == {} for delta in again["deltas"].values())


def test_realistic_manifest_totals_add_up() -> None:
    manifest = make_manifest()
    stats = dataset_stats(manifest, make_splits(manifest), make_clusters(manifest), {})
    assert 200 <= manifest.height <= 800
    assert sum(s["images"] for s in stats["per_split"].values()) == manifest.height
    assert sum(c["total"] for c in stats["class_counts"].values()) == manifest.height
    histogram = stats["images_per_patient"]["histogram"]
    assert sum(int(k) * n for k, n in histogram.items()) == manifest.height
    assert sum(stats["split_patients"]["patients"].values()) == manifest["patient_id"].n_unique()
    text = json.dumps(stats)
    assert not any(u in text for u in manifest["image_uuid"].head(50))
    assert not any(str(p) in text for p in manifest["patient_id"].unique())


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="duplicate cluster table lacks column.*homogeneous"):
        dataset_stats(tiny_manifest(), TINY_SPLITS, TINY_CLUSTERS.drop("homogeneous"), {})
    with pytest.raises(ValueError, match="manifest lacks column.*split"):
        dataset_stats(tiny_manifest().drop("split"), TINY_SPLITS, TINY_CLUSTERS, {})
