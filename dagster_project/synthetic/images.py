"""Procedural skin photos for the synthetic backup, planted duplicates and broken files.

Every photo is drawn from its own random stream (skin tone, lighting, lesions, hair, grain)
so that no two photos look alike: duplicate detection is scored on them, and a false
"duplicate" between two different photos would count against the pipeline. The work is
done at 1/8 resolution in numpy and upscaled once, which keeps generation at a few
milliseconds per photo.
"""

from __future__ import annotations

import functools
import io
import math
import random
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

_LONG_SIDES = (320, 384, 448, 512, 576, 640, 768, 896, 1024)
_LONG_WEIGHTS = (14, 14, 15, 14, 12, 11, 8, 6, 6)
_ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9)
_LIGHT_SKIN = np.array([240, 205, 185], np.float32)
_DARK_SKIN = np.array([85, 55, 40], np.float32)
_LESION_COLOURS = np.array(
    [
        [170, 40, 40],
        [120, 60, 30],
        [60, 35, 25],
        [230, 220, 210],
        [200, 90, 110],
        [110, 50, 90],
        [210, 160, 60],
        [150, 80, 60],
        [90, 20, 30],
    ],
    np.float32,
)
_GRAIN_SIZE = 1100
_BOMB_SIDE = 30000
pillow_heif.register_heif_opener()  # originals renamed from HEIC must open for their copies


@functools.cache
def _grain() -> np.ndarray:
    """A fixed tile of sensor grain (0..16); each photo takes its own window of it."""
    return (
        np.random.default_rng(20180424)
        .binomial(16, 0.5, (_GRAIN_SIZE, _GRAIN_SIZE, 3))
        .astype(np.uint8)
    )


def _smooth_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    cells = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9))), dtype=np.float32)
    field = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(field) - 0.5


def _add_lesion(
    rng: np.random.Generator, canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray
) -> None:
    height, width = canvas.shape[:2]
    cx, cy = rng.uniform(0.08, 0.92, 2)
    radius = rng.uniform(0.03, 0.25)
    squash, angle = rng.uniform(0.35, 1.0), rng.uniform(0, math.pi)
    x0, x1 = (
        max(0, int((cx - 1.5 * radius) * width)),
        min(width, int((cx + 1.5 * radius) * width) + 1),
    )
    y0, y1 = (
        max(0, int((cy - 1.5 * radius) * height)),
        min(height, int((cy + 1.5 * radius) * height) + 1),
    )
    if x0 >= x1 or y0 >= y1:
        return
    dx, dy = xs[x0:x1] - cx, ys[y0:y1] - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (dy * math.cos(angle) - dx * math.sin(angle)) / squash
    theta = np.arctan2(v, u)
    lobes = int(rng.integers(2, 8))
    edge = (
        1
        + rng.uniform(0, 0.3) * np.sin(lobes * theta + rng.uniform(0, 6.3))
        + rng.uniform(0, 0.1) * np.sin((lobes + 3) * theta)
    )
    distance = np.sqrt(u * u + v * v) / (radius * edge)
    kind = int(rng.integers(0, 4))
    if kind == 0:  # a plaque with a soft border
        alpha = np.clip((1 - distance) * rng.uniform(2, 8), 0, 1)
    elif kind == 1:  # a ring
        alpha = np.clip(1 - np.abs(distance - 0.8) * rng.uniform(4, 10), 0, 1)
    elif kind == 2:  # a cluster of papules
        alpha = np.clip((1 - distance) * 4, 0, 1) * (
            rng.random(distance.shape, dtype=np.float32) < rng.uniform(0.25, 0.7)
        )
    else:  # a scaly patch: base colour with a mottled texture
        alpha = np.clip((1 - distance) * 3, 0, 1) * (
            0.6 + 0.4 * rng.random(distance.shape, dtype=np.float32)
        )
    colour = _LESION_COLOURS[rng.integers(0, len(_LESION_COLOURS))] + rng.normal(0, 18, 3).astype(
        np.float32
    )
    weight = (alpha * np.float32(rng.uniform(0.45, 1.0)))[..., None]
    region = canvas[y0:y1, x0:x1]
    region += (colour - region) * weight


def render_photo(seed: int) -> Image.Image:
    """A skin photo drawn from `seed`: skin tone, light, lesions, hair and grain."""
    rng = np.random.default_rng(seed)
    long_side = int(rng.choice(_LONG_SIDES, p=np.array(_LONG_WEIGHTS) / sum(_LONG_WEIGHTS)))
    short_side = int(round(long_side / _ASPECTS[int(rng.integers(0, len(_ASPECTS)))]))
    width, height = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
    small_w, small_h = max(8, width // 8), max(8, height // 8)
    xs = (np.arange(small_w, dtype=np.float32) + 0.5) / small_w
    ys = (np.arange(small_h, dtype=np.float32)[:, None] + 0.5) / small_h
    tone = rng.random()
    skin = _LIGHT_SKIN * (1 - tone) + _DARK_SKIN * tone + rng.normal(0, 12, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(0.1, 0.9, 2)
    light = (
        1
        + rng.uniform(0.1, 0.5) * ((xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle))
        - rng.uniform(0, 0.5) * ((xs - cx) ** 2 + (ys - cy) ** 2)
        + rng.uniform(0.05, 0.25) * _smooth_field(rng, small_w, small_h)
    )
    canvas = light[..., None] * skin
    for _ in range(int(rng.integers(1, 10))):
        _add_lesion(rng, canvas, xs, ys)
    # Bilinear to half size, then pixel doubling: most of the smoothness at a third of the cost.
    photo = (
        Image.fromarray(np.clip(canvas, 0, 239).astype(np.uint8))
        .resize(((width + 1) // 2, (height + 1) // 2), Image.Resampling.BILINEAR)
        .resize((width, height), Image.Resampling.NEAREST)
    )
    draw = ImageDraw.Draw(photo)
    for _ in range(int(rng.integers(0, 30))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        heading, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.04, 0.3) * long_side
        points = [(x, y)]
        for _ in range(4):
            heading += rng.normal(0, 0.3)
            x, y = x + math.cos(heading) * length / 4, y + math.sin(heading) * length / 4
            points.append((x, y))
        shade = int(rng.integers(10, 80))
        draw.line(
            points, fill=(shade, max(0, shade - 8), shade // 2), width=int(rng.integers(1, 4))
        )
    ox = int(rng.integers(0, _GRAIN_SIZE - width + 1))
    oy = int(rng.integers(0, _GRAIN_SIZE - height + 1))
    return Image.fromarray(np.add(np.asarray(photo), _grain()[oy : oy + height, ox : ox + width]))


def _jpeg(image: Image.Image, quality: int, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def encode_photo(image: Image.Image, rng: random.Random) -> bytes:
    """JPEG at quality 80-95, some with an EXIF orientation; a few PNG or HEIC bytes."""
    roll = rng.random()
    if roll < 0.015:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
        return buffer.getvalue()
    if roll < 0.018:  # HEIC renamed to .jpg, kept small: the HEVC encoder is slow
        buffer = io.BytesIO()
        image.thumbnail((512, 512))
        pillow_heif.from_pillow(image).save(buffer, quality=80, enc_params={"preset": "ultrafast"})
        return buffer.getvalue()
    options: dict[str, object] = {}
    if roll < 0.10:
        exif = Image.Exif()
        exif[0x0112] = rng.choice((3, 6, 8))
        options["exif"] = exif
    if rng.random() < 0.1:
        options["subsampling"] = 0
    return _jpeg(image, rng.randrange(80, 96), **options)


def _displayed(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def transform_photo(data: bytes, transform: str, rng: random.Random) -> bytes:
    """A planted duplicate of the photo in `data` (what a re-upload of it looks like)."""
    if transform in ("exact_copy", "exact_copy_other_patient"):
        return data
    image = _displayed(data)
    width, height = image.size
    if transform == "resize":
        scale = rng.uniform(0.5, 0.8)
        size = (max(16, round(width * scale)), max(16, round(height * scale)))
        return _jpeg(image.resize(size, Image.Resampling.LANCZOS), rng.randrange(85, 93))
    if transform == "recompress":
        return _jpeg(image, rng.randrange(60, 76))
    if transform == "crop":
        fx, fy = rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)
        cw, ch = round(width * fx), round(height * fy)
        left, top = rng.randrange(width - cw + 1), rng.randrange(height - ch + 1)
        return _jpeg(image.crop((left, top, left + cw, top + ch)), rng.randrange(85, 93))
    if transform == "mirror":
        return _jpeg(ImageOps.mirror(image), rng.randrange(85, 93))
    if transform == "rotate90":
        turn = rng.choice((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270))
        return _jpeg(image.transpose(turn), rng.randrange(85, 93))
    if transform == "brightness":
        factor = rng.choice((rng.uniform(0.75, 0.88), rng.uniform(1.12, 1.25)))
        return _jpeg(ImageEnhance.Brightness(image).enhance(factor), rng.randrange(85, 93))
    if transform == "colour_shift":
        shifts = [rng.choice((-1, 1)) * rng.randrange(6, 19) for _ in range(3)]
        bands = [
            band.point(lambda value, s=s: min(255, max(0, value + s)))
            for band, s in zip(image.split(), shifts, strict=True)
        ]
        return _jpeg(Image.merge("RGB", bands), rng.randrange(85, 93))
    raise ValueError(f"unknown duplicate transform {transform!r}")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


@functools.cache
def _bomb_pixels() -> bytes:
    """IDAT of a 30000 x 30000 1-bit image, all zeros: ~110 KB that inflate to 112 MB.

    One block of rows is deflated once and repeated (a full flush makes the blocks
    independent); only the checksum has to see every byte.
    """
    block = bytes(1 + _BOMB_SIDE // 8) * 1000
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(_BOMB_SIDE // 1000):
        checksum = zlib.adler32(block, checksum)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    return b"\x78\xda" + piece * (_BOMB_SIDE // 1000) + final + struct.pack(">I", checksum)


def decompression_bomb(label: str) -> bytes:
    """A valid PNG of 900 megapixels in ~110 KB (distinct per `label`)."""
    header = struct.pack(">IIBBBBB", _BOMB_SIDE, _BOMB_SIDE, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"tEXt", b"Comment\x00" + label.encode())
        + _png_chunk(b"IDAT", _bomb_pixels())
        + _png_chunk(b"IEND", b"")
    )


def bad_file(status: str, label: str, rng: random.Random, photo: bytes) -> bytes | None:
    """The bytes of a broken backup file (None: the file is missing)."""
    if status == "missing":
        return None
    if status == "empty":
        return b""
    if status == "truncated":
        return photo[: int(len(photo) * rng.uniform(0.3, 0.7))]
    if status == "not_an_image":
        return rng.choice(
            (
                f"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>"
                f"<h1>Not Found</h1><p>{label}</p></body></html>\n",
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                f"<Message>Access denied.</Message><Details>{label}</Details></Error>",
                f"upload failed for {label}: connection reset by peer\n",
            )
        ).encode()
    if status == "too_large":
        return decompression_bomb(label)
    raise ValueError(f"unknown bad-file status {status!r}")


def image_rng(key: str, image_uuid: str) -> random.Random:
    """The random stream of one image: the same bytes whatever else the run generates."""
    return random.Random(f"{key}/image/{image_uuid}")


def photo_bytes(key: str, image_uuid: str) -> bytes:
    """The backup bytes of a healthy photo: the same whichever run writes or re-derives them."""
    rng = image_rng(key, image_uuid)
    return encode_photo(render_photo(rng.getrandbits(64)), rng)


def write_backup(
    backup_dir: Path,
    files: dict[str, str],
    duplicates: dict[str, tuple[str, str]],
    bad: dict[str, str],
    key: str,
    original_keys: Mapping[str, str],
) -> int:
    """Write every image file; returns how many files were written.

    `files` maps image_uuid to its path under `backup_dir` (the GCS object name);
    `duplicates` maps a planted copy to (original image_uuid, transform); `bad` maps an
    image to its broken status. Originals are written before their copies; an original not
    in `files` (a photo of an earlier dump) is re-derived from its key in `original_keys`.
    """
    written = 0
    made: set[Path] = set()

    def put(image_uuid: str, data: bytes | None) -> None:
        nonlocal written
        if data is None:
            return
        target = backup_dir / files[image_uuid]
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(data)
        written += 1

    for image_uuid in files:
        if image_uuid in duplicates:
            continue
        status = bad.get(image_uuid)
        if status:
            rng = image_rng(key, image_uuid)
            photo = render_photo(rng.getrandbits(64))
            put(image_uuid, bad_file(status, image_uuid, rng, _jpeg(photo, 90)))
        else:
            put(image_uuid, photo_bytes(key, image_uuid))
    for image_uuid, (original, transform) in duplicates.items():
        source = (
            (backup_dir / files[original]).read_bytes()
            if original in files
            else photo_bytes(original_keys[original], original)
        )
        put(image_uuid, transform_photo(source, transform, image_rng(key, image_uuid)))
    return written
