"""A persistent cache, in a directory of parquet files, of what is derived from image files.

A rebuild on a new dump re-reads only new or changed images:
- image facts are keyed by (key, byte size, etag-or-mtime, facts version): the caller gets
  size and etag from a listing, without reading bytes;
- embeddings are keyed by (model id, sha256): the same bytes under another key, or in
  another dump, are embedded once;
- geometric verdicts (``geometry.verify_pairs``) are keyed by the sorted sha256 pair and
  ``GeometryConfig.version``: a pair of unchanged photos is not read again, and a change of
  threshold or of the method re-verifies every pair.

Rows are buffered and written as one new part file per ``flush_rows`` rows (written under a
temporary name, then renamed, so a crash never leaves half a file); a namespace is compacted
into a single file once it has more than ``max_parts`` parts. Later rows win over earlier
ones (compaction keeps only the latest row of a key or pair, whatever its version). One
writer per cache directory at a time; readers may run alongside a writer.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dagster_project.images.geometry import MATCH_SCHEMA
from dagster_project.images.verify import IMAGE_FACTS_SCHEMA

STAT_SCHEMA = {"key": pl.String(), "stat_size": pl.Int64(), "stat_version": pl.String()}
FACTS_CACHE_SCHEMA = {
    **IMAGE_FACTS_SCHEMA,
    "stat_size": pl.Int64(),
    "stat_version": pl.String(),
    "facts_version": pl.String(),
}
PAIR_KEY = {"sha_a": pl.String(), "sha_b": pl.String()}
VERDICT_SCHEMA = {**PAIR_KEY, **MATCH_SCHEMA}


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


def _write_part(directory: Path, frame: pl.DataFrame) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = directory / f".tmp-{name}"
    frame.write_parquet(temporary)
    os.replace(temporary, directory / f"part-{name}")


def _scan(directory: Path) -> pl.LazyFrame | None:
    parts = _parts(directory)
    return pl.scan_parquet(parts) if parts else None


class FactCache:
    """Image facts, embeddings and verdicts that survive between runs (module docstring)."""

    def __init__(self, root: str | os.PathLike[str], flush_rows: int = 10_000, max_parts: int = 64):
        self.root = Path(root)
        self.flush_rows = flush_rows
        self.max_parts = max_parts
        self._facts: list[dict[str, Any]] = []
        self._embeddings: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        self._verdicts: list[pl.DataFrame] = []

    def __enter__(self) -> FactCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()

    @property
    def _facts_dir(self) -> Path:
        return self.root / "facts"

    @property
    def _verdicts_dir(self) -> Path:
        return self.root / "verdicts"

    def _embeddings_dir(self, model_id: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        return self.root / "embeddings" / f"{slug}-{digest}"

    def lookup_facts(self, stats: pl.DataFrame, facts_version: str) -> pl.DataFrame:
        """Cached facts (IMAGE_FACTS_SCHEMA) of the keys whose (key, stat_size, stat_version)
        match ``stats`` and that were computed by ``facts_version``."""
        scan = _scan(self._facts_dir)
        if scan is None or stats.is_empty():
            return pl.DataFrame(schema=IMAGE_FACTS_SCHEMA)
        return (
            scan.filter(pl.col("facts_version") == facts_version)
            .unique(subset="key", keep="last", maintain_order=True)
            .join(stats.lazy().cast(STAT_SCHEMA), on=list(STAT_SCHEMA), how="inner")
            .select(list(IMAGE_FACTS_SCHEMA))
            .collect()
        )

    def add_facts(self, row: dict[str, Any], facts_version: str) -> None:
        """Buffer one row: ``key``, ``stat_size``, ``stat_version`` and the fact fields."""
        self._facts.append({**row, "facts_version": facts_version})
        if len(self._facts) >= self.flush_rows:
            self._flush_facts()

    def lookup_embeddings(
        self, model_id: str, sha256s: Sequence[str]
    ) -> tuple[list[str], np.ndarray]:
        """Cached ``(sha256s found, float32 vectors (n, dim))`` of ``model_id``, in any order."""
        scan = _scan(self._embeddings_dir(model_id))
        if scan is None or not sha256s:
            return [], np.zeros((0, 0), dtype=np.float32)
        found = (
            scan.filter(pl.col("sha256").is_in(list(sha256s)))
            .unique(subset="sha256", keep="last", maintain_order=True)
            .collect()
        )
        if found.is_empty():
            return [], np.zeros((0, 0), dtype=np.float32)
        return found["sha256"].to_list(), found["vector"].to_numpy().astype(np.float32, copy=False)

    def add_embeddings(self, model_id: str, sha256s: Sequence[str], vectors: np.ndarray) -> None:
        """Buffer the vectors (n, dim) of ``sha256s`` computed by ``model_id``."""
        if len(sha256s) != len(vectors):
            raise ValueError(f"{len(sha256s)} sha256s but {len(vectors)} vectors for {model_id}")
        keys, blocks = self._embeddings.setdefault(model_id, ([], []))
        keys.extend(sha256s)
        blocks.append(np.asarray(vectors, dtype=np.float32))
        if len(keys) >= self.flush_rows:
            self._flush_embeddings(model_id)

    def lookup_verdicts(self, pairs: pl.DataFrame, version: str) -> pl.DataFrame:
        """Cached verdicts (VERDICT_SCHEMA) of the ``pairs`` (columns sha_a < sha_b) that
        were made under ``version`` (``GeometryConfig.version``)."""
        scan = _scan(self._verdicts_dir)
        if scan is None or pairs.is_empty():
            return pl.DataFrame(schema=VERDICT_SCHEMA)
        return (
            scan.filter(pl.col("verify_version") == version)
            .unique(subset=list(PAIR_KEY), keep="last", maintain_order=True)
            .join(pairs.lazy().select(list(PAIR_KEY)).cast(PAIR_KEY), on=list(PAIR_KEY))
            .select(list(VERDICT_SCHEMA))
            .collect()
        )

    def add_verdicts(self, verdicts: pl.DataFrame, version: str) -> None:
        """Buffer verdicts (VERDICT_SCHEMA, sha_a < sha_b) made under ``version``."""
        frame = verdicts.select(list(VERDICT_SCHEMA)).cast(VERDICT_SCHEMA)
        self._verdicts.append(frame.with_columns(verify_version=pl.lit(version)))
        if sum(part.height for part in self._verdicts) >= self.flush_rows:
            self._flush_verdicts()

    def flush(self) -> None:
        """Write everything buffered (one part file per namespace)."""
        if self._facts:
            self._flush_facts()
        for model_id in list(self._embeddings):
            self._flush_embeddings(model_id)
        if self._verdicts:
            self._flush_verdicts()

    def _flush_facts(self) -> None:
        columns = {name: [row.get(name) for row in self._facts] for name in FACTS_CACHE_SCHEMA}
        frame = pl.DataFrame(columns, schema=FACTS_CACHE_SCHEMA)
        self._facts = []
        self._append(self._facts_dir, frame, ["key"])

    def _flush_embeddings(self, model_id: str) -> None:
        keys, blocks = self._embeddings.pop(model_id)
        frame = pl.DataFrame({"sha256": keys, "vector": np.concatenate(blocks)})
        self._append(self._embeddings_dir(model_id), frame, ["sha256"])

    def _flush_verdicts(self) -> None:
        frame = pl.concat(self._verdicts)
        self._verdicts = []
        self._append(self._verdicts_dir, frame, list(PAIR_KEY))

    def _append(self, directory: Path, frame: pl.DataFrame, unique_by: list[str]) -> None:
        _write_part(directory, frame)
        parts = _parts(directory)
        if len(parts) > self.max_parts:
            merged = (
                pl.scan_parquet(parts)
                .unique(subset=unique_by, keep="last", maintain_order=True)
                .collect()
            )
            _write_part(directory, merged)
            for part in parts:
                part.unlink(missing_ok=True)
