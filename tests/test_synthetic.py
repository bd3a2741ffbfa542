"""Tests of the synthetic source generator (dagster_project.synthetic).

The truth is checked against the contract (SOURCE_FORMAT.md) by re-deriving what can be
re-derived cheaply from the dump and the backup, and the writer's dump against the real
PostgreSQL: it must restore with psql and equal what the real pg_dump writes for the same
rows.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path

import imagehash
import polars as pl
import pytest
from PIL import Image, ImageOps

from dagster_project.dump_parser import stream_tables
from dagster_project.postgres import PostgresServer, postgres_bin_dir
from dagster_project.schema import (
    ANNOTATIONS_TABLE,
    DISEASE_CODES_TABLE,
    IMAGE_RECORDS_SCHEMA,
    REQUESTS_TABLE,
)
from dagster_project.synthetic import GeneratedSource, generate
from dagster_project.synthetic.diseases import SYNONYMS_FILE, load_vocabulary, normalize_name
from dagster_project.synthetic.dump_writer import DUMP_TIMEZONE, copy_field, jsonb_text

N = 200
SEED = 7
needs_postgres = pytest.mark.skipif(
    postgres_bin_dir() is None, reason="PostgreSQL binaries (initdb, pg_dump) are not installed"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSource:
    return generate(tmp_path_factory.mktemp("synthetic") / "a", requests=N, seed=SEED)


def _tables(dump: Path) -> dict[str, pl.DataFrame]:
    specs = (REQUESTS_TABLE, ANNOTATIONS_TABLE, DISEASE_CODES_TABLE)
    batches: dict[str, list[pl.DataFrame]] = defaultdict(list)
    for name, batch in stream_tables(dump, specs, require_all=True):
        batches[name].append(pl.from_arrow(batch))
    return {name: pl.concat(frames) for name, frames in batches.items()}


def _comparable(dump: Path) -> str:
    """The dump text less what differs between any two pg_dump runs (key, versions)."""
    text = dump.read_text(encoding="utf-8")
    text = re.sub(r"^\\(un)?restrict \w+$", r"\\\1restrict KEY", text, flags=re.M)
    return re.sub(
        r"^-- Dumped (from database|by pg_dump) version .*$", "-- version", text, flags=re.M
    )


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_dump_name(source: GeneratedSource) -> None:
    assert re.fullmatch(r"dd_api-\d{4}(_\d{2}){5}\.sql", source.dump_path.name)
    assert source.dump_path.parent.name == "dumps"
    images = list(source.backup_dir.glob("dermadetect-20180424.appspot.com/000RN/*.jpg"))
    assert len(images) == source.n_images > 2 * N
    assert source.n_requests == N


def test_deterministic_for_a_seed(source: GeneratedSource, tmp_path: Path) -> None:
    again = generate(tmp_path / "b", requests=N, seed=SEED)
    root = source.dump_path.parent.parent
    assert _files(tmp_path / "b") == _files(root)
    other = generate(tmp_path / "c", requests=N, seed=SEED + 1, images=False)
    assert other.dump_path.read_bytes() != again.dump_path.read_bytes()


def test_first_request_id_moves_every_id(tmp_path: Path) -> None:
    moved = generate(
        tmp_path / "m",
        requests=30,
        seed=SEED,
        images=False,
        first_request_id=10_000,
        dump_name="dd_api-2024_01_01_00_00_00.sql",
    )
    assert moved.dump_path.name == "dd_api-2024_01_01_00_00_00.sql"
    requests = _tables(moved.dump_path)["rn_requests"]
    assert requests["id"].min() == 10_000
    assert moved.n_images == 0 and not any(moved.backup_dir.rglob("*.jpg"))


def test_tables_columns_and_sizes(source: GeneratedSource) -> None:
    text = source.dump_path.read_text(encoding="utf-8")
    headers = dict(re.findall(r"^COPY public\.(\w+) \((.*)\) FROM stdin;$", text, flags=re.M))
    assert set(headers) == {
        "rn_requests",
        "dermatologist_annotation",
        "disease_codes",
        "users",
        "sessions",
        "request_logs",
    }
    for spec in (REQUESTS_TABLE, ANNOTATIONS_TABLE, DISEASE_CODES_TABLE):
        columns = headers[spec.name].split(", ")
        assert set(spec.columns) < set(columns), "contract columns plus extra ones"
        assert [c for c in columns if c in spec.columns] != list(spec.columns)
    sizes = {
        name: len(block)
        for name, block in re.findall(
            r"^COPY public\.(\w+) .*?FROM stdin;\n(.*?)^\\\.$", text, flags=re.M | re.S
        )
    }
    assert max(sizes, key=sizes.__getitem__) == "request_logs"
    assert text.splitlines()[4].startswith("\\restrict ")
    assert text.rstrip("\n").splitlines()[-1].startswith("\\unrestrict ")


@needs_postgres
def test_writer_dump_equals_real_pg_dump(source: GeneratedSource, tmp_path: Path) -> None:
    real = generate(tmp_path / "pg", requests=N, seed=SEED, images=False, via_postgres=True)
    assert _comparable(real.dump_path) == _comparable(source.dump_path)
    ours, theirs = _tables(source.dump_path), _tables(real.dump_path)
    for name in ours:
        assert ours[name].equals(theirs[name]), name
    for name in (
        "expected_image_records.parquet",
        "planted_duplicates.parquet",
        "bad_images.parquet",
        "pii_strings.txt",
    ):
        assert (real.truth_dir / name).read_bytes() == (source.truth_dir / name).read_bytes()


def test_copy_field_escapes_like_postgres() -> None:
    assert copy_field("a\\b\tc\nd\re\bf\fg\vh\x01i") == "a\\\\b\\tc\\nd\\re\\bf\\fg\\vh\x01i"
    assert copy_field(None) == "\\N" and copy_field(True) == "t"
    stamp = dt.datetime(2019, 10, 26, 22, 40, 0, 120000, tzinfo=dt.UTC)
    assert DUMP_TIMEZONE == "Asia/Jerusalem"
    assert copy_field(stamp) == "2019-10-27 01:40:00.12+03"
    assert copy_field(stamp + dt.timedelta(minutes=30)) == "2019-10-27 01:10:00.12+02"
    assert jsonb_text({"zz": 1, "a": {"bb": 'x\\y"', "c": [1, 2.5]}}) == (
        '{"a": {"c": [1, 2.5], "bb": "x\\\\y\\""}, "zz": 1}'
    )


@needs_postgres
def test_dump_restores_with_psql(source: GeneratedSource, postgres: PostgresServer) -> None:
    postgres.psql(
        "DO $$ BEGIN CREATE ROLE dd_api; CREATE ROLE readonly; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    )
    postgres.create_database("synthetic_restore")
    postgres.psql_file(source.dump_path, "synthetic_restore")
    text = source.dump_path.read_text(encoding="utf-8")
    blocks = re.findall(r"^COPY public\.(\w+) .*?FROM stdin;\n(.*?)^\\\.$", text, flags=re.M | re.S)
    for table, block in blocks:
        count = int(postgres.psql(f"SELECT count(*) FROM public.{table}", "synthetic_restore"))
        assert count == block.count("\n"), table
    assert int(postgres.psql("SELECT count(*) FROM rn_requests", "synthetic_restore")) == N
    # jsonb survived the round trip: every image URL of the truth is in some request.
    truth = pl.read_parquet(source.truth_dir / "expected_image_records.parquet")
    found = postgres.psql(
        "SELECT count(*) FROM rn_requests r WHERE r.request::text LIKE '%' || "
        f"'{truth['source_gcs_path'][0]}' || '%'",
        "synthetic_restore",
    )
    assert int(found) == 1


def _expected_labels(annotations: pl.DataFrame, codes: pl.DataFrame) -> dict[int, tuple]:
    """The contract's rules, re-derived: latest review (instant, then id), normalization."""
    synonyms = (
        {
            normalize_name(k): normalize_name(v)
            for k, v in json.loads(SYNONYMS_FILE.read_text()).items()
        }
        if (SYNONYMS_FILE.exists())
        else {"plaque psoriasis": "psoriasis"}
    )
    excluded = set(load_vocabulary().exclusions)
    code_of = dict(zip(codes["name"], codes["code"], strict=True))
    latest = annotations.sort("modified_at", "id").group_by("request_id").last()
    out = {}
    for request_id, raw in zip(latest["request_id"], latest["diagnoses"], strict=True):
        elements = json.loads(raw) if raw is not None else []
        if isinstance(elements, str):
            elements = json.loads(elements)
        names: dict[str, str | None] = {}
        for element in elements:
            if not isinstance(element, dict) or not isinstance(element.get("disease"), str):
                continue
            name = normalize_name(element["disease"])
            name = synonyms.get(name, name)
            if name not in excluded and name not in names:
                icd9 = element.get("icd9")
                names[name] = icd9 if isinstance(icd9, str) else code_of.get(name)
        if names:
            first = next(iter(names))
            out[request_id] = (first, names[first], list(names))
    return out


def test_truth_agrees_with_the_contract(source: GeneratedSource) -> None:
    truth = pl.read_parquet(source.truth_dir / "expected_image_records.parquet")
    assert truth.schema == pl.Schema(IMAGE_RECORDS_SCHEMA)
    assert truth.equals(truth.sort("case_uuid", "image_uuid"))
    assert truth["image_uuid"].is_unique().all()
    tables = _tables(source.dump_path)
    requests = tables["rn_requests"]
    test_ids = set(json.loads(source.test_patients_path.read_text()))
    assert test_ids and max(test_ids) > 2**53
    flagged = requests.filter(pl.col("is_test"))
    flagged_patients = set(flagged["patient_id"])
    assert flagged_patients - test_ids and flagged_patients & test_ids
    assert test_ids - flagged_patients
    assert not set(truth["patient_id"]) & test_ids
    assert not set(truth["case_uuid"]) & set(flagged["uuid"])
    assert (truth["patient_id"] > 2**53).any()
    labels = _expected_labels(tables["dermatologist_annotation"], tables["disease_codes"])
    case_request = dict(zip(requests["uuid"], requests["id"], strict=True))
    cases = truth.unique("case_uuid", keep="first")
    for row in cases.iter_rows(named=True):
        expected = labels[case_request[row["case_uuid"]]]
        assert (row["diagnosis"], row["diagnosis_icd9"], row["diagnoses_all"]) == expected
    usable = {case_request[c] for c in truth["case_uuid"]}
    labelled_elsewhere = set(labels) - usable
    assert labelled_elsewhere, "some labelled cases are test accounts or have no image"
    assert (truth["diagnosis"] == "acne vulgaris").sum() > 0


def test_review_traps_are_planted(source: GeneratedSource) -> None:
    annotations = _tables(source.dump_path)["dermatologist_annotation"]
    requests = set(_tables(source.dump_path)["rn_requests"]["id"])
    assert set(annotations["request_id"]) - requests, "reviews of requests not in the dump"
    text = source.dump_path.read_text(encoding="utf-8")
    block = re.search(
        r"^COPY public\.dermatologist_annotation \((.*?)\) FROM stdin;\n(.*?)^\\\.$",
        text,
        flags=re.M | re.S,
    )
    assert block is not None
    columns = block.group(1).split(", ")
    shown = {}
    for line in block.group(2).splitlines():
        fields = line.split("\t")
        shown[int(fields[columns.index("id")])] = fields[columns.index("modified_at")]
    dst = ties = 0
    for _, group in annotations.group_by("request_id"):
        if group.height < 2:
            continue
        by_instant = group.sort("modified_at", "id")["id"][-1]
        by_text = max(group["id"], key=lambda i: (shown[i], i))
        dst += by_instant != by_text and by_instant != group["id"].max()
        ties += group["modified_at"].is_duplicated().any()
    assert dst >= 1 and ties >= 1
    assert re.search(r'\t"\[\{\\\\"disease', text), "double-encoded diagnoses"


def test_messy_values_are_planted(source: GeneratedSource) -> None:
    raw = "\n".join(r for r in _tables(source.dump_path)["rn_requests"]["request"] if r)
    for needle in (
        '"YES"',
        '"0"',
        '"unknown"',
        ',5"',
        '"NaN"',
        '"unit": "WEEKS"',
        '"images": 5',
        '"taken_at"',
        "\u2028",
        "נ",
        '"\\t',
    ):
        assert needle in raw, needle
    wrong = {
        "patient": ('"n/a"', "0", "[]"),
        "pain": ('"yes"', "1"),
        "location": ('"face"', "["),
        "answers": ("[]", '"none"'),
        "hair_loss": ("true", '"no"'),
    }
    for key, values in wrong.items():
        assert any(f'"{key}": {value}' in raw for value in values), key


def test_pii_is_planted_and_absent_from_truth(source: GeneratedSource) -> None:
    pii = (source.truth_dir / "pii_strings.txt").read_text(encoding="utf-8").splitlines()
    kinds = {"jwt": r"^eyJ", "email": r"@", "ip": r"^\d+\.\d+\.\d+\.\d+$", "note": r"\[ref "}
    for kind, pattern in kinds.items():
        assert any(re.search(pattern, s) for s in pii), kind
    truth = pl.read_parquet(source.truth_dir / "expected_image_records.parquet")
    text = "\n".join(str(v) for row in truth.iter_rows() for v in row)
    assert not [s for s in pii if s in text]
    dump = source.dump_path.read_text(encoding="utf-8")
    tokens = [s for s in pii if re.fullmatch(r"[\w.@+/=-]+", s)]
    assert len(tokens) > 3 * N and all(s in dump for s in tokens)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def test_backup_matches_truth(source: GeneratedSource) -> None:
    truth = pl.read_parquet(source.truth_dir / "expected_image_records.parquet")
    bad = dict(pl.read_parquet(source.truth_dir / "bad_images.parquet").iter_rows())
    assert set(bad.values()) == {"missing", "empty", "truncated", "not_an_image", "too_large"}
    for uuid, path in zip(truth["image_uuid"], truth["source_gcs_path"], strict=True):
        file = source.backup_dir / path.removeprefix("gs://")
        status = bad.get(uuid)
        assert file.exists() == (status != "missing"), uuid
        if status is None:
            _open(file.read_bytes())
        elif status == "empty":
            assert file.stat().st_size == 0
        elif status in ("truncated", "not_an_image", "too_large"):
            with pytest.raises((OSError, Image.DecompressionBombError)):
                _open(file.read_bytes())


def test_planted_duplicates_look_like_their_originals(source: GeneratedSource) -> None:
    truth = pl.read_parquet(source.truth_dir / "expected_image_records.parquet")
    planted = pl.read_parquet(source.truth_dir / "planted_duplicates.parquet")
    assert set(planted["transform"]) == {
        "exact_copy",
        "exact_copy_other_patient",
        "resize",
        "recompress",
        "crop",
        "mirror",
        "rotate90",
        "brightness",
        "colour_shift",
    }
    path = dict(zip(truth["image_uuid"], truth["source_gcs_path"], strict=True))
    patient = dict(zip(truth["image_uuid"], truth["patient_id"], strict=True))

    def data(uuid: str) -> bytes:
        return (source.backup_dir / path[uuid].removeprefix("gs://")).read_bytes()

    undo = {"mirror": ImageOps.mirror}
    for copy, original, transform in planted.iter_rows():
        same_patient = patient[copy] == patient[original]
        assert same_patient == (transform != "exact_copy_other_patient")
        if transform.startswith("exact_copy"):
            assert data(copy) == data(original)
            continue
        assert data(copy) != data(original)
        a, b = _open(data(original)), undo.get(transform, lambda x: x)(_open(data(copy)))
        if transform == "rotate90":
            distance = min(
                imagehash.phash(a) - imagehash.phash(b.rotate(angle, expand=True))
                for angle in (90, 270)
            )
        else:
            distance = imagehash.phash(a) - imagehash.phash(b)
        assert distance <= 12, (transform, distance)


def test_different_photos_do_not_look_alike(source: GeneratedSource) -> None:
    planted = pl.read_parquet(source.truth_dir / "planted_duplicates.parquet")
    skip = set(planted["image_uuid"]) | set(
        pl.read_parquet(source.truth_dir / "bad_images.parquet")["image_uuid"]
    )
    hashes = []
    for file in sorted(source.backup_dir.rglob("*.jpg")):
        if file.stem.lower() not in skip:
            hashes.append(imagehash.phash(_open(file.read_bytes())))
    assert len(hashes) > 2 * N
    closest = min(a - b for a, b in itertools.combinations(hashes, 2))
    assert closest > 8
