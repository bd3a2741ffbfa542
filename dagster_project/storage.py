"""Object storage behind one small interface: a local directory or an S3 bucket/prefix.

Why: the pipeline reads the photo backup from, and publishes the curated dataset to, either a
local directory (demo, tests) or S3 (production). Everything above this module talks to
`ObjectStore` only, so the two behave the same: keys are `/`-separated relative names, a
write is atomic (a reader never sees half an object), `list` is sorted by key.

S3 credentials come only from boto3's usual chain (environment, profile, instance role);
nothing here reads, stores or logs them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

#: Name prefix of in-progress local files and directories; `list` never shows them.
TMP_PREFIX = ".dcpart-"

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_S3_DELETE_BATCH = 1000


@dataclass(frozen=True)
class ObjectStat:
    """What a store knows about an object without reading it."""

    key: str
    size: int
    last_modified: datetime
    #: Changes whenever the object changes: the ETag on S3, mtime+size locally.
    version: str
    #: Hex SHA-256 when the store records one (S3 objects written by this module, via HEAD);
    #: None when unknown without reading the object. `list` never fills it.
    sha256: str | None = None


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise ValueError naming it.

    Rejected: empty keys, a leading or doubled `/`, `.`/`..` segments (they would escape a
    local root), NUL, and segments starting with the reserved temporary prefix.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid object key {key!r}: must be a non-empty string")
    for part in key.split("/"):
        if part in ("", ".", "..") or "\0" in part or part.startswith(TMP_PREFIX):
            raise ValueError(
                f"invalid object key {key!r}: segment {part!r} is empty, '.', '..', "
                f"holds NUL or starts with the reserved {TMP_PREFIX!r}"
            )
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix may end anywhere (even mid-name), but its directories must be valid."""
    head, _, _ = prefix.rpartition("/")
    if head:
        validate_key(head)
    return prefix


class ObjectStore(ABC):
    """A flat namespace of immutable-by-write objects: local directory or S3 bucket/prefix."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically."""

    @abstractmethod
    def write_new(self, key: str, data: bytes) -> bool:
        """Create the object only if the key is absent; False (nothing written) if it exists.

        Atomic test-and-set, so two writers racing for one key cannot both win (S3 conditional
        put `If-None-Match: *`; locally a hard link, which fails if the name exists).
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectStat | None:
        """Size and version of the object without reading it; None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectStat]:
        """Every object whose key starts with `prefix` (a plain string prefix), sorted by key."""

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete these objects; missing ones are ignored."""

    @abstractmethod
    def download_to(self, key: str, path: Path) -> None:
        """Stream the object to a local file (for GB-size dumps); FileNotFoundError if absent."""

    @abstractmethod
    def upload_from(self, path: Path, key: str) -> None:
        """Stream a local file into the object (multipart on S3)."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """`file:///...` or `s3://bucket/prefix/key`, for metadata and messages.

        A key ending in `/` names a "directory" (e.g. `v3/`) and keeps its slash.
        """

    def sha256(self, key: str) -> str | None:
        """The object's SHA-256 without transferring it, or None when the store has none."""
        found = self.stat(key)
        return found.sha256 if found else None

    def local_path(self, key: str) -> Path | None:
        """The file holding the object when the store is a local directory, else None."""
        return None

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many there were."""
        keys = [found.key for found in self.list(prefix)]
        self.delete_many(keys)
        return len(keys)


def _fill_atomically(path: Path, fill: Callable[[BinaryIO], None], *, exclusive: bool) -> bool:
    """Write a file under a temporary name, fsync, then rename (or link when exclusive).

    A crash leaves at most a hidden temporary file, never a half file under the real name.
    Returns False when `exclusive` and the name already exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


class LocalStore(ObjectStore):
    """Objects as files under `root` (key `a/b.jpg` is `root/a/b.jpg`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def local_path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.local_path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        _fill_atomically(self.local_path(key), lambda out: out.write(data), exclusive=False)

    def write_new(self, key: str, data: bytes) -> bool:
        return _fill_atomically(self.local_path(key), lambda out: out.write(data), exclusive=True)

    def _stat_path(self, key: str, path: Path) -> ObjectStat | None:
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not S_ISREG(st.st_mode):
            return None
        return ObjectStat(
            key=key,
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
            version=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        )

    def stat(self, key: str) -> ObjectStat | None:
        return self._stat_path(key, self.local_path(key))

    def sha256(self, key: str) -> str | None:
        """Hashes the file (a local read: no copy is made)."""
        try:
            with open(self.local_path(key), "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectStat]:
        head, _, _ = _validate_prefix(prefix).rpartition("/")
        base = self.root.joinpath(*head.split("/")) if head else self.root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            stem = "" if rel == "." else f"{rel}/"
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(TMP_PREFIX)
                and (f"{stem}{d}/".startswith(prefix) or prefix.startswith(f"{stem}{d}/"))
            ]
            keys.extend(
                f"{stem}{name}"
                for name in filenames
                if not name.startswith(TMP_PREFIX) and f"{stem}{name}".startswith(prefix)
            )
        for key in sorted(keys):
            found = self._stat_path(key, self.root / key)
            if found is not None:
                yield found

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self.local_path(key)
            path.unlink(missing_ok=True)
            for parent in path.parents:
                if parent == self.root or not parent.is_relative_to(self.root):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    def download_to(self, key: str, path: Path) -> None:
        src = self.local_path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        with open(src, "rb") as f:
            _fill_atomically(Path(path), lambda out: shutil.copyfileobj(f, out), exclusive=False)

    def upload_from(self, path: Path, key: str) -> None:
        with open(path, "rb") as f:
            _fill_atomically(
                self.local_path(key), lambda out: shutil.copyfileobj(f, out), exclusive=False
            )

    def uri(self, key: str = "") -> str:
        name = key.rstrip("/")
        slash = "/" if key.endswith("/") else ""
        return (self.local_path(name) if name else self.root).as_uri() + slash


def _b64_to_hex(value: str | None) -> str | None:
    """A full-object S3 checksum (base64) as hex; None for absent or multipart (`...-N`)."""
    if not value or "-" in value:
        return None
    return base64.b64decode(value).hex()


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class S3Store(ObjectStore):
    """Objects in an S3 bucket under `prefix` (any S3-compatible endpoint).

    Every object this store writes carries a full-object SHA-256 checksum, which S3 verifies on
    upload and returns on HEAD, so a copy can be checked without downloading it.
    `max_pool_connections` should be at least the number of threads sharing the store.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
        max_pool_connections: int = 64,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        stripped = prefix.strip("/")
        self.prefix = f"{validate_key(stripped)}/" if stripped else ""
        self.endpoint_url = endpoint_url
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 10, "mode": "adaptive"},
                max_pool_connections=max_pool_connections,
            ),
        )
        self._transfer = TransferConfig(max_concurrency=min(max_pool_connections, 16))

    def __repr__(self) -> str:
        return f"S3Store({self.uri()!r}, endpoint_url={self.endpoint_url!r})"

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as err:
            if _error_code(err) in _MISSING_CODES:
                return None
            raise
        return response["Body"].read()

    def _put(self, key: str, data: bytes, **conditions: str) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._full(key),
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            **conditions,
        )

    def write_bytes(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def write_new(self, key: str, data: bytes) -> bool:
        try:
            self._put(key, data, IfNoneMatch="*")
        except ClientError as err:
            if _error_code(err) in _PRECONDITION_CODES:
                return False
            raise
        return True

    def stat(self, key: str) -> ObjectStat | None:
        try:
            head = self.client.head_object(
                Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"
            )
        except ClientError as err:
            if _error_code(err) in _MISSING_CODES:
                return None
            raise
        return ObjectStat(
            key=key,
            size=head["ContentLength"],
            last_modified=head["LastModified"].astimezone(UTC),
            version=head["ETag"].strip('"'),
            sha256=_b64_to_hex(head.get("ChecksumSHA256")),
        )

    def list(self, prefix: str = "") -> Iterator[ObjectStat]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + _validate_prefix(prefix)
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectStat(
                    key=obj["Key"][len(self.prefix) :],
                    size=obj["Size"],
                    last_modified=obj["LastModified"].astimezone(UTC),
                    version=obj["ETag"].strip('"'),
                )

    def delete_many(self, keys: Iterable[str]) -> None:
        full = [self._full(key) for key in keys]
        for start in range(0, len(full), _S3_DELETE_BATCH):
            batch = full[start : start + _S3_DELETE_BATCH]
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise RuntimeError(
                    f"could not delete {len(errors)} objects in s3://{self.bucket}, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )

    def download_to(self, key: str, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(
                self.bucket, self._full(key), str(path), Config=self._transfer
            )
        except ClientError as err:
            if _error_code(err) in _MISSING_CODES:
                raise FileNotFoundError(f"{self.uri(key)} does not exist") from err
            raise

    def upload_from(self, path: Path, key: str) -> None:
        self.client.upload_file(
            str(path),
            self.bucket,
            self._full(key),
            ExtraArgs={"ChecksumAlgorithm": "SHA256"},
            Config=self._transfer,
        )

    def uri(self, key: str = "") -> str:
        if key.rstrip("/"):
            validate_key(key.rstrip("/"))
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def can_copy_from(self, source: ObjectStore) -> bool:
        """Whether `copy_from(source, ...)` can copy server-side (same S3 endpoint)."""
        return isinstance(source, S3Store) and source.endpoint_url == self.endpoint_url

    def copy_from(self, source: S3Store, src_key: str, dest_key: str) -> tuple[str, str | None]:
        """Copy an object inside S3 (no bytes pass through this process).

        Returns the copy's version (ETag) and its SHA-256 as S3 computed it (None if the
        endpoint gave none). This store's credentials must be allowed to read the source
        bucket. Objects over 5 GB cannot be copied in one request (S3's limit; the error says so).
        """
        try:
            response = self.client.copy_object(
                Bucket=self.bucket,
                Key=self._full(dest_key),
                CopySource={"Bucket": source.bucket, "Key": source._full(src_key)},
                ChecksumAlgorithm="SHA256",
            )
        except ClientError as err:
            if _error_code(err) in _MISSING_CODES:
                raise FileNotFoundError(f"{source.uri(src_key)} does not exist") from err
            raise
        result = response["CopyObjectResult"]
        return result["ETag"].strip('"'), _b64_to_hex(result.get("ChecksumSHA256"))


def store_from_uri(
    uri: str, endpoint_url: str | None = None, region: str | None = None
) -> ObjectStore:
    """`s3://bucket/prefix` -> S3Store; `file:///dir` or a plain path -> LocalStore."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"store URI {uri!r} has no bucket")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url, region=region)
    if parsed.scheme == "file":
        return LocalStore(url2pathname(parsed.path))
    if not parsed.scheme:
        return LocalStore(uri)
    raise ValueError(f"unsupported store URI {uri!r}: use s3://bucket/prefix or a local path")


_GCS_PATH = re.compile(r"gs://([a-z0-9][a-z0-9._-]*[a-z0-9])/(.+)")


@dataclass(frozen=True)
class GcsPathMapper:
    """Maps an image's `gs://` path (as stored in the dump) to its key in the backup store.

    With no map, `gs://<bucket>/<path>` becomes key `<bucket>/<path>` (the backup mirrors the
    GCS layout under the store's own root/prefix). A map rewrites prefixes: its keys are
    `<bucket>` or `<bucket>/<path prefix>` (a leading `gs://` is allowed), its values the key
    prefix in the backup store ("" for the root); the longest matching prefix wins and a path
    that matches none is an error.
    """

    gcs_bucket_map: Mapping[str, str] | None = None

    def key(self, gcs_path: str) -> str:
        """The backup-store key of `gcs_path`; ValueError naming the path if it cannot map."""
        match = _GCS_PATH.fullmatch(gcs_path) if isinstance(gcs_path, str) else None
        if match is None:
            raise ValueError(f"not a gs://<bucket>/<object> image path: {gcs_path!r}")
        path = f"{match[1]}/{match[2]}"
        try:
            validate_key(path)
        except ValueError as err:
            raise ValueError(f"image path {gcs_path!r} is not a valid object path") from err
        if self.gcs_bucket_map is None:
            return path
        rules = sorted(
            (
                (src.removeprefix("gs://").strip("/"), dest.strip("/"))
                for src, dest in self.gcs_bucket_map.items()
            ),
            key=lambda rule: len(rule[0]),
            reverse=True,
        )
        for src, dest in rules:
            if path.startswith(f"{src}/"):
                rest = path[len(src) + 1 :]
                return f"{dest}/{rest}" if dest else rest
        raise ValueError(
            f"image path {gcs_path!r} matches no configured GCS prefix "
            f"({', '.join(sorted(src for src, _ in rules))})"
        )
