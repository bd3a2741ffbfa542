"""The whole graph on a synthetic source, as `dermacurate build` runs it.

One source is built once for the module; the tests then check what a maintainer relies on:
a complete version, no leak, every planted copy found and kept with its original, no PII,
idempotent re-runs, and a failing blocking check that publishes nothing and alerts.
"""

import io
import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from pii_scan import pii_found, planted_pii
from webhook import webhook_receiver

from dagster_project.cli import run_dump
from dagster_project.publish import latest_version, read_version_file
from dagster_project.schema import MANIFEST_SCHEMA
from dagster_project.sensors import check_failure_alerts
from dagster_project.settings import Settings
from dagster_project.storage import LocalStore
from dagster_project.synthetic import generate, grow
from resources.alerts import AlertNotifier

VERSION_FILES = {
    "manifest.parquet",
    "splits.parquet",
    "duplicate_clusters.parquet",
    "feature_schema.json",
    "disease_taxonomy.json",
    "stats.json",
    "datasheet.md",
    "_COMPLETE",
}


def _settings(home: Path) -> Settings:
    with pytest.MonkeyPatch.context() as env:
        for name in (
            "DERMACURATE_DUMPS",
            "DERMACURATE_BACKUP",
            "DERMACURATE_CURATED",
            "DERMACURATE_STORAGE",
            "DERMACURATE_CACHE",
            "DERMACURATE_TEST_PATIENTS",
            "DERMACURATE_ENV",
            "DERMACURATE_EMBED_BACKEND",
        ):
            env.delenv(name, raising=False)
        env.setenv("DERMACURATE_HOME", str(home))
        return Settings.from_env()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("pipeline")
    source = generate(home / "source", requests=150, seed=11)
    settings = _settings(home)
    with dg.instance_for_test() as instance:
        run_dump(settings, source.dump_path.name, instance)
        yield source, settings, instance


def _stored(settings: Settings, asset: str, dump: str) -> pl.DataFrame:
    return pl.read_parquet(Path(settings.storage) / asset / f"{dump}.parquet")


def _version_frame(store: LocalStore, version: int, name: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(read_version_file(store, version, name)))


def test_a_complete_version_is_published(built):
    source, settings, _ = built
    store = LocalStore(settings.curated)
    assert latest_version(store) == 1
    assert {p.name for p in (Path(settings.curated) / "v1").iterdir()} >= VERSION_FILES
    manifest = _version_frame(store, 1, "manifest.parquet")
    assert manifest.schema == pl.Schema(MANIFEST_SCHEMA)
    assert manifest.height > 200
    copied = {p.stem for p in (Path(settings.curated) / "images").iterdir()}
    assert copied == set(manifest["image_uuid"])


def test_bad_files_are_flagged_and_left_out(built):
    source, settings, _ = built
    files = _stored(settings, "image_files", source.dump_path.name)
    bad = pl.read_parquet(source.truth_dir / "bad_images.parquet")
    flagged = bad.join(files.select("image_uuid", "status"), on="image_uuid")
    assert flagged.height >= 1
    assert flagged["status"].to_list() == flagged["expected_status"].to_list()
    manifest = _version_frame(LocalStore(settings.curated), 1, "manifest.parquet")
    assert not set(bad["image_uuid"]) & set(manifest["image_uuid"])


def test_no_patient_and_no_planted_copy_spans_two_splits(built):
    source, settings, _ = built
    dump = source.dump_path.name
    records = _stored(settings, "image_records", dump)
    clusters = _stored(settings, "duplicate_clusters", dump)
    splits = _stored(settings, "splits", dump)
    assert splits["patient_id"].is_unique().all()
    image_split = records.join(splits, on="patient_id").select("image_uuid", "split", "case_uuid")
    case_of = image_split.select("image_uuid", "case_uuid").unique("image_uuid")
    planted = (
        pl.read_parquet(source.truth_dir / "planted_duplicates.parquet")
        # Photos of one case share the case's group whatever the detectors say: count the
        # copies that only duplicate detection can keep together.
        .join(case_of, on="image_uuid")
        .join(
            case_of.rename({"image_uuid": "original_uuid", "case_uuid": "original_case"}),
            on="original_uuid",
        )
        .filter(pl.col("case_uuid") != pl.col("original_case"))
        .join(clusters.select("image_uuid", "cluster_id"), on="image_uuid")
        .join(
            clusters.select(
                pl.col("image_uuid").alias("original_uuid"),
                pl.col("cluster_id").alias("original_cluster"),
            ),
            on="original_uuid",
        )
        .join(image_split.unique("image_uuid"), on="image_uuid")
        .join(
            image_split.unique("image_uuid").select(
                pl.col("image_uuid").alias("original_uuid"), pl.col("split").alias("original_split")
            ),
            on="original_uuid",
        )
    )
    assert planted.height >= 3, planted
    found = planted.filter(pl.col("cluster_id") == pl.col("original_cluster"))
    recall = {
        transform: found.filter(pl.col("transform") == transform).height / group.height
        for (transform,), group in planted.group_by("transform")
    }
    assert all(value >= 0.99 for value in recall.values()), recall
    assert (planted["split"] == planted["original_split"]).all()
    manifest = _version_frame(LocalStore(settings.curated), 1, "manifest.parquet")
    assert manifest.group_by("cluster_id").agg(pl.col("split").n_unique())["split"].max() == 1
    assert manifest.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1


def test_no_planted_pii_in_any_output(built):
    source, settings, _ = built
    outputs = [p for root in (settings.curated, settings.storage) for p in Path(root).rglob("*")]
    assert len(outputs) > 20
    assert pii_found(outputs, planted_pii(source.truth_dir)) == []


def test_rerunning_publishes_nothing_new(built):
    source, settings, instance = built
    run_dump(settings, source.dump_path.name, instance)
    assert latest_version(LocalStore(settings.curated)) == 1


def test_a_grown_dump_keeps_every_old_patients_split(built):
    source, settings, instance = built
    old = _version_frame(LocalStore(settings.curated), 1, "splits.parquet")
    grown = grow(source.dump_path.parents[1], extra_requests=40, seed=5)
    images = Path(settings.curated) / "images"
    before = sorted(images.iterdir())
    run_dump(settings, grown.dump_path.name, instance, dry_run=True)
    store = LocalStore(settings.curated)
    assert latest_version(store) == 1 and sorted(images.iterdir()) == before
    observed = instance.fetch_observations(dg.AssetKey("curated_images"), limit=1).records
    assert observed[0].asset_observation.metadata["copied"].value > 0
    run_dump(settings, grown.dump_path.name, instance)
    assert latest_version(store) == 2
    new = _version_frame(store, 2, "splits.parquet")
    moved = {
        move["patient_id"]
        for move in _latest_metadata(instance, "splits", grown.dump_path.name)["moved_patients"]
    }
    kept = old.join(new, on="patient_id", suffix="_new")
    assert kept.height == old.height
    changed = kept.filter(pl.col("split") != pl.col("split_new"))
    assert set(changed["patient_id"]) == moved
    assert (changed["split_new"] == "train").all()
    assert new.height > old.height
    manifest = _version_frame(store, 2, "manifest.parquet")
    assert manifest.group_by("cluster_id").agg(pl.col("split").n_unique())["split"].max() == 1


def _latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


def test_pii_in_a_free_text_answer_blocks_publication_and_alerts(built):
    source, settings, instance = built
    leaked = "write to john.doe@example.org"
    text = source.dump_path.read_text()
    marker = '"shape": "'
    assert marker in text
    bad_dump = source.dump_path.with_name("dd_api-2099_01_01_00_00_00.sql")
    bad_dump.write_text(text.replace(marker, marker + leaked + " ", 1))
    store = LocalStore(settings.curated)
    published = latest_version(store)
    with pytest.raises(Exception, match="no_pii|manifest"):
        run_dump(settings, bad_dump.name, instance)
    assert latest_version(store) == published
    with webhook_receiver() as (url, payloads):
        notifier = AlertNotifier(webhook_url=url)
        context = dg.build_sensor_context(instance=instance, resources={"alerts": notifier})
        check_failure_alerts(context)
    alerts = [p for p in payloads if p["check"] == "no_pii"]
    assert [a["partition"] for a in alerts] == [bad_dump.name]
    assert all("john.doe" not in json.dumps(p) for p in payloads)
