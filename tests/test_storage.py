"""ObjectStore: LocalStore and S3Store (on a real moto server) behave the same."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest
from s3server import s3_bucket, s3_endpoint  # noqa: F401  (pytest fixtures)

from dagster_project import storage
from dagster_project.storage import (
    TMP_PREFIX,
    GcsPathMapper,
    LocalStore,
    ObjectStore,
    S3Store,
    store_from_uri,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(request.getfixturevalue("s3_bucket"), "pre/fix", endpoint_url=endpoint)


def s3_calls(store: S3Store) -> Counter[str]:
    """Counts the S3 API operations the store's client sends from now on."""
    calls: Counter[str] = Counter()
    store.client.meta.events.register(
        "before-call.s3", lambda model, **_: calls.update([model.name])
    )
    return calls


def test_read_write_stat_roundtrip(store: ObjectStore) -> None:
    assert store.read_bytes("a/b.bin") is None
    assert store.stat("a/b.bin") is None
    store.write_bytes("a/b.bin", b"first")
    assert store.read_bytes("a/b.bin") == b"first"
    first = store.stat("a/b.bin")
    assert first is not None and first.key == "a/b.bin" and first.size == 5
    store.write_bytes("a/b.bin", b"second version")
    second = store.stat("a/b.bin")
    assert store.read_bytes("a/b.bin") == b"second version"
    assert second is not None and second.size == 14 and second.version != first.version
    assert store.read_bytes("a") is None, "a key prefix is not an object"


def test_list_is_sorted_and_uses_plain_string_prefixes(store: ObjectStore) -> None:
    keys = ["images/ab.jpg", "images/b.jpg", "imagesX/c.jpg", "a.txt", "a/b", "a0", "top"]
    for key in keys:
        store.write_bytes(key, key.encode())
    assert [s.key for s in store.list()] == sorted(keys)
    assert [s.key for s in store.list("images/")] == ["images/ab.jpg", "images/b.jpg"]
    assert [s.key for s in store.list("images/a")] == ["images/ab.jpg"]
    assert [s.key for s in store.list("images")] == [
        "images/ab.jpg",
        "images/b.jpg",
        "imagesX/c.jpg",
    ]
    assert [s.key for s in store.list("nothing/")] == []
    sizes = {s.key: s.size for s in store.list()}
    assert sizes == {key: len(key) for key in keys}


def test_delete_delete_many_and_prefix(store: ObjectStore) -> None:
    for key in ["v1/a", "v1/sub/b", "v2/a", "keep"]:
        store.write_bytes(key, b"x")
    store.delete("keep-not-there")
    store.delete_many(["v2/a", "missing/too"])
    assert store.read_bytes("v2/a") is None
    assert store.delete_prefix("v1/") == 2
    assert [s.key for s in store.list()] == ["keep"]
    if isinstance(store, LocalStore):
        assert sorted(p.name for p in store.root.iterdir()) == ["keep"], "no empty dirs left"


def test_write_new_is_exclusive(store: ObjectStore) -> None:
    assert store.write_new("claims/v1", b"mine") is True
    assert store.write_new("claims/v1", b"theirs") is False
    assert store.read_bytes("claims/v1") == b"mine"


def test_sha256_without_downloading(store: ObjectStore) -> None:
    data = os.urandom(3000)
    store.write_bytes("img/x.jpg", data)
    calls = s3_calls(store) if isinstance(store, S3Store) else Counter()
    assert store.sha256("img/x.jpg") == hashlib.sha256(data).hexdigest()
    assert store.sha256("img/missing.jpg") is None
    assert calls["GetObject"] == 0


def test_streaming_download_and_upload(store: ObjectStore, tmp_path: Path) -> None:
    big = os.urandom(9 * 1024 * 1024 + 17)
    src = tmp_path / "dump.sql"
    src.write_bytes(big)
    store.upload_from(src, "dumps/dump.sql")
    stat = store.stat("dumps/dump.sql")
    assert stat is not None and stat.size == len(big)
    out = tmp_path / "down" / "copy.sql"
    store.download_to("dumps/dump.sql", out)
    assert out.read_bytes() == big
    with pytest.raises(FileNotFoundError, match="missing.sql"):
        store.download_to("dumps/missing.sql", tmp_path / "nope")


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../x", "a/../b", "x/", "a/./b", f"a/{TMP_PREFIX}tmp"]
)
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        store.write_bytes(key, b"x")


def test_list_rejects_escaping_prefix(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        list(store.list("../"))


def test_uris(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    local = LocalStore(tmp_path)
    assert local.uri("v3/manifest.parquet") == (tmp_path / "v3" / "manifest.parquet").as_uri()
    assert local.uri("v3/") == (tmp_path / "v3").as_uri() + "/"
    s3 = S3Store("bkt", "/root/dir/", endpoint_url=s3_endpoint)
    assert s3.uri("images/x.jpg") == "s3://bkt/root/dir/images/x.jpg"
    assert s3.uri("v3/") == "s3://bkt/root/dir/v3/"
    assert S3Store("bkt", endpoint_url=s3_endpoint).uri("k") == "s3://bkt/k"


def test_local_write_failure_leaves_no_visible_or_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("img/a.jpg", b"old")

    def crash(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("img/a.jpg", b"new and longer")
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("img/b.jpg", b"new")
    monkeypatch.undo()
    assert store.read_bytes("img/a.jpg") == b"old"
    assert sorted(os.listdir(tmp_path / "img")) == ["a.jpg"]


def test_local_list_hides_leftover_temporaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("img/a.jpg", b"a")
    (tmp_path / "img" / f"{TMP_PREFIX}killed-writer").write_bytes(b"half")
    (tmp_path / f"{TMP_PREFIX}publish-dir").mkdir()
    (tmp_path / f"{TMP_PREFIX}publish-dir" / "manifest.parquet").write_bytes(b"half")
    assert [s.key for s in store.list()] == ["img/a.jpg"]


def test_s3_client_retries_adaptively_with_a_pool(s3_endpoint: str) -> None:  # noqa: F811
    config = S3Store("bkt", endpoint_url=s3_endpoint, max_pool_connections=48).client.meta.config
    assert config.retries["mode"] == "adaptive"
    assert config.max_pool_connections == 48


def test_store_from_uri(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    s3 = store_from_uri("s3://bucket-a/some/prefix", endpoint_url=s3_endpoint)
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket-a", "some/prefix/", s3_endpoint)
    assert store_from_uri(tmp_path.as_uri()).local_path("k") == tmp_path / "k"
    assert store_from_uri(str(tmp_path)).local_path("k") == tmp_path / "k"
    for bad in ["gs://bucket/x", "s3:///prefix-only", "http://host/x"]:
        with pytest.raises(ValueError, match="URI"):
            store_from_uri(bad)


GS = "gs://dermadetect-20180424.appspot.com/000RN/0b1f4c8e-6f0a-4d7e-9a61-3f1c2b7a9e10.jpg"


def test_gcs_mapper_default_mirrors_bucket_and_path() -> None:
    assert GcsPathMapper().key(GS) == (
        "dermadetect-20180424.appspot.com/000RN/0b1f4c8e-6f0a-4d7e-9a61-3f1c2b7a9e10.jpg"
    )


def test_gcs_mapper_rewrites_longest_prefix() -> None:
    mapper = GcsPathMapper(
        {
            "dermadetect-20180424.appspot.com": "mirror",
            "gs://dermadetect-20180424.appspot.com/000RN/": "photos/rn",
            "other-bucket": "",
        }
    )
    assert mapper.key(GS) == "photos/rn/0b1f4c8e-6f0a-4d7e-9a61-3f1c2b7a9e10.jpg"
    assert mapper.key("gs://dermadetect-20180424.appspot.com/X/a.jpg") == "mirror/X/a.jpg"
    assert mapper.key("gs://other-bucket/a/b.jpg") == "a/b.jpg"
    with pytest.raises(ValueError, match="unmapped-bucket.*matches no configured GCS prefix"):
        mapper.key("gs://unmapped-bucket/a.jpg")


@pytest.mark.parametrize(
    "bad",
    [
        "s3://bucket/a.jpg",
        "gs://bucket",
        "gs://bucket/",
        "gs://bucket/../etc/passwd",
        "gs://bucket/a//b.jpg",
        "/local/file.jpg",
        "",
    ],
)
def test_gcs_mapper_rejects_bad_paths(bad: str) -> None:
    with pytest.raises(ValueError, match="path"):
        GcsPathMapper().key(bad)
