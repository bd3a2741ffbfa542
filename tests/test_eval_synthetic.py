"""Duplicate detection scored per planted transform on a small synthetic source, and the
geometric pair verification on hand-made pairs of synthetic photos."""

from __future__ import annotations

import io
import random

import polars as pl
import pytest
from PIL import Image

from dagster_project.images.dedup import DedupConfig
from dagster_project.images.evaluate import (
    evaluate_synthetic,
    load_synthetic,
    missed_synthetic_targets,
)
from dagster_project.images.geometry import GeometryConfig, features, match, verify_pairs
from dagster_project.synthetic import Planting, generate
from dagster_project.synthetic.images import render_photo, transform_photo

ACCEPT = GeometryConfig()


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_copies_verify_and_different_photos_do_not():
    transforms = ("crop", "resize", "brightness", "rotate90", "recompress", "mirror")
    store: dict[str, bytes] = {}
    copies, others = [], []
    for seed in range(4):
        store[f"photo{seed}"] = original = jpeg(render_photo(seed))
        store[f"other{seed}"] = jpeg(render_photo(seed + 4))
        rng = random.Random(seed)
        for transform in transforms:
            store[f"{transform}{seed}"] = transform_photo(original, transform, rng)
            copies.append((f"photo{seed}", f"{transform}{seed}"))
        others += [(f"photo{seed}", f"other{other}") for other in range(4)]
    pairs = copies + others
    results = verify_pairs([a for a, _ in pairs], [b for _, b in pairs], store.get, ACCEPT)
    verdicts = {pair: result for pair, result in zip(pairs, results, strict=True)}
    assert [pair for pair in copies if not verdicts[pair].accepted(ACCEPT)] == []
    assert [pair for pair in others if verdicts[pair].accepted(ACCEPT)] == []
    assert {pair[1][:-1] for pair in copies if verdicts[pair].mirrored} == {"mirror"}


def test_a_small_crop_is_not_a_copy():
    """A quarter of a photo shows the same pixels but not the same photo: too little overlap."""
    image = render_photo(3)
    width, height = image.size
    quarter = image.crop((0, 0, width // 2, height // 2))
    result = match(features(jpeg(image)), features(jpeg(quarter)))
    # The transform is found (the quarter is twice the size on its thumbnail) ...
    assert result.scale == pytest.approx(2.0, rel=0.05)
    assert result.overlap == pytest.approx(0.25, abs=0.05)
    assert not result.accepted(ACCEPT)


def test_unreadable_photos_never_match():
    assert features(None) is None and features(b"") is None
    assert features(b"not an image at all") is None
    photo = jpeg(render_photo(1))
    store = {"photo": photo, "copy": photo, "broken": photo[:40]}
    results = verify_pairs(
        ["photo", "photo", "photo"], ["copy", "broken", "gone"], store.get, ACCEPT
    )
    assert results[0].accepted(ACCEPT)
    assert [r.inliers for r in results[1:]] == [0, 0]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    from dagster_project.images.embed import Embedder, EmbedderConfig

    source = tmp_path_factory.mktemp("planted") / "source"
    # 70 requests, seed 1: every included photo copied once, >= 15 copies per transform.
    generate(source, requests=70, seed=1, duplicates=Planting(1.0, even_transforms=True))
    data = load_synthetic(source, Embedder(EmbedderConfig()))
    return data, evaluate_synthetic(data, DedupConfig())


def test_every_transform_found_at_high_precision(evaluation):
    data, result = evaluation
    every = result.every_pair
    counts = dict(data.planted["transform"].value_counts().iter_rows())
    assert len(counts) == 9 and min(counts.values()) >= 15
    assert missed_synthetic_targets(every, 0.99) == []
    everything = every.filter((pl.col("detector") == "all") & (pl.col("transform") == "all"))
    assert everything["positives"][0] == data.planted.height
    # Crops need the geometric verification: the embedding alone misses some of them.
    crop = every.filter(pl.col("transform") == "crop")
    by_detector = dict(zip(crop["detector"], crop["recall"], strict=True))
    assert by_detector["embedding"] < 1.0 and by_detector["all"] == 1.0
    verification = result.every_pair_result.verification
    assert 0 < verification.accepted <= verification.checked <= verification.candidates


def test_default_mode_keeps_cases_apart_and_finds_cross_case_copies(evaluation):
    data, result = evaluation
    cross = result.cross_case.filter(pl.col("detector") == "all")
    overall = cross.filter(pl.col("transform") == "all").row(0, named=True)
    assert overall["positives"] > 0 and overall["recall"] >= 0.99
    assert overall["precision"] >= 0.99
    # Copies in their original's case are not pairs in this mode: fewer pairs predicted.
    every = result.every_pair.filter((pl.col("detector") == "all") & (pl.col("transform") == "all"))
    assert overall["predicted"] < every["predicted"][0]
