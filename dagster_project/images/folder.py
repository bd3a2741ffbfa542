"""The image stages on any folder of photos: what `dermacurate dedup` runs.

A user auditing a public dataset has files, not a dump; the stages are the same functions
the assets call (inspect, embed, find_duplicates), keyed by relative path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from dagster_project.images.cache import FactCache
from dagster_project.images.dedup import DedupConfig, DedupResult, find_duplicates
from dagster_project.images.embed import Embedder, embed_images
from dagster_project.images.verify import inspect_images


def vectors_in_row_order(
    sha256s: Sequence[str], distinct: Sequence[str], vectors: np.ndarray
) -> np.ndarray:
    """One embedding per row: a byte copy shares its original's vector (embedded once)."""
    position = {sha: index for index, sha in enumerate(distinct)}
    return vectors[[position[sha] for sha in sha256s]] if len(sha256s) else vectors[:0]


def embed_ok_images(
    facts: pl.DataFrame,
    read: Callable[[str], bytes | None],
    embedder: Embedder,
    cache: FactCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embeddings of the facts rows whose status is ok, in row order, read by their `key`."""
    ok = facts.filter(pl.col("status") == "ok")
    key_of = dict(zip(ok["sha256"], ok["key"], strict=False))
    vectors, distinct = embed_images(
        list(key_of), lambda sha: read(key_of[sha]), embedder, cache=cache, progress=progress
    )
    return vectors_in_row_order(ok["sha256"].to_list(), distinct, vectors)


@dataclass(frozen=True)
class FolderDedup:
    files: pl.DataFrame
    pairs: pl.DataFrame
    clusters: pl.DataFrame
    result: DedupResult


def dedup_folder(
    root: Path,
    embedder: Embedder,
    config: DedupConfig | None = None,
    workers: int = 8,
    cache: FactCache | None = None,
) -> FolderDedup:
    """Every file under `root` inspected; duplicates among the readable ones found."""
    root = Path(root)
    keys = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    )

    def read(key: str) -> bytes | None:
        path = root / key
        return path.read_bytes() if path.is_file() else None

    files = inspect_images(keys, read, workers=workers, cache=cache)
    embeddings = embed_ok_images(files, read, embedder, cache=cache)
    result = find_duplicates(files, embeddings, config, read=read, cache=cache)
    paths = files["key"]
    pairs = result.pairs.select(
        paths.gather(result.pairs["a"]).alias("path_a"),
        paths.gather(result.pairs["b"]).alias("path_b"),
        "kind",
        "similarity",
    )
    clusters = result.clusters.rename({"key": "path"}).select(
        "path", "cluster_id", "cluster_size", "representative", "outlier_score"
    )
    return FolderDedup(files.rename({"key": "path"}), pairs, clusters, result)
