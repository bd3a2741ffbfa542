"""inspect_image / inspect_images on a crafted set of good and bad files, and the facts cache."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pillow_heif
import polars as pl
import pytest
from PIL import Image, ImageFilter

from dagster_project.images.cache import FactCache
from dagster_project.images.verify import IMAGE_FACTS_SCHEMA, inspect_image, inspect_images

ORIENTATION = 0x0112


def photo(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """An asymmetric synthetic photo: smooth colour field, an off-centre bright block, grain."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    pixels = np.asarray(field).astype(np.int16)
    pixels[height // 8 : height // 3, width // 10 : width // 3] = 240
    pixels += rng.integers(-12, 12, pixels.shape, dtype=np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & (2**64 - 1)).bit_count()


@pytest.fixture(scope="module")
def crafted() -> dict[str, bytes | None]:
    image = photo()
    jpeg = encode(image, quality=90)
    rotated = Image.Exif()
    rotated[ORIENTATION] = 6  # stored landscape, displayed portrait
    files: dict[str, bytes | None] = {
        "ok.jpg": jpeg,
        "png_named.jpg": encode(image, "PNG"),
        "exif_rotated.jpg": encode(image, quality=90, exif=rotated.tobytes()),
        "zero.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) * 2 // 3],
        "truncated.png": encode(image, "PNG")[:-20],
        "notes.jpg": b"patient photo to follow\nthanks\n",
        "error.jpg": b"<!DOCTYPE html><html><body>403 Forbidden</body></html>",
        "bomb.jpg": encode(Image.new("1", (30_000, 30_000)), "PNG"),
        "big.jpg": encode(Image.new("1", (8_000, 8_000)), "PNG"),
        "gone.jpg": None,
    }
    return files


EXPECTED = {
    "ok.jpg": ("ok", 640, 480),
    "png_named.jpg": ("ok", 640, 480),
    "exif_rotated.jpg": ("ok", 480, 640),
    "zero.jpg": ("empty", None, None),
    "truncated.jpg": ("truncated", None, None),
    "truncated.png": ("truncated", None, None),
    "notes.jpg": ("not_an_image", None, None),
    "error.jpg": ("not_an_image", None, None),
    "bomb.jpg": ("too_large", None, None),
    "big.jpg": ("too_large", None, None),
    "gone.jpg": ("missing", None, None),
}


def test_each_crafted_file_gets_its_status(crafted: dict[str, bytes | None]) -> None:
    calls: list[tuple[int, int]] = []
    facts = inspect_images(
        list(crafted), crafted.get, workers=3, progress=lambda *a: calls.append(a)
    )
    assert facts.schema == pl.Schema(IMAGE_FACTS_SCHEMA)
    assert facts["key"].to_list() == list(crafted)
    got = {row["key"]: (row["status"], row["width"], row["height"]) for row in facts.to_dicts()}
    assert got == EXPECTED
    assert calls[-1] == (len(crafted), len(crafted))
    for row in facts.to_dicts():
        data = crafted[row["key"]]
        assert (row["reason"] is None) == (row["status"] == "ok")
        assert row["byte_size"] == (None if data is None else len(data))
        assert row["sha256"] == (None if data is None else hashlib.sha256(data).hexdigest())
        assert (row["phash"] is not None) == (row["status"] == "ok")
    reasons = dict(zip(facts["key"], facts["reason"], strict=True))
    assert "HTML" in reasons["error.jpg"] and "text" in reasons["notes.jpg"]
    assert "8000x8000" in reasons["big.jpg"]
    assert "Forbidden" not in reasons["error.jpg"]  # a file's content is never quoted


@pytest.mark.skipif(not pillow_heif.libheif_info()["HEIF"], reason="libheif has no HEIF encoder")
def test_heic_renamed_to_jpg_decodes_upright() -> None:
    oriented = Image.Exif()
    oriented[ORIENTATION] = 6
    facts = inspect_image(encode(photo(320, 240), "HEIF", exif=oriented.tobytes()))
    assert (facts.status, facts.width, facts.height) == ("ok", 240, 320)


def test_dihedral_hashes_find_mirrored_and_rotated_copies() -> None:
    image = photo(seed=3)
    original = inspect_image(encode(image, quality=92))
    assert original.phash_dihedral is not None and len(original.phash_dihedral) == 8
    assert original.phash_dihedral[0] == original.phash
    other = inspect_image(encode(photo(seed=4), quality=92))
    for transform in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90):
        copy = inspect_image(encode(image.transpose(transform), quality=80))
        assert copy.phash is not None and other.phash is not None
        assert hamming(copy.phash, original.phash) > 10  # plain pHash misses the copy
        assert min(hamming(copy.phash, h) for h in original.phash_dihedral) <= 4
        assert min(hamming(other.phash, h) for h in original.phash_dihedral) > 10


def test_quality_ranks_blurred_and_dark_copies_lower() -> None:
    image = photo(seed=5)
    sharp = inspect_image(encode(image, quality=92))
    blurred = inspect_image(encode(image.filter(ImageFilter.GaussianBlur(3)), quality=92))
    dark = inspect_image(encode(image.point(lambda v: v // 6), quality=92))
    for facts in (sharp, blurred, dark):
        assert facts.quality_score is not None and 0.0 <= facts.quality_score <= 1.0
    assert blurred.blur > sharp.blur
    assert blurred.quality_score < sharp.quality_score
    assert dark.exposure < sharp.exposure
    assert dark.quality_score < sharp.quality_score


def test_cache_skips_reading_unchanged_files(tmp_path, crafted) -> None:
    store = {k: v for k, v in crafted.items() if k != "bomb.jpg"}
    reads: list[str] = []

    def read(key: str) -> bytes | None:
        reads.append(key)
        return store[key]

    def stat(key: str) -> tuple[int, str] | None:
        data = store[key]
        return None if data is None else (len(data), "etag-1")

    first = inspect_images(list(store), read, workers=2, cache=FactCache(tmp_path), stat=stat)
    assert sorted(reads) == sorted(k for k, v in store.items() if v is not None)
    reads.clear()
    second = inspect_images(list(store), read, workers=2, cache=FactCache(tmp_path), stat=stat)
    assert reads == []
    assert second.equals(first)

    store["zero.jpg"] = store["ok.jpg"]  # the file was replaced: new size, new etag
    third = inspect_images(list(store), read, workers=2, cache=FactCache(tmp_path), stat=stat)
    assert reads == ["zero.jpg"]
    assert third.filter(pl.col("key") == "zero.jpg")["status"].item() == "ok"


def test_cache_compacts_and_keeps_the_latest_row(tmp_path) -> None:
    cache = FactCache(tmp_path, flush_rows=2, max_parts=2)
    stats = []
    for i in range(7):
        key = f"k{i % 5}"  # k0 and k1 are written twice; the second write wins
        cache.add_facts({"key": key, "stat_size": i, "stat_version": "e", "status": "ok"}, "v")
        stats.append((key, i))
    cache.flush()
    assert len(list((tmp_path / "facts").glob("part-*.parquet"))) <= 2
    query = pl.DataFrame(
        {"key": [k for k, _ in stats], "stat_size": [s for _, s in stats], "stat_version": "e"}
    )
    found = cache.lookup_facts(query, "v")
    assert sorted(found["key"].to_list()) == ["k0", "k1", "k2", "k3", "k4"]
    # Compaction dropped the stale row of k0 (its file changed from size 0 to size 5).
    assert cache.lookup_facts(query.filter(pl.col("stat_size") == 0), "v").is_empty()
    assert cache.lookup_facts(query.filter(pl.col("stat_size") == 5), "v")["key"].item() == "k0"
    assert cache.lookup_facts(query, "another version").is_empty()


def test_a_failing_store_stops_with_the_key_named(crafted) -> None:
    def read(key: str) -> bytes | None:
        if key == "ok.jpg":
            raise ConnectionError("store unreachable")
        return crafted[key]

    with pytest.raises(RuntimeError, match="ok.jpg"):
        inspect_images(list(crafted), read, workers=2)
    with pytest.raises(ValueError, match="more than once"):
        inspect_images(["a", "b", "a"], crafted.get)
