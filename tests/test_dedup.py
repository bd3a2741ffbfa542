"""Duplicate detection on constructed hashes and vectors whose answers are known by design."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from dagster_project.images.cache import FactCache
from dagster_project.images.dedup import (
    DedupConfig,
    candidate_pairs,
    cluster_summary,
    cluster_table,
    duplicate_clusters,
    find_duplicates,
    outlier_scores,
)
from dagster_project.images.geometry import GeometryConfig
from dagster_project.images.search import build_search, nearest_neighbours, search_recall

# Loose perceptual veto so the hash tests do not depend on the vectors.
NO_VETO = DedupConfig(phash_max_distance=2, cosine_threshold=0.97, perceptual_min_cosine=-1.0)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def far_hashes(n: int, seed: int = 0) -> np.ndarray:
    """n random 64-bit hashes, each pair more than 16 bits apart (checked)."""
    hashes = np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    x = hashes.view(np.uint64)
    distances = np.array([[bin(int(a ^ b)).count("1") for b in x] for a in x])
    assert (distances[~np.eye(n, dtype=bool)] > 16).all()
    return hashes


def flip_bits(h: int, bits: list[int]) -> int:
    value = int(np.int64(h).view(np.uint64))
    for bit in bits:
        value ^= 1 << bit
    return int(np.uint64(value).view(np.int64))


def facts_frame(phash, dihedral=None, sha256=None, status=None, sizes=None) -> pl.DataFrame:
    n = len(phash)
    if dihedral is None:
        # Each image's 7 other dihedral hashes are unrelated to everything.
        extra = far_hashes(7 * n + n, seed=99)[n:].reshape(n, 7)
        dihedral = [[int(p), *map(int, extra[i])] for i, p in enumerate(phash)]
    return pl.DataFrame(
        {
            "key": [f"img{i}" for i in range(n)],
            "status": status or ["ok"] * n,
            "sha256": sha256 or [f"sha{i}" for i in range(n)],
            "width": [s[0] for s in sizes] if sizes else [100] * n,
            "height": [s[1] for s in sizes] if sizes else [100] * n,
            "phash": [None if p is None else int(p) for p in phash],
            "phash_dihedral": dihedral,
        },
        schema_overrides={"phash": pl.Int64, "phash_dihedral": pl.List(pl.Int64)},
    )


def pair_set(pairs: pl.DataFrame, kind: str | None = None) -> set[tuple[int, int]]:
    if kind is not None:
        pairs = pairs.filter(pl.col("kind") == kind)
    return set(pairs.select("a", "b").iter_rows())


def test_union_find_joins_transitively_and_numbers_by_first_member():
    pairs = pl.DataFrame({"a": [1, 4, 0], "b": [2, 5, 1]})
    assert duplicate_clusters(7, pairs).tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert duplicate_clusters(3, pl.DataFrame({"a": [], "b": []})).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="outside"):
        duplicate_clusters(3, pl.DataFrame({"a": [0], "b": [3]}))


def test_exact_copies_pair_with_the_first_copy():
    n = 5
    facts = facts_frame(far_hashes(n), sha256=["s1", "s1", "s2", "s3", "s1"])
    pairs = candidate_pairs(facts, np.eye(n, 8, dtype=np.float32), NO_VETO)
    exact = pairs.filter(pl.col("kind") == "exact")
    assert pair_set(exact) == {(0, 1), (0, 4)}
    assert exact["similarity"].to_list() == [1.0, 1.0]
    assert pair_set(pairs) == {(0, 1), (0, 4)}


def test_perceptual_match_through_a_dihedral_hash():
    base = far_hashes(4)
    facts = facts_frame(base)
    # Image 1's mirror hash is 2 bits from image 0's hash; image 2's plain hash is 3 bits
    # from image 0's; image 3 is unrelated.
    dihedral = facts["phash_dihedral"].to_list()
    dihedral[1][1] = flip_bits(base[0], [5, 60])
    facts = facts.with_columns(phash_dihedral=pl.Series(dihedral, dtype=pl.List(pl.Int64)))
    facts = facts.with_columns(
        phash=pl.Series([base[0], base[1], flip_bits(base[0], [1, 2, 3]), base[3]])
    )
    dihedral[2][0] = facts["phash"][2]
    facts = facts.with_columns(phash_dihedral=pl.Series(dihedral, dtype=pl.List(pl.Int64)))
    vectors = np.eye(4, 8, dtype=np.float32)
    pairs = candidate_pairs(facts, vectors, NO_VETO)
    assert pair_set(pairs, "perceptual") == {(0, 1)}
    assert pairs.filter(pl.col("kind") == "perceptual")["similarity"][0] == pytest.approx(
        1 - 2 / 64
    )
    wider = DedupConfig(phash_max_distance=3, perceptual_min_cosine=-1.0)
    assert pair_set(candidate_pairs(facts, vectors, wider), "perceptual") == {(0, 1), (0, 2)}
    tighter = DedupConfig(phash_max_distance=1, perceptual_min_cosine=-1.0)
    assert pair_set(candidate_pairs(facts, vectors, tighter), "perceptual") == set()
    # The embedding veto: orthogonal vectors (cosine 0) are not a match at min cosine 0.5.
    vetoed = DedupConfig(phash_max_distance=3, perceptual_min_cosine=0.5)
    assert pair_set(candidate_pairs(facts, vectors, vetoed), "perceptual") == set()
    similar = vectors.copy()
    similar[1] = unit(vectors[0] + vectors[1])  # cosine 0.707 with image 0
    assert pair_set(candidate_pairs(facts, similar, vetoed), "perceptual") == {(0, 1)}


def test_embedding_pairs_at_the_cosine_threshold():
    vectors = np.eye(5, 16, dtype=np.float32)
    vectors[1] = unit(vectors[0] + 0.1 * vectors[4])  # cosine 1/sqrt(1.01) = 0.995 with 0
    vectors[3] = unit(vectors[2] + 0.5 * vectors[4])  # cosine 1/sqrt(1.25) = 0.894 with 2
    facts = facts_frame(far_hashes(5))
    pairs = candidate_pairs(facts, vectors, NO_VETO)
    assert pair_set(pairs) == {(0, 1)}
    assert pairs["similarity"][0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    loose = DedupConfig(cosine_threshold=0.85, perceptual_min_cosine=-1.0)
    assert pair_set(candidate_pairs(facts, vectors, loose), "embedding") == {(0, 1), (2, 3)}


def test_same_case_pairs_dropped_except_byte_copies():
    vectors = np.eye(4, 8, dtype=np.float32)
    vectors[1] = unit(vectors[0] + 0.05 * vectors[3])
    facts = facts_frame(far_hashes(4), sha256=["s0", "s1", "s2", "s2"])
    vectors[3] = vectors[2]
    cases = ["c1", "c1", "c2", "c2"]
    kept = candidate_pairs(facts, vectors, NO_VETO)
    assert pair_set(kept, "embedding") == {(0, 1), (2, 3)}
    apart = candidate_pairs(facts, vectors, NO_VETO, groups=cases)
    assert pair_set(apart) == {(2, 3)}
    assert set(apart["kind"]) == {"exact"}
    together = DedupConfig(perceptual_min_cosine=-1.0, same_case_is_duplicate=True)
    assert pair_set(candidate_pairs(facts, vectors, together, groups=cases), "embedding") == {
        (0, 1),
        (2, 3),
    }
    # A null case id is unknown, not a case shared with other unknowns.
    unknown = candidate_pairs(facts, vectors, NO_VETO, groups=[None, None, "c2", "c3"])
    assert pair_set(unknown, "embedding") == {(0, 1), (2, 3)}


def planted_vectors(n: int, d: int, duplicates: int, seed: int = 0) -> np.ndarray:
    """Clustered vectors (like real embeddings) with ``duplicates`` planted near-copies at
    cosine about 0.99 appended after the first n - duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    base = unit(centres[rng.integers(0, 20, n - duplicates)] + rng.normal(size=(n - duplicates, d)))
    copies = unit(base[:duplicates] + 0.1 / np.sqrt(d) * rng.normal(size=(duplicates, d)))
    return np.concatenate([base, copies])


def test_ivf_and_multihash_paths_find_the_same_pairs_as_flat():
    n, duplicates = 3000, 150
    vectors = planted_vectors(n, 32, duplicates)
    rng = np.random.default_rng(1)
    base = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    # Plant hash near-copies at distances 0..3 in the mirror slot.
    dihedral = np.stack([base, *rng.integers(-(2**63), 2**63 - 1, size=(7, n), dtype=np.int64)], 1)
    for i in range(100):
        bits = rng.choice(64, size=i % 4, replace=False).tolist()
        dihedral[n - 1 - i, 1] = flip_bits(base[i], bits)
    facts = facts_frame(base, dihedral=dihedral.tolist())
    flat = DedupConfig(phash_max_distance=3, cosine_threshold=0.95, perceptual_min_cosine=-1.0)
    approximate = DedupConfig(
        phash_max_distance=3,
        cosine_threshold=0.95,
        perceptual_min_cosine=-1.0,
        exact_search_max=500,
    )
    assert build_search(vectors, approximate.exact_search_max).method == "ivf"
    expected = candidate_pairs(facts, vectors, flat)
    assert pair_set(expected, "embedding") >= {(i, n - duplicates + i) for i in range(duplicates)}
    assert pair_set(expected, "perceptual") >= {(i, n - 1 - i) for i in range(100)}
    found = candidate_pairs(facts, vectors, approximate)
    assert found.select("a", "b", "kind").equals(expected.select("a", "b", "kind"))


def test_nearest_neighbours_exclude_self_even_among_identical_copies():
    vectors = np.repeat(np.eye(3, 4, dtype=np.float32), 3, axis=0)  # three triples of copies
    similarity, ids = nearest_neighbours(build_search(vectors), vectors, 2)
    for row in range(9):
        assert row not in ids[row]
        assert set(ids[row]) == {r for r in range(row // 3 * 3, row // 3 * 3 + 3)} - {row}
    assert np.allclose(similarity, 1.0)
    lone, lone_ids = nearest_neighbours(build_search(vectors[:1]), vectors[:1], 2)
    assert lone_ids.tolist() == [[-1, -1]]


def test_search_recall_against_brute_force():
    vectors = planted_vectors(3000, 32, 150)
    exact = search_recall(build_search(vectors), vectors, 16, 0.95, sample=200)
    assert (exact.method, exact.queries, exact.knn_recall, exact.pair_recall) == ("flat", 200, 1, 1)
    ivf = search_recall(build_search(vectors, exact_search_max=500, nprobe=1), vectors, 16, 0.95)
    assert ivf.method == "ivf"
    assert 0 < ivf.knn_recall < 1  # one list probed of 219 misses true neighbours


def test_representative_is_the_largest_image_and_homogeneity():
    keys = ["a", "b", "c", "d", "e", "f"]
    clusters = np.array([0, 0, 0, 1, 1, 2])
    sizes = [100, 400, 400, None, 50, None]
    labels = ["mel", "mel", None, "nv", "bcc", None]
    table = cluster_table(keys, clusters, labels, sizes)
    assert table["representative"].to_list() == ["b", "b", "b", "e", "e", "f"]
    assert table["cluster_size"].to_list() == [3, 3, 3, 2, 2, 1]
    assert table["homogeneous"].to_list() == [True, True, True, False, False, True]
    assert table["homogeneous"].dtype == pl.Boolean
    assert cluster_table(keys, clusters)["homogeneous"].is_null().all()
    summary = cluster_summary(table, labels)
    assert summary["members"].to_list() == [["a", "b", "c"], ["d", "e"]]
    assert summary["labels"].to_list() == [["mel"], ["bcc", "nv"]]


def test_outlier_score_is_lowest_for_an_off_distribution_vector():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    vectors = unit(centre + 0.5 * rng.normal(size=(60, 32)))
    vectors[17] = unit(rng.normal(size=32))
    scores = outlier_scores(vectors, k=10)
    assert scores.shape == (60,)
    assert np.argmin(scores) == 17
    assert scores[17] < np.median(scores) - 0.3


def test_find_duplicates_end_to_end_with_failed_images():
    base = far_hashes(4)
    facts = facts_frame(
        [base[0], base[0], base[2], base[3], None],
        dihedral=[[int(h)] * 8 for h in (base[0], base[0], base[2], base[3])] + [None],
        sha256=["s0", "s0", "s2", "s3", None],
        status=["ok", "ok", "ok", "ok", "corrupt"],
        sizes=[(10, 10), (20, 20), (10, 10), (10, 10), (None, None)],
    )
    vectors = np.eye(4, 8, dtype=np.float32)
    vectors[1] = vectors[0]
    result = find_duplicates(facts, vectors, NO_VETO, labels=["mel", "nv", "bcc", "bcc", None])
    clusters = result.clusters
    assert clusters["cluster_id"].to_list() == [0, 0, 1, 2, 3]
    assert clusters["representative"].to_list()[:2] == ["img1", "img1"]
    assert clusters["homogeneous"].to_list() == [False, False, True, True, True]
    assert clusters["outlier_score"][4] is None
    assert clusters["outlier_score"][0] > clusters["outlier_score"][2]
    assert pair_set(result.pairs) == {(0, 1)}
    assert set(result.pairs["kind"]) == {"exact", "perceptual", "embedding"}
    meta = result.metadata()
    assert (
        meta["pairs_exact"],
        meta["multi_image_clusters"],
        meta["non_homogeneous_clusters"],
    ) == (
        1,
        1,
        1,
    )
    assert meta["search_method"] == "flat" and meta["search_knn_recall"] == 1.0


def band_photos() -> tuple[np.ndarray, dict[str, bytes]]:
    """img0 a photo, img1 its crop, img2 and img3 other photos; img1 and img2 in img0's
    verification band (cosine 0.94 and 0.92; 0.865 with each other), img3 far from all."""
    import io
    import random

    from dagster_project.synthetic.images import render_photo, transform_photo

    def jpeg(seed: int) -> bytes:
        buffer = io.BytesIO()
        render_photo(seed).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    basis = np.eye(4, 8, dtype=np.float32)
    vectors = basis.copy()
    vectors[1] = unit(basis[0] + np.sqrt(1 / 0.94**2 - 1) * basis[1])
    vectors[2] = unit(basis[0] + np.sqrt(1 / 0.92**2 - 1) * basis[2])
    original = jpeg(0)
    crop = transform_photo(original, "crop", random.Random(0))
    return vectors, {"img0": original, "img1": crop, "img2": jpeg(5), "img3": jpeg(6)}


def test_band_pairs_verified_geometrically():
    vectors, photos = band_photos()
    facts = facts_frame(far_hashes(4))
    assert pair_set(candidate_pairs(facts, vectors, NO_VETO)) == set()
    pairs = candidate_pairs(facts, vectors, NO_VETO, read=photos.get)
    assert pair_set(pairs) == {(0, 1)}
    assert pairs["kind"].to_list() == ["geometric"]
    assert pairs["similarity"][0] == pytest.approx(0.94, abs=1e-5)
    result = find_duplicates(facts, vectors, NO_VETO, read=photos.get)
    v = result.verification
    assert (v.candidates, v.checked, v.accepted) == (3, 3, 1)
    assert result.clusters["cluster_id"].to_list() == [0, 0, 1, 2]
    meta = result.metadata()
    assert (meta["pairs_geometric"], meta["verify_checked"]) == (1, 3)
    # A photo that cannot be read never verifies.
    missing = find_duplicates(facts, vectors, NO_VETO, read={"img0": photos["img0"]}.get)
    assert missing.verification.accepted == 0


def test_verification_candidates_are_bounded_and_filtered():
    vectors, photos = band_photos()
    facts = facts_frame(far_hashes(4))

    def verification(config: DedupConfig, **kwargs):
        return find_duplicates(facts, vectors, config, read=photos.get, **kwargs).verification

    # The most similar pairs are checked first.
    capped = verification(replace(NO_VETO, verify_max_pairs=1))
    assert (capped.candidates, capped.checked, capped.accepted) == (3, 1, 1)
    # Only each photo's nearest band neighbour: (0, 1) for 0 and 1, (0, 2) for 2.
    nearest = verification(replace(NO_VETO, verify_neighbors=1))
    assert (nearest.candidates, nearest.accepted) == (2, 1)
    # Above the band's floor only the crop remains a candidate; none above it.
    assert verification(replace(NO_VETO, verify_min_cosine=0.93)).candidates == 1
    none = verification(replace(NO_VETO, verify_min_cosine=0.95))
    assert (none.candidates, none.checked, none.accepted) == (0, 0, 0)
    assert verification(replace(NO_VETO, verify_neighbors=0)).checked == 0
    # Photos of one case are not candidates; pairs already clustered are not checked.
    apart = verification(NO_VETO, case_ids=["c1", "c1", "c2", "c3"])
    assert (apart.candidates, apart.accepted) == (2, 0)
    byte_copy = facts.with_columns(sha256=pl.Series(["s0", "s1", "s0", "s3"]))
    result = find_duplicates(byte_copy, vectors, NO_VETO, read=photos.get)
    assert result.verification.candidates == 2
    assert result.clusters["cluster_id"].to_list() == [0, 0, 0, 1]


def test_bad_input_is_named():
    facts = facts_frame(far_hashes(3))
    with pytest.raises(ValueError, match=r"one row per image with status 'ok' \(3 of 3"):
        candidate_pairs(facts, np.eye(2, 4, dtype=np.float32))
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[2] *= 2
    with pytest.raises(ValueError, match="'img2' is not L2-normalised"):
        candidate_pairs(facts, vectors)
    with pytest.raises(ValueError, match="lacks column"):
        candidate_pairs(facts.drop("phash_dihedral"), np.eye(3, 4, dtype=np.float32))
    with pytest.raises(ValueError, match="cosine_threshold"):
        DedupConfig(cosine_threshold=1.5)
    with pytest.raises(ValueError, match="verify_max_pairs"):
        DedupConfig(verify_max_pairs=-1)
    assert DedupConfig.calibrated(cosine_threshold=0.9).cosine_threshold == 0.9
    assert DedupConfig.calibrated().phash_max_distance == DedupConfig().phash_max_distance


class Reads:
    """A reader over ``photos`` that records every key it is asked for (from threads)."""

    def __init__(self, photos: dict[str, bytes]) -> None:
        self.photos = photos
        self.keys: list[str] = []

    def __call__(self, key: str) -> bytes | None:
        self.keys.append(key)
        return self.photos.get(key)


def test_verdicts_cached_by_content_are_not_read_again(tmp_path):
    vectors, photos = band_photos()
    facts = facts_frame(far_hashes(4))
    first_reads = Reads(photos)
    with FactCache(tmp_path) as cache:
        first = find_duplicates(facts, vectors, NO_VETO, read=first_reads, cache=cache)
    assert (first.verification.computed, first.verification.cached) == (3, 0)
    assert set(first_reads.keys) == {"img0", "img1", "img2"}
    assert first.verification.photos_read == len(first_reads.keys)
    # The same contents under other keys (another dump): nothing is read, same clusters.
    renamed = facts.with_columns(pl.concat_str(pl.lit("new/"), "key").alias("key"))
    second_reads = Reads({f"new/{key}": data for key, data in photos.items()})
    second = find_duplicates(
        renamed, vectors, NO_VETO, read=second_reads, cache=FactCache(tmp_path)
    )
    assert second_reads.keys == []
    v = second.verification
    assert (v.computed, v.cached, v.accepted, v.photos_read) == (0, 3, 1, 0)
    assert second.pairs.equals(first.pairs)
    assert second.clusters["cluster_id"].equals(first.clusters["cluster_id"])


def test_only_pairs_of_a_new_photo_are_verified(tmp_path):
    import random

    from dagster_project.synthetic.images import transform_photo

    vectors, photos = band_photos()
    facts = facts_frame(far_hashes(4))
    find_duplicates(facts, vectors, NO_VETO, read=photos.get, cache=FactCache(tmp_path))
    # img4, a crop of img3, in img3's band (cosine 0.93) and nobody else's.
    photos["img4"] = transform_photo(photos["img3"], "crop", random.Random(1))
    grown = np.zeros((5, 8), dtype=np.float32)
    grown[:4] = vectors
    grown[4] = unit(grown[3] + np.sqrt(1 / 0.93**2 - 1) * np.eye(8, dtype=np.float32)[4])
    reads = Reads(photos)
    result = find_duplicates(
        facts_frame(far_hashes(5)), grown, NO_VETO, read=reads, cache=FactCache(tmp_path)
    )
    v = result.verification
    assert (v.candidates, v.computed, v.cached, v.accepted) == (4, 1, 3, 2)
    assert sorted(set(reads.keys)) == ["img3", "img4"]
    assert result.clusters["cluster_id"].to_list() == [0, 0, 1, 2, 2]


def test_changed_thresholds_or_unreadable_photos_are_verified_again(tmp_path):
    vectors, photos = band_photos()
    facts = facts_frame(far_hashes(4))

    def verification(config: DedupConfig, photos: dict[str, bytes]):
        return find_duplicates(
            facts, vectors, config, read=Reads(photos), cache=FactCache(tmp_path)
        ).verification

    # A photo missing at verification time gets no cached verdict: its pairs come back.
    partial = verification(NO_VETO, {k: v for k, v in photos.items() if k != "img2"})
    assert (partial.computed, partial.accepted) == (3, 1)
    complete = verification(NO_VETO, photos)
    assert (complete.computed, complete.cached, complete.accepted) == (2, 1, 1)
    # Another threshold re-verifies every pair; the earlier verdicts stay for their own.
    stricter = replace(NO_VETO, geometry=GeometryConfig(min_inliers=10_000))
    strict = verification(stricter, photos)
    assert (strict.computed, strict.cached, strict.accepted) == (3, 0, 0)
    again = verification(NO_VETO, photos)
    assert (again.computed, again.cached, again.accepted) == (0, 3, 1)
