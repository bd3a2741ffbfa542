"""Verify image files: decodable or not (and why), content hash, size, perceptual hashes, quality.

A bad file is a flagged row with a reason, never an exception: the backup holds missing,
zero-byte, truncated and non-image files (SOURCE_FORMAT.md, section 4). Decoding is done at a
reduced size (JPEG DCT-domain downscale via ``Image.draft``), which is about five times faster
than a full decode and still entropy-decodes the whole stream, so truncation is detected.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import imagehash
import numpy as np
import pillow_heif
import polars as pl
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from dagster_project.images.cache import FactCache

# HEIC photos renamed to .jpg are decoded like any other image.
pillow_heif.register_heif_opener()

# Formats a phone or a browser uploads. Restricting the list keeps Pillow from "identifying"
# arbitrary bytes as a header-less format such as TGA.
ACCEPTED_FORMATS = ("JPEG", "PNG", "HEIF", "WEBP", "AVIF")

STATUSES = ("ok", "missing", "empty", "truncated", "corrupt", "not_an_image", "too_large")

# Side of the thumbnail that hashes and quality are computed on. A fixed size makes the
# Laplacian variance comparable across photos of different resolutions.
THUMBNAIL_SIZE = 256

# Keys whose stat calls are queued at once (bounds the pool's queue for 400K keys).
STAT_CHUNK = 4096

# Bump when the way facts are computed changes, so cached facts are recomputed.
FACTS_VERSION = "1"

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})

# The dihedral group of the square: identity, mirror, the three rotations and the three
# other reflections (mirror composed with a rotation).
DIHEDRAL = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSVERSE,
)

# Quality score constants (see ``quality``).
BLUR_HALF_VARIANCE = 100.0
DARK_LEVEL, BRIGHT_LEVEL = 8, 247


@dataclass(frozen=True)
class ImageFacts:
    """What one image file is: status and reason, and for decodable files hashes and quality.

    ``width``/``height`` are after EXIF orientation. ``phash`` is imagehash's 64-bit pHash as a
    signed int64; ``phash_dihedral`` the pHashes of the 8 rotations/reflections (identity
    first) so a mirrored or rotated copy matches by hash. ``blur`` is in [0, 1] (1 = fully
    blurred), ``exposure`` in [0, 1] (1 = well exposed), ``quality_score`` is
    ``(1 - blur) * exposure``.
    """

    status: str
    reason: str | None = None
    byte_size: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    phash: int | None = None
    phash_dihedral: list[int] | None = None
    quality_score: float | None = None
    blur: float | None = None
    exposure: float | None = None


FACT_FIELDS = tuple(f.name for f in fields(ImageFacts))
IMAGE_FACTS_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "status": pl.String(),
    "reason": pl.String(),
    "byte_size": pl.Int64(),
    "sha256": pl.String(),
    "width": pl.Int32(),
    "height": pl.Int32(),
    "phash": pl.Int64(),
    "phash_dihedral": pl.List(pl.Int64()),
    "quality_score": pl.Float32(),
    "blur": pl.Float32(),
    "exposure": pl.Float32(),
}


def open_image(data: bytes) -> Image.Image:
    """Parse the header only (no pixel decode); raises PIL's errors for non-images."""
    return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)


def decode_oriented(image: Image.Image, size: int) -> Image.Image:
    """Decode to RGB at the smallest JPEG scale that keeps both sides >= ``size``, EXIF-oriented.

    ``Image.draft`` lets libjpeg downscale in the DCT domain (1/2, 1/4, 1/8); other formats
    decode at full size. Orientation follows ``ImageOps.exif_transpose``.
    """
    image.draft("RGB", (size, size))
    return ImageOps.exif_transpose(image).convert("RGB")


def phash_int(image: Image.Image) -> int:
    """imagehash's pHash as a signed 64-bit int (bits big-endian, as ``str(hash)`` prints)."""
    bits = imagehash.phash(image).hash.ravel()
    return int(np.packbits(bits).view(">i8")[0])


def quality(gray: np.ndarray) -> tuple[float, float, float]:
    """Technical quality of a grey thumbnail (values 0-255): ``(score, blur, exposure)``.

    - blur: the variance v of the 4-neighbour Laplacian measures sharpness (edges); it is
      mapped to ``blur = H / (v + H)`` with H = BLUR_HALF_VARIANCE, so a sharp photo is near 0,
      a featureless or defocused one near 1, and v = H gives 0.5.
    - exposure: ``(1 - 2 * clipped) * (1 - mean_penalty)`` clamped to [0, 1], where
      ``clipped`` is the fraction of pixels <= DARK_LEVEL or >= BRIGHT_LEVEL and
      ``mean_penalty`` grows linearly from 0 to 1 as the mean brightness leaves
      [0.25, 0.75] towards 0 or 1.
    - score: ``(1 - blur) * exposure``, in [0, 1], higher is better.
    """
    g = gray.astype(np.float32)
    laplacian = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    blur = BLUR_HALF_VARIANCE / (float(laplacian.var()) + BLUR_HALF_VARIANCE)
    clipped = float(np.mean((gray <= DARK_LEVEL) | (gray >= BRIGHT_LEVEL)))
    mean_penalty = max(0.0, abs(float(g.mean()) / 255.0 - 0.5) - 0.25) / 0.25
    exposure = min(1.0, max(0.0, (1.0 - 2.0 * clipped) * (1.0 - mean_penalty)))
    return (1.0 - blur) * exposure, blur, exposure


def _sniff(data: bytes) -> str:
    """What a non-image looks like, without quoting its content (it could hold anything)."""
    head = data[:512].lstrip()
    if head[:1] == b"<":
        return "HTML/XML markup"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "binary data"


def _failure(status: str, reason: str, data: bytes) -> ImageFacts:
    return ImageFacts(status, reason, len(data), hashlib.sha256(data).hexdigest())


def inspect_image(data: bytes | None, max_pixels: int = 50_000_000) -> ImageFacts:
    """Facts about one image file's bytes (``None`` = file missing). Never raises on bad data.

    Images whose header declares more than ``max_pixels`` are refused before any pixel is
    decoded (decompression bombs).
    """
    if data is None:
        return ImageFacts("missing", "file not found in the image store")
    if not data:
        return ImageFacts("empty", "file has zero bytes", 0, hashlib.sha256(data).hexdigest())
    try:
        image = open_image(data)
    except Image.DecompressionBombError as error:
        return _failure("too_large", str(error), data)
    except UnidentifiedImageError:
        formats = "/".join(ACCEPTED_FORMATS)
        return _failure("not_an_image", f"not a {formats} file but {_sniff(data)}", data)
    except Exception as error:
        return _failure("corrupt", f"unreadable image header: {error}", data)
    width, height = image.size
    if width * height > max_pixels:
        return _failure(
            "too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}", data
        )
    try:
        if image.format == "PNG":
            # Chunk CRCs and the end marker (cheap: no inflate); decoding alone misses a lost end.
            open_image(data).verify()
        # (PNG keeps EXIF anywhere in the file: reading it may decode the image.)
        if image.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES:
            width, height = height, width
        thumb = decode_oriented(image, THUMBNAIL_SIZE)
    except Exception as error:
        truncated = isinstance(error, EOFError) or "truncated" in str(error).lower()
        status = "truncated" if truncated else "corrupt"
        return _failure(status, f"{image.format} decode failed: {error}", data)
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    dihedral = [phash_int(thumb if t is None else thumb.transpose(t)) for t in DIHEDRAL]
    score, blur, exposure = quality(np.asarray(thumb.convert("L")))
    return ImageFacts(
        status="ok",
        byte_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        phash=dihedral[0],
        phash_dihedral=dihedral,
        quality_score=score,
        blur=blur,
        exposure=exposure,
    )


def _facts_frame(keys: Sequence[str], facts: Sequence[ImageFacts]) -> pl.DataFrame:
    columns = {name: [getattr(f, name) for f in facts] for name in FACT_FIELDS}
    return pl.DataFrame({"key": list(keys), **columns}, schema=IMAGE_FACTS_SCHEMA)


def inspect_images(
    keys: Sequence[str],
    read: Callable[[str], bytes | None],
    workers: int = 8,
    cache: FactCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    stat: Callable[[str], tuple[int, str] | None] | None = None,
    max_pixels: int = 50_000_000,
) -> pl.DataFrame:
    """One row per key (IMAGE_FACTS_SCHEMA, in key order): the facts of every image file.

    ``read(key)`` returns the bytes or ``None`` when the file is missing; it runs in a pool
    of ``workers`` threads with at most ``2 * workers`` files in flight, so memory stays
    bounded however many keys there are. With a ``cache`` and ``stat(key)`` ->
    ``(byte_size, etag_or_mtime)`` (``None`` = missing; called from ``workers`` threads: a HEAD
    request works, a lookup in one bucket listing is faster), files whose stat matches a
    cached row are not read at all; without ``stat`` the cache is not used. An exception
    raised by ``read`` stops the run (after saving what was computed) with the key named:
    an unreachable store is not a bad file.
    """
    if len(set(keys)) != len(keys):
        duplicated = pl.Series(keys).filter(pl.Series(keys).is_duplicated()).first()
        raise ValueError(f"inspect_images: key {duplicated!r} is listed more than once")
    total = len(keys)
    step = max(1, total // 1000)
    version = f"{FACTS_VERSION}:{max_pixels}"
    stats: dict[str, tuple[int, str] | None] = {}
    if stat is not None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for chunk in range(0, total, STAT_CHUNK):
                batch = keys[chunk : chunk + STAT_CHUNK]
                stats.update(zip(batch, pool.map(stat, batch), strict=True))
    cached = pl.DataFrame(schema=IMAGE_FACTS_SCHEMA)
    if cache is not None and stat is not None:
        present = [(k, s) for k, s in stats.items() if s is not None]
        cached = cache.lookup_facts(
            pl.DataFrame(
                {
                    "key": [k for k, _ in present],
                    "stat_size": [s[0] for _, s in present],
                    "stat_version": [s[1] for _, s in present],
                },
                schema={"key": pl.String, "stat_size": pl.Int64, "stat_version": pl.String},
            ),
            version,
        )
    hit = set(cached["key"].to_list())
    todo = [k for k in keys if k not in hit]
    done_keys: list[str] = []
    done_facts: list[ImageFacts] = []

    def work(key: str) -> ImageFacts:
        if stat is not None and stats[key] is None:
            return inspect_image(None)
        try:
            data = read(key)
        except Exception as error:
            raise RuntimeError(f"reading image {key!r} failed: {error}") from error
        return inspect_image(data, max_pixels)

    def finish(key: str, facts: ImageFacts) -> None:
        done_keys.append(key)
        done_facts.append(facts)
        if cache is not None and stat is not None and facts.status != "missing":
            size, etag = stats[key]
            row = {"key": key, "stat_size": size, "stat_version": etag, **asdict(facts)}
            cache.add_facts(row, version)
        done = len(hit) + len(done_keys)
        if progress is not None and (done % step == 0 or done == total):
            progress(done, total)

    if progress is not None and hit:
        progress(len(hit), total)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            in_flight: dict[Future[ImageFacts], str] = {}
            for key in todo:
                if len(in_flight) >= 2 * workers:
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        finish(in_flight.pop(future), future.result())
                in_flight[pool.submit(work, key)] = key
            for future in list(in_flight):
                finish(in_flight.pop(future), future.result())
    finally:
        if cache is not None:
            cache.flush()
    fresh = _facts_frame(done_keys, done_facts)
    order = pl.DataFrame({"key": list(keys)}, schema={"key": pl.String})
    return order.join(pl.concat([cached, fresh]), on="key", how="left", maintain_order="left")
