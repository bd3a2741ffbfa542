"""The value rules of SOURCE_FORMAT.md section 3 and rules 4 to 7, one value at a time."""

from __future__ import annotations

import json
import math

import pytest

from dagster_project.values import (
    INVALID,
    load_json,
    parse_bool3,
    parse_category,
    parse_duration_days,
    parse_multi_select,
    parse_number,
    to_bool3,
    to_category,
    to_duration_days,
    to_multi_select,
    to_number,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (1.0, True),
        (0.0, False),
        *((spelling, True) for spelling in ("yes", "YES", "Yes", "yEs", " yes\n")),
        *((spelling, False) for spelling in ("no", "NO", "No", "nO")),
        *((spelling, True) for spelling in ("true", "TRUE", "True", "tRuE")),
        *((spelling, False) for spelling in ("false", "FALSE", "False", "fAlSe")),
        ("1", True),
        ("0", False),
    ],
)
def test_bool3_spellings(raw: object, expected: bool) -> None:
    assert parse_bool3(raw) is expected
    assert to_bool3(raw) is expected


@pytest.mark.parametrize("raw", [None, "unknown", "UNKNOWN", "Unknown", "", "  "])
def test_bool3_absent_is_null_and_not_invalid(raw: object) -> None:
    assert parse_bool3(raw) is None
    assert to_bool3(raw) is None


@pytest.mark.parametrize(
    "raw", [1.5, 2, -1, "-1", "2", "1.0", "maybe", "y", "n", "t", [True], {"v": 1}, float("nan")]
)
def test_bool3_other_values_are_invalid(raw: object) -> None:
    assert parse_bool3(raw) is INVALID
    assert to_bool3(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (34, 34.0),
        (36.6, 36.6),
        (-2, -2.0),
        ("34", 34.0),
        ("37,5", 37.5),
        ("37.5", 37.5),
        ("+3", 3.0),
        ("-0,25", -0.25),
        (" 12 ", 12.0),
        (2**63, float(2**63)),
    ],
)
def test_number_accepted(raw: object, expected: float) -> None:
    assert parse_number(raw) == expected
    assert to_number(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "34 years",
        "1e3",
        "1.2.3",
        "37,",
        ".5",
        "١٢",
        "1_000",
        True,
        False,
        float("nan"),
        float("inf"),
        10**400,
        [34],
        {"value": 34},
    ],
)
def test_number_rejected(raw: object) -> None:
    assert parse_number(raw) is INVALID
    assert to_number(raw) is None


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_number_absent(raw: object) -> None:
    assert parse_number(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"value": 2, "unit": "weeks"}, 14.0),
        ({"value": 3, "unit": "days"}, 3.0),
        ({"value": 2, "unit": "months"}, 60.0),
        ({"value": 1, "unit": "years"}, 365.0),
        ({"value": 1, "unit": "WEEKS"}, 7.0),
        ({"value": 1, "unit": " Years "}, 365.0),
        ({"value": "1,5", "unit": "weeks"}, 10.5),
        ({"value": "2", "unit": "Months"}, 60.0),
        (5, 5.0),
        (2.5, 2.5),
        ("5", 5.0),
        ("1,5", 1.5),
    ],
)
def test_duration_days(raw: object, expected: float) -> None:
    assert parse_duration_days(raw) == expected
    assert to_duration_days(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        {"value": 2, "unit": "fortnights"},
        {"value": 2, "unit": "week"},
        {"value": 2},
        {"value": 2, "unit": None},
        {"value": 2, "unit": 7},
        {"value": "two", "unit": "weeks"},
        {"value": True, "unit": "weeks"},
        "two weeks",
        [2, "weeks"],
        True,
    ],
)
def test_duration_invalid(raw: object) -> None:
    assert parse_duration_days(raw) is INVALID
    assert to_duration_days(raw) is None


@pytest.mark.parametrize("raw", [None, {}, {"value": None, "unit": "weeks"}, ""])
def test_duration_absent(raw: object) -> None:
    assert parse_duration_days(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Coin", "coin"),
        ("  Round\t\n", "round"),
        ("Left  Side", "left  side"),
        (" Multiple\tSpots ", "multiple\tspots"),
        ("פנים", "פנים"),
    ],
)
def test_category_trimmed_lowercased_inner_whitespace_kept(raw: str, expected: str) -> None:
    assert parse_category(raw) == expected
    assert to_category(raw) == expected


@pytest.mark.parametrize("raw", [["face"], {"primary": "face"}, 3, True])
def test_category_wrong_type_invalid(raw: object) -> None:
    assert parse_category(raw) is INVALID
    assert to_category(raw) is None


@pytest.mark.parametrize("raw", [None, "", " \t\n"])
def test_category_absent(raw: object) -> None:
    assert parse_category(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["Red", " brown "], ["red", "brown"]),
        ("Scaly", ["scaly"]),
        ("  Dark Red ", ["dark red"]),
        ([], []),
        (["red", "  "], ["red"]),
        (["red", "red"], ["red", "red"]),
    ],
)
def test_multi_select(raw: object, expected: list[str]) -> None:
    assert parse_multi_select(raw) == expected
    assert to_multi_select(raw) == expected


@pytest.mark.parametrize("raw", [5, True, {"a": "red"}, ["red", 3], ["red", None], [["red"]]])
def test_multi_select_wrong_type_invalid(raw: object) -> None:
    assert parse_multi_select(raw) is INVALID
    assert to_multi_select(raw) is None


def test_multi_select_null_is_absent() -> None:
    assert parse_multi_select(None) is None


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": [1, "x", null, true, 2.5, {"b": "\\u05d0\\ud83d\\ude00"}]}',
        '{"a": -0.0, "b": 12345678901234567890}',
        b'{"a": 1e400, "b": -1e400}',
        b'{"a": NaN}',
        b'"\\ud800"',
    ],
)
def test_load_json_reads_what_the_standard_library_reads(text: bytes | str) -> None:
    """Also what orjson refuses: numbers beyond a double, NaN, lone surrogates."""
    found, expected = load_json(text), json.loads(text)
    assert repr(found) == repr(expected)


def test_load_json_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        load_json(b'{"a": ')
    assert math.isinf(load_json(b"[1e400]")[0])
