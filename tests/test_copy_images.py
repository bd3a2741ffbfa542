"""The curated image copy: idempotent, resumable, concurrent, accountable, dry-run."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from pathlib import Path

import pytest
from s3server import create_bucket, s3_endpoint  # noqa: F401  (pytest fixture)

from dagster_project.copy_images import CopyItem, copy_images, remove_extraneous
from dagster_project.storage import LocalStore, ObjectStat, ObjectStore, S3Store

N = 24


def make_store(kind: str, tmp_path: Path, endpoint: str | None, name: str) -> ObjectStore:
    if kind == "local":
        return LocalStore(tmp_path / name)
    assert endpoint is not None
    return S3Store(create_bucket(endpoint), "root", endpoint_url=endpoint)


@pytest.fixture(params=["local->local", "s3->s3", "local->s3", "s3->local"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ObjectStore, ObjectStore]:
    src_kind, dest_kind = request.param.split("->")
    endpoint = request.getfixturevalue("s3_endpoint") if "s3" in request.param else None
    return (
        make_store(src_kind, tmp_path, endpoint, "backup"),
        make_store(dest_kind, tmp_path, endpoint, "curated"),
    )


def fill_source(source: ObjectStore, n: int = N, seed: int = 7) -> list[CopyItem]:
    """n images in the backup layout; items carry their expected sha256 and size."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        data = rng.randbytes(rng.randint(1, 4000))
        src = f"dermadetect-20180424.appspot.com/000RN/img-{i:03d}.jpg"
        source.write_bytes(src, data)
        items.append(
            CopyItem(src, f"images/img-{i:03d}.jpg", hashlib.sha256(data).hexdigest(), len(data))
        )
    return items


def assert_dest_equals(source: ObjectStore, dest: ObjectStore, items: list[CopyItem]) -> None:
    assert [s.key for s in dest.list()] == sorted(item.dest_key for item in items)
    for item in items:
        assert dest.read_bytes(item.dest_key) == source.read_bytes(item.src_key)


def s3_calls(store: ObjectStore) -> Counter[str]:
    calls: Counter[str] = Counter()
    if isinstance(store, S3Store):
        store.client.meta.events.register(
            "before-call.s3", lambda model, **_: calls.update([model.name])
        )
    return calls


def count_stats(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Keys -> how often `store.stat` is asked for them from now on (a HEAD on S3)."""
    asked: Counter[str] = Counter()
    stat = store.stat

    def counting(key: str) -> ObjectStat | None:
        asked[key] += 1
        return stat(key)

    monkeypatch.setattr(store, "stat", counting)
    return asked


def test_copies_everything_then_nothing(
    stores: tuple[ObjectStore, ObjectStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, dest = stores
    items = fill_source(source)
    record = tmp_path / "record"
    report = copy_images(source, dest, items, workers=4, record_dir=record)
    assert (report.copied, report.skipped, report.failed) == (N, 0, [])
    assert report.bytes == sum(item.size or 0 for item in items)
    assert sorted(report.copied_keys) == sorted(item.dest_key for item in items)
    assert_dest_equals(source, dest, items)
    server_side = isinstance(source, S3Store) and isinstance(dest, S3Store)

    before = {s.key: s.version for s in dest.list()}
    calls, stats = s3_calls(dest), count_stats(dest, monkeypatch)
    again = copy_images(source, dest, items, workers=4, record_dir=record)
    assert (again.copied, again.skipped, again.failed, again.bytes) == (0, N, [], 0)
    assert {s.key: s.version for s in dest.list()} == before
    assert calls["PutObject"] == calls["CopyObject"] == calls["GetObject"] == 0
    # A server-side copy is recorded with the version and checksum S3 returned; an upload
    # is checked once by the next run (one HEAD, or hashing the local file), then recorded.
    assert sum(stats.values()) == (0 if server_side else N)

    stats.clear()
    third = copy_images(source, dest, items, workers=4, record_dir=record)
    assert (third.copied, third.skipped, sum(stats.values())) == (0, N, 0)
    without_record = copy_images(source, dest, items, workers=4)
    assert without_record.skipped == N and sum(stats.values()) == N


def test_plain_tuples_and_unknown_checksums(stores: tuple[ObjectStore, ObjectStore]) -> None:
    source, dest = stores
    items = [(item.src_key, item.dest_key, None, None) for item in fill_source(source, 5)]
    assert copy_images(source, dest, items).copied == 5
    assert copy_images(source, dest, items).skipped == 5


def test_interrupted_copy_resumes_with_only_the_missing(
    stores: tuple[ObjectStore, ObjectStore],
) -> None:
    source, dest = stores
    items = fill_source(source)

    def crash_after_five(done: int, total: int) -> None:
        assert total == N
        if done == 5:
            raise KeyboardInterrupt("operator pressed ctrl-c")

    with pytest.raises(KeyboardInterrupt):
        copy_images(source, dest, items, workers=2, progress=crash_after_five)
    present = {s.key for s in dest.list()}
    assert 5 <= len(present) < N
    for key in present:
        item = next(i for i in items if i.dest_key == key)
        assert dest.read_bytes(key) == source.read_bytes(item.src_key), "no half objects"

    report = copy_images(source, dest, items, workers=4)
    assert report.failed == []
    assert report.skipped == len(present)
    assert set(report.copied_keys) == {item.dest_key for item in items} - present
    assert_dest_equals(source, dest, items)


def test_dry_run_writes_nothing_and_reports_the_plan(
    stores: tuple[ObjectStore, ObjectStore],
) -> None:
    source, dest = stores
    items = fill_source(source)
    copy_images(source, dest, items[:10])
    dest.write_bytes(items[0].dest_key, b"corrupted")
    before = {s.key: s.version for s in dest.list()}
    missing = CopyItem("dermadetect-20180424.appspot.com/000RN/gone.jpg", "images/gone.jpg")
    report = copy_images(source, dest, [*items, missing], dry_run=True)
    assert report.dry_run
    assert {s.key: s.version for s in dest.list()} == before
    expected = [items[0]] + items[10:]
    assert sorted(report.copied_keys) == sorted(item.dest_key for item in expected)
    assert report.bytes == sum(item.size or 0 for item in expected)
    assert report.skipped == 9
    [(failed_key, reason)] = report.failed
    assert failed_key == "images/gone.jpg" and "missing in source" in reason


def test_object_differing_at_destination_is_recopied(
    stores: tuple[ObjectStore, ObjectStore], tmp_path: Path
) -> None:
    source, dest = stores
    items = fill_source(source, 3)
    record = tmp_path / "record"
    copy_images(source, dest, items, record_dir=record)
    copy_images(source, dest, items, record_dir=record)
    same_size = bytes(b ^ 0xFF for b in dest.read_bytes(items[0].dest_key) or b"")
    dest.write_bytes(items[0].dest_key, same_size)
    dest.write_bytes(items[1].dest_key, b"truncated")
    report = copy_images(source, dest, items, record_dir=record)
    assert sorted(report.copied_keys) == [items[0].dest_key, items[1].dest_key]
    assert report.skipped == 1
    assert_dest_equals(source, dest, items)


def test_copy_record_is_a_cache_never_a_verdict(
    stores: tuple[ObjectStore, ObjectStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable record costs one check per object; an entry is never taken for an
    object whose expected checksum differs from the recorded one."""
    source, dest = stores
    items = fill_source(source)
    record = tmp_path / "record"
    copy_images(source, dest, items, record_dir=record)
    copy_images(source, dest, items, record_dir=record)
    [record_file] = record.iterdir()
    record_file.write_bytes(b"not gzip")
    stats = count_stats(dest, monkeypatch)
    assert copy_images(source, dest, items, record_dir=record).skipped == N
    assert sorted(stats) == sorted(item.dest_key for item in items)
    stats.clear()
    assert copy_images(source, dest, items, record_dir=record).skipped == N
    assert not stats, "the record was rewritten"

    expects_other = [items[0]._replace(sha256="0" * 64), *items[1:]]
    report = copy_images(source, dest, expects_other, record_dir=record)
    assert report.skipped == N - 1 and report.copied == 0
    [(key, reason)] = report.failed
    assert key == items[0].dest_key and "differs from expected" in reason


class FlakySource(LocalStore):
    """A backup whose reads fail `failures[key]` times before succeeding (-1: always)."""

    def __init__(self, root: Path, failures: dict[str, int]) -> None:
        super().__init__(root)
        self.failures = failures
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read_bytes(self, key: str) -> bytes | None:
        with self._lock:
            self.attempts[key] += 1
            remaining = self.failures.get(key, 0)
            if remaining:
                self.failures[key] = remaining - 1
                raise ConnectionResetError(f"connection reset reading {key}")
        return super().read_bytes(key)


def test_failures_are_retried_then_reported(tmp_path: Path) -> None:
    source = FlakySource(tmp_path / "backup", {})
    items = fill_source(source, 6)
    dest = LocalStore(tmp_path / "curated")
    source.failures.update({items[0].src_key: 2, items[1].src_key: -1})
    source.write_bytes("wrong/content.jpg", b"not what the manifest says")
    items += [
        CopyItem("missing/x.jpg", "images/x.jpg", "0" * 64, 10),
        CopyItem("wrong/content.jpg", "images/wrong.jpg", "f" * 64, None),
    ]
    report = copy_images(source, dest, items, retries=3, backoff_s=0.001)
    failed = dict(report.failed)
    assert set(failed) == {items[1].dest_key, "images/x.jpg", "images/wrong.jpg"}
    assert "ConnectionResetError" in failed[items[1].dest_key]
    assert "after 4 attempts" in failed[items[1].dest_key]
    assert "missing in source" in failed["images/x.jpg"]
    assert "differs from expected" in failed["images/wrong.jpg"]
    assert source.attempts[items[0].src_key] == 3, "two transient failures, then success"
    assert source.attempts[items[1].src_key] == 4, "first try + 3 retries"
    assert source.attempts["wrong/content.jpg"] == 1, "a wrong checksum is not retried"
    assert report.copied == 5
    assert dest.read_bytes("images/wrong.jpg") is None


def test_s3_to_s3_copies_server_side(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    source = S3Store(create_bucket(s3_endpoint), "backup", endpoint_url=s3_endpoint)
    dest = S3Store(create_bucket(s3_endpoint), endpoint_url=s3_endpoint)
    items = fill_source(source)
    source_calls, dest_calls = s3_calls(source), s3_calls(dest)
    report = copy_images(source, dest, items, workers=4, record_dir=tmp_path / "record")
    assert report.copied == N
    assert dest_calls["CopyObject"] == N
    assert dest_calls["HeadObject"] == dest_calls["PutObject"] == dest_calls["GetObject"] == 0
    assert source_calls["GetObject"] == 0
    assert_dest_equals(source, dest, items)
    for item in items:
        assert dest.sha256(item.dest_key) == item.sha256, "checksum stored by the server"


def test_s3_server_side_copy_with_wrong_checksum_is_undone(s3_endpoint: str) -> None:  # noqa: F811
    source = S3Store(create_bucket(s3_endpoint), endpoint_url=s3_endpoint)
    dest = S3Store(create_bucket(s3_endpoint), endpoint_url=s3_endpoint)
    [item] = fill_source(source, 1)
    report = copy_images(source, dest, [item._replace(sha256="a" * 64)])
    assert report.copied == 0 and "differs from expected" in report.failed[0][1]
    assert list(dest.list()) == []


def test_local_to_s3_uploads(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    source = LocalStore(tmp_path / "backup")
    dest = S3Store(create_bucket(s3_endpoint), endpoint_url=s3_endpoint)
    items = fill_source(source, 4)
    calls = s3_calls(dest)
    assert copy_images(source, dest, items).copied == 4
    assert calls["PutObject"] == 4 and calls["CopyObject"] == 0


def test_duplicate_destinations_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ValueError, match="images/a.jpg"):
        copy_images(store, store, [("x", "images/a.jpg", None, None)] * 2)


def test_remove_extraneous_makes_destination_equal_the_manifest(
    stores: tuple[ObjectStore, ObjectStore],
) -> None:
    source, dest = stores
    items = fill_source(source, 5)
    copy_images(source, dest, items)
    dest.write_bytes("images/dropped-from-manifest.jpg", b"old")
    dest.write_bytes("v1/manifest.parquet", b"not an image")
    keep = [item.dest_key for item in items]
    assert remove_extraneous(dest, keep, dry_run=True) == ["images/dropped-from-manifest.jpg"]
    assert dest.stat("images/dropped-from-manifest.jpg") is not None
    assert remove_extraneous(dest, keep) == ["images/dropped-from-manifest.jpg"]
    assert [s.key for s in dest.list("images/")] == sorted(keep)
    assert dest.read_bytes("v1/manifest.parquet") == b"not an image"
