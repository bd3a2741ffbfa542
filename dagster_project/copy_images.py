"""The curated image copy: every manifest image to `images/<image_uuid>.jpg` in the destination.

Why: the curated dataset must carry its own copy of exactly the images it lists, and the copy
of ~370K photos must survive crashes and re-runs cheaply. So the copy is
- idempotent: an object already at the destination with the expected size and SHA-256 is
  skipped, compared without downloading it (S3 returns the checksum it stored on write; a
  server-side copy is checked against the SHA-256 S3 computes for it, where the endpoint
  returns one; an item without an expected SHA-256 is compared with what the source records,
  and by size alone when the source records no checksum);
- resumable: objects appear atomically (S3 puts; local temp file + rename), so after a crash a
  re-run copies only what is missing or differs;
- concurrent: a bounded thread pool; server-side `copy_object` when both ends are S3 on one
  endpoint, download + upload otherwise;
- accountable: each failure is retried with exponential backoff, then reported with its
  reason; nothing silently vanishes. A dry run reports what would be copied, writing nothing.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from dagster_project.storage import ObjectStat, ObjectStore, S3Store

Progress = Callable[[int, int], None]


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


Outcome = tuple[Literal["copied", "skipped"], int]


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

    def run(self, item: CopyItem, present_size: int | None) -> Outcome:
        """Copy one item, retrying transient failures with exponential backoff and jitter."""
        attempt = 0
        while True:
            try:
                return self._once(item, present_size)
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

    def _up_to_date(self, item: CopyItem, present_size: int) -> bool:
        size, sha256 = self._expected(item)
        if size is not None and size != present_size:
            return False
        return sha256 is None or self.dest.sha256(item.dest_key) == sha256

    def _once(self, item: CopyItem, present_size: int | None) -> Outcome:
        if present_size is not None and self._up_to_date(item, present_size):
            return "skipped", 0
        if self.dry_run:
            return "copied", self._source_stat(item).size
        if self.server_side:
            return "copied", self._copy_server_side(item)
        data = self.source.read_bytes(item.src_key)
        if data is None:
            raise _Permanent(f"missing in source: {self.source.uri(item.src_key)}")
        if item.size is not None and len(data) != item.size:
            raise _Permanent(f"source has {len(data)} bytes, expected {item.size}")
        digest = hashlib.sha256(data).hexdigest()
        if item.sha256 is not None and digest != item.sha256.lower():
            raise _Permanent(f"source sha256 {digest} differs from expected {item.sha256}")
        self.dest.write_bytes(item.dest_key, data)
        return "copied", len(data)

    def _copy_server_side(self, item: CopyItem) -> int:
        assert isinstance(self.dest, S3Store) and isinstance(self.source, S3Store)
        try:
            digest = self.dest.copy_from(self.source, item.src_key, item.dest_key)
        except FileNotFoundError as err:
            raise _Permanent(f"missing in source: {err}") from err
        if item.sha256 is not None and digest is not None and digest != item.sha256.lower():
            self.dest.delete(item.dest_key)
            raise _Permanent(f"copied object's sha256 {digest} differs from expected {item.sha256}")
        if item.size is not None:
            return item.size
        found = self.dest.stat(item.dest_key)
        return found.size if found else 0


def _present_sizes(dest: ObjectStore, keys: Sequence[str]) -> dict[str, int]:
    """Sizes of the wanted keys already in `dest`, from one listing of their common prefix."""
    wanted = set(keys)
    prefix = os.path.commonprefix(list(keys)) if keys else ""
    return {found.key: found.size for found in dest.list(prefix) if found.key in wanted}


def copy_images(
    source: ObjectStore,
    dest: ObjectStore,
    items: Sequence[CopyItem | tuple[str, str, str | None, int | None]],
    workers: int = 16,
    dry_run: bool = False,
    retries: int = 4,
    progress: Progress | None = None,
    backoff_s: float = 0.5,
) -> CopyReport:
    """Copy `items` from `source` to `dest`; see the module docstring for the guarantees.

    `progress(done, total)` is called after each item; if it raises, the copy stops (items in
    flight finish) and the exception propagates: what was copied stays, a re-run resumes.
    Two items with the same destination key are a ValueError (a manifest bug).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = [CopyItem(*item) for item in items]
    dest_keys = [item.dest_key for item in plan]
    if dups := sorted(key for key, n in Counter(dest_keys).items() if n > 1):
        raise ValueError(f"destination keys appear more than once in the copy items: {dups[:5]}")
    present = _present_sizes(dest, dest_keys)
    copier = _Copier(source, dest, dry_run, retries, backoff_s)
    report = CopyReport(dry_run=dry_run)
    pending: dict[Future[Outcome], CopyItem] = {}
    queue = iter(plan)
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy-images") as pool:
        try:
            while True:
                while len(pending) < 4 * workers and (item := next(queue, None)) is not None:
                    pending[pool.submit(copier.run, item, present.get(item.dest_key))] = item
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = pending.pop(future)
                    try:
                        outcome, size = future.result()
                    except _Permanent as err:
                        report.failed.append((item.dest_key, str(err)))
                    else:
                        if outcome == "copied":
                            report.copied += 1
                            report.copied_keys.append(item.dest_key)
                        else:
                            report.skipped += 1
                        report.bytes += size
                    done += 1
                    if progress is not None:
                        progress(done, len(plan))
        finally:
            for future in pending:
                future.cancel()
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
