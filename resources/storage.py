"""Object storage resources: the photo backup, the curated destination, the dumps location."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_project.storage import GcsPathMapper, ObjectStat, ObjectStore, store_from_uri

DUMP_SUFFIXES = (".sql", ".sql.gz", ".dump", ".backup")


class ObjectStoreResource(dg.ConfigurableResource):
    """A local directory or `s3://bucket/prefix`; the endpoint URL lets a loopback S3 serve."""

    uri: str
    endpoint_url: str | None = None

    def store(self) -> ObjectStore:
        return store_from_uri(self.uri, endpoint_url=self.endpoint_url)


class BackupStore(ObjectStoreResource):
    """The photo backup: the app's gs:// paths mirrored into a directory or bucket.

    `gcs_bucket_map` rewrites `gs://<bucket>/<prefix>` to a key prefix of this store; empty
    means the default mirror layout (`<bucket>/<path>`).
    """

    gcs_bucket_map: dict[str, str] = {}

    def mapper(self) -> GcsPathMapper:
        return GcsPathMapper(self.gcs_bucket_map or None)


class DumpSource(ObjectStoreResource):
    """Where new dumps land. S3 dumps are downloaded once into `download_dir`."""

    download_dir: str

    def list_dumps(self) -> list[ObjectStat]:
        return sorted(
            (stat for stat in self.store().list() if stat.key.endswith(DUMP_SUFFIXES)),
            key=lambda stat: (stat.last_modified, stat.key),
        )

    def local_path(self, name: str) -> Path:
        """A local file for dump `name` (the partition key), downloading it if needed."""
        store = self.store()
        stat = store.stat(name)
        if stat is None:
            raise FileNotFoundError(f"dump {name!r} not found in {self.uri}")
        local = store.local_path(name)
        if local is not None:
            return local
        target = Path(self.download_dir) / name
        if not (target.exists() and target.stat().st_size == stat.size):
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            store.download_to(name, partial)
            partial.rename(target)
        return target
