"""Incremental rebuild of the image stages: what the fact and embedding cache saves.

Generates a small synthetic source with photos, runs the image stages on its backup folder
(inspect_images with a FactCache and the store's listing as `stat`, as the image_files asset
does; embed_ok_images and find_duplicates with geometric verification, with the same cache,
as the other image assets do), then grows the source by ~1%
more requests (synthetic.grow: new photos in the same backup, some of them copies of older
ones) and runs the stages again on the same cache. The baseline of the same run is the grown
folder built with an empty cache. Reads are counted at the store, so the hit rates are what
was actually not re-read.

    python bench/bench_incremental.py [--requests 300] [--growth 0.01] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_parse import load_average  # noqa: E402

from dagster_project.images.cache import FactCache  # noqa: E402
from dagster_project.images.dedup import find_duplicates  # noqa: E402
from dagster_project.images.embed import Embedder, EmbedderConfig  # noqa: E402
from dagster_project.images.folder import embed_ok_images  # noqa: E402
from dagster_project.images.verify import inspect_images  # noqa: E402
from dagster_project.storage import LocalStore  # noqa: E402
from dagster_project.synthetic import generate, grow  # noqa: E402


class CountingStore:
    """Reads of a LocalStore, counted per stage, and those of files in ``old`` (thread-safe:
    reads run in pools)."""

    def __init__(self, root: Path, old: frozenset[str]) -> None:
        self.store = LocalStore(root)
        self.old = old
        self.reads: Counter[str] = Counter()
        self.old_reads: Counter[str] = Counter()
        self.stage = ""
        self._lock = threading.Lock()

    def read_bytes(self, key: str) -> bytes | None:
        with self._lock:
            self.reads[self.stage] += 1
            self.old_reads[self.stage] += key in self.old
        return self.store.read_bytes(key)


def image_stages(
    root: Path,
    cache_dir: Path,
    embedder: Embedder,
    workers: int,
    old: frozenset[str] = frozenset(),
) -> dict:
    """One build of the image stages over every file under `root`; seconds and reads (of
    the files in ``old``, those of the previous build, too)."""
    store = CountingStore(root, old)
    started = time.perf_counter()
    listing = {stat.key: (stat.size, stat.version) for stat in store.store.list()}
    keys = sorted(listing)
    with FactCache(cache_dir) as cache:
        store.stage = "inspect"
        facts = inspect_images(
            keys, store.read_bytes, workers=workers, cache=cache, stat=listing.get
        )
        inspected = time.perf_counter()
        store.stage = "embed"
        vectors = embed_ok_images(facts, store.read_bytes, embedder, cache=cache)
        embedded = time.perf_counter()
        store.stage = "verify"
        result = find_duplicates(facts, vectors, read=store.read_bytes, cache=cache)
    done = time.perf_counter()
    distinct = facts.filter(facts["status"] == "ok")["sha256"].n_unique()
    verification = result.verification
    judged = verification.computed + verification.cached
    return {
        "keys": keys,
        "files": len(keys),
        "distinct_ok_photos": distinct,
        "inspect_reads": store.reads["inspect"],
        "embed_reads": store.reads["embed"],
        "verify_reads": store.reads["verify"],
        "verify_reads_of_old_files": store.old_reads["verify"],
        "verify_pairs_computed": verification.computed,
        "verify_pairs_cached": verification.cached,
        "facts_hit_rate": round(1 - store.reads["inspect"] / len(keys), 4),
        "embeddings_hit_rate": round(1 - store.reads["embed"] / distinct, 4),
        "verdicts_hit_rate": round(verification.cached / judged, 4) if judged else None,
        "inspect_s": round(inspected - started, 2),
        "embed_s": round(embedded - inspected, 2),
        "dedup_s": round(done - embedded, 2),
        "total_s": round(done - started, 2),
        "clusters": result.clusters["cluster_id"].n_unique(),
        "cluster_ids": result.clusters["cluster_id"].to_list(),
    }


def shown(run: dict) -> str:
    """The run's figures on one line (keys and cluster ids only serve comparisons)."""
    return json.dumps({k: v for k, v in run.items() if k not in ("keys", "cluster_ids")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--growth", type=float, default=0.01, help="new requests / requests")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    print(f"cores {os.cpu_count()}, load average at start {load_average()}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        started = time.perf_counter()
        base = generate(work / "source", requests=args.requests, seed=0)
        print(f"generated {base.n_images} files in {time.perf_counter() - started:.0f} s")
        embedder = Embedder(EmbedderConfig(workers=args.workers))
        first = image_stages(base.backup_dir, work / "cache", embedder, args.workers)
        print(f"first build (empty cache):     {shown(first)}")
        extra = max(1, round(args.growth * args.requests))
        grown = grow(work / "source", extra_requests=extra, seed=1)
        old = frozenset(first["keys"])
        second = image_stages(grown.backup_dir, work / "cache", embedder, args.workers, old)
        print(f"rebuild after {extra} more requests: {shown(second)}")
        cold = image_stages(grown.backup_dir, work / "cache_cold", embedder, args.workers, old)
        print(f"same folder, empty cache:      {shown(cold)}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    new_files = second["files"] - first["files"]
    cached_s, cold_s = (run["inspect_s"] + run["embed_s"] for run in (second, cold))
    print(f"load average at end {load_average()}")
    rate = second["verdicts_hit_rate"]
    verdicts = "none judged" if rate is None else f"{rate:.1%}"
    print(
        f"growth: {new_files} new files ({new_files / first['files']:.1%}); rebuild hit rates: "
        f"facts {second['facts_hit_rate']:.1%}, embeddings {second['embeddings_hit_rate']:.1%}, "
        f"verdicts {verdicts}; "
        f"clusters as the cold build's: {second['cluster_ids'] == cold['cluster_ids']}; "
        f"time rebuild/first {second['total_s'] / first['total_s']:.2f}, "
        f"rebuild/cold on the same folder {second['total_s'] / cold['total_s']:.2f} "
        f"(inspect+embed only: {cached_s / cold_s:.2f})"
    )


if __name__ == "__main__":
    main()
