"""The curation policy: test accounts, vocabulary, thresholds, split ratios, caches."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class CurationConfig(dg.ConfigurableResource):
    """Settings a data maintainer changes in one place; defaults are the calibrated ones."""

    test_patients_file: str | None = None
    algo_python: str | None = None
    cache_dir: str
    duplicate_policy: str = "collapse_exact"
    conflict_policy: str = "keep"
    split_seed: int = 0
    split_ratios: list[float] = [0.8, 0.1, 0.1]
    label_file: str = "common25"
    phash_max_distance: int | None = None
    cosine_threshold: float | None = None
    io_workers: int = 8
    copy_workers: int = 16

    def cache_path(self, name: str) -> Path:
        path = Path(self.cache_dir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path
