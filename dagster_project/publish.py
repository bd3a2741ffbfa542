"""Versioned, atomic publication of the curated dataset: each `v<N>/` whole or not at all.

Why: consumers (training jobs, the next pipeline run reading the previous splits) must never
see half a dataset version. A version counts only once its completion marker `v<N>/_COMPLETE`
exists, and the marker is the last thing written:

- local directory: every file and the marker are written and fsync'd into a hidden temporary
  directory beside the versions, which is then renamed to `v<N>` in one atomic step. If another
  publisher took `v<N>` first the rename fails and the next number is tried. A crash leaves
  only the hidden directory, removed by a later publish once older than `stale_after`.
- S3 (any store without rename): the publisher first claims `v<N>` by creating `v<N>/_CLAIM`
  with a conditional put (`If-None-Match: *`), so two publishers never write the same version;
  it then uploads the files and creates the marker, again conditionally. A crashed publisher
  leaves a claimed version without marker, invisible to readers; once its newest object is
  older than `stale_after`, a later publish seals it as abandoned (a marker with status
  `abandoned`, created conditionally, so a slow publisher that is still alive cannot complete
  it afterwards) and deletes its files. Version numbers skip the abandoned one.

Re-publishing the same content is a no-op: when the content digest equals the latest
version's, nothing is written and that version is returned.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster_project.storage import TMP_PREFIX, LocalStore, ObjectStore, validate_key

MARKER = "_COMPLETE"
CLAIM = "_CLAIM"
DEFAULT_STALE_AFTER = timedelta(hours=1)

_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_LOCAL_TMP = f"{TMP_PREFIX}publish-"


class PublishError(RuntimeError):
    """A version could not be published, or a published one fails verification."""


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class PublishResult:
    version: int
    #: False when the content equalled the latest version's and nothing was written.
    created: bool
    digest: str
    uri: str
    files: Mapping[str, FileEntry]


def _version_objects(store: ObjectStore) -> dict[int, dict[str, datetime]]:
    """Every `v<N>/` seen in the store (complete or not): name -> last modified."""
    versions: dict[int, dict[str, datetime]] = {}
    for found in store.list("v"):
        head, _, rest = found.key.partition("/")
        match = _VERSION_DIR.fullmatch(head)
        if match and rest:
            versions.setdefault(int(match[1]), {})[rest] = found.last_modified
    return versions


def _read_marker(store: ObjectStore, version: int) -> dict[str, Any] | None:
    key = f"v{version}/{MARKER}"
    raw = store.read_bytes(key)
    if raw is None:
        return None
    try:
        marker = json.loads(raw)
    except ValueError as err:
        raise PublishError(f"{store.uri(key)} is not valid JSON: {err}") from err
    if not isinstance(marker, dict) or marker.get("status") not in ("complete", "abandoned"):
        raise PublishError(f"{store.uri(key)} is not a completion marker")
    return marker


def _complete_markers(store: ObjectStore) -> dict[int, dict[str, Any]]:
    markers = {}
    for version, names in _version_objects(store).items():
        if MARKER in names:
            marker = _read_marker(store, version)
            if marker is not None and marker["status"] == "complete":
                markers[version] = marker
    return markers


def list_versions(store: ObjectStore) -> list[int]:
    """Numbers of the complete versions, ascending (half-written ones are never listed)."""
    return sorted(_complete_markers(store))


def latest_version(store: ObjectStore) -> int | None:
    """The highest complete version, or None when nothing was published yet."""
    return max(list_versions(store), default=None)


def read_version_file(store: ObjectStore, version: int, name: str) -> bytes | None:
    """A file of a complete version, verified against the marker's size and SHA-256.

    None when the version is not complete or has no such file; PublishError when the stored
    bytes differ from what was published.
    """
    marker = _read_marker(store, version)
    if marker is None or marker["status"] != "complete" or name not in marker["files"]:
        return None
    key = f"v{version}/{name}"
    data = store.read_bytes(key)
    expected = marker["files"][name]
    if data is None:
        raise PublishError(f"{store.uri(key)} is listed in its version's marker but missing")
    if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise PublishError(f"{store.uri(key)} differs from the size/sha256 in its marker")
    return data


def _describe(name: str, source: bytes | Path) -> FileEntry:
    if isinstance(source, bytes):
        return FileEntry(len(source), hashlib.sha256(source).hexdigest())
    if isinstance(source, os.PathLike):
        with open(source, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return FileEntry(Path(source).stat().st_size, digest)
    raise TypeError(f"file {name!r}: expected bytes or a Path, got {type(source).__name__}")


def _check_name(name: str) -> None:
    validate_key(name)
    if name.split("/", 1)[0] in (MARKER, CLAIM):
        raise ValueError(f"file name {name!r} is reserved for the publication protocol")


def content_digest_of(files: Mapping[str, FileEntry]) -> str:
    """The default content digest: SHA-256 over the sorted (name, sha256) pairs."""
    lines = "".join(f"{name}\0{entry.sha256}\n" for name, entry in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def publish_version(
    store: ObjectStore,
    files: Mapping[str, bytes | Path],
    *,
    content_digest: str | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> PublishResult:
    """Publish `files` as the next version `v<N>/<name>`, atomically.

    `content_digest` identifies the content (default: a digest of the files' bytes); when it
    equals the latest complete version's digest nothing is written and that version is
    returned, so re-running the pipeline publishes nothing new. `stale_after` is how long an
    unfinished version (or local temporary directory) must sit untouched before a publish
    treats its writer as dead and cleans it up.
    """
    if not files:
        raise ValueError("publish_version needs at least one file")
    for name in files:
        _check_name(name)
    entries = {name: _describe(name, source) for name, source in files.items()}
    digest = content_digest or content_digest_of(entries)

    markers = _complete_markers(store)
    if markers:
        latest = max(markers)
        if markers[latest].get("digest") == digest:
            return PublishResult(
                version=latest,
                created=False,
                digest=digest,
                uri=store.uri(f"v{latest}/"),
                files={
                    name: FileEntry(entry["size"], entry["sha256"])
                    for name, entry in markers[latest]["files"].items()
                },
            )

    marker = json.dumps(
        {
            "status": "complete",
            "created_at": datetime.now(UTC).isoformat(),
            "digest": digest,
            "files": {name: {"size": e.size, "sha256": e.sha256} for name, e in entries.items()},
        },
        indent=2,
    ).encode()
    if isinstance(store, LocalStore):
        version = _publish_local(store.root, files, marker, stale_after)
    else:
        version = _publish_objects(store, files, marker, stale_after)
    return PublishResult(version, True, digest, store.uri(f"v{version}/"), entries)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, source: bytes | Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as out:
        if isinstance(source, bytes):
            out.write(source)
        else:
            with open(source, "rb") as f:
                shutil.copyfileobj(f, out)
        out.flush()
        os.fsync(out.fileno())


def _publish_local(
    root: Path, files: Mapping[str, bytes | Path], marker: bytes, stale_after: timedelta
) -> int:
    root.mkdir(parents=True, exist_ok=True)
    cutoff = (datetime.now(UTC) - stale_after).timestamp()
    for leftover in root.glob(f"{_LOCAL_TMP}*"):
        if leftover.stat().st_mtime < cutoff:
            shutil.rmtree(leftover, ignore_errors=True)

    tmp = root / f"{_LOCAL_TMP}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, source in files.items():
            _write_durably(tmp.joinpath(*name.split("/")), source)
        _write_durably(tmp / MARKER, marker)
        for directory in sorted({p.parent for p in tmp.rglob("*")}, reverse=True):
            _fsync_dir(directory)
        existing = (_VERSION_DIR.fullmatch(p.name) for p in root.iterdir())
        version = max((int(m[1]) for m in existing if m), default=0) + 1
        while True:
            try:
                os.rename(tmp, root / f"v{version}")
                break
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                version += 1
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version


def _stamp(**fields: str) -> bytes:
    return json.dumps({"created_at": datetime.now(UTC).isoformat(), **fields}).encode()


def _publish_objects(
    store: ObjectStore, files: Mapping[str, bytes | Path], marker: bytes, stale_after: timedelta
) -> int:
    versions = _version_objects(store)
    cutoff = datetime.now(UTC) - stale_after
    for version, names in versions.items():
        leftovers = [f"v{version}/{n}" for n in names if n not in (MARKER, CLAIM)]
        if MARKER not in names and max(names.values()) <= cutoff:
            store.write_new(f"v{version}/{MARKER}", _stamp(status="abandoned"))
        if leftovers and (state := _read_marker(store, version)) and state["status"] != "complete":
            store.delete_many(leftovers)

    version = max(versions, default=0) + 1
    while not store.write_new(f"v{version}/{CLAIM}", _stamp(owner=uuid.uuid4().hex)):
        version += 1
    for name, source in files.items():
        key = f"v{version}/{name}"
        if isinstance(source, bytes):
            store.write_bytes(key, source)
        else:
            store.upload_from(Path(source), key)
    if not store.write_new(f"v{version}/{MARKER}", marker):
        raise PublishError(
            f"{store.uri(f'v{version}')} was sealed as abandoned by another publisher while "
            f"this one was still writing it (untouched for over {stale_after}); not published"
        )
    return version
