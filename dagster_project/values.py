"""The value rules of the request JSON (SOURCE_FORMAT.md sections 3 and 7, rules 4 to 7).

Each rule is a pure function of one decoded JSON value. The ``parse_*`` functions tell three
outcomes apart, so that the caller can count bad values without re-inspecting them:

- the clean value;
- ``None``: the answer is absent (key missing, JSON ``null``, blank text, or a boolean's
  explicit ``"unknown"``);
- ``INVALID``: a value is there but breaks the rule (it becomes null in the output and is
  counted by the caller).

The ``to_*`` functions are the same rules with ``INVALID`` folded into ``None``.

Choices where the contract leaves one: blank text (only whitespace) is absent for every
rule; categorical answers that are not strings (numbers, booleans, lists, objects) are
invalid; a multi-select list holding anything but strings is invalid as a whole, and blank
items are dropped; booleans accept the integral numbers ``1``/``0`` (also written ``1.0``).
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from typing import Any, Final, TypeVar

import orjson


class Invalid(Enum):
    """The type of ``INVALID``: a value that is present but breaks its rule."""

    INVALID = "invalid"


INVALID: Final = Invalid.INVALID

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_UNKNOWN = "unknown"
# Rule 5: an optional sign, ASCII digits, an optional "." or "," fraction.
_NUMBER = re.compile(r"[+-]?[0-9]+(?:[.,][0-9]+)?")
# Section 3: days per duration unit.
DURATION_UNIT_DAYS: Final = {"days": 1.0, "weeks": 7.0, "months": 30.0, "years": 365.0}

T = TypeVar("T")


def load_json(text: bytes | str) -> Any:
    """A JSON document, decoded by orjson (about twice as fast as the standard library), else
    by the standard library, which also reads numbers beyond a double's range (``1e400``).

    Raises ValueError (or RecursionError) when it is not JSON.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def parse_bool3(v: object) -> bool | Invalid | None:
    """Rule 4: true/false, yes/no, "1"/"0", 1/0, "unknown" (any case) -> True/False/None."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        if v == 1:
            return True
        return False if v == 0 else INVALID
    if isinstance(v, str):
        text = v.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        return None if text in ("", _UNKNOWN) else INVALID
    return INVALID


def parse_number(v: object) -> float | Invalid | None:
    """Rule 5: a JSON number or a numeric string with "." or "," as decimal mark."""
    if v is None:
        return None
    if isinstance(v, bool):
        return INVALID
    if isinstance(v, int | float):
        try:
            number = float(v)
        except OverflowError:
            return INVALID
    elif isinstance(v, str):
        text = v.strip()
        if not text:
            return None
        if _NUMBER.fullmatch(text) is None:
            return INVALID
        number = float(text.replace(",", "."))
    else:
        return INVALID
    return number if math.isfinite(number) else INVALID


def parse_duration_days(v: object) -> float | Invalid | None:
    """Rule 6: ``{"value", "unit"}`` in days/weeks/months/years, or a bare number of days."""
    if not isinstance(v, dict):
        return parse_number(v)
    value = parse_number(v.get("value"))
    if value is None or value is INVALID:
        return value
    unit = v.get("unit")
    days = DURATION_UNIT_DAYS.get(unit.strip().lower()) if isinstance(unit, str) else None
    return INVALID if days is None else value * days


def parse_category(v: object) -> str | Invalid | None:
    """Rule 7: a string, trimmed and lower-cased, inner whitespace kept."""
    if v is None:
        return None
    if not isinstance(v, str):
        return INVALID
    return v.strip().lower() or None


def parse_multi_select(v: object) -> list[str] | Invalid | None:
    """Rule 7: a list of strings (a single string is a list of one), items cleaned."""
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    elif not isinstance(v, list) or not all(isinstance(item, str) for item in v):
        return INVALID
    return [text for text in (item.strip().lower() for item in v) if text]


def _valid(value: T | Invalid) -> T | None:
    return None if value is INVALID else value


def to_bool3(v: object) -> bool | None:
    """``parse_bool3`` with invalid values as None."""
    return _valid(parse_bool3(v))


def to_number(v: object) -> float | None:
    """``parse_number`` with invalid values as None."""
    return _valid(parse_number(v))


def to_duration_days(v: object) -> float | None:
    """``parse_duration_days`` with invalid values as None."""
    return _valid(parse_duration_days(v))


def to_category(v: object) -> str | None:
    """``parse_category`` with invalid values as None."""
    return _valid(parse_category(v))


def to_multi_select(v: object) -> list[str] | None:
    """``parse_multi_select`` with invalid values as None."""
    return _valid(parse_multi_select(v))
