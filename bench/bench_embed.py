"""Images/s of ``Embedder.embed`` against a naive loop on the same full-size JPEGs.

The naive loop is what a first version does: full-resolution decode, per-image preprocessing,
the model called on a batch of one (same model, same flip setting, same arithmetic). The
embedder decodes at reduced size in the DCT domain in worker threads while the model runs on
the previous batch. Both get the files' bytes from memory, so storage speed is not measured.

    python bench/bench_embed.py --n 200            # 200 synthetic 6-megapixel JPEGs
    python bench/bench_embed.py --images DIR       # or real JPEGs from a folder
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dagster_project.images.embed import Embedder, EmbedderConfig


def synthesize(folder: Path, n: int, width: int = 3000, height: int = 2000) -> list[Path]:
    """``n`` distinct photo-like JPEGs (smooth colour field + grain), quality 90."""
    rng = np.random.default_rng(0)
    grain = rng.integers(-10, 10, (height, width, 3), dtype=np.int16)
    paths = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 255, (6, 9, 3), dtype=np.uint8))
        pixels = np.asarray(field.resize((width, height), Image.Resampling.BILINEAR), np.int16)
        pixels = pixels + np.roll(grain, i * 37, axis=1)
        path = folder / f"synthetic_{i:04d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def naive(embedder: Embedder, images: list[bytes]) -> np.ndarray:
    size = (embedder.image_size, embedder.image_size)
    rows = []
    for data in images:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        pixels = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
        rows.append(embedder.embed_pixels(pixels[None]))
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of synthetic JPEGs")
    parser.add_argument("--images", type=Path, help="folder of JPEGs to use instead")
    parser.add_argument("--backend", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = sorted(args.images.glob("*.jpg"))[: args.n]
        else:
            started = time.perf_counter()
            paths = synthesize(Path(tmp), args.n)
            print(f"made {len(paths)} JPEGs in {time.perf_counter() - started:.1f} s")
        images = [path.read_bytes() for path in paths]
    width, height = Image.open(io.BytesIO(images[0])).size
    megabytes = sum(map(len, images)) / len(images) / 1e6
    print(f"{len(images)} images, first {width}x{height}, {megabytes:.1f} MB on average")
    config = EmbedderConfig(backend=args.backend, batch_size=args.batch_size, workers=args.workers)
    embedder = Embedder(config)
    print(f"model {embedder.model_id} on {embedder.device}, flip_invariant={config.flip_invariant}")
    embedder.embed(images[:2])  # warm-up

    started = time.perf_counter()
    slow = naive(embedder, images)
    naive_rate = len(images) / (time.perf_counter() - started)
    started = time.perf_counter()
    fast = embedder.embed(images)
    fast_rate = len(images) / (time.perf_counter() - started)

    agreement = (slow * fast).sum(axis=1)
    print(f"naive loop        : {naive_rate:7.1f} images/s")
    print(f"Embedder.embed    : {fast_rate:7.1f} images/s")
    print(f"speed-up          : {fast_rate / naive_rate:7.2f}x")
    print(f"cosine naive/fast : min {agreement.min():.4f}, mean {agreement.mean():.4f}")


if __name__ == "__main__":
    main()
