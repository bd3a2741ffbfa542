"""Embedding near-duplicate search at scale: production search vs exact brute force.

N synthetic L2-normalised vectors drawn around random centres (unrelated vectors at cosine
about 0.5, as real embeddings are), with planted near-duplicates at cosine in
[--min-cos, 0.998]. Times the production search (``build_search`` + ``nearest_neighbours``:
IVF above ``exact_search_max``), times exact brute-force kNN on a sample of queries and
extrapolates it to all N (exact search costs the same per query), and measures recall:
planted pairs found at the threshold (all of them), and kNN / pair recall on the sample
against brute force (``search_recall``).

    python bench/bench_search.py --n 400000 [--dim 512] [--planted 0.02] [--nprobe 8]
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from dagster_project.images.dedup import DedupConfig
from dagster_project.images.search import build_search, nearest_neighbours, search_recall


def synthetic(n: int, dim: int, planted: int, min_cos: float, seed: int) -> np.ndarray:
    """Clustered unit vectors; the last ``planted`` rows are near-copies of the first ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 400), dim)).astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    originals = n - planted
    for start in range(0, originals, 65_536):
        stop = min(start + 65_536, originals)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block += rng.normal(size=block.shape).astype(np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    # copy = unit(x + s * g), g ~ N(0, I/dim): cosine about 1 / sqrt(1 + s^2).
    largest = np.sqrt(1.0 / min_cos**2 - 1.0)
    scale = rng.uniform(0.06, largest, size=(planted, 1)).astype(np.float32)
    noise = rng.normal(size=(planted, dim)).astype(np.float32) / np.sqrt(dim)
    copies = vectors[:planted] + scale * noise
    vectors[originals:] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return vectors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--planted", type=float, default=0.02, help="share of near-copies")
    parser.add_argument("--min-cos", type=float, default=0.975)
    parser.add_argument("--threshold", type=float, default=DedupConfig().cosine_threshold)
    parser.add_argument("--nprobe", type=int, default=DedupConfig().nprobe)
    parser.add_argument("--exact-search-max", type=int, default=DedupConfig().exact_search_max)
    parser.add_argument("--k", type=int, default=DedupConfig().k_neighbors)
    parser.add_argument("--sample", type=int, default=1_000, help="brute-force queries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    planted = int(args.n * args.planted)
    vectors = synthetic(args.n, args.dim, planted, args.min_cos, args.seed)
    print(
        f"N={args.n} dim={args.dim} planted={planted} (cosine >= {args.min_cos}) "
        f"threshold={args.threshold} k={args.k} threads={faiss.omp_get_max_threads()}"
    )

    started = time.perf_counter()
    search = build_search(vectors, args.exact_search_max, args.nprobe, args.seed)
    built = time.perf_counter()
    similarity, ids = nearest_neighbours(search, vectors, args.k)
    done = time.perf_counter()
    production = done - started
    print(
        f"production: {search.method} (nlist={search.nlist}, nprobe={search.nprobe}): "
        f"build {built - started:.1f} s + kNN {done - built:.1f} s = {production:.1f} s"
    )

    originals = args.n - planted
    hit = (similarity >= args.threshold) & (ids >= 0)
    query = np.repeat(np.arange(args.n), args.k)[hit.ravel()]
    found = np.unique(np.minimum(query, ids[hit]) * args.n + np.maximum(query, ids[hit]))
    truth = np.arange(planted) * args.n + np.arange(originals, args.n)
    planted_recall = float(np.isin(truth, found).mean()) if planted else float("nan")

    rows = np.random.default_rng(args.seed + 1).choice(args.n, args.sample, replace=False)
    started = time.perf_counter()
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    exact.search(vectors[rows], args.k + 1)
    brute = (time.perf_counter() - started) * args.n / args.sample
    recall = search_recall(search, vectors, args.k, args.threshold, args.sample, args.seed + 1)
    print(
        f"brute force: {args.sample} queries timed, {brute:.1f} s extrapolated to all N; "
        f"speed-up {brute / production:.1f}x"
    )
    print(
        f"recall: planted pairs {planted_recall:.4f} ({planted} pairs, {len(found)} found "
        f"at cosine >= {args.threshold}); on {recall.queries} sampled queries: "
        f"kNN@{args.k} {recall.knn_recall:.4f}, pairs >= threshold {recall.pair_recall:.4f} "
        f"({recall.true_pairs} true)"
    )
    ok = planted_recall >= 0.99 and recall.pair_recall >= 0.99 and brute / production >= 10
    print("target (recall >= 0.99 at >= 10x): " + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
