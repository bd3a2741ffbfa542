"""flatten_requests: one typed row per request (SOURCE_FORMAT.md sections 2, 3, 6, 7)."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from dagster_project.flatten import IMAGE_STRUCT, flatten_requests
from dagster_project.schema import METADATA_SCHEMA, REQUESTS_TABLE

BUCKET = "gs://dermadetect-20180424.appspot.com/000RN"
UUID_A = "0b1f4c8e-6f0a-4d7e-9a61-3f1c2b7a9e10"
UUID_B = "5e0d2a9c-1b2c-4d3e-8f90-a1b2c3d4e5f6"
UUID_C = "c0ffee00-1234-4abc-9def-0123456789ab"
UTC = dt.UTC

CONTRACT_EXAMPLE = {
    "version": 3,
    "images": [
        f"{BUCKET}/{UUID_A}.jpg",
        {"url": f"{BUCKET}/{UUID_B}.jpg", "taken_at": "2019-03-02T10:11:12Z"},
    ],
    "patient": {
        "age": 34,
        "gender": "female",
        "pregnancy": "no",
        "pregnancy_week": None,
        "pregnancy_birth_control_pills": "unknown",
    },
    "answers": {
        "temperature": "37,5",
        "itch": "yes",
        "pus": False,
        "cough": None,
        "crater": "no",
        "vesicle": "1",
        "bleeding": "unknown",
        "swelling": True,
        "size": "coin",
        "shape": "round",
        "quantity": "single",
        "topography": "flat",
        "duration": {"value": 2, "unit": "weeks"},
        "duration_from_birth": "no",
        "pain": {"is_pain": "yes", "type": "burning"},
        "hair_loss": {"exist": "no", "type": None},
        "color_condition": ["red", "brown"],
        "texture": ["scaly"],
        "color_pus": [],
        "location": {
            "primary": "face",
            "secondary": "cheek",
            "side": "left",
            "coverage": "localized",
            "swelling": "no",
            "widespread_face": "no",
            "widespread_palm_feet": "no",
            "primary_locations": ["face"],
            "secondary_locations": ["cheek", "nose"],
        },
    },
    "free_text": "patient notes ...",
    "user_crypt": "base64 ...",
    "headers": {"Authorization": "Bearer eyJ...", "X-Forwarded-For": "203.0.113.7"},
}


def requests_batch(requests: list[Any], **columns: list[Any]) -> pa.RecordBatch:
    """rn_requests rows as the dump parser yields them; dicts/lists are JSON-encoded."""
    n = len(requests)
    texts = [r if r is None or isinstance(r, str) else json.dumps(r) for r in requests]
    data = {
        "id": columns.get("id", list(range(1, n + 1))),
        "uuid": columns.get("uuid", [f"case-{i}" for i in range(n)]),
        "patient_id": columns.get("patient_id", [100 + i for i in range(n)]),
        "request": texts,
        "vendor_id": columns.get("vendor_id", ["maccabi"] * n),
        "is_test": columns.get("is_test", [False] * n),
        "created_at": [dt.datetime(2020, 1, 1, tzinfo=UTC)] * n,
        "modified_at": columns.get("modified_at", [dt.datetime(2020, 1, 2, tzinfo=UTC)] * n),
    }
    schema = pa.schema(list(REQUESTS_TABLE.columns.items()))
    return pa.RecordBatch.from_pydict(data, schema=schema)


def one_row(request: Any) -> tuple[dict[str, Any], dict[str, int]]:
    frame, counts = flatten_requests(requests_batch([request]))
    assert frame.height == 1
    return frame.row(0, named=True), dict(counts)


def test_contract_example_every_field() -> None:
    row, counts = one_row(CONTRACT_EXAMPLE)
    expected_metadata = {
        "age": 34.0,
        "temperature": 37.5,
        "duration_days": 14.0,
        "pregnancy_week": None,
        "gender": "female",
        "size": "coin",
        "shape": "round",
        "quantity": "single",
        "topography": "flat",
        "location_primary": "face",
        "location_secondary": "cheek",
        "location_side": "left",
        "location_coverage": "localized",
        "pain_type": "burning",
        "hair_loss_type": None,
        "itch": True,
        "pus": False,
        "cough": None,
        "crater": False,
        "vesicle": True,
        "bleeding": None,
        "swelling": True,
        "pregnancy": False,
        "widespread_face": False,
        "duration_from_birth": False,
        "widespread_palm_feet": False,
        "pregnancy_birth_control_pills": None,
        "pain_is_pain": True,
        "hair_loss_exist": False,
        "location_swelling": False,
        "color_condition": ["red", "brown"],
        "texture": ["scaly"],
        "color_pus": [],
        "primary_locations": ["face"],
        "secondary_locations": ["cheek", "nose"],
    }
    assert {name: row[name] for name in METADATA_SCHEMA} == expected_metadata
    assert row["images"] == [
        {"image_uuid": UUID_A, "source_gcs_path": f"{BUCKET}/{UUID_A}.jpg"},
        {"image_uuid": UUID_B, "source_gcs_path": f"{BUCKET}/{UUID_B}.jpg"},
    ]
    assert counts == {"requests": 1}


def test_output_schema() -> None:
    frame, _ = flatten_requests(requests_batch([CONTRACT_EXAMPLE, None]))
    assert frame.schema == pl.Schema(
        {
            "request_id": pl.Int64,
            "case_uuid": pl.String,
            "patient_id": pl.Int64,
            "vendor_id": pl.String,
            "is_test": pl.Boolean,
            "modified_at": pl.Datetime("us", "UTC"),
            **METADATA_SCHEMA,
            "images": pl.List(IMAGE_STRUCT),
        }
    )


def test_identity_and_provenance_columns() -> None:
    big = [2**53 + 1, 2**63 - 1, 9_007_199_254_740_993]
    batch = requests_batch(
        [{}, {}, {}],
        id=big,
        patient_id=[2**53 + 3, 7, 2**62 + 1],
        uuid=["a", "b", "c"],
        vendor_id=["maccabi", "yeledoctor", "clalit"],
        is_test=[None, True, False],
        modified_at=[dt.datetime(2021, 3, 26, 23, 30, tzinfo=UTC), None, None],
    )
    frame, _ = flatten_requests(batch)
    assert frame.get_column("request_id").to_list() == big
    assert frame.get_column("patient_id").to_list() == [2**53 + 3, 7, 2**62 + 1]
    assert frame.get_column("case_uuid").to_list() == ["a", "b", "c"]
    assert frame.get_column("vendor_id").to_list() == ["maccabi", "yeledoctor", "clalit"]
    assert frame.get_column("is_test").to_list() == [False, True, False]
    assert frame.get_column("modified_at").to_list() == [
        dt.datetime(2021, 3, 26, 23, 30, tzinfo=UTC),
        None,
        None,
    ]


def test_polars_input_and_missing_optional_columns() -> None:
    frame = pl.DataFrame(
        {"id": [5], "uuid": ["u"], "patient_id": [6], "request": [json.dumps(CONTRACT_EXAMPLE)]}
    )
    flat, counts = flatten_requests(frame)
    row = flat.row(0, named=True)
    assert (row["request_id"], row["vendor_id"], row["is_test"], row["modified_at"]) == (
        5,
        None,
        False,
        None,
    )
    assert row["age"] == 34.0
    assert counts["requests"] == 1


def test_missing_required_column_is_a_clear_error() -> None:
    frame = pl.DataFrame({"id": [1], "uuid": ["u"], "request": ["{}"]})
    with pytest.raises(ValueError, match="rn_requests.*patient_id"):
        flatten_requests(frame)


def test_empty_batch() -> None:
    frame, counts = flatten_requests(requests_batch([]))
    assert frame.height == 0
    assert frame.get_column("images").dtype == pl.List(IMAGE_STRUCT)
    assert counts == {"requests": 0}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "requests_null"),
        ("null", "requests_null"),
        ("{not json", "requests_invalid_json"),
        ('{"images": ["gs://b/p/' + UUID_A + '.jpg"]', "requests_invalid_json"),
        ("", "requests_invalid_json"),
        ("[" * 100_000, "requests_invalid_json"),
        ("[1, 2]", "request_not_object"),
        ('"a string"', "request_not_object"),
        ("42", "request_not_object"),
    ],
)
def test_unreadable_request_yields_an_empty_row(text: str | None, reason: str) -> None:
    frame, counts = flatten_requests(requests_batch([text, CONTRACT_EXAMPLE]))
    row = frame.row(0, named=True)
    assert all(row[name] is None for name in METADATA_SCHEMA)
    assert row["images"] == []
    assert frame.row(1, named=True)["age"] == 34.0
    assert dict(counts) == {"requests": 2, reason: 1, "requests_without_images": 1}


@pytest.mark.parametrize(
    ("text", "expected", "counted"),
    [
        (
            '{"patient": {"age": NaN, "gender": " Female "}}',
            {"age": None, "gender": "female"},
            {"age_invalid": 1},
        ),
        ('{"free_text": "\\ud800", "patient": {"age": 34}}', {"age": 34.0}, {}),
        (
            '{"patient": 1e400, "answers": {"itch": 1}}',
            {"age": None, "itch": True},
            {"patient_not_object": 1},
        ),
        (
            '{"patient": {"age": 1e400}, "answers": {"temperature": -Infinity, "pus": "no"}}',
            {"age": None, "temperature": None, "pus": False},
            {"age_invalid": 1, "temperature_invalid": 1},
        ),
        (
            '{"patient": {"age": 7}, "answers": {"texture": ' + "[" * 600 + "]" * 600 + "}}",
            {"age": 7.0, "texture": None},
            {"texture_invalid": 1},
        ),
    ],
)
def test_json_beyond_the_fast_decoder_reads_as_the_standard_library_reads_it(
    text: str, expected: dict[str, Any], counted: dict[str, int]
) -> None:
    # NaN, Infinity, numbers beyond a double, lone surrogates and deep nesting
    row, counts = one_row(text)
    assert {name: row[name] for name in expected} == expected
    assert counts == {"requests": 1, "requests_without_images": 1, **counted}


@pytest.mark.parametrize(
    ("field", "path", "inside", "outside"),
    [
        ("age", ("patient", "age"), [0, 120, "120,0"], [-1, 120.5, "121"]),
        ("temperature", ("answers", "temperature"), [30, 45, "36,6"], [29.9, 45.01, "-37"]),
        ("pregnancy_week", ("patient", "pregnancy_week"), [0, 45], [46, -0.5]),
        (
            "duration_days",
            ("answers", "duration"),
            [0, 36500, {"value": 100, "unit": "years"}],
            [36501, -1, {"value": 101, "unit": "years"}, {"value": "-1", "unit": "days"}],
        ),
    ],
)
def test_ranges_inclusive_and_out_of_range_counted(
    field: str, path: tuple[str, str], inside: list[Any], outside: list[Any]
) -> None:
    requests = [{path[0]: {path[1]: value}} for value in inside + outside]
    frame, counts = flatten_requests(requests_batch(requests))
    values = frame.get_column(field).to_list()
    assert all(v is not None for v in values[: len(inside)])
    assert values[len(inside) :] == [None] * len(outside)
    assert counts[f"{field}_out_of_range"] == len(outside)


def test_range_end_values_exact() -> None:
    frame, _ = flatten_requests(
        requests_batch(
            [
                {"patient": {"age": 120}, "answers": {"duration": {"value": 100, "unit": "years"}}},
                {"patient": {"age": "0"}, "answers": {"temperature": "45"}},
            ]
        )
    )
    assert frame.get_column("age").to_list() == [120.0, 0.0]
    assert frame.get_column("duration_days").to_list() == [36500.0, None]
    assert frame.get_column("temperature").to_list() == [None, 45.0]


def test_invalid_values_become_null_and_are_counted_per_field() -> None:
    request = {
        "patient": {"age": "34 years", "gender": ["female"], "pregnancy": 2},
        "answers": {
            "temperature": "NaN",
            "itch": "maybe",
            "vesicle": 1.5,
            "crater": "-1",
            "duration": {"value": 2, "unit": "fortnights"},
            "texture": 5,
            "color_condition": "Red",
            "size": "  Coin Sized ",
        },
    }
    row, counts = one_row(request)
    nulls = ("age", "gender", "pregnancy", "temperature", "itch", "vesicle", "crater")
    assert all(row[name] is None for name in (*nulls, "duration_days", "texture"))
    assert row["color_condition"] == ["red"]
    assert row["size"] == "coin sized"
    assert counts == {
        "requests": 1,
        "requests_without_images": 1,
        "age_invalid": 1,
        "gender_invalid": 1,
        "pregnancy_invalid": 1,
        "temperature_invalid": 1,
        "itch_invalid": 1,
        "vesicle_invalid": 1,
        "crater_invalid": 1,
        "duration_days_invalid": 1,
        "texture_invalid": 1,
    }


def test_wrong_type_containers_null_all_their_fields() -> None:
    request = {
        "patient": "n/a",
        "answers": {
            "itch": "yes",
            "location": [{"primary": "face", "swelling": "yes"}],
            "pain": "yes",
            "hair_loss": 3,
        },
    }
    row, counts = one_row(request)
    assert row["itch"] is True
    for name in ("age", "gender", "pregnancy", "pregnancy_week", "pregnancy_birth_control_pills"):
        assert row[name] is None
    for name in ("location_primary", "location_swelling", "widespread_face", "primary_locations"):
        assert row[name] is None
    assert (row["pain_is_pain"], row["pain_type"]) == (None, None)
    assert (row["hair_loss_exist"], row["hair_loss_type"]) == (None, None)
    assert counts == {
        "requests": 1,
        "requests_without_images": 1,
        "patient_not_object": 1,
        "location_not_object": 1,
        "pain_not_object": 1,
        "hair_loss_not_object": 1,
    }


def test_answers_of_wrong_type_null_nested_containers_too() -> None:
    request = {"answers": [{"itch": "yes", "location": {"primary": "face"}}]}
    row, counts = one_row(request)
    assert row["itch"] is None
    assert row["location_primary"] is None
    assert counts["answers_not_object"] == 1
    assert "location_not_object" not in counts


def test_null_containers_are_absent_not_counted() -> None:
    row, counts = one_row({"patient": None, "answers": {"location": None, "itch": "no"}})
    assert row["itch"] is False
    assert row["age"] is None
    assert counts == {"requests": 1, "requests_without_images": 1}


def test_unicode_values_kept() -> None:
    request = {"answers": {"shape": "עגול\u2028x", "location": {"primary": " Лицо\u0085 "}}}
    row, _ = one_row(request)
    assert row["shape"] == "עגול\u2028x"
    assert row["location_primary"] == "лицо"


def test_images_entries() -> None:
    request = {
        "images": [
            f"{BUCKET}/{UUID_A.upper()}.jpg",
            None,
            5,
            "",
            "   ",
            {"taken_at": "2019-03-02"},
            {"url": 5},
            {"url": None},
            {"url": f"{BUCKET}/{UUID_B}.JPG", "taken_at": "2019-03-02T10:11:12Z"},
            f"{BUCKET}/{UUID_A}.jpg",
            {"url": f"gs://other-bucket/x/{UUID_B}.jpg"},
            f"{BUCKET}/not-a-uuid.jpg",
            f"  {BUCKET}/{UUID_C}.png ",
            [f"{BUCKET}/{UUID_C}.jpg"],
        ]
    }
    row, counts = one_row(request)
    assert row["images"] == [
        {"image_uuid": UUID_A, "source_gcs_path": f"{BUCKET}/{UUID_A.upper()}.jpg"},
        {"image_uuid": UUID_B, "source_gcs_path": f"{BUCKET}/{UUID_B}.JPG"},
        {"image_uuid": UUID_C, "source_gcs_path": f"{BUCKET}/{UUID_C}.png"},
    ]
    assert counts == {
        "requests": 1,
        "image_entries_invalid": 8,
        "images_repeated": 2,
        "image_urls_without_uuid": 1,
    }


@pytest.mark.parametrize(
    ("images", "counted"),
    [
        (5, {"images_not_list": 1}),
        ("gs://b/p/" + UUID_A + ".jpg", {"images_not_list": 1}),
        ({"url": "gs://b/p/" + UUID_A + ".jpg"}, {"images_not_list": 1}),
        (None, {}),
        ([], {}),
        ([None, ""], {"image_entries_invalid": 2}),
    ],
)
def test_requests_without_images(images: Any, counted: dict[str, int]) -> None:
    row, counts = one_row({"images": images, "patient": {"age": 3}})
    assert row["images"] == []
    assert row["age"] == 3.0
    assert counts == {"requests": 1, "requests_without_images": 1, **counted}


def test_missing_images_key_means_no_images() -> None:
    row, counts = one_row({"patient": {"age": 3}})
    assert row["images"] == []
    assert counts["requests_without_images"] == 1


def test_pii_never_reaches_the_output_or_the_counts() -> None:
    secrets = {
        "free_text": "SECRET-NOTE patient is allergic, phone 050-1234567",
        "user_crypt": "U0VDUkVULUNSWVBU",
        "email": "doctor.secret@example.org",
        "jwt": "eyJhbGciOiJIUzI1NiJ9.SECRETPAYLOAD.sig",
        "ip": "203.0.113.77",
    }
    request = {
        **CONTRACT_EXAMPLE,
        "free_text": secrets["free_text"],
        "user_crypt": secrets["user_crypt"],
        "headers": {
            "Authorization": f"Bearer {secrets['jwt']}",
            "X-Forwarded-For": secrets["ip"],
            "X-Doctor-Email": secrets["email"],
            # Keys that look like answers must not be read from headers either.
            "images": [f"gs://leak/{UUID_C}.jpg"],
            "patient": {"gender": secrets["email"]},
            "gender": secrets["email"],
        },
    }
    frame, counts = flatten_requests(requests_batch([request, "{broken " + secrets["email"]]))
    dumped = json.dumps(frame.to_dicts(), default=str) + json.dumps(dict(counts))
    for secret in (*secrets.values(), UUID_C, "leak"):
        assert secret not in dumped
    assert frame.row(0, named=True)["gender"] == "female"


def assert_each_row_gets_what_it_gets_alone(requests: list[Any]) -> Counter[str]:
    """Flattens `requests` as one batch, checks each row and the counts against the request
    flattened alone; returns the batch's counts."""
    frame, counts = flatten_requests(requests_batch(requests))
    alone = Counter[str]()
    for index, request in enumerate(requests):
        row, row_counts = one_row(request)
        alone.update(row_counts)
        # repr tells -0.0 from 0.0 and 1.0 from True
        expected = repr([row[name] for name in METADATA_SCHEMA])
        assert repr([frame.row(index, named=True)[name] for name in METADATA_SCHEMA]) == expected
    assert counts == alone
    return counts


def test_each_row_gets_what_it_gets_alone_whatever_else_the_batch_holds() -> None:
    # Outcomes of repeated answers are reused within a batch: values Python finds equal
    # (1, 1.0, True; 0.0, -0.0; lists of such) must still be decided by their own rule.
    values = [1, 1.0, True, "1", 0, 0.0, -0.0, False, "0", " Yes", "yes", "37,5", 37.5, "", None]
    values += [["a", " A "], ["a", 1], ["a", True], [1], [True], [1.0], [["x"]], [{"a": 1}]]
    values += [{"value": 2, "unit": "weeks"}, {"value": -0.0, "unit": "days"}]
    requests = [
        {
            "patient": {"age": value, "gender": value, "pregnancy": value},
            "answers": {"temperature": value, "itch": value, "texture": value, "duration": value},
        }
        for value in values * 2
    ]
    assert_each_row_gets_what_it_gets_alone(requests)


TRICKY_ANSWERS = [None, True, False, 0, 1, 2, -1, 0.0, -0.0, 1.0, 1.5, 1e2, 10**20, "1", "0"]
TRICKY_ANSWERS += ["yes", " No ", "unknown", "", " ", "37,5", "1e2", "Ünï", "\u2028", "NaN"]
ANSWER_PATHS = [
    ("patient", "age"),
    ("patient", "gender"),
    ("patient", "pregnancy"),
    ("answers", "temperature"),
    ("answers", "itch"),
    ("answers", "texture"),
    ("answers", "duration"),
    ("answers", "pain", "type"),
    ("answers", "location", "primary_locations"),
    ("answers", "location", "swelling"),
]


def random_answer(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.6 or depth > 1:
        return rng.choice(TRICKY_ANSWERS)
    if roll < 0.8:
        return [random_answer(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ("value", "unit", "x")
    units = [*TRICKY_ANSWERS, "days", " Weeks", "YEARS"]
    return {rng.choice(keys): rng.choice(units) for _ in range(rng.randrange(3))}


def random_request(rng: random.Random) -> Any:
    request: dict[str, Any] = {}
    for path in ANSWER_PATHS:
        node = request
        for key in path[:-1]:
            node = node.setdefault(key, {} if rng.random() < 0.95 else random_answer(rng))
            if not isinstance(node, dict):
                break
        else:
            if rng.random() < 0.8:
                node[path[-1]] = random_answer(rng)
    return request


def test_random_batches_give_every_row_what_it_gets_alone() -> None:
    # Answers are decided once per distinct JSON text of a batch's column: a random batch of
    # tricky values and wrong-type containers must still give each row its own outcome.
    rng = random.Random(6)
    requests = [random_request(rng) for _ in range(300)]
    counts = assert_each_row_gets_what_it_gets_alone(requests)
    assert any(key.endswith("_not_object") for key in counts)
    assert any(key.endswith("_invalid") for key in counts)
