"""Duplicate detection scored on real photos with known answers (HAM10000 subset), and the
scoring itself on hand-made pairs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dagster_project.images.dedup import DedupConfig, candidate_pairs
from dagster_project.images.evaluate import (
    cluster_pairs,
    ham10000_metrics,
    ham10000_truth,
    load_ham10000,
    pair_metrics,
    same_value_pairs,
)

ROOT = Path(os.environ.get("DERMA_REAL_DATA", "/work/shared/datasets")) / "ham10000_subset"


def pairs(*items: tuple[int, int]) -> pl.DataFrame:
    return pl.DataFrame({"a": [a for a, _ in items], "b": [b for _, b in items]})


def test_pair_metrics_counts_neutral_pairs_apart():
    predicted = pairs((0, 1), (1, 2), (3, 4), (5, 6), (2, 1))
    correct = pairs((0, 1), (1, 2), (7, 8))
    positives = pairs((0, 1), (7, 8))
    neutral = pairs((3, 4))
    m = pair_metrics(predicted, correct, 10, positives=positives, neutral=neutral)
    # (2, 1) is (1, 2) again: 4 distinct predictions, 2 right, 1 neutral, 1 wrong.
    assert (m.predicted, m.true_positive, m.neutral, m.false_positive) == (4, 2, 1, 1)
    assert (m.positives, m.found) == (2, 1)
    assert m.precision == pytest.approx(2 / 3)
    assert m.strict_precision == pytest.approx(2 / 4)
    assert m.recall == pytest.approx(1 / 2)


def test_cluster_pairs_scores_every_pair_a_false_link_joins():
    # 0-1 and 2-3 are right; the link 1-2 wrongly joins them: 4 wrong pairs, not 1.
    predicted = cluster_pairs(5, pairs((0, 1), (2, 3), (1, 2)))
    assert set(predicted.iter_rows()) == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    m = pair_metrics(predicted, pairs((0, 1), (2, 3)), 5)
    assert (m.true_positive, m.false_positive, m.recall) == (2, 4, 1.0)


def test_truth_from_the_manifest():
    manifest = pl.DataFrame(
        {
            "isic_id": ["I1", "I1", "I1", "I2", "I3"],
            "variant": ["original", "flipped", "original", "original", "flipped"],
            "lesion_id": ["L1", "L1", "L1", "L1", "L2"],
            "md5": ["m1", "m2", "m1", "m3", "m4"],
        }
    )
    truth = ham10000_truth(manifest)
    assert set(truth.exact.iter_rows()) == {(0, 2)}
    assert set(truth.copies.iter_rows()) == {(0, 1), (0, 2), (1, 2)}
    assert set(truth.flipped.iter_rows()) == {(0, 1), (1, 2)}
    assert set(truth.same_lesion.iter_rows()) == {(0, 3), (1, 3), (2, 3)}
    assert same_value_pairs([None, None, "x"]).height == 0


@pytest.fixture(scope="module")
def ham150():
    if not (ROOT / "manifest.csv").is_file():
        pytest.skip(f"HAM10000 subset not found at {ROOT} (set DERMA_REAL_DATA)")
    from dagster_project.images.embed import Embedder, EmbedderConfig

    embedder = Embedder(EmbedderConfig(backend="efficientnet_lite0"))
    return load_ham10000(ROOT, embedder, images=150)


def test_real_copies_found_with_the_default_thresholds(ham150):
    data = ham150
    assert data.manifest["isic_id"].n_unique() == 150
    found = candidate_pairs(data.facts, data.embeddings, read=lambda key: (ROOT / key).read_bytes())
    metrics = ham10000_metrics(found, data.manifest)

    def row(detector: str, task: str) -> dict:
        chosen = metrics.filter((pl.col("detector") == detector) & (pl.col("task") == task))
        return chosen.row(0, named=True)

    exact = row("exact", "exact")
    assert exact["positives"] > 0
    assert (exact["precision"], exact["recall"]) == (1.0, 1.0)
    flipped = row("all", "flipped")
    assert flipped["positives"] >= 150
    assert flipped["precision"] >= 0.99
    assert flipped["recall"] >= 0.99
    # Each detector on its own does part of the work: the perceptual hash finds mirrors.
    assert row("perceptual", "flipped")["recall"] >= 0.99
    # Geometric verification links no two different lesions (same-lesion pairs are neutral:
    # HAM10000's photos of one lesion are often re-crops of one capture).
    assert row("geometric", "flipped")["false_positive"] == 0


def test_loose_thresholds_lose_precision(ham150):
    """The metrics can fail: at a pHash distance of 16 unrelated photos join clusters."""
    data = ham150
    loose = DedupConfig(phash_max_distance=16, perceptual_min_cosine=-1.0)
    metrics = ham10000_metrics(candidate_pairs(data.facts, data.embeddings, loose), data.manifest)
    flipped = metrics.filter((pl.col("detector") == "all") & (pl.col("task") == "flipped"))
    assert flipped["precision"][0] < 0.9
    assert np.isfinite(flipped["recall"][0])
