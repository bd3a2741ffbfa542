"""Duplicate detection: exact copies, perceptual-hash matches, embedding neighbours and
geometrically verified near neighbours, joined into duplicate clusters, plus an outlier
score per image. No Dagster here.

Four detectors, each producing candidate pairs of row indices of the image facts frame:
- ``exact``: identical sha256 (a group-by; a group of n copies gives n - 1 pairs, enough for
  clustering, where only connectivity matters).
- ``perceptual``: Hamming distance <= ``phash_max_distance`` between one image's pHash and any
  of the 8 rotation/reflection pHashes of the other (mirror- and rotation-invariant), found
  with FAISS binary indexes (exact flat search, or multi-hash lookup for large N, which is
  exact too: see ``_binary_index``). A match is kept only when the two embeddings also have
  cosine >= ``perceptual_min_cosine``: on low-contrast skin photos unrelated images collide
  at small pHash distances, which an embedding veto removes.
- ``embedding``: cosine >= ``cosine_threshold`` among each image's ``k_neighbors`` nearest
  neighbours (FAISS inner product on L2-normalised vectors: see ``search.py``).
- ``geometric`` (only when a ``read(key) -> bytes`` callable is given): each image's first
  ``verify_neighbors`` neighbours with cosine in [``verify_min_cosine``,
  ``cosine_threshold``), not already in one cluster, at most ``verify_max_pairs`` of them
  (most similar first), are read and kept when one similarity transform maps one photo onto
  the other (``geometry.py``): crops, and copies whose embedding or hash drifted. A verdict
  depends only on the two photos' bytes (the pair is matched in sha256 order) and the
  thresholds, so with a ``FactCache`` a rebuild reads only the photos of pairs it has not
  judged before.

Photos of one case are not duplicates of each other (pass ``groups``), except byte copies.

Measured (EfficientNet-Lite0, flip-invariant; scored as clusters, ``evaluate.py``):
- synthetic (``bench/eval_synthetic.py``: 1318 photos, 659 planted copies, 73-74 per
  transform; every planted pair, same_case_is_duplicate=True): all detectors recall 1.0 for
  each transform, precision 1.0 (0 false pairs). Alone: perceptual recall 0.89 (crops 0.10),
  embedding 0.62 (crops 0.40, rotations 0), geometric verification accepted 46 of 501
  checked pairs (crops it alone finds: 43 of 73). Default mode, copies across cases: 252/252,
  precision 1.0.
- HAM10000 subset (``bench/eval_ham10000.py``, 2742 files): exact 414/414, precision 1.0;
  original/flipped pairs recall 1.0 (1785), precision 1.0. Verification checked 2412 pairs
  (64 s, 2 cores), accepted 112, none between different lesions; they link 136 of the 820
  pairs of different files of one lesion (neutral in precision; strict precision 0.94): the
  ones inspected are re-crops or re-coloured versions of one capture (same hairs, bubbles).
- exhaustive checks of ``geometry.verify_pairs`` (mirror tried too): 0 of 12157 pairs of
  different synthetic photos at cosine >= 0.8 and 0 of 8597 pairs of different HAM10000
  lesions at >= 0.85 accepted (at most 19 and 9 inliers for a valid transform, correlation
  <= 0.20 and 0.13 where they overlap); all 520 synthetic copies that are not byte copies
  accepted, with >= 32 inliers, correlation >= 0.62, overlap >= 0.74.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field, replace
from typing import Any

import faiss
import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dagster_project.images.cache import VERDICT_SCHEMA, FactCache
from dagster_project.images.geometry import MATCH_SCHEMA, GeometryConfig, Match, verify_pairs
from dagster_project.images.search import (
    NeighbourSearch,
    SearchRecall,
    build_search,
    nearest_neighbours,
    search_recall,
)

KINDS = ("exact", "perceptual", "embedding", "geometric")
PAIR_SCHEMA: dict[str, pl.DataType] = {
    "a": pl.Int64(),
    "b": pl.Int64(),
    "kind": pl.String(),
    "similarity": pl.Float32(),
}
FACT_COLUMNS = ("key", "status", "sha256", "width", "height", "phash", "phash_dihedral")

# Queries per FAISS binary range search call: bounds the memory of one result set.
_QUERY_BATCH = 16_384
# Multi-hash layout: 4 tables of 16-bit substrings cover the 64-bit pHash.
_HASH_TABLES, _HASH_BITS = 4, 16


@dataclass(frozen=True)
class DedupConfig:
    """Thresholds and search settings. The defaults are calibrated on HAM10000
    (``bench/eval_ham10000.py --curve``) with flip-invariant EfficientNet-Lite0 embeddings:
    original/mirrored copies lie at pHash distance <= 2 and cosine >= 0.98; of 3.7M pairs of
    different lesions none is at cosine >= 0.95 and none at pHash distance <= 2 with cosine
    >= 0.7, and no two photos of one lesion reach cosine 0.97. Rotated and re-lit copies
    keep cosine >= 0.84 there, so the 0.7 veto spares them (a copy shrunk to half of 220 px
    and re-saved at JPEG q60 can fall to 0.5: such thumbnails are not caught).

    - ``exact_search_max``: exact flat embedding/binary search up to this many images; an IVF
      index (``nprobe`` of about 4*sqrt(N) lists probed) and a multi-hash index above it.
    - ``k_neighbors``: neighbours per image examined for embedding pairs (connectivity only).
    - ``outlier_k``: neighbours whose mean cosine is the outlier score.
    - ``same_case_is_duplicate``: keep perceptual/embedding/geometric pairs within one case.
    - ``recall_sample``: queries compared with brute force to measure the search's recall.
    - ``verify_min_cosine``, ``verify_neighbors``, ``verify_max_pairs``: which embedding
      neighbours below ``cosine_threshold`` are checked geometrically (``geometry``: its
      acceptance thresholds), by ``verify_workers`` threads. Synthetic crops lie at cosine
      0.88-0.99 (pHash distance up to 20), different synthetic photos reach 0.91 and
      different HAM10000 lesions 0.94: the band starts at 0.85 and only geometry decides.
    """

    phash_max_distance: int = 2
    cosine_threshold: float = 0.97
    perceptual_min_cosine: float = 0.7
    exact_search_max: int = 50_000
    nprobe: int = 8
    k_neighbors: int = 16
    outlier_k: int = 10
    same_case_is_duplicate: bool = False
    recall_sample: int = 1_000
    seed: int = 0
    verify_min_cosine: float = 0.85
    verify_neighbors: int = 2
    verify_max_pairs: int = 200_000
    verify_workers: int = 2
    geometry: GeometryConfig = GeometryConfig()

    def __post_init__(self) -> None:
        if not 0 <= self.phash_max_distance < 64:
            raise ValueError(
                f"phash_max_distance must be in [0, 63], not {self.phash_max_distance}"
            )
        for name in ("cosine_threshold", "perceptual_min_cosine", "verify_min_cosine"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [-1, 1], not {getattr(self, name)}")
        for name in (
            "exact_search_max", "nprobe", "k_neighbors", "outlier_k", "recall_sample",
            "verify_workers",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("verify_neighbors", "verify_max_pairs"):  # 0 turns verification off
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")

    def describe(self) -> str:
        """The thresholds in one line, for reports and benchmark output."""
        g = self.geometry
        return (
            f"phash_max_distance={self.phash_max_distance}, "
            f"perceptual_min_cosine={self.perceptual_min_cosine}, "
            f"cosine_threshold={self.cosine_threshold}, k_neighbors={self.k_neighbors}; "
            f"verification band [{self.verify_min_cosine}, {self.cosine_threshold}), "
            f"{self.verify_neighbors} neighbours per photo, min_inliers={g.min_inliers}, "
            f"min_overlap={g.min_overlap}, min_correlation={g.min_correlation}"
        )

    @classmethod
    def calibrated(
        cls, phash_max_distance: int | None = None, cosine_threshold: float | None = None
    ) -> DedupConfig:
        """The calibrated defaults, with the thresholds a maintainer overrode (None = default)."""
        overrides = {"phash_max_distance": phash_max_distance, "cosine_threshold": cosine_threshold}
        return replace(cls(), **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Verification:
    """What the geometric verification did: ``candidates`` in the cosine band (after the
    case and already-clustered filters), ``checked`` (at most ``verify_max_pairs``, the
    most similar first), ``accepted``, and the wall time. Of the distinct pairs of contents
    (sha256) they come down to, ``cached`` had a verdict in the cache and ``computed`` were
    matched, reading ``photos_read`` photos. All zero without a reader."""

    candidates: int = 0
    checked: int = 0
    accepted: int = 0
    seconds: float = 0.0
    computed: int = 0
    cached: int = 0
    photos_read: int = 0


@dataclass(frozen=True)
class DedupResult:
    """What ``find_duplicates`` found.

    - ``pairs``: candidate pairs (PAIR_SCHEMA; a, b are row indices of the facts frame).
    - ``clusters``: one row per image: key, cluster_id, cluster_size, representative,
      homogeneous, outlier_score (the duplicate_clusters table).
    - ``summary``: one row per multi-image cluster (``cluster_summary``).
    - ``recall``: the embedding search's recall against brute force on a sample.
    - ``verification``: what the geometric verification checked and accepted.
    """

    pairs: pl.DataFrame
    clusters: pl.DataFrame
    summary: pl.DataFrame
    recall: SearchRecall
    verification: Verification
    config: DedupConfig = field(repr=False)

    def metadata(self) -> dict[str, Any]:
        """Counts, thresholds and search quality as plain values (for asset metadata)."""
        kinds = dict(self.pairs["kind"].value_counts().iter_rows())
        mixed = self.summary.filter(~pl.col("homogeneous").fill_null(True))
        return {
            "images": self.clusters.height,
            **{f"pairs_{kind}": int(kinds.get(kind, 0)) for kind in KINDS},
            "multi_image_clusters": self.summary.height,
            "images_in_multi_image_clusters": int(self.summary["size"].sum()),
            "largest_cluster": int(self.clusters["cluster_size"].max() or 0),
            "non_homogeneous_clusters": mixed.height,
            "phash_max_distance": self.config.phash_max_distance,
            "cosine_threshold": self.config.cosine_threshold,
            "perceptual_min_cosine": self.config.perceptual_min_cosine,
            "search_method": self.recall.method,
            "search_knn_recall": self.recall.knn_recall,
            "search_pair_recall": self.recall.pair_recall,
            "search_recall_queries": self.recall.queries,
            "verify_min_cosine": self.config.verify_min_cosine,
            "verify_candidates": self.verification.candidates,
            "verify_checked": self.verification.checked,
            "verify_accepted": self.verification.accepted,
            "verify_computed": self.verification.computed,
            "verify_cached": self.verification.cached,
            "verify_photos_read": self.verification.photos_read,
            "verify_seconds": round(self.verification.seconds, 2),
        }


def _require(facts: pl.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """Row indices of the readable images, checked against the embedding matrix."""
    missing = [c for c in FACT_COLUMNS if c not in facts.columns]
    if missing:
        raise ValueError(f"image facts frame lacks column(s) {missing}")
    ok = np.flatnonzero((facts["status"] == "ok").fill_null(False).to_numpy())
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ok):
        raise ValueError(
            f"embeddings have shape {embeddings.shape}: expected one row per image with status "
            f"'ok' ({len(ok)} of {facts.height} rows), in facts order"
        )
    for column in ("sha256", "phash", "phash_dihedral"):
        nulls = facts[column].gather(ok).is_null().to_numpy()
        if nulls.any():
            key = facts["key"][int(ok[np.argmax(nulls)])]
            raise ValueError(f"image {key!r} has status 'ok' but no {column}")
    lengths = facts["phash_dihedral"].gather(ok).list.len().to_numpy()
    if (lengths != 8).any():
        key = facts["key"][int(ok[np.argmax(lengths != 8)])]
        raise ValueError(f"image {key!r}: phash_dihedral must hold 8 hashes")
    norms = np.linalg.norm(embeddings, axis=1)
    bad = ~(np.abs(norms - 1.0) < 1e-3)
    if bad.any():
        key = facts["key"][int(ok[np.argmax(bad)])]
        raise ValueError(f"embedding of image {key!r} is not L2-normalised (norm {norms[bad][0]})")
    return ok


def _frame(a: np.ndarray, b: np.ndarray, kind: str, similarity: np.ndarray) -> pl.DataFrame:
    """Pairs with a < b, each once (highest similarity kept)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    frame = pl.DataFrame(
        {"a": lo, "b": hi, "kind": kind, "similarity": similarity}, schema=PAIR_SCHEMA
    )
    return (
        frame.filter(pl.col("a") != pl.col("b"))
        .group_by("a", "b", "kind")
        .agg(pl.col("similarity").max())
        .select(list(PAIR_SCHEMA))
    )


def _exact_pairs(facts: pl.DataFrame, ok: np.ndarray) -> pl.DataFrame:
    """Each byte copy paired with the first image of its sha256 group."""
    rows = pl.DataFrame({"row": ok, "sha256": facts["sha256"].gather(ok)})
    star = (
        rows.group_by("sha256")
        .agg(pl.col("row").min().alias("a"), pl.col("row").alias("b"))
        .explode("b")
        .filter(pl.col("a") != pl.col("b"))
    )
    ones = np.ones(star.height, dtype=np.float32)
    return _frame(star["a"].to_numpy(), star["b"].to_numpy(), "exact", ones)


def _codes(hashes: np.ndarray) -> np.ndarray:
    """int64 pHashes as FAISS binary codes (8 bytes each; Hamming distance is unchanged)."""
    return np.ascontiguousarray(hashes.astype(np.int64)).view(np.uint8).reshape(-1, 8)


def _binary_index(n: int, max_distance: int, exact_search_max: int) -> faiss.IndexBinary:
    """Flat (brute force) up to ``exact_search_max`` images, multi-hash above.

    The multi-hash index splits the 64 bits into 4 substrings of 16 and probes each table
    with every pattern of up to ``max_distance // 4`` flipped bits. Two codes within
    ``max_distance`` differ in at most ``max_distance // 4`` bits of at least one substring
    (pigeonhole), so the lookup finds every match, then checks the full distance.
    """
    if n <= exact_search_max:
        return faiss.IndexBinaryFlat(64)
    index = faiss.IndexBinaryMultiHash(64, _HASH_TABLES, _HASH_BITS)
    index.nflip = max_distance // _HASH_TABLES
    return index


def _perceptual_pairs(
    facts: pl.DataFrame, ok: np.ndarray, max_distance: int, exact_search_max: int
) -> pl.DataFrame:
    """Pairs whose pHash is within ``max_distance`` of one of the other's 8 dihedral pHashes."""
    if len(ok) == 0:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    phash = facts["phash"].gather(ok).to_numpy()
    dihedral = facts["phash_dihedral"].gather(ok).list.to_array(8).to_numpy()
    index = _binary_index(len(ok), max_distance, exact_search_max)
    index.add(_codes(dihedral.ravel()))
    queries = _codes(phash)
    found: list[pl.DataFrame] = []
    for start in range(0, len(queries), _QUERY_BATCH):
        # FAISS binary range search keeps distances strictly below the radius.
        lims, distances, ids = index.range_search(
            queries[start : start + _QUERY_BATCH], max_distance + 1
        )
        query = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        similarity = (1.0 - distances / 64.0).astype(np.float32)
        found.append(_frame(ok[query], ok[ids // 8], "perceptual", similarity))
    return _merge(found)


def _merge(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """One row per (a, b, kind), highest similarity kept, sorted."""
    if not frames:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    return (
        pl.concat(frames)
        .group_by("a", "b", "kind")
        .agg(pl.all().max())
        .select(list(PAIR_SCHEMA))
        .sort("a", "b", "kind")
    )


def _cosine(
    embeddings: np.ndarray, position: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Cosine of each pair (a, b of facts rows; ``position`` maps a row to its embedding)."""
    out = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), _QUERY_BATCH):
        part = slice(start, start + _QUERY_BATCH)
        left, right = embeddings[position[a[part]]], embeddings[position[b[part]]]
        out[part] = np.einsum("ij,ij->i", left, right)
    return out


def _apart(
    pairs: pl.DataFrame,
    groups: Sequence[Any] | np.ndarray | None,
    n: int,
    config: DedupConfig,
) -> pl.DataFrame:
    """``pairs`` less those within one group (unless same-case pairs are duplicates)."""
    if groups is None or config.same_case_is_duplicate:
        return pairs
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} images")
    group = pl.Series("group", list(groups)).rank("dense").fill_null(0).to_numpy()
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    return pairs.filter(pl.Series((group[a] != group[b]) | (group[a] == 0)))


def _band_candidates(
    ok: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray], config: DedupConfig
) -> pl.DataFrame:
    """Each image's first ``verify_neighbors`` neighbours with cosine in the verification
    band [verify_min_cosine, cosine_threshold)."""
    similarity, ids = neighbours
    band = (ids >= 0) & (similarity >= config.verify_min_cosine)
    band &= similarity < config.cosine_threshold
    band &= np.cumsum(band, axis=1) <= config.verify_neighbors
    query = np.repeat(np.arange(len(ok)), similarity.shape[1]).reshape(similarity.shape)
    return _frame(ok[query[band]], ok[ids[band]], "geometric", similarity[band])


def _verified(
    facts: pl.DataFrame,
    candidates: pl.DataFrame,
    found: pl.DataFrame,
    read: Callable[[str], bytes | None],
    config: DedupConfig,
    cache: FactCache | None,
) -> tuple[pl.DataFrame, Verification]:
    """The candidates that geometric verification accepts, skipping pairs that ``found``
    already puts in one cluster (they cannot change the clusters). Each pair of contents
    is matched once, lower sha256 first, unless ``cache`` holds its verdict."""
    started = time.perf_counter()
    cluster = duplicate_clusters(facts.height, found)
    a, b = candidates["a"].to_numpy(), candidates["b"].to_numpy()
    candidates = candidates.filter(pl.Series(cluster[a] != cluster[b]))
    checked = candidates.sort("similarity", "a", "b", descending=[True, False, False]).head(
        config.verify_max_pairs
    )
    sha = facts["sha256"]
    first, second = sha.gather(checked["a"]), sha.gather(checked["b"])
    checked = checked.with_columns(
        sha_a=pl.min_horizontal(first, second), sha_b=pl.max_horizontal(first, second)
    )
    # Pairs of one photo in a row: its features are decoded once.
    distinct = checked.select("sha_a", "sha_b").unique().sort("sha_a", "sha_b")
    version = config.geometry.version
    known = (
        cache.lookup_verdicts(distinct, version)
        if cache is not None
        else pl.DataFrame(schema=VERDICT_SCHEMA)
    )
    todo = distinct.join(known, on=["sha_a", "sha_b"], how="anti", maintain_order="left")
    key_of = dict(facts.select("sha256", "key").unique("sha256", keep="first").iter_rows())
    attempts: list[str] = []
    unreadable: set[str] = set()

    def reading(key: str) -> bytes | None:
        attempts.append(key)
        data = read(key)
        if data is None:
            unreadable.add(key)
        return data

    keys_a = [key_of[s] for s in todo["sha_a"]]
    keys_b = [key_of[s] for s in todo["sha_b"]]
    matches = verify_pairs(keys_a, keys_b, reading, config.geometry, config.verify_workers)
    fresh = pl.concat(
        [todo, pl.DataFrame([astuple(m) for m in matches], MATCH_SCHEMA, orient="row")],
        how="horizontal",
    )
    if cache is not None:
        # A photo that could not be read now may be readable later: no verdict on it.
        judged = [not {ka, kb} & unreadable for ka, kb in zip(keys_a, keys_b, strict=True)]
        cache.add_verdicts(fresh.filter(pl.Series(judged, dtype=pl.Boolean)), version)
        cache.flush()
    verdicts = pl.concat([known, fresh])
    matched = verdicts.select(list(MATCH_SCHEMA)).iter_rows(named=True)
    keep = [Match(**row).accepted(config.geometry) for row in matched]
    accepted = (
        checked.join(verdicts.filter(pl.Series(keep, dtype=pl.Boolean)), on=["sha_a", "sha_b"])
        .select(list(PAIR_SCHEMA))
        .sort("a", "b")
    )
    stats = Verification(
        candidates.height,
        checked.height,
        accepted.height,
        time.perf_counter() - started,
        computed=todo.height,
        cached=known.height,
        photos_read=len(attempts),
    )
    return accepted, stats


def _pairs(
    facts: pl.DataFrame,
    ok: np.ndarray,
    embeddings: np.ndarray,
    neighbours: tuple[np.ndarray, np.ndarray],
    config: DedupConfig,
    groups: Sequence[Any] | np.ndarray | None,
    read: Callable[[str], bytes | None] | None,
    cache: FactCache | None,
) -> tuple[pl.DataFrame, Verification]:
    position = np.full(facts.height, -1, dtype=np.int64)
    position[ok] = np.arange(len(ok))
    perceptual = _perceptual_pairs(facts, ok, config.phash_max_distance, config.exact_search_max)
    agree = _cosine(embeddings, position, perceptual["a"].to_numpy(), perceptual["b"].to_numpy())
    perceptual = perceptual.filter(pl.Series(agree >= config.perceptual_min_cosine))
    similarity, ids = neighbours
    query = np.repeat(np.arange(len(ok)), similarity.shape[1])
    hit = (ids.ravel() >= 0) & (similarity.ravel() >= config.cosine_threshold)
    embedding = _frame(ok[query[hit]], ok[ids.ravel()[hit]], "embedding", similarity.ravel()[hit])
    near = _apart(pl.concat([perceptual, embedding]), groups, facts.height, config)
    found = _merge([_exact_pairs(facts, ok), near])
    if read is None:
        return found, Verification()
    candidates = _apart(_band_candidates(ok, neighbours, config), groups, facts.height, config)
    verified, stats = _verified(facts, candidates, found, read, config, cache)
    return _merge([found, verified]), stats


def candidate_pairs(
    facts: pl.DataFrame,
    embeddings: np.ndarray,
    config: DedupConfig | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    read: Callable[[str], bytes | None] | None = None,
    cache: FactCache | None = None,
) -> pl.DataFrame:
    """Candidate duplicate pairs (PAIR_SCHEMA) among the readable images of ``facts``.

    ``facts`` has the columns FACT_COLUMNS (verify.IMAGE_FACTS_SCHEMA); ``embeddings`` one
    L2-normalised row per image with status "ok", in facts order. ``groups`` (one per facts
    row, e.g. the case id; None = unknown) removes perceptual, embedding and geometric pairs
    within a group unless ``config.same_case_is_duplicate``; exact byte copies are always
    kept. ``read(key)`` (the image bytes, None if missing) enables geometric verification
    of the pairs in the cosine band below ``cosine_threshold``; without it none is done.
    Verdicts found in ``cache`` are used without reading, new ones are added to it.
    ``a``/``b`` are facts row indices, a < b; one row per (pair, kind) that found it.
    """
    config = config or DedupConfig()
    ok = _require(facts, embeddings)
    search = build_search(embeddings, config.exact_search_max, config.nprobe, config.seed)
    neighbours = nearest_neighbours(search, embeddings, config.k_neighbors)
    return _pairs(facts, ok, embeddings, neighbours, config, groups, read, cache)[0]


def duplicate_clusters(n: int, pairs: pl.DataFrame) -> np.ndarray:
    """Cluster id (int64) of each of ``n`` items: connected components of the pair graph.

    Ids are numbered in order of each cluster's smallest row index, so the same input gives
    the same ids.
    """
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n):
        raise ValueError(f"pairs name rows outside [0, {n})")
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def cluster_table(
    keys: Sequence[str] | pl.Series,
    cluster_ids: np.ndarray,
    labels: Sequence[str | None] | pl.Series | None = None,
    sizes: Sequence[int | None] | np.ndarray | pl.Series | None = None,
) -> pl.DataFrame:
    """One row per image: key, cluster_id, cluster_size, representative, homogeneous.

    ``representative`` is the key of the cluster's largest image (``sizes``: pixels per
    image; ties and unknown sizes go to the earliest row). ``homogeneous`` says whether the
    known (non-null) labels of the cluster agree; null when no labels are given.
    """
    n = len(keys)
    if len(cluster_ids) != n:
        raise ValueError(f"{len(cluster_ids)} cluster ids for {n} keys")
    frame = pl.DataFrame(
        {
            "row": np.arange(n),
            "key": pl.Series(keys, dtype=pl.String),
            "cluster_id": np.asarray(cluster_ids, dtype=np.int64),
            "label": pl.Series(labels if labels is not None else [None] * n, dtype=pl.String),
            "pixels": pl.Series(sizes if sizes is not None else [None] * n, dtype=pl.Int64),
        }
    )
    by_size = frame.sort(pl.col("pixels").fill_null(-1), "row", descending=[True, False])
    per_cluster = by_size.group_by("cluster_id").agg(
        pl.len().alias("cluster_size"),
        pl.col("key").first().alias("representative"),
        (pl.col("label").drop_nulls().n_unique() <= 1).alias("homogeneous"),
    )
    if labels is None:
        per_cluster = per_cluster.with_columns(pl.lit(None, pl.Boolean).alias("homogeneous"))
    return (
        frame.join(per_cluster, on="cluster_id", how="left")
        .sort("row")
        .select(
            "key",
            "cluster_id",
            pl.col("cluster_size").cast(pl.Int64),
            "representative",
            "homogeneous",
        )
    )


def cluster_summary(
    table: pl.DataFrame, labels: Sequence[str | None] | pl.Series | None = None
) -> pl.DataFrame:
    """One row per multi-image cluster of a ``cluster_table``: cluster_id, size, members
    (keys), representative, homogeneous, labels (the distinct known labels)."""
    frame = table.with_columns(
        pl.Series("label", labels if labels is not None else [None] * table.height, pl.String)
    )
    return (
        frame.filter(pl.col("cluster_size") > 1)
        .group_by("cluster_id")
        .agg(
            pl.len().cast(pl.Int64).alias("size"),
            pl.col("key").alias("members"),
            pl.col("representative").first(),
            pl.col("homogeneous").first(),
            pl.col("label").drop_nulls().unique().sort().alias("labels"),
        )
        .sort("cluster_id")
    )


def outlier_scores(
    embeddings: np.ndarray, k: int = 10, search: NeighbourSearch | None = None
) -> np.ndarray:
    """Mean cosine of each vector to its ``k`` nearest other vectors (float32).

    Low means nothing in the collection looks like it: likely not a skin photo (a document,
    a screenshot, a test image). With fewer than k other vectors, the mean is over those
    there are; a lone vector scores NaN.
    """
    if search is None:
        defaults = DedupConfig()
        search = build_search(embeddings, defaults.exact_search_max, defaults.nprobe)
    similarity, ids = nearest_neighbours(search, embeddings, k)
    return _mean_neighbour_similarity(similarity, ids, k)


def _mean_neighbour_similarity(similarity: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    found = ids[:, :k] >= 0
    total = np.where(found, similarity[:, :k], 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / found.sum(axis=1)).astype(np.float32)


def find_duplicates(
    facts: pl.DataFrame,
    embeddings: np.ndarray,
    config: DedupConfig | None = None,
    case_ids: Sequence[Any] | None = None,
    labels: Sequence[str | None] | None = None,
    read: Callable[[str], bytes | None] | None = None,
    cache: FactCache | None = None,
) -> DedupResult:
    """Candidate pairs, clusters, outlier scores and search recall in one call.

    ``facts``/``embeddings``/``read``/``cache`` as in ``candidate_pairs``; ``case_ids`` (one
    per facts row) keeps photos of one case apart; ``labels`` (e.g. the diagnosis) decides
    homogeneity.
    One neighbour search serves the embedding pairs, the verification candidates and the
    outlier scores. Images that are not readable get a cluster of their own and no outlier
    score.
    """
    config = config or DedupConfig()
    ok = _require(facts, embeddings)
    search = build_search(embeddings, config.exact_search_max, config.nprobe, config.seed)
    k = max(config.k_neighbors, config.outlier_k)
    similarity, ids = nearest_neighbours(search, embeddings, k)
    neighbours = (similarity[:, : config.k_neighbors], ids[:, : config.k_neighbors])
    pairs, verification = _pairs(facts, ok, embeddings, neighbours, config, case_ids, read, cache)
    clusters = cluster_table(
        facts["key"],
        duplicate_clusters(facts.height, pairs),
        labels,
        facts["width"].cast(pl.Int64) * facts["height"].cast(pl.Int64),
    )
    scores = np.full(facts.height, np.nan, dtype=np.float32)
    scores[ok] = _mean_neighbour_similarity(similarity, ids, config.outlier_k)
    clusters = clusters.with_columns(pl.Series("outlier_score", scores, pl.Float32).fill_nan(None))
    recall = search_recall(
        search, embeddings, config.k_neighbors, config.cosine_threshold,
        config.recall_sample, config.seed,
    )  # fmt: skip
    summary = cluster_summary(clusters, labels)
    return DedupResult(pairs, clusters, summary, recall, verification, config)
