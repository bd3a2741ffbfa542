"""The asset-check logic: each check fails on a planted violation and passes on a clean manifest."""

from __future__ import annotations

import json

import polars as pl
import pytest
from test_stats import CLASSES, make_manifest, make_splits

from dagster_project.quality_checks import (
    CheckOutcome,
    labels_in_every_split,
    no_pii,
    no_split_leaks,
    ranges_hold,
    required_columns,
    row_count_vs_previous,
    split_ratios,
    unique_image_uuid,
)

PII_LOOKALIKES = [
    "0b1f4c8e-6f0a-4d7e-9a61-3f1c2b7a9e10",
    "12345678-1234-1234-1234-123456789012",
    "00000000-0000-0541-2345-670000000000",
    "2019-03-02T10:11:12Z",
    "2019-03-02 10:11:12.123456+00:00",
    "10:11:12",
    "10:11:12 +0300",
    "2019-03-02T10:11:12+03:00",
    "706.1",
    "V13.3",
    "37,5",
    "37.5",
    "1,5",
    "-1",
    "+5",
    "36500",
    "1.2.3",
    "1.3.6.1.4.1",
    "v1.10.2.3.4",
    "2019.03.02",
    "12/03/2019",
    "gs://dermadetect-20180424.appspot.com/000RN/0b1f4c8e-6f0a-4d7e-9a61-3f1c2b7a9e10.jpg",
    "s3://backup/dermadetect-20180424.appspot.com/000RN/5e0d1234-0541-2345-6789-012345678901.jpg",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "פסוריאזיס",
    "אקזמה, לא מוגדרת",
    "seborrheic dermatitis",
    "std::vector",
    "00:1a:2b:3c:4d:5e",
    "cafe:babe",
    "1234567890",
    "20190302101112",
    "0541234567a",
]
PII_SAMPLES = {
    "e-mail": ["dr@example.org", "contact: a.b+c@mail.co.il please"],
    "JWT": [
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc123_-x",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
    ],
    "IPv4 address": ["203.0.113.7", "from 10.0.0.1,", "ip=192.168.1.254"],
    "IPv6 address": [
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1",
        "::1",
        "2001:db8::8a2e:370:7334",
        "addr ::ffff:c000:280 x",
    ],
    "phone number": [
        "+972-54-123-4567",
        "054-1234567",
        "(555) 123-4567",
        "0541234567",
        "03-1234567",
        "054-123-4567",
        "call +1 555 123 4567",
        "555-123-4567",
        "+972541234567",
    ],
}


@pytest.fixture(scope="module")
def manifest() -> pl.DataFrame:
    return make_manifest()


def _set(manifest: pl.DataFrame, row: int, column: str, value: object) -> pl.DataFrame:
    """The manifest with one cell replaced (dtype kept)."""
    return manifest.with_columns(
        pl.when(pl.int_range(pl.len()) == row)
        .then(pl.lit(value, dtype=manifest.schema[column]))
        .otherwise(pl.col(column))
        .alias(column)
    )


def _json_able(outcome: CheckOutcome) -> dict:
    return json.loads(json.dumps(outcome.metadata, allow_nan=False))


def test_clean_manifest_passes_every_check(manifest: pl.DataFrame) -> None:
    outcomes = [
        no_split_leaks(manifest),
        no_pii(manifest),
        unique_image_uuid(manifest),
        required_columns(manifest),
        ranges_hold(manifest),
        split_ratios(make_splits(manifest)),
        labels_in_every_split(manifest, list(CLASSES)),
        row_count_vs_previous(manifest.height, manifest.height + 10),
    ]
    for outcome in outcomes:
        assert outcome.passed, outcome.description
        _json_able(outcome)


def test_patient_in_two_splits_leaks(manifest: pl.DataFrame) -> None:
    rows = manifest.with_row_index("i").filter(
        (pl.col("split") == "val") & (pl.len().over("patient_id") > 1)
    )
    patient = rows["patient_id"][0]
    leaked = _set(manifest, rows["i"][0], "split", "train")
    outcome = no_split_leaks(leaked)
    assert not outcome.passed
    assert outcome.metadata["leaking_patient_ids"] == 1
    assert outcome.metadata["leaking_patient_id_examples"] == [
        {"patient_id": patient, "splits": ["train", "val"]}
    ]


def test_cluster_across_splits_leaks(manifest: pl.DataFrame) -> None:
    test_row = manifest.with_row_index("i").filter(pl.col("split") == "test")["i"][0]
    train_cluster = manifest.filter(pl.col("split") == "train")["cluster_id"][0]
    outcome = no_split_leaks(_set(manifest, test_row, "cluster_id", train_cluster))
    assert not outcome.passed
    assert outcome.metadata["leaking_patient_ids"] == 0
    assert outcome.metadata["leaking_cluster_ids"] == 1


def test_row_without_split_fails(manifest: pl.DataFrame) -> None:
    outcome = no_split_leaks(_set(manifest, 3, "split", None))
    assert not outcome.passed
    assert outcome.metadata["unassigned_rows"] == 1
    assert outcome.metadata["unassigned_examples"] == [manifest["image_uuid"][3]]


@pytest.mark.parametrize("value", PII_LOOKALIKES)
def test_pii_lookalikes_are_not_flagged(value: str) -> None:
    frame = pl.DataFrame({"image_uuid": ["x"], "note": [value], "items": [["face", value]]})
    outcome = no_pii(frame)
    assert outcome.passed, outcome.metadata


@pytest.mark.parametrize(
    ("kind", "value"), [(kind, value) for kind, values in PII_SAMPLES.items() for value in values]
)
def test_each_pii_kind_is_flagged_as_that_kind(kind: str, value: str) -> None:
    frame = pl.DataFrame({"image_uuid": ["u0", "u1"], "note": ["face", value]})
    outcome = no_pii(frame)
    assert not outcome.passed
    assert outcome.metadata["flagged_by_column"]["note"][kind] == 1
    assert {"column": "note", "row": 1, "image_uuid": "u1"}.items() <= outcome.metadata["examples"][
        0
    ].items()
    assert value not in json.dumps(outcome.metadata) + outcome.description


def test_pii_in_manifest_string_and_list_columns(manifest: pl.DataFrame) -> None:
    planted = _set(manifest, 12, "location_primary", "write to dr.cohen@example.org")
    planted = _set(planted, 40, "texture", ["scaly", "+972-54-123-4567"])
    outcome = no_pii(planted)
    assert not outcome.passed
    assert outcome.metadata["flagged_by_column"] == {
        "location_primary": {"e-mail": 1},
        "texture": {"phone number": 1},
    }
    assert outcome.metadata["examples"] == [
        {
            "column": "location_primary",
            "row": 12,
            "image_uuid": manifest["image_uuid"][12],
            "looks_like": "e-mail",
        },
        {
            "column": "texture",
            "row": 40,
            "image_uuid": manifest["image_uuid"][40],
            "looks_like": "phone number",
        },
    ]
    text = json.dumps(_json_able(outcome)) + outcome.description
    assert "example.org" not in text and "123-4567" not in text


def test_flagged_image_uuid_is_not_echoed_as_example() -> None:
    frame = pl.DataFrame({"image_uuid": ["u0", "dr@example.org"], "note": ["a", "b"]})
    outcome = no_pii(frame)
    assert not outcome.passed
    assert outcome.metadata["examples"] == [
        {"column": "image_uuid", "row": 1, "image_uuid": None, "looks_like": "e-mail"}
    ]


@pytest.mark.parametrize("column", ["free_text", "headers", "doctor_email", "user_crypt_v2"])
def test_pii_column_names_fail(manifest: pl.DataFrame, column: str) -> None:
    outcome = no_pii(manifest.with_columns(pl.lit("x").alias(column)))
    assert not outcome.passed
    assert outcome.metadata["pii_columns"] == [column]


def test_categorical_columns_are_scanned() -> None:
    frame = pl.DataFrame({"ip": ["203.0.113.7"]}, schema={"ip": pl.Categorical})
    assert not no_pii(frame).passed


def test_duplicate_or_null_uuid_fails(manifest: pl.DataFrame) -> None:
    repeated = _set(manifest, 5, "image_uuid", manifest["image_uuid"][4])
    outcome = unique_image_uuid(repeated)
    assert not outcome.passed
    assert outcome.metadata["repeated_uuids"] == 1
    assert outcome.metadata["extra_rows"] == 1
    assert outcome.metadata["examples"] == [manifest["image_uuid"][4]]
    nulled = unique_image_uuid(_set(manifest, 5, "image_uuid", None))
    assert not nulled.passed and nulled.metadata["null_uuids"] == 1


def test_required_columns_missing_extra_and_wrong_type(manifest: pl.DataFrame) -> None:
    broken = manifest.drop("texture").with_columns(
        pl.col("age").cast(pl.Float32), pl.lit(1).alias("extra")
    )
    outcome = required_columns(broken)
    assert not outcome.passed
    assert outcome.metadata == {
        "missing": ["texture"],
        "unexpected": ["extra"],
        "wrong_type": {"age": {"expected": "Float64", "found": "Float32"}},
    }


@pytest.mark.parametrize(
    ("column", "value"),
    [("age", 121.0), ("temperature", 29.9), ("duration_days", -1.0), ("pregnancy_week", 45.5)],
)
def test_out_of_range_value_fails(manifest: pl.DataFrame, column: str, value: float) -> None:
    outcome = ranges_hold(_set(manifest, 7, column, value))
    assert not outcome.passed
    assert outcome.metadata["out_of_range"] == {column: 1}
    assert outcome.metadata["examples"][0]["image_uuid"] == manifest["image_uuid"][7]


def test_range_ends_are_valid_and_nan_is_not(manifest: pl.DataFrame) -> None:
    assert ranges_hold(_set(_set(manifest, 1, "age", 0.0), 2, "age", 120.0)).passed
    outcome = ranges_hold(_set(manifest, 1, "temperature", float("nan")))
    assert not outcome.passed
    assert _json_able(outcome)["examples"][0]["value"] == "nan"


def test_split_ratios_in_patients() -> None:
    def splits(train: int, val: int, test: int) -> pl.DataFrame:
        names = ["train"] * train + ["val"] * val + ["test"] * test
        return pl.DataFrame({"patient_id": range(len(names)), "split": names})

    assert split_ratios(splits(81, 9, 10)).passed
    skewed = split_ratios(splits(70, 20, 10))
    assert not skewed.passed
    assert skewed.metadata["off_by"] == {"train": pytest.approx(-0.1), "val": pytest.approx(0.1)}
    assert split_ratios(splits(70, 20, 10), ratios=(0.7, 0.2, 0.1)).passed
    assert not split_ratios(splits(0, 0, 0)).passed
    with pytest.raises(ValueError, match="one share per split"):
        split_ratios(splits(8, 1, 1), ratios=(0.9, 0.1))


def test_label_missing_from_a_split_fails(manifest: pl.DataFrame) -> None:
    without = manifest.filter(~((pl.col("split") == "test") & (pl.col("diagnosis") == "urticaria")))
    outcome = labels_in_every_split(without, list(CLASSES))
    assert not outcome.passed
    assert outcome.metadata["missing_per_split"] == {"test": 1}
    assert outcome.metadata["examples"] == [{"split": "test", "label": "urticaria"}]
    unknown = labels_in_every_split(manifest, ["psoriasis", "lichen planus"])
    assert unknown.metadata["missing_pairs"] == 3


def test_row_count_vs_previous() -> None:
    assert row_count_vs_previous(1000, None).passed
    assert row_count_vs_previous(1190, 1000).passed
    assert row_count_vs_previous(800, 1000).passed
    grew = row_count_vs_previous(1300, 1000)
    assert not grew.passed and grew.metadata["relative_change"] == pytest.approx(0.3)
    assert not row_count_vs_previous(700, 1000).passed
    assert not row_count_vs_previous(5, 0).passed
