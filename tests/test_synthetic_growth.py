"""Tests of `synthetic.grow`: a later dump that holds the earlier one plus new rows and photos.

The grown truth is checked against what the pipeline's own metadata functions read from the
grown dump, and the growth against the earlier dump: its rows, photos and truth are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from test_synthetic import _comparable

from dagster_project.diagnoses import latest_annotations, load_vocabulary, normalize_diagnoses
from dagster_project.postgres import postgres_bin_dir
from dagster_project.records import build_image_records, load_test_patient_ids
from dagster_project.source import SourceTables, read_source
from dagster_project.synthetic import GeneratedSource, generate, grow

N = 80
EXTRA = 40
SEED = 11


@dataclass(frozen=True)
class Grown:
    old: GeneratedSource
    new: GeneratedSource
    old_truth: Path  # truth/by_dump/<old dump>/
    old_backup: dict[str, str]  # relative path -> sha256, before the growth


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Grown:
    root = tmp_path_factory.mktemp("growth") / "source"
    old = generate(root, requests=N, seed=SEED)
    old_backup = _digests(old.backup_dir)
    new = grow(root, EXTRA)
    return Grown(old, new, root / "truth" / "by_dump" / old.dump_path.name, old_backup)


def _copy_blocks(dump: Path) -> dict[str, list[str]]:
    text = dump.read_text(encoding="utf-8")
    blocks = re.findall(r"^COPY public\.(\w+) .*?FROM stdin;\n(.*?)^\\\.$", text, re.M | re.S)
    return {table: block.split("\n")[:-1] for table, block in blocks}


def _pipeline_records(source: SourceTables, test_patients: Path) -> pl.DataFrame:
    latest = latest_annotations(source.annotations)
    diagnoses, _ = normalize_diagnoses(latest, source.disease_codes, load_vocabulary())
    records, _ = build_image_records(
        source.requests, diagnoses, load_test_patient_ids(test_patients)
    )
    return records.sort("case_uuid", "image_uuid")


def _image_uuids(source: SourceTables) -> set[str]:
    return set(source.requests.explode("images").unnest("images")["image_uuid"].drop_nulls())


def test_grown_dump_holds_every_old_row(grown: Grown) -> None:
    old, new = grown.old.dump_path, grown.new.dump_path
    assert new.parent == old.parent and new.name > old.name
    assert sorted(p.name for p in old.parent.iterdir()) == [old.name, new.name]
    before, after = _copy_blocks(old), _copy_blocks(new)
    assert set(before) == set(after)
    for table, rows in before.items():
        assert after[table][: len(rows)] == rows, table
    assert after["disease_codes"] == before["disease_codes"]
    old_source, new_source = read_source(old), read_source(new)
    old_ids = set(old_source.requests["request_id"])
    new_ids = set(new_source.requests["request_id"])
    assert old_ids < new_ids and len(new_ids - old_ids) == EXTRA
    assert min(new_ids - old_ids) > max(old_ids | set(old_source.annotations["request_id"]))
    assert _image_uuids(old_source) < _image_uuids(new_source)
    assert grown.new.n_requests == N + EXTRA
    new_patients = set(
        new_source.requests.filter(~pl.col("request_id").is_in(old_ids))["patient_id"]
    )
    old_patients = set(old_source.requests["patient_id"])
    assert new_patients & old_patients and new_patients - old_patients
    old_pii = set((grown.old_truth / "pii_strings.txt").read_text().splitlines())
    assert old_pii < set((grown.new.truth_dir / "pii_strings.txt").read_text().splitlines())


def test_truth_of_each_dump_equals_the_pipeline(grown: Grown) -> None:
    for dump, truth_dir in (
        (grown.new.dump_path, grown.new.truth_dir),
        (grown.old.dump_path, grown.old_truth),
    ):
        truth = pl.read_parquet(truth_dir / "expected_image_records.parquet")
        found = _pipeline_records(read_source(dump), grown.new.test_patients_path)
        assert found.equals(truth), dump.name


def test_new_reviews_of_old_cases(grown: Grown) -> None:
    old_truth = pl.read_parquet(grown.old_truth / "expected_image_records.parquet")
    new_truth = pl.read_parquet(grown.new.truth_dir / "expected_image_records.parquet")
    old_source, new_source = read_source(grown.old.dump_path), read_source(grown.new.dump_path)
    old_cases = set(old_source.requests["case_uuid"])
    before = dict(old_truth.select("case_uuid", "diagnoses_all").unique("case_uuid").iter_rows())
    after = dict(new_truth.select("case_uuid", "diagnoses_all").unique("case_uuid").iter_rows())
    assert [c for c in before if c in after and after[c] != before[c]], "relabelled"
    assert set(before) - set(after), "an old case lost its label"
    assert (set(after) - set(before)) & old_cases, "an old case gained a label"
    old_ids = set(old_source.annotations["id"])
    added = new_source.annotations.filter(
        ~pl.col("id").is_in(old_ids)
        & pl.col("request_id").is_in(old_source.requests["request_id"].implode())
    )
    latest_before = old_source.annotations.group_by("request_id").agg(pl.col("modified_at").max())
    backdated = added.join(latest_before, on="request_id", suffix="_before").filter(
        pl.col("modified_at") < pl.col("modified_at_before")
    )
    assert backdated.height, "a new row with an earlier modified_at than the winner"


def test_old_images_are_untouched(grown: Grown) -> None:
    after = _digests(grown.new.backup_dir)
    assert {path: after.get(path) for path in grown.old_backup} == grown.old_backup
    assert len(after) == len(grown.old_backup) + grown.new.n_images
    assert grown.new.n_images > EXTRA


def test_copies_of_old_photos_by_other_patients(grown: Grown) -> None:
    old_truth = pl.read_parquet(grown.old_truth / "expected_image_records.parquet")
    new_truth = pl.read_parquet(grown.new.truth_dir / "expected_image_records.parquet")
    old_planted = pl.read_parquet(grown.old_truth / "planted_duplicates.parquet")
    planted = pl.read_parquet(grown.new.truth_dir / "planted_duplicates.parquet")
    assert old_planted.join(planted, on=list(planted.columns), how="anti").is_empty()
    patient = dict(zip(new_truth["image_uuid"], new_truth["patient_id"], strict=True))
    path = dict(zip(new_truth["image_uuid"], new_truth["source_gcs_path"], strict=True))
    old_images = set(old_truth["image_uuid"])
    old_patients = set(read_source(grown.old.dump_path).requests["patient_id"])
    copies = planted.filter(
        pl.col("original_uuid").is_in(old_images)
        & ~pl.col("image_uuid").is_in(old_images)
        & (pl.col("transform") == "exact_copy_other_patient")
    )
    hosts = set()
    for copy, original, _ in copies.iter_rows():
        assert patient[copy] != patient[original]
        hosts.add(patient[copy] in old_patients)
        data = (grown.new.backup_dir / path[copy].removeprefix("gs://")).read_bytes()
        assert data == (grown.new.backup_dir / path[original].removeprefix("gs://")).read_bytes()
    assert hosts == {True, False}, "copies by a new patient and by another old patient"


def test_grow_again_layout_and_determinism(grown: Grown, tmp_path: Path) -> None:
    root = tmp_path / "again"
    shutil.copytree(grown.old.dump_path.parent.parent, root, ignore=shutil.ignore_patterns("*.jpg"))
    third = grow(root, 10, seed=2, images=False)
    params = json.loads((third.truth_dir / "params.json").read_text())
    names = [dump["dump_name"] for dump in params["dumps"]]
    assert names == sorted(p.name for p in (root / "dumps").iterdir())
    assert [d["requests"] for d in params["dumps"]] == [N, EXTRA, 10]
    assert sorted(p.name for p in (root / "truth" / "by_dump").iterdir()) == names
    newest = root / "truth" / "by_dump" / names[-1]
    for file in newest.iterdir():
        assert file.read_bytes() == (third.truth_dir / file.name).read_bytes(), file.name
    again = generate(tmp_path / "fresh", requests=N, seed=SEED, images=False)
    grow(again.truth_dir.parent, EXTRA, images=False)
    twin = grow(again.truth_dir.parent, 10, seed=2, images=False)
    assert twin.dump_path.read_bytes() == third.dump_path.read_bytes()
    with pytest.raises(ValueError, match="does not sort after"):
        grow(root, 5, dump_name=names[0])


@pytest.mark.skipif(
    postgres_bin_dir() is None, reason="PostgreSQL binaries (initdb, pg_dump) are not installed"
)
def test_grown_dump_equals_real_pg_dump(grown: Grown, tmp_path: Path) -> None:
    generate(tmp_path, requests=N, seed=SEED, images=False)
    real = grow(tmp_path, EXTRA, images=False, via_postgres=True)
    assert _comparable(real.dump_path) == _comparable(grown.new.dump_path)
