"""Duplicate detection on real photos with known answers: the HAM10000 subset.

verify -> embed -> find_duplicates (geometric verification reading the files) on
$DERMA_REAL_DATA/ham10000_subset, then prints, per detector (exact, perceptual, embedding,
geometric) and for all together, precision/recall of exact duplicates, of original/flipped
pairs (a pair of one lesion_id is not a false positive) and of same-lesion pairs (report
only: HAM10000's photos of one lesion are often re-crops of one capture); the thresholds
used; what the verification checked; the precision/recall curve per threshold
(``--curve``); and whether the targets hold (exit status 1 if not).

    python bench/eval_ham10000.py [--images N] [--curve] [--cache DIR] [--backend NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import polars as pl

from dagster_project.images.cache import FactCache
from dagster_project.images.dedup import DedupConfig, find_duplicates
from dagster_project.images.embed import Embedder, EmbedderConfig
from dagster_project.images.evaluate import ham10000_metrics, load_ham10000, threshold_curve

TARGETS = {"exact": (1.0, 1.0), "flipped": (0.99, 0.99)}
COLUMNS = ["detector", "task", "edges", "predicted", "true_positive", "neutral"]
COLUMNS += ["false_positive", "positives", "found", "precision", "strict_precision", "recall"]


def targets_met(metrics: pl.DataFrame) -> list[str]:
    """The failed targets: exact detector on exact copies, all detectors on flipped pairs."""
    failures = []
    for task, detector in (("exact", "exact"), ("flipped", "all")):
        row = metrics.filter((pl.col("task") == task) & (pl.col("detector") == detector)).row(
            0, named=True
        )
        precision, recall = TARGETS[task]
        if not (row["precision"] >= precision and row["recall"] >= recall):
            failures.append(
                f"{task} ({detector}): precision {row['precision']:.4f} (target {precision}), "
                f"recall {row['recall']:.4f} (target {recall})"
            )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_root = Path(os.environ.get("DERMA_REAL_DATA", "/work/shared/datasets"))
    parser.add_argument("--root", type=Path, default=default_root / "ham10000_subset")
    parser.add_argument("--images", type=int, default=None, help="first N ISIC images only")
    parser.add_argument("--backend", default="efficientnet_lite0")
    parser.add_argument("--curve", action="store_true", help="print the threshold curve")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache directory")
    args = parser.parse_args()

    started = time.perf_counter()
    embedder = Embedder(EmbedderConfig(backend=args.backend))
    cache = FactCache(args.cache) if args.cache else None
    data = load_ham10000(args.root, embedder, args.images, cache)
    loaded = time.perf_counter()
    config = DedupConfig()
    result = find_duplicates(
        data.facts, data.embeddings, config, read=lambda key: (args.root / key).read_bytes()
    )
    searched = time.perf_counter()
    metrics = ham10000_metrics(result.pairs, data.manifest)

    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(200)
    print(f"data: {args.root} ({data.manifest.height} files, model {data.model_id})")
    print(f"verify + embed {loaded - started:.1f} s; find_duplicates {searched - loaded:.2f} s")
    v = result.verification
    print(f"thresholds: {config.describe()}")
    print(
        f"geometric verification: checked {v.checked} of {v.candidates} band candidates, "
        f"accepted {v.accepted}, {v.seconds:.1f} s"
    )
    print("scored as clusters (every pair inside a connected component counts as predicted)")
    print(metrics.select(COLUMNS).with_columns(pl.selectors.float().round(4)))
    if args.curve:
        curve = threshold_curve(
            data,
            phash_distances=range(0, 9, 2),
            cosines=[0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99],
            perceptual_min_cosines=[-1.0, 0.5, 0.7],
        )
        print("threshold curve on original/flipped pairs, each detector alone:")
        print(curve.drop("positives").with_columns(pl.selectors.float().round(4)))
    failures = targets_met(metrics)
    print("targets: " + ("met" if not failures else "NOT met: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
