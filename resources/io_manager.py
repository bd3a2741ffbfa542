"""Stores asset outputs as Parquet (frames) or JSON (documents) in any ObjectStore.

Written on pyarrow/polars directly: dagster-polars breaks on polars 2.x (see
../shared/notes/dagster.md). Partitioned assets get one file per dump partition.
"""

from __future__ import annotations

import io
import json
from typing import Any

import dagster as dg
import polars as pl

from dagster_project.storage import ObjectStore, store_from_uri


class ParquetIOManager(dg.ConfigurableIOManager):
    """Asset outputs under `base` (a local directory or s3://bucket/prefix)."""

    base: str
    endpoint_url: str | None = None

    def _store(self) -> ObjectStore:
        return store_from_uri(self.base, endpoint_url=self.endpoint_url)

    @staticmethod
    def _stem(context: dg.OutputContext | dg.InputContext) -> str:
        path = "/".join(context.asset_key.path)
        if context.has_asset_partitions:
            return f"{path}/{context.asset_partition_key}"
        return path

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        store = self._store()
        stem = self._stem(context)
        if isinstance(obj, pl.DataFrame):
            buffer = io.BytesIO()
            obj.write_parquet(buffer, compression="zstd")
            store.write_bytes(f"{stem}.parquet", buffer.getvalue())
            context.add_output_metadata({"rows": obj.height, "uri": store.uri(f"{stem}.parquet")})
        else:
            store.write_bytes(f"{stem}.json", json.dumps(obj, indent=1, sort_keys=True).encode())
            context.add_output_metadata({"uri": store.uri(f"{stem}.json")})

    def load_input(self, context: dg.InputContext) -> Any:
        store = self._store()
        stem = self._stem(context)
        data = store.read_bytes(f"{stem}.parquet")
        if data is not None:
            return pl.read_parquet(io.BytesIO(data))
        data = store.read_bytes(f"{stem}.json")
        if data is None:
            raise FileNotFoundError(f"no stored output for {stem} under {self.base}")
        return json.loads(data)
