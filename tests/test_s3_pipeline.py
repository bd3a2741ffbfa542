"""The whole graph in production mode against a real S3 API (moto on 127.0.0.1).

Dumps, the photo backup, the curated dataset and the intermediate asset outputs all live in
buckets; the test drives the pipeline the way the daemon does: the dump sensor ticks, its run
request is executed, and a second dump landing later triggers exactly one more run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest
from expected_graph import STORED_ASSETS
from s3server import create_bucket, s3_endpoint  # noqa: F401 (the fixture)

from dagster_project.cli import run_dump
from dagster_project.definitions import build_definitions
from dagster_project.partitions import dump_partitions
from dagster_project.publish import CLAIM, MARKER, list_versions, read_version_file
from dagster_project.sensors import dump_sensor
from dagster_project.settings import Settings
from dagster_project.storage import ObjectStore, store_from_uri
from dagster_project.synthetic import generate

pytestmark = pytest.mark.slow


#: Files every published version holds (besides the datasheet the marker also lists).
VERSION_FILES = {
    "manifest.parquet",
    "splits.parquet",
    "duplicate_clusters.parquet",
    "feature_schema.json",
    "disease_taxonomy.json",
    "stats.json",
}


def _upload_tree(client, bucket: str, root: Path) -> int:
    count = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, path.relative_to(root).as_posix())
            count += 1
    return count


def _evaluate_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor)
    return dump_sensor(context)


def _add_partitions(instance: dg.DagsterInstance, tick: dg.SensorResult) -> None:
    """What the daemon does with a tick's partition requests before launching its runs."""
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


def _keys(store: ObjectStore) -> set[str]:
    return {found.key for found in store.list()}


def test_sensor_and_runs_on_s3(tmp_path, monkeypatch, s3_endpoint):  # noqa: F811
    source = generate(tmp_path / "source", requests=60)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    backup, curated, storage = (create_bucket(s3_endpoint) for _ in range(3))
    assert _upload_tree(client, backup, source.backup_dir) == source.n_images
    first_dump = source.dump_path.name
    client.upload_file(str(source.dump_path), backup, f"dumps/{first_dump}")

    home = tmp_path / "home"
    for name, value in {
        "DERMACURATE_ENV": "production",
        "DERMACURATE_HOME": str(home),
        "DERMACURATE_DUMPS": f"s3://{backup}/dumps",
        "DERMACURATE_BACKUP": f"s3://{backup}",
        "DERMACURATE_CURATED": f"s3://{curated}/dermacurate",
        "DERMACURATE_STORAGE": f"s3://{storage}/assets",
        "DERMACURATE_S3_ENDPOINT_URL": s3_endpoint,
        "DERMACURATE_TEST_PATIENTS": str(source.test_patients_path),
        "DERMACURATE_EMBED_BACKEND": "efficientnet_lite0",
        "DERMACURATE_EMBED_DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("DERMACURATE_CACHE", "DERMACURATE_ALGO_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    defs = build_definitions(settings)
    curated_store = store_from_uri(settings.curated, endpoint_url=s3_endpoint)
    storage_store = store_from_uri(settings.storage, endpoint_url=s3_endpoint)

    with dg.instance_for_test() as instance:
        # a) the sensor sees the dump in the bucket: one run, one new partition.
        tick = _evaluate_sensor(defs, instance, cursor=None)
        assert [request.partition_key for request in tick.run_requests] == [first_dump]
        _add_partitions(instance, tick)
        assert instance.get_dynamic_partitions(dump_partitions.name) == [first_dump]

        # b) the requested run publishes v1 and copies every manifest photo, all in S3.
        (request,) = tick.run_requests
        first = _metadata(run_dump(settings, request.partition_key, instance), "dataset_version")
        assert first["version"] == 1 and first["published"] is True
        assert list_versions(curated_store) == [1]
        marker = json.loads(curated_store.read_bytes(f"v1/{MARKER}"))
        assert set(marker["files"]) >= VERSION_FILES
        published = _keys(curated_store)
        assert {key for key in published if key.startswith("v1/")} == {
            f"v1/{name}" for name in [*marker["files"], MARKER, CLAIM]
        }
        # read_version_file checks each file against the marker's size and SHA-256.
        assert all(read_version_file(curated_store, 1, name) for name in marker["files"])
        manifest = pl.read_parquet(
            io.BytesIO(read_version_file(curated_store, 1, "manifest.parquet"))
        )
        assert manifest.height > 0
        images = {key for key in published if not key.startswith("v1/")}
        assert images == {f"images/{uuid}.jpg" for uuid in manifest["image_uuid"]}
        for row in manifest.select("image_uuid", "source_gcs_path").iter_rows(named=True):
            original = row["source_gcs_path"].removeprefix("gs://")
            copied = curated_store.read_bytes(f"images/{row['image_uuid']}.jpg")
            assert copied == (source.backup_dir / original).read_bytes()

        stored = _keys(storage_store)
        assert {key.split("/")[0] for key in stored} == STORED_ASSETS
        assert all(key.rsplit("/", 1)[1].startswith(first_dump) for key in stored)
        assert {path.name for path in home.iterdir()} <= {"downloads", "cache"}
        assert (home / "downloads" / first_dump).read_bytes() == source.dump_path.read_bytes()

        # c) a second dump lands (same content, new name): exactly one more run, and since
        # the dataset is unchanged nothing new is published.
        second_dump = first_dump.replace(".sql", "-again.sql")
        client.upload_file(str(source.dump_path), backup, f"dumps/{second_dump}")
        retick = _evaluate_sensor(defs, instance, cursor=tick.cursor)
        assert [request.partition_key for request in retick.run_requests] == [second_dump]
        _add_partitions(instance, retick)
        assert instance.get_dynamic_partitions(dump_partitions.name) == [first_dump, second_dump]
        assert _evaluate_sensor(defs, instance, cursor=retick.cursor).run_requests == []

        rerun = run_dump(settings, retick.run_requests[0].partition_key, instance)
        second = _metadata(rerun, "dataset_version")
        copy = _metadata(rerun, "curated_images")
        assert (copy["copied"], copy["skipped"]) == (0, manifest.height)
        assert second["version"] == 1 and second["published"] is False
        assert second["digest"] == first["digest"]
        assert _keys(curated_store) == published
        assert {key.rsplit("/", 1)[1] for key in _keys(storage_store)} >= {
            f"{second_dump}.parquet",
            f"{second_dump}.json",
        }
