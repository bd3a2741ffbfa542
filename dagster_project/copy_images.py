"""The curated image copy: every manifest image to `images/<image_uuid>.jpg` in the destination.

Why: the curated dataset must carry its own copy of exactly the images it lists, and the copy
of ~370K photos must survive crashes and re-runs cheaply. So the copy is
- idempotent: an object already at the destination with the expected size and SHA-256 is
  skipped, compared without downloading it (S3 returns the checksum it stored on write; a
  server-side copy is checked against the SHA-256 S3 computes for it, where the endpoint
  returns one; an item without an expected SHA-256 is compared with what the source records,
  and by size alone when the source records no checksum);
- cheap to re-run: with a `record_dir`, a local copy record keeps the version and size at
  which each destination object's SHA-256 was verified, so a re-run skips what is unchanged
  from one listing of the destination, with no request per object;
- resumable: objects appear atomically (S3 puts; local temp file + rename), so after a crash a
  re-run copies only what is missing or differs;
- concurrent: a bounded thread pool; server-side `copy_object` when both ends are S3 on one
  endpoint (one request per image), download + upload otherwise;
- accountable: each failure is retried with exponential backoff, then reported with its
  reason; nothing silently vanishes. A dry run reports what would be copied, writing nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from dagster_project.storage import LocalStore, ObjectStat, ObjectStore, S3Store

Progress = Callable[[int, int], None]

#: Format of a copy record: gzipped JSON, {"format", "dest": the destination's URI,
#: "objects": {destination key: [version, size, sha256] of the object as last verified}}.
#: An entry only vouches for an object whose listed version (ETag; mtime+size locally) and
#: size are still those, so a missing, stale or unreadable record costs one check (a HEAD, or
#: hashing the local file) per object, never a wrong skip. It is kept outside the destination
#: so that the published dataset holds exactly its documented files.
_RECORD_FORMAT = 1


class CopyItem(NamedTuple):
    """One image to copy; plain `(src_key, dest_key, sha256, size)` tuples work too."""

    src_key: str
    dest_key: str
    #: Expected hex SHA-256 of the image (from the fetch/verify step); None if unknown.
    sha256: str | None = None
    #: Expected size in bytes; None if unknown.
    size: int | None = None


@dataclass
class CopyReport:
    #: Objects written (in a dry run: that would be written).
    copied: int = 0
    #: Objects already present with the expected size and checksum.
    skipped: int = 0
    #: (destination key, reason) for every item that could not be copied.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Bytes written (in a dry run: that would be written).
    bytes: int = 0
    dry_run: bool = False
    #: The destination keys counted in `copied`.
    copied_keys: list[str] = field(default_factory=list)


class _Permanent(Exception):
    """A failure that retrying cannot fix (missing source, content differs from expected)."""


class _Verified(NamedTuple):
    """A copy-record entry: the object had this SHA-256 at this version and size."""

    version: str
    size: int
    sha256: str


class _Done(NamedTuple):
    outcome: Literal["copied", "skipped"]
    bytes: int
    #: What the copy record may keep about the destination object now; None: nothing.
    verified: _Verified | None


@dataclass(frozen=True)
class _Copier:
    source: ObjectStore
    dest: ObjectStore
    dry_run: bool
    retries: int
    backoff_s: float

    @property
    def server_side(self) -> bool:
        return isinstance(self.dest, S3Store) and self.dest.can_copy_from(self.source)

    def run(self, item: CopyItem, present: ObjectStat | None) -> _Done:
        """Copy one item, retrying transient failures with exponential backoff and jitter."""
        attempt = 0
        while True:
            try:
                return self._once(item, present)
            except _Permanent:
                raise
            except Exception as err:
                if attempt >= self.retries:
                    raise _Permanent(
                        f"{type(err).__name__}: {err} (gave up after {attempt + 1} attempts)"
                    ) from err
            time.sleep(self.backoff_s * 2**attempt * random.uniform(0.5, 1.0))
            attempt += 1

    def _source_stat(self, item: CopyItem) -> ObjectStat:
        found = self.source.stat(item.src_key)
        if found is None:
            raise _Permanent(f"missing in source: {self.source.uri(item.src_key)}")
        return found

    def _expected(self, item: CopyItem) -> tuple[int | None, str | None]:
        """Expected size and sha256: the item's, else what the source records (cheap stat)."""
        if item.sha256 is not None:
            return item.size, item.sha256.lower()
        found = self._source_stat(item)
        return found.size, found.sha256

    def _check_present(self, item: CopyItem, present: ObjectStat) -> _Done | None:
        """A skip if the destination object has the expected size and SHA-256, else None."""
        size, sha256 = self._expected(item)
        if size is not None and size != present.size:
            return None
        if sha256 is None:
            return _Done("skipped", 0, None)
        # Version first, then checksum: a change in between leaves a record entry that no
        # longer matches the listing, never one that vouches for unchecked content.
        found = self.dest.stat(item.dest_key)
        if found is None or (found.sha256 or self.dest.sha256(item.dest_key)) != sha256:
            return None
        return _Done("skipped", 0, _Verified(found.version, found.size, sha256))

    def _once(self, item: CopyItem, present: ObjectStat | None) -> _Done:
        if present is not None and (skip := self._check_present(item, present)) is not None:
            return skip
        if self.dry_run:
            return _Done("copied", self._source_stat(item).size, None)
        if self.server_side:
            return self._copy_server_side(item)
        data = self.source.read_bytes(item.src_key)
        if data is None:
            raise _Permanent(f"missing in source: {self.source.uri(item.src_key)}")
        if item.size is not None and len(data) != item.size:
            raise _Permanent(f"source has {len(data)} bytes, expected {item.size}")
        digest = hashlib.sha256(data).hexdigest()
        if item.sha256 is not None and digest != item.sha256.lower():
            raise _Permanent(f"source sha256 {digest} differs from expected {item.sha256}")
        self.dest.write_bytes(item.dest_key, data)
        # Not recorded: the write returns no version; the next run verifies it once.
        return _Done("copied", len(data), None)

    def _copy_server_side(self, item: CopyItem) -> _Done:
        assert isinstance(self.dest, S3Store) and isinstance(self.source, S3Store)
        try:
            version, digest = self.dest.copy_from(self.source, item.src_key, item.dest_key)
        except FileNotFoundError as err:
            raise _Permanent(f"missing in source: {err}") from err
        if item.sha256 is not None and digest is not None and digest != item.sha256.lower():
            self.dest.delete(item.dest_key)
            raise _Permanent(f"copied object's sha256 {digest} differs from expected {item.sha256}")
        if item.size is not None:
            size = item.size
        else:
            found = self.dest.stat(item.dest_key)
            size = found.size if found else 0
        return _Done("copied", size, _Verified(version, size, digest) if digest else None)


def _listing(dest: ObjectStore, keys: Sequence[str]) -> dict[str, ObjectStat]:
    """The wanted keys already in `dest`, from one listing of their common prefix."""
    wanted = set(keys)
    prefix = os.path.commonprefix(list(keys)) if keys else ""
    return {found.key: found for found in dest.list(prefix) if found.key in wanted}


def _record_name(dest: ObjectStore) -> str:
    """The file name of `dest`'s copy record in a record directory."""
    return f"{hashlib.sha256(dest.uri().encode()).hexdigest()[:16]}.json.gz"


def _read_record(record_dir: Path | None, dest: ObjectStore) -> dict[str, _Verified]:
    """`dest`'s copy record; empty when absent or unreadable (it is then rewritten)."""
    if record_dir is None:
        return {}
    try:
        record = json.loads(gzip.decompress((record_dir / _record_name(dest)).read_bytes()))
        if record["format"] != _RECORD_FORMAT or record["dest"] != dest.uri():
            return {}
        return {key: _Verified(*entry) for key, entry in record["objects"].items()}
    except (OSError, EOFError, zlib.error, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_record(record_dir: Path, dest: ObjectStore, record: dict[str, _Verified]) -> None:
    objects = {key: list(entry) for key, entry in sorted(record.items())}
    text = json.dumps(
        {"format": _RECORD_FORMAT, "dest": dest.uri(), "objects": objects}, separators=(",", ":")
    )
    LocalStore(record_dir).write_bytes(_record_name(dest), gzip.compress(text.encode(), mtime=0))


def _vouches(entry: _Verified | None, present: ObjectStat, item: CopyItem) -> bool:
    """Whether a record entry proves the present object is the expected one, request-free."""
    return (
        entry is not None
        and item.sha256 is not None
        and entry == (present.version, present.size, item.sha256.lower())
        and item.size in (None, present.size)
    )


def copy_images(
    source: ObjectStore,
    dest: ObjectStore,
    items: Sequence[CopyItem | tuple[str, str, str | None, int | None]],
    workers: int = 16,
    dry_run: bool = False,
    retries: int = 4,
    progress: Progress | None = None,
    backoff_s: float = 0.5,
    record_dir: Path | None = None,
) -> CopyReport:
    """Copy `items` from `source` to `dest`; see the module docstring for the guarantees.

    `progress(done, total)` is called after each item; if it raises, the copy stops (items in
    flight finish) and the exception propagates: what was copied stays, a re-run resumes.
    Two items with the same destination key are a ValueError (a manifest bug).
    `record_dir`: a local directory for the copy record (see `_RECORD_FORMAT`); without it
    every object already present is checked with a request of its own.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = [CopyItem(*item) for item in items]
    dest_keys = [item.dest_key for item in plan]
    if dups := sorted(key for key, n in Counter(dest_keys).items() if n > 1):
        raise ValueError(f"destination keys appear more than once in the copy items: {dups[:5]}")
    listing = _listing(dest, dest_keys)
    record = _read_record(record_dir, dest)
    updated = dict(record)
    copier = _Copier(source, dest, dry_run, retries, backoff_s)
    report = CopyReport(dry_run=dry_run)
    pending: dict[Future[_Done], CopyItem] = {}

    def settle(item: CopyItem, done: _Done | _Permanent) -> None:
        if isinstance(done, _Permanent):
            report.failed.append((item.dest_key, str(done)))
            updated.pop(item.dest_key, None)
        else:
            if done.outcome == "copied":
                report.copied += 1
                report.copied_keys.append(item.dest_key)
            else:
                report.skipped += 1
            report.bytes += done.bytes
            if done.verified is not None:
                updated[item.dest_key] = done.verified
            else:
                updated.pop(item.dest_key, None)
        if progress is not None:
            finished = report.copied + report.skipped + len(report.failed)
            progress(finished, len(plan))

    def settle_finished(futures: Iterable[Future[_Done]]) -> None:
        for future in futures:
            item = pending.pop(future)
            try:
                done: _Done | _Permanent = future.result()
            except _Permanent as err:
                done = err
            settle(item, done)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy-images") as pool:
            try:
                for item in plan:
                    present = listing.get(item.dest_key)
                    if present is not None and _vouches(record.get(item.dest_key), present, item):
                        settle(item, _Done("skipped", 0, record[item.dest_key]))
                        continue
                    if len(pending) >= 4 * workers:
                        settle_finished(wait(pending, return_when=FIRST_COMPLETED).done)
                    pending[pool.submit(copier.run, item, present)] = item
                while pending:
                    settle_finished(wait(pending, return_when=FIRST_COMPLETED).done)
            finally:
                for future in pending:
                    future.cancel()
    finally:
        if record_dir is not None and not dry_run and updated != record:
            _write_record(record_dir, dest, updated)
    return report


def remove_extraneous(
    dest: ObjectStore, keep_keys: Iterable[str], prefix: str = "images/", dry_run: bool = False
) -> list[str]:
    """Delete objects under `prefix` that are not in `keep_keys`, so the destination holds
    exactly the manifest's images; returns the keys removed (or that would be, in a dry run)."""
    keep = set(keep_keys)
    extra = [found.key for found in dest.list(prefix) if found.key not in keep]
    if not dry_run:
        dest.delete_many(extra)
    return extra
