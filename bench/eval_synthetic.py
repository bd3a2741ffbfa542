"""Duplicate detection on a synthetic source with planted copies, per transform.

Generates a source (``synthetic.generate``) where every included photo may be re-uploaded,
each transform equally often, then runs the image stages as the assets do
(verify.inspect_images -> folder.embed_ok_images -> dedup.find_duplicates, with geometric
verification reading the backup) and prints, per detector and transform, precision and
recall scored as clusters, two ways (``evaluate.SyntheticEvaluation``): every planted pair
with same_case_is_duplicate=True, and the pipeline's default setting on the planted pairs
across cases. Exit status 1 if a target is missed (every-pair mode, all detectors: each
transform's recall and the precision >= 0.99).

    python bench/eval_synthetic.py [--requests N] [--seed S] [--rate R] [--out DIR] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from dagster_project.images.cache import FactCache
from dagster_project.images.dedup import DedupConfig, DedupResult
from dagster_project.images.embed import Embedder, EmbedderConfig
from dagster_project.images.evaluate import (
    evaluate_synthetic,
    load_synthetic,
    missed_synthetic_targets,
)
from dagster_project.synthetic import Planting, generate

TARGET = 0.99
COLUMNS = ["detector", "transform", "predicted", "false_positive", "positives", "found"]
COLUMNS += ["precision", "recall"]


def _verification(name: str, result: DedupResult) -> str:
    v = result.verification
    return (
        f"{name}: geometric verification checked {v.checked} of {v.candidates} band "
        f"candidates, accepted {v.accepted}, {v.seconds:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--rate", type=float, default=1.0, help="share of photos copied")
    parser.add_argument("--out", type=Path, default=None, help="keep the source here")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "source"
        started = time.perf_counter()
        generate(out, args.requests, args.seed, duplicates=Planting(args.rate, True))
        generated = time.perf_counter()
        embedder = Embedder(EmbedderConfig())
        data = load_synthetic(out, embedder, FactCache(args.cache) if args.cache else None)
        loaded = time.perf_counter()
        config = DedupConfig()
        evaluation = evaluate_synthetic(data, config)
        done = time.perf_counter()

    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(200)
    ok = int((data.facts["status"] == "ok").sum())
    print(
        f"source: {args.requests} requests, seed {args.seed}, {data.records.height} photos "
        f"({ok} readable), {data.planted.height} planted copies; model {embedder.model_id}"
    )
    print(
        f"generate {generated - started:.1f} s; verify + embed {loaded - generated:.1f} s; "
        f"find_duplicates x2 {done - loaded:.1f} s"
    )
    print(f"thresholds: {config.describe()}")
    print(_verification("every pair", evaluation.every_pair_result))
    print(_verification("cross case", evaluation.cross_case_result))
    print("scored as clusters (every pair inside a connected component counts as predicted)")
    print("every planted pair, same_case_is_duplicate=True:")
    print(evaluation.every_pair.select(COLUMNS).with_columns(pl.selectors.float().round(4)))
    print("planted pairs across cases, default setting (photos of one case kept apart):")
    cross = evaluation.cross_case.filter(pl.col("detector") == "all")
    print(cross.select(COLUMNS).with_columns(pl.selectors.float().round(4)))
    failures = missed_synthetic_targets(evaluation.every_pair, TARGET)
    print("targets: " + ("met" if not failures else "NOT met: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
