"""Flatten ``rn_requests`` rows into one typed row per request (SOURCE_FORMAT.md 2, 3, 6, 7).

The request JSON is decoded once per row, by msgspec into structs that name only the metadata
answers and the images: ``free_text``, ``user_crypt`` and ``headers`` are skipped unread, so
no PII leaves this first step, not even in the counts (whose keys are fixed names, never
values). Answers stay JSON text until the rules run on each distinct text of a column once.

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

import gc
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

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
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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


def _children(parent: int) -> list[tuple[int, _Container]]:
    """The containers directly inside container `parent` of `_CONTAINERS` (-1: the document)."""
    return [(i, child) for i, child in enumerate(_CONTAINERS) if child.parent == parent]


# A key the JSON lacks; an answer that is there is its JSON text, undecoded.
_ABSENT = msgspec.Raw()
# What a container may be instead of an object (rule 8).
_NOT_OBJECT = list | str | int | float | bool | None


def _struct_types() -> tuple[tuple[type, ...], type]:
    """One msgspec Struct per container (its fields' answers first, as raw JSON text, then
    its child containers) and one for the document. Decoding into them reads only the keys
    the layout names: the PII keys are skipped unread, and no Python object is built for an
    answer until its distinct texts are decided."""
    structs: list[type] = [object] * len(_CONTAINERS)
    for index in reversed(range(len(_CONTAINERS))):
        container = _CONTAINERS[index]
        fields: list[tuple[str, Any, Any]] = [
            (field.key, msgspec.Raw, _ABSENT) for _, field in container.fields
        ]
        fields += [
            (child.path[-1], structs[i] | _NOT_OBJECT, None) for i, child in _children(index)
        ]
        structs[index] = msgspec.defstruct("_".join(container.path), fields)
    document = [(child.path[-1], structs[i] | _NOT_OBJECT, None) for i, child in _children(-1)]
    return tuple(structs), msgspec.defstruct("request", [*document, ("images", Any, None)])


_STRUCTS, _REQUEST = _struct_types()
_DECODER = msgspec.json.Decoder(_REQUEST | _NOT_OBJECT)


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
    stem = url.rsplit("/", 1)[-1].partition(".")[0].lower()
    return stem if _UUID.fullmatch(stem) else None


def _images(raw: object, counts: Counter[str]) -> list[tuple[str, str]]:
    """Rule 9: the usable images of one request as (image_uuid, source_gcs_path), first
    occurrence of each uuid kept."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        counts["images_not_list"] += 1
        return []
    images: list[tuple[str, str]] = []
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
            images.append((uuid, url))
    return images


def _as_struct(value: object, index: int) -> object:
    """A document decoded by `load_json` in the shape `_DECODER` gives: answers as their JSON
    text again (the standard library writes NaN, huge numbers and lone surrogates back as it
    read them), non-object containers as they are."""
    if not isinstance(value, dict):
        return value
    struct = _STRUCTS[index] if index >= 0 else _REQUEST
    values: dict[str, Any] = {
        field.key: json.dumps(value[field.key]).encode()
        for _, field in (_CONTAINERS[index].fields if index >= 0 else ())
        if field.key in value
    }
    for i, child in _children(index):
        values[child.path[-1]] = _as_struct(value.get(child.path[-1]), i)
    if index < 0:
        values["images"] = value.get("images")
    return struct(**values)


def _decode(text: bytes | None, counts: Counter[str]) -> Any:
    """The request document as a `_REQUEST` struct, or None (counted) when there is none.

    What msgspec refuses (NaN, numbers beyond a double in a container's place, lone
    surrogates, deep nesting) is read again by `load_json`, as every document once was."""
    if text is None:
        counts["requests_null"] += 1
        return None
    try:
        document = _DECODER.decode(text)
    except (msgspec.DecodeError, RecursionError):
        try:
            document = _as_struct(load_json(text), -1)
        except (ValueError, RecursionError):
            counts["requests_invalid_json"] += 1
            return None
    if document is None:
        counts["requests_null"] += 1
    elif document.__class__ is not _REQUEST:
        counts["request_not_object"] += 1
    else:
        return document
    return None


def _outcome(field: _Field, text: bytes) -> tuple[Any, str | None]:
    """A field's value for the JSON text of an answer, or None and the count key of the
    problem. Empty text is an absent answer."""
    if not text:
        return None, None
    # msgspec nests no deeper than orjson does: what it kept as an answer, orjson reads.
    value = field.parse(load_json(text))
    if value is INVALID:
        return None, f"{field.name}_invalid"
    if field.bounds and value is not None and not field.bounds[0] <= value <= field.bounds[1]:
        return None, f"{field.name}_out_of_range"
    return value, None


def _decided(
    field: _Field, answers: tuple[msgspec.Raw | bytes, ...], counts: Counter[str]
) -> pa.Array:
    """One field's column from the JSON text of its answers, each distinct text decided once
    (the text tells apart what the rules tell apart: 1, 1.0, true, "1"; 0.0 and -0.0)."""
    # JSON text never holds a raw NUL, so one join and one split in Arrow give the answers
    # as an Arrow column without a Python object per answer.
    joined = pa.array([b"\0".join(answers)], pa.binary())
    texts = pc.list_flatten(pc.split_pattern(joined, b"\0")).dictionary_encode()
    outcomes = [_outcome(field, text) for text in texts.dictionary.to_pylist()]
    problems = [(i, problem) for i, (_, problem) in enumerate(outcomes) if problem is not None]
    if problems:
        times = np.bincount(texts.indices.to_numpy(), minlength=len(outcomes))
        for i, problem in problems:
            counts[problem] += int(times[i])
    values = pa.array([value for value, _ in outcomes], _ARROW_TYPES[field.name])
    return values.take(texts.indices)


def _metadata_columns(documents: list[Any], counts: Counter[str]) -> list[pa.Array]:
    """Rules 4 to 8 and section 6, a column at a time: bad values become null and are
    counted."""
    columns = [pa.nulls(len(documents), _ARROW_TYPES[field.name]) for field in FIELDS]
    # found[i + 1]: container i of _CONTAINERS in every row, None where absent
    found: list[list[Any]] = [documents]
    for index, container in enumerate(_CONTAINERS):
        key, struct = container.path[-1], _STRUCTS[index]
        values = [
            getattr(parent, key) if parent is not None else None
            for parent in found[container.parent + 1]
        ]
        wrong = sum(value is not None and value.__class__ is not struct for value in values)
        if wrong:
            counts[f"{key}_not_object"] += wrong
            values = [value if value.__class__ is struct else None for value in values]
        found.append(values)
        if not container.fields:
            continue
        absent = astuple(struct())
        rows = [astuple(value) if value is not None else absent for value in values]
        # a struct's fields are its container's fields first, then its child containers
        answers_by_field = zip(*rows, strict=True)
        for (column, field), answers in zip(container.fields, answers_by_field, strict=False):
            columns[column] = _decided(field, answers, counts)
    return columns


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Flattening builds a few hundred thousand short-lived objects that hold no cycles; the
    cyclic collector would walk the live ones again and again (a third of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    # As bytes: msgspec reads UTF-8 directly, and Python strings are never built for it.
    texts = frame.get_column("request").cast(pl.Binary).to_list()
    with _cyclic_gc_paused():
        documents = [_decode(text, counts) for text in texts]
        columns = _metadata_columns(documents, counts)
        images = [
            _images(document.images, counts) if document is not None else []
            for document in documents
        ]
    without_images = sum(not entries for entries in images)
    if without_images:
        counts["requests_without_images"] += without_images
    identity = frame.select(
        pl.col("id").alias("request_id"),
        pl.col("uuid").alias("case_uuid"),
        "patient_id",
        "vendor_id",
        pl.col("is_test").fill_null(False),
        pl.col("modified_at"),
    )
    # pyarrow builds nested columns from Python lists far faster than pl.Series does.
    arrays = [*columns, pa.array(images, type=_ARROW_TYPES["images"])]
    names = [field.name for field in FIELDS] + ["images"]
    metadata = pl.from_arrow(pa.Table.from_arrays(arrays, names=names))
    return pl.concat([identity, metadata], how="horizontal"), counts
