"""Versioned publication: whole or nothing, idempotent, safe under crashes and concurrency."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from s3server import s3_bucket, s3_endpoint  # noqa: F401  (pytest fixtures)

from dagster_project import publish
from dagster_project.publish import (
    CLAIM,
    MARKER,
    PublishError,
    latest_version,
    list_versions,
    publish_version,
    read_version_file,
)
from dagster_project.storage import TMP_PREFIX, LocalStore, ObjectStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "dest")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(request.getfixturevalue("s3_bucket"), "curated", endpoint_url=endpoint)


def dataset(tag: str) -> dict[str, bytes]:
    return {
        "manifest.parquet": f"manifest {tag}".encode() * 50,
        "splits.parquet": f"splits {tag}".encode(),
        "plots/split_sizes.png": f"png {tag}".encode(),
        "stats.json": json.dumps({"tag": tag}).encode(),
    }


def keys_under(store: ObjectStore, prefix: str) -> list[str]:
    return [found.key for found in store.list(prefix)]


def test_publishes_consecutive_complete_versions(store: ObjectStore) -> None:
    assert list_versions(store) == [] and latest_version(store) is None
    first = publish_version(store, dataset("a"))
    second = publish_version(store, dataset("b"))
    assert (first.version, second.version) == (1, 2)
    assert first.created and second.created
    assert list_versions(store) == [1, 2] and latest_version(store) == 2
    assert read_version_file(store, 1, "splits.parquet") == b"splits a"
    assert read_version_file(store, 2, "plots/split_sizes.png") == b"png b"
    assert read_version_file(store, 2, "not-published.txt") is None
    assert read_version_file(store, 7, "splits.parquet") is None
    assert second.uri == store.uri("v2/")
    names = {key.split("/", 1)[1] for key in keys_under(store, "v2/")} - {CLAIM}
    assert names == {*dataset("b"), MARKER}


def test_marker_records_sizes_checksums_and_digest(store: ObjectStore) -> None:
    files = dataset("a")
    result = publish_version(store, files, content_digest="inputs-digest-1")
    marker = json.loads(store.read_bytes(f"v{result.version}/{MARKER}") or b"")
    assert marker["status"] == "complete" and marker["digest"] == "inputs-digest-1"
    assert marker["created_at"]
    assert marker["files"] == {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()
    }


def test_same_content_publishes_nothing(store: ObjectStore) -> None:
    first = publish_version(store, dataset("a"))
    before = keys_under(store, "")
    again = publish_version(store, dataset("a"))
    assert (again.version, again.created, again.digest) == (first.version, False, first.digest)
    assert again.files == first.files
    assert keys_under(store, "") == before
    assert publish_version(store, dataset("b")).version == 2


def test_explicit_digest_decides_identity(store: ObjectStore) -> None:
    publish_version(store, dataset("a"), content_digest="d1")
    assert not publish_version(store, dataset("other bytes"), content_digest="d1").created
    assert publish_version(store, dataset("a"), content_digest="d2").version == 2


def test_files_can_be_streamed_from_paths(store: ObjectStore, tmp_path: Path) -> None:
    big = tmp_path / "manifest.parquet"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    result = publish_version(store, {"manifest.parquet": big, "stats.json": b"{}"})
    assert read_version_file(store, result.version, "manifest.parquet") == big.read_bytes()


@pytest.mark.parametrize("fail_at", [0, 2])
def test_crash_while_writing_files_publishes_nothing(
    store: ObjectStore, tmp_path: Path, fail_at: int
) -> None:
    publish_version(store, dataset("a"))
    files: dict[str, bytes | Path] = dict(dataset("b"))
    names = list(files)
    files[names[fail_at]] = tmp_path / "vanished-before-upload.parquet"
    with pytest.raises(FileNotFoundError):
        publish_version(store, files)
    assert list_versions(store) == [1]
    assert read_version_file(store, 2, names[-1]) is None
    result = publish_version(store, dataset("b"))
    assert result.created and latest_version(store) == result.version
    assert read_version_file(store, result.version, "splits.parquet") == b"splits b"


def test_crash_just_before_commit_publishes_nothing(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_version(store, dataset("a"))
    if isinstance(store, LocalStore):

        def fail_rename(*_: object) -> None:
            raise OSError(errno.EIO, "power cut")

        monkeypatch.setattr(publish.os, "rename", fail_rename)
    else:
        real_write_new = store.write_new

        def fail_marker(key: str, data: bytes) -> bool:
            if key.endswith(f"/{MARKER}"):
                raise OSError(errno.EIO, "power cut")
            return real_write_new(key, data)

        monkeypatch.setattr(store, "write_new", fail_marker)
    with pytest.raises(OSError, match="power cut"):
        publish_version(store, dataset("b"))
    monkeypatch.undo()
    assert list_versions(store) == [1]
    if isinstance(store, LocalStore):
        assert [p.name for p in store.root.iterdir()] == ["v1"], "temporary dir removed"
    assert publish_version(store, dataset("b")).created
    assert read_version_file(store, latest_version(store) or 0, "stats.json") == b'{"tag": "b"}'


def test_s3_write_failure_after_k_files(
    s3_endpoint: str,  # noqa: F811
    s3_bucket: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = S3Store(s3_bucket, endpoint_url=s3_endpoint)
    publish_version(store, dataset("a"))
    real_write = store.write_bytes
    written: list[str] = []

    def fail_after_two(key: str, data: bytes) -> None:
        if len(written) == 2:
            raise ConnectionError("network dropped")
        written.append(key)
        real_write(key, data)

    monkeypatch.setattr(store, "write_bytes", fail_after_two)
    with pytest.raises(ConnectionError):
        publish_version(store, dataset("b"))
    monkeypatch.undo()
    assert written and all(key.startswith("v2/") for key in written)
    assert list_versions(store) == [1] and read_version_file(store, 2, "stats.json") is None

    # Not stale yet: the half-written v2 may belong to a live publisher, so it is left alone.
    assert publish_version(store, dataset("b")).version == 3
    assert set(written) <= set(keys_under(store, "v2/"))
    # Once stale, it is sealed as abandoned and its files are deleted.
    assert publish_version(store, dataset("c"), stale_after=timedelta(0)).version == 4
    assert keys_under(store, "v2/") == [f"v2/{CLAIM}", f"v2/{MARKER}"]
    assert list_versions(store) == [1, 3, 4]


def test_s3_slow_publisher_cannot_complete_an_abandoned_version(
    s3_endpoint: str,  # noqa: F811
    s3_bucket: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = S3Store(s3_bucket, endpoint_url=s3_endpoint)
    real_write = store.write_bytes
    other: list[int] = []
    cut_in = threading.Event()

    def another_publisher_cuts_in(key: str, data: bytes) -> None:
        if not cut_in.is_set():
            cut_in.set()
            other.append(publish_version(store, dataset("b"), stale_after=timedelta(0)).version)
        real_write(key, data)

    monkeypatch.setattr(store, "write_bytes", another_publisher_cuts_in)
    with pytest.raises(PublishError, match="abandoned"):
        publish_version(store, dataset("a"))
    monkeypatch.undo()
    assert other == [2]
    assert list_versions(store) == [2]
    assert read_version_file(store, 2, "stats.json") == b'{"tag": "b"}'


def test_local_stale_temporaries_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    stale = tmp_path / f"{TMP_PREFIX}publish-crashed"
    fresh = tmp_path / f"{TMP_PREFIX}publish-running"
    for leftover in (stale, fresh):
        leftover.mkdir()
        (leftover / "manifest.parquet").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert publish_version(store, dataset("a")).version == 1
    assert not stale.exists() and fresh.exists()


def test_concurrent_publishers_never_share_a_version(store: ObjectStore) -> None:
    payloads = {f"{worker}-{i}": dataset(f"{worker}-{i}") for worker in "ab" for i in range(3)}
    results: dict[str, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(prefix: str) -> None:
        start.wait()
        try:
            for tag, files in payloads.items():
                if tag.startswith(prefix):
                    results[tag] = publish_version(store, files).version
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(p,)) for p in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results.values()) == list_versions(store) == list(range(1, 7))
    for tag, version in results.items():
        for name, data in payloads[tag].items():
            assert read_version_file(store, version, name) == data


def test_tampered_file_is_detected(store: ObjectStore) -> None:
    publish_version(store, dataset("a"))
    store.write_bytes("v1/splits.parquet", b"splits A")
    with pytest.raises(PublishError, match="differs"):
        read_version_file(store, 1, "splits.parquet")
    store.delete("v1/stats.json")
    with pytest.raises(PublishError, match="missing"):
        read_version_file(store, 1, "stats.json")


def test_bad_input_is_refused(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="at least one file"):
        publish_version(store, {})
    with pytest.raises(ValueError, match="reserved"):
        publish_version(store, {MARKER: b"{}"})
    with pytest.raises(ValueError, match="invalid object key"):
        publish_version(store, {"../escape": b"x"})
    with pytest.raises(TypeError, match="manifest.parquet"):
        publish_version(store, {"manifest.parquet": "not bytes"})  # type: ignore[dict-item]
    assert list_versions(store) == []
