"""Pair verification: is one photo a crop, rescale, re-encode or re-lit copy of the other?

Embedding similarity alone cannot separate a crop (cosine down to ~0.87 on the synthetic
photos) from a different photo that looks alike (up to ~0.91 there, 0.94 between different
HAM10000 lesions). Geometry can: a copy maps onto its original by one similarity transform
(shift, uniform scale, rotation) that carries many keypoint matches, and after that mapping
the two agree pixel for pixel; two different photos share neither.

Each photo is decoded to grey and scaled to ``THUMBNAIL`` px on its long side (JPEG
DCT-domain draft, EXIF orientation applied); ORB keypoints are matched (Lowe's ratio test)
and a similarity transform is fitted with RANSAC (``cv2.estimateAffinePartial2D``). A pair
is accepted when the transform has at least ``min_inliers`` inlier matches, the overlap it
implies covers at least ``min_overlap`` of each photo, and the band-pass filtered photos
correlate by at least ``min_correlation`` over that overlap (a shared frame, ruler or
vignette can align a few keypoints of two different photos, never their skin texture).
ORB is not mirror-invariant: where the direct match fails, the first photo's mirror image is
matched too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, replace

import cv2
import numpy as np
import polars as pl
from PIL import Image, ImageOps, UnidentifiedImageError

from dagster_project.images.verify import decode_oriented, open_image

THUMBNAIL = 512
# Skin photos are smooth and often dim: keypoints are found after local contrast equalisation
# (CLAHE), with a low FAST threshold; ORB's defaults find too few corners on them.
_CLAHE_CLIP, _CLAHE_TILES = 2.0, (8, 8)
_ORB_FEATURES, _FAST_THRESHOLD, _ORB_EDGE = 1000, 5, 15
# A fitted scale outside this range is RANSAC collapsing many points onto a few.
_MAX_SCALE = 8.0
_RATIO = 0.8
_RANSAC_PX = 3.0
# Band-pass for the correlation: fine texture (hair, pores, lesion borders), not lighting.
_BAND_SIGMAS = (1.0, 4.0)
# Photos whose features are kept while a batch of pairs is checked (~0.3 MB each).
CACHE_PHOTOS = 512
# Bump when how a Match is computed changes (the constants above, ``match``), so cached
# verdicts are recomputed.
GEOMETRY_VERSION = "1"


@dataclass(frozen=True)
class GeometryConfig:
    """Acceptance thresholds (see the module doc), set between copies and different photos
    checked pair by pair (figures in ``dedup``'s module doc)."""

    min_inliers: int = 25
    min_overlap: float = 0.5
    min_correlation: float = 0.4

    @property
    def version(self) -> str:
        """What a verdict of ``verify_pairs`` depends on besides the two photos (the
        thresholds decide whether the mirror image is tried): the key of cached verdicts."""
        return ":".join(map(str, (GEOMETRY_VERSION, *astuple(self))))


@dataclass(frozen=True)
class Features:
    """A photo's grey thumbnail, ORB keypoint positions (n, 2) and descriptors (n, 32)."""

    grey: np.ndarray
    points: np.ndarray
    descriptors: np.ndarray | None


@dataclass(frozen=True)
class Match:
    """The best similarity transform between two photos and how well it holds.

    ``inliers``: matches it carries; ``overlap``: the smaller share of either photo that
    falls inside the other; ``correlation``: band-pass correlation over the overlap;
    ``scale``: the size of the second photo's thumbnail relative to the first's;
    ``mirrored``: the transform maps the first photo's mirror image.
    """

    inliers: int
    overlap: float
    correlation: float
    scale: float
    mirrored: bool = False

    def accepted(self, config: GeometryConfig) -> bool:
        return (
            self.inliers >= config.min_inliers
            and self.overlap >= config.min_overlap
            and self.correlation >= config.min_correlation
        )


NO_MATCH = Match(0, 0.0, 0.0, 0.0)
MATCH_SCHEMA = {
    "inliers": pl.Int64(),
    "overlap": pl.Float64(),
    "correlation": pl.Float64(),
    "scale": pl.Float64(),
    "mirrored": pl.Boolean(),
}


def features(data: bytes | None) -> Features | None:
    """Keypoints of the photo in ``data``; None when it cannot be decoded."""
    if not data:
        return None
    try:
        with open_image(data) as image:
            grey = decode_oriented(image, THUMBNAIL).convert("L")
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    # Up or down to one size: a small copy gets as many keypoints as its original.
    return _keypoints(
        np.asarray(ImageOps.contain(grey, (THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR))
    )


def mirror(photo: Features) -> Features:
    """The features of the photo's left-right mirror image (ORB is not mirror-invariant)."""
    return _keypoints(np.ascontiguousarray(photo.grey[:, ::-1]))


def _keypoints(pixels: np.ndarray) -> Features:
    equalised = cv2.createCLAHE(_CLAHE_CLIP, _CLAHE_TILES).apply(pixels)
    orb = cv2.ORB_create(
        nfeatures=_ORB_FEATURES, fastThreshold=_FAST_THRESHOLD, edgeThreshold=_ORB_EDGE
    )
    keypoints, descriptors = orb.detectAndCompute(equalised, None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    return Features(pixels, points, descriptors)


def _band(grey: np.ndarray) -> np.ndarray:
    image = grey.astype(np.float32)
    fine, coarse = _BAND_SIGMAS
    return cv2.GaussianBlur(image, (0, 0), fine) - cv2.GaussianBlur(image, (0, 0), coarse)


def match(a: Features, b: Features) -> Match:
    """Fit a similarity transform from ``a`` onto ``b`` and measure how well it holds."""
    if a.descriptors is None or b.descriptors is None or min(len(a.points), len(b.points)) < 2:
        return NO_MATCH
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < _RATIO * m[1].distance]
    if len(good) < 3:
        return NO_MATCH
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PX
    )
    if transform is None:
        return NO_MATCH
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 1 / _MAX_SCALE <= scale <= _MAX_SCALE:
        return Match(int(inliers.sum()), 0.0, 0.0, scale)
    height, width = b.grey.shape
    inside = cv2.warpAffine(
        np.ones(a.grey.shape, np.uint8), transform, (width, height), flags=cv2.INTER_NEAREST
    )
    # Away from the overlap's border, where interpolation mixes in the outside.
    inside = cv2.erode(inside, np.ones((9, 9), np.uint8)).astype(bool)
    covered = int(inside.sum())
    overlap = min(covered / inside.size, covered / max(scale**2, 1e-9) / a.grey.size)
    correlation = 0.0
    if covered >= 100:
        warped = cv2.warpAffine(_band(a.grey), transform, (width, height))
        x, y = warped[inside], _band(b.grey)[inside]
        x, y = x - x.mean(), y - y.mean()
        correlation = float((x @ y) / (np.sqrt((x @ x) * (y @ y)) + 1e-9))
    return Match(int(inliers.sum()), min(overlap, 1.0), correlation, scale)


def verify_pairs(
    keys_a: Sequence[str],
    keys_b: Sequence[str],
    read: Callable[[str], bytes | None],
    config: GeometryConfig,
    workers: int = 2,
) -> list[Match]:
    """The ``match`` of each pair of photos (read by key), or, where ``config`` does not
    accept it, of the first photo's mirror image onto the second if that is accepted (a
    mirrored crop; a mirror whose hash and embedding drifted). ``workers`` threads.

    Features of the last ``CACHE_PHOTOS`` photos are kept, so a photo met in several pairs
    is usually decoded once (sort pairs by their first key to help it).
    """

    @functools.lru_cache(maxsize=CACHE_PHOTOS)
    def load(key: str) -> Features | None:
        return features(read(key))

    @functools.lru_cache(maxsize=CACHE_PHOTOS)
    def load_mirrored(key: str) -> Features | None:
        photo = load(key)
        return None if photo is None else mirror(photo)

    def check(pair: tuple[str, str]) -> Match:
        a, b = load(pair[0]), load(pair[1])
        if a is None or b is None:
            return NO_MATCH
        found = match(a, b)
        if found.accepted(config):
            return found
        flipped = match(load_mirrored(pair[0]), b)
        return replace(flipped, mirrored=True) if flipped.accepted(config) else found

    pairs = list(zip(keys_a, keys_b, strict=True))
    if workers <= 1:
        return [check(pair) for pair in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(check, pairs))
