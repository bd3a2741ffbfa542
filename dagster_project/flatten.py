"""Flatten ``rn_requests`` rows into one typed row per request (SOURCE_FORMAT.md 2, 3, 6, 7).

The request JSON is decoded once per row; only the metadata answers and the images are read
from it. ``free_text``, ``user_crypt`` and ``headers`` are never read, so no PII leaves this
first step, not even in the counts (whose keys are fixed names, never values).

Counter keys of ``flatten_requests``:

- ``requests``: rows seen;
- ``requests_null``: a NULL ``request`` column or a JSON ``null``;
- ``requests_invalid_json``: ``request`` is not valid JSON;
- ``request_not_object``: the JSON is valid but not an object;
- ``<container>_not_object`` for ``patient``, ``answers``, ``pain``, ``hair_loss``,
  ``location``: the container has another JSON type, so all its fields are null (rule 8);
- ``<field>_invalid``: a value present but breaking its rule (``values.py``), now null;
- ``<field>_out_of_range``: a continuous value outside ``schema.CONTINUOUS``, now null;
- ``images_not_list``: ``images`` is there but not a list (no images);
- ``image_entries_invalid``: an entry that is null, a number, blank, or lacks a string url;
- ``image_urls_without_uuid``: a url whose file name is not ``<uuid>.<ext>``;
- ``images_repeated``: an image repeated in one request (the first occurrence is kept);
- ``requests_without_images``: rows left with no usable image.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from dagster_project.schema import (
    BOOLEAN3,
    CATEGORICAL,
    CONTINUOUS,
    METADATA_SCHEMA,
    REQUESTS_TABLE,
    TableSpec,
)
from dagster_project.values import (
    INVALID,
    load_json,
    parse_bool3,
    parse_category,
    parse_duration_days,
    parse_multi_select,
    parse_number,
)

IMAGE_STRUCT = pl.Struct({"image_uuid": pl.String, "source_gcs_path": pl.String})
_ARROW_BY_DTYPE = {
    pl.Float64: pa.float64(),
    pl.String: pa.string(),
    pl.Boolean: pa.bool_(),
    pl.List(pl.String): pa.list_(pa.string()),
}
_ARROW_TYPES = {
    **{name: _ARROW_BY_DTYPE[dtype] for name, dtype in METADATA_SCHEMA.items()},
    "images": pa.list_(pa.struct({"image_uuid": pa.string(), "source_gcs_path": pa.string()})),
}
# Distinct answers remembered per field and batch (bounds memory on free-form text).
_MEMO_SIZE = 4096
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


@dataclass(frozen=True)
class _Field:
    """An output column: where its answer sits in the request JSON, its rule and range."""

    name: str
    container: tuple[str, ...]
    key: str
    parse: Callable[[object], Any]
    bounds: tuple[float, float] | None


# Where each metadata column's answer sits in the request JSON (section 3).
_PATHS: dict[str, tuple[str, ...]] = {
    "age": ("patient", "age"),
    "gender": ("patient", "gender"),
    "pregnancy": ("patient", "pregnancy"),
    "pregnancy_week": ("patient", "pregnancy_week"),
    "pregnancy_birth_control_pills": ("patient", "pregnancy_birth_control_pills"),
    **{key: ("answers", key) for key in ("temperature", "itch", "pus", "cough", "crater")},
    **{key: ("answers", key) for key in ("vesicle", "bleeding", "swelling", "size", "shape")},
    **{key: ("answers", key) for key in ("quantity", "topography", "duration_from_birth")},
    **{key: ("answers", key) for key in ("color_condition", "texture", "color_pus")},
    "duration_days": ("answers", "duration"),
    "pain_is_pain": ("answers", "pain", "is_pain"),
    "pain_type": ("answers", "pain", "type"),
    "hair_loss_exist": ("answers", "hair_loss", "exist"),
    "hair_loss_type": ("answers", "hair_loss", "type"),
    **{f"location_{key}": ("answers", "location", key) for key in ("primary", "secondary")},
    **{f"location_{key}": ("answers", "location", key) for key in ("side", "coverage")},
    "location_swelling": ("answers", "location", "swelling"),
    **{key: ("answers", "location", key) for key in ("widespread_face", "widespread_palm_feet")},
    **{key: ("answers", "location", key) for key in ("primary_locations", "secondary_locations")},
}


def _rule(name: str) -> Callable[[object], Any]:
    if name == "duration_days":
        return parse_duration_days
    if name in CONTINUOUS:
        return parse_number
    if name in CATEGORICAL:
        return parse_category
    return parse_bool3 if name in BOOLEAN3 else parse_multi_select


FIELDS = tuple(
    _Field(name, _PATHS[name][:-1], _PATHS[name][-1], _rule(name), CONTINUOUS.get(name))
    for name in METADATA_SCHEMA
)


@dataclass(frozen=True)
class _Container:
    """A JSON object of rule 8 and the fields read from it; `parent` indexes its parent in
    `_CONTAINERS` (-1: the document itself)."""

    path: tuple[str, ...]
    parent: int
    fields: tuple[tuple[int, _Field], ...]  # (column index, field)


def _layout() -> tuple[_Container, ...]:
    paths = sorted(
        {path[:depth] for path in _PATHS.values() for depth in range(1, len(path))},
        key=lambda p: (len(p), p),
    )
    return tuple(
        _Container(
            path,
            paths.index(path[:-1]) if len(path) > 1 else -1,
            tuple((i, field) for i, field in enumerate(FIELDS) if field.container == path),
        )
        for path in paths
    )


# Containers in the request JSON, parents before children.
_CONTAINERS = _layout()


def source_frame(data: pa.RecordBatch | pa.Table | pl.DataFrame, table: TableSpec) -> pl.DataFrame:
    """The columns of ``table`` from a parsed batch, typed per its spec.

    Optional columns the batch lacks come back all null; columns the spec does not name
    (PII among them) are dropped here. A missing required column is a ValueError naming it.
    """
    frame = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
    missing = [name for name in table.required if name not in frame.columns]
    if missing:
        raise ValueError(f"table {table.name}: missing required column(s) {', '.join(missing)}")
    columns = []
    for name, arrow_type in table.columns.items():
        dtype = pl.from_arrow(pa.nulls(0, arrow_type)).dtype
        if name in frame.columns:
            columns.append(frame.get_column(name).cast(dtype).alias(name))
        else:
            columns.append(pl.Series(name, [None] * frame.height, dtype=dtype))
    return pl.DataFrame(columns, height=frame.height)


def _image_uuid(url: str) -> str | None:
    stem = url.rsplit("/", 1)[-1].partition(".")[0]
    return stem.lower() if _UUID.fullmatch(stem) else None


def _images(raw: object, counts: Counter[str]) -> list[dict[str, str]]:
    """Rule 9: the usable images of one request, first occurrence of each uuid kept."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        counts["images_not_list"] += 1
        return []
    images: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in raw:
        url = entry.get("url") if isinstance(entry, dict) else entry
        if not isinstance(url, str) or not url.strip():
            counts["image_entries_invalid"] += 1
            continue
        url = url.strip()
        uuid = _image_uuid(url)
        if uuid is None:
            counts["image_urls_without_uuid"] += 1
        elif uuid in seen:
            counts["images_repeated"] += 1
        else:
            seen.add(uuid)
            images.append({"image_uuid": uuid, "source_gcs_path": url})
    return images


def _decode(text: bytes | None, counts: Counter[str]) -> dict[str, Any] | None:
    """The request JSON object, or None (counted) when there is none to read."""
    if text is None:
        counts["requests_null"] += 1
        return None
    try:
        document = load_json(text)
    except (ValueError, RecursionError):
        counts["requests_invalid_json"] += 1
        return None
    if document is None:
        counts["requests_null"] += 1
    elif not isinstance(document, dict):
        counts["request_not_object"] += 1
    else:
        return document
    return None


def _outcome(field: _Field, raw: object) -> tuple[Any, str | None]:
    """A field's value for a present JSON value, or None and the count key of the problem."""
    value = field.parse(raw)
    if value is INVALID:
        return None, f"{field.name}_invalid"
    if field.bounds and value is not None and not field.bounds[0] <= value <= field.bounds[1]:
        return None, f"{field.name}_out_of_range"
    return value, None


def _metadata(
    document: dict[str, Any],
    row: int,
    columns: list[list[Any]],
    memos: list[dict[object, tuple[Any, str | None]]],
    counts: Counter[str],
) -> None:
    """Rules 4 to 8 and section 6: fill `row` of the metadata `columns`; bad values stay None
    and are counted. Every rule maps an absent value to None, so absent answers and absent
    containers are skipped; answers repeat, so each field's outcome per distinct answer is
    kept in its `memos` dict (at most _MEMO_SIZE entries)."""
    found = [document]  # found[i + 1]: container i of _CONTAINERS, None when absent
    for container in _CONTAINERS:
        parent = found[container.parent + 1]
        value = parent.get(container.path[-1]) if parent is not None else None
        if value is not None and not isinstance(value, dict):
            counts[f"{container.path[-1]}_not_object"] += 1
            value = None
        found.append(value)
        if value is None:
            continue
        for index, field in container.fields:
            raw = value.get(field.key)
            if raw is None:
                continue
            kind = raw.__class__
            # A memo key tells apart what the rules tell apart: "1" from 1 from True. Floats
            # are not memoized (0.0 == -0.0), nor lists holding unhashable items.
            if kind is str:
                key: object = raw
            elif kind is list:
                key = (kind, *raw)
            elif kind is int or kind is bool:
                key = (kind, raw)
            else:
                key = None
            memo = memos[index]
            try:
                outcome = memo.get(key)
            except TypeError:
                key, outcome = None, None
            if outcome is None:
                outcome = _outcome(field, raw)
                if key is not None and len(memo) < _MEMO_SIZE:
                    memo[key] = outcome
            if outcome[1] is None:
                columns[index][row] = outcome[0]
            else:
                counts[outcome[1]] += 1


def flatten_requests(
    batch: pa.RecordBatch | pa.Table | pl.DataFrame,
) -> tuple[pl.DataFrame, Counter[str]]:
    """One row per request: identity, provenance, validated metadata and its images.

    Columns: ``request_id``, ``case_uuid``, ``patient_id``, ``vendor_id``, ``is_test`` (NULL
    is false), ``modified_at`` (UTC), every column of ``schema.METADATA_SCHEMA``, and
    ``images`` (list of ``{image_uuid, source_gcs_path}``). Ids are taken as Int64 columns
    and never pass through Python floats. A request that cannot be read yields a row with
    null metadata and no images; the counts say why (keys in the module docstring).
    """
    frame = source_frame(batch, REQUESTS_TABLE)
    counts: Counter[str] = Counter(requests=frame.height)
    columns: list[list[Any]] = [[None] * frame.height for _ in FIELDS]
    memos: list[dict[object, tuple[Any, str | None]]] = [{} for _ in FIELDS]
    images: list[list[dict[str, str]]] = []
    # As bytes: orjson reads UTF-8 directly, and Python strings are never built for it.
    for row, text in enumerate(frame.get_column("request").cast(pl.Binary).to_list()):
        document = _decode(text, counts)
        if document is None:
            images.append([])
        else:
            _metadata(document, row, columns, memos, counts)
            images.append(_images(document.get("images"), counts))
        if not images[-1]:
            counts["requests_without_images"] += 1
    identity = frame.select(
        pl.col("id").alias("request_id"),
        pl.col("uuid").alias("case_uuid"),
        "patient_id",
        "vendor_id",
        pl.col("is_test").fill_null(False),
        pl.col("modified_at"),
    )
    # pyarrow builds (nested) columns from Python lists far faster than pl.Series does.
    arrays = [
        pa.array(column, type=_ARROW_TYPES[field.name])
        for field, column in zip(FIELDS, columns, strict=True)
    ]
    arrays.append(pa.array(images, type=_ARROW_TYPES["images"]))
    names = [field.name for field in FIELDS] + ["images"]
    metadata = pl.from_arrow(pa.Table.from_arrays(arrays, names=names))
    return pl.concat([identity, metadata], how="horizontal"), counts
