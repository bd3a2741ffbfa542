"""Nearest-neighbour search over L2-normalised embeddings with FAISS (inner product = cosine).

- up to ``exact_search_max`` vectors, or whenever FAISS sees a GPU: exact flat search
  (on the GPU the flat index is a tiled brute-force matrix product, fast at any N here);
- above it on CPU: IVF-Flat with about 4*sqrt(N) lists, ``nprobe`` of them probed.
Only kNN is used (GPU FAISS has no range search); for duplicate clustering the k nearest
neighbours above a threshold connect the same components as a range search. Approximate
search is never assumed good: ``search_recall`` measures it against brute force.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

# Queries per FAISS search call: bounds the memory of one result block.
QUERY_BATCH = 16_384
# k-means training points per IVF list, and iterations: enough for stable lists at a
# fraction of the cost of training on every vector.
_TRAIN_PER_LIST, _TRAIN_ITERATIONS = 40, 10
# Tolerance when comparing similarities computed by different kernels.
_EPS = 1e-5


@dataclass(frozen=True)
class NeighbourSearch:
    """A FAISS inner-product index over the vectors; ``method`` is "flat", "gpu-flat" or
    "ivf" (with ``nlist`` lists, ``nprobe`` probed)."""

    index: faiss.Index
    method: str
    nlist: int | None = None
    nprobe: int | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (len(queries), k), best first; id -1 = none found."""
        k = min(k, self.index.ntotal)
        similarity = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), QUERY_BATCH):
            part = slice(start, start + QUERY_BATCH)
            similarity[part], ids[part] = self.index.search(
                np.ascontiguousarray(queries[part], dtype=np.float32), k
            )
        return similarity, ids


@dataclass(frozen=True)
class SearchRecall:
    """How well the production search matches brute force on ``queries`` sampled vectors.

    ``knn_recall``: share of the true k nearest neighbours returned (ties count as found).
    ``pair_recall``: share of the true neighbours at cosine >= threshold returned (NaN when
    the sample has none).
    """

    method: str
    queries: int
    knn_recall: float
    pair_recall: float
    true_pairs: int


def build_search(
    vectors: np.ndarray, exact_search_max: int = 50_000, nprobe: int = 8, seed: int = 0
) -> NeighbourSearch:
    """Index ``vectors`` (float32, L2-normalised rows) for inner-product kNN."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(d))
        index.add(vectors)
        return NeighbourSearch(index, "gpu-flat")
    if n <= exact_search_max:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return NeighbourSearch(index, "flat")
    # About 4*sqrt(N) lists, fewer where N is too small to train that many.
    nlist = max(1, min(int(round(4 * np.sqrt(n))), n // _TRAIN_PER_LIST))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = _TRAIN_ITERATIONS
    index.cp.seed = seed
    train = np.random.default_rng(seed).choice(n, min(n, _TRAIN_PER_LIST * nlist), replace=False)
    index.train(vectors[np.sort(train)])
    index.add(vectors)
    index.nprobe = nprobe
    return NeighbourSearch(index, "ivf", nlist, nprobe)


def _drop_self(
    similarity: np.ndarray, ids: np.ndarray, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id (``own``) from its results, or the last result where it is
    absent (exact copies can tie with it and push it out)."""
    keep = ids != own[:, None]
    keep[keep.all(axis=1), -1] = False
    k = ids.shape[1] - 1
    n = len(ids)
    return similarity[keep].reshape(n, k), ids[keep].reshape(n, k)


def nearest_neighbours(
    search: NeighbourSearch, vectors: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each indexed vector's k nearest other vectors: (similarities, ids), (n, k) each.

    ``vectors`` must be the indexed vectors, in order. With fewer than k others, the
    missing places hold id -1.
    """
    if len(vectors) == 0:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    similarity, ids = search.search(vectors, k + 1)
    similarity, ids = _drop_self(similarity, ids, np.arange(len(vectors)))
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        similarity = np.pad(similarity, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    similarity[ids < 0] = -np.inf
    return similarity, ids


def search_recall(
    search: NeighbourSearch,
    vectors: np.ndarray,
    k: int,
    threshold: float,
    sample: int = 1_000,
    seed: int = 0,
) -> SearchRecall:
    """Compare ``search`` with exact brute force on ``sample`` random indexed vectors.

    Costs sample x N dot products, so it stays cheap at any N.
    """
    n = len(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    k = min(k, n - 1)
    if k < 1:
        return SearchRecall(search.method, len(rows), float("nan"), float("nan"), 0)
    base = np.ascontiguousarray(vectors, dtype=np.float32)
    true_sim, true_ids = faiss.knn(queries, base, k + 1, faiss.METRIC_INNER_PRODUCT)
    true_sim, _ = _drop_self(true_sim, true_ids, rows)
    found_sim, found_ids = _drop_self(*search.search(queries, k + 1), rows)
    found_sim = np.where(found_ids >= 0, found_sim, -np.inf)
    kth = true_sim[:, -1:]
    knn = float(np.mean(found_sim >= kth - _EPS))
    true_pairs = int((true_sim >= threshold).sum())
    found_pairs = int((found_sim >= threshold).sum())
    pair = found_pairs / true_pairs if true_pairs else float("nan")
    return SearchRecall(search.method, len(rows), knn, pair, true_pairs)
