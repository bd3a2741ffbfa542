"""Duplicate detection measured against known answers, and the HAM10000 evaluation.

Predicted pairs are scored as clusters: a detector's pairs are joined into connected
components (as the pipeline does) and every pair inside a component counts as predicted, so
a false link between two groups costs every pair it wrongly joins.

HAM10000 subset (``$DERMA_REAL_DATA/ham10000_subset``, see its README): each ISIC image is
stored as ``_original`` and ``_flipped`` (mirror, re-encoded), some files twice, byte for
byte, in two folders. Known answers:
- exact: files with the same md5;
- copies: files of the same ISIC image (original/flipped pairs, and byte copies);
- same lesion: different ISIC images of one lesion_id, the same lesion photographed again.
A predicted pair of one lesion is not a false positive (nor a true one): it is "neutral";
``strict_precision`` counts it as false, as it would be where every photo is of a
different lesion.

Synthetic source (``synthetic.generate``): the photos of its expected image records, read
from its backup as the assets read them; known answers are the planted copies
(``truth/planted_duplicates.parquet``): a copy and its original, or two copies of one
original, are right; a predicted pair of two other photos is a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from dagster_project.images.dedup import (
    KINDS,
    DedupConfig,
    DedupResult,
    candidate_pairs,
    duplicate_clusters,
    find_duplicates,
)
from dagster_project.images.folder import embed_ok_images
from dagster_project.images.verify import inspect_images
from dagster_project.storage import GcsPathMapper

if TYPE_CHECKING:
    from dagster_project.images.cache import FactCache
    from dagster_project.images.embed import Embedder

MANIFEST_COLUMNS = ("path", "isic_id", "variant", "lesion_id", "md5")


@dataclass(frozen=True)
class PairMetrics:
    """Predicted pairs scored against positive pairs (and pairs neither right nor wrong).

    precision = tp / (tp + fp); strict_precision = tp / predicted; recall = found / positives,
    where ``found`` counts the positives predicted (``positives`` may be a subset of what
    counts as a true positive, e.g. original/flipped pairs among all copies).
    """

    predicted: int
    true_positive: int
    neutral: int
    false_positive: int
    positives: int
    found: int
    precision: float
    strict_precision: float
    recall: float


def _codes(pairs: pl.DataFrame, n: int) -> np.ndarray:
    a, b = pairs["a"].to_numpy().astype(np.int64), pairs["b"].to_numpy().astype(np.int64)
    return np.unique(np.minimum(a, b) * n + np.maximum(a, b))


def pair_metrics(
    predicted: pl.DataFrame,
    correct: pl.DataFrame,
    n: int,
    positives: pl.DataFrame | None = None,
    neutral: pl.DataFrame | None = None,
) -> PairMetrics:
    """Score ``predicted`` pairs (columns a, b; rows < ``n``) against ``correct`` pairs.

    ``positives`` (default ``correct``) are the pairs recall is measured on; ``neutral``
    pairs count neither for nor against precision.
    """
    guess = _codes(predicted, n)
    right = np.isin(guess, _codes(correct, n))
    ignored = ~right & np.isin(guess, _codes(neutral, n)) if neutral is not None else ~right & False
    wanted = _codes(positives if positives is not None else correct, n)
    tp, neutral_count = int(right.sum()), int(ignored.sum())
    fp = len(guess) - tp - neutral_count
    found = int(np.isin(wanted, guess).sum())
    return PairMetrics(
        predicted=len(guess),
        true_positive=tp,
        neutral=neutral_count,
        false_positive=fp,
        positives=len(wanted),
        found=found,
        precision=tp / (tp + fp) if tp + fp else float("nan"),
        strict_precision=tp / len(guess) if len(guess) else float("nan"),
        recall=found / len(wanted) if len(wanted) else float("nan"),
    )


def same_value_pairs(values: Sequence | pl.Series) -> pl.DataFrame:
    """All pairs (a < b) of rows with equal non-null values: a truth set from a label."""
    rows = pl.DataFrame({"value": pl.Series(values)}).with_row_index("row").drop_nulls("value")
    joined = rows.join(rows, on="value", suffix="_b").filter(pl.col("row") < pl.col("row_b"))
    return joined.select(
        pl.col("row").cast(pl.Int64).alias("a"), pl.col("row_b").cast(pl.Int64).alias("b")
    )


def cluster_pairs(n: int, pairs: pl.DataFrame) -> pl.DataFrame:
    """Every pair of rows that ``pairs`` puts in one cluster (connected component)."""
    return same_value_pairs(duplicate_clusters(n, pairs))


@dataclass(frozen=True)
class HamData:
    """The HAM10000 subset read and processed: manifest rows, image facts, embeddings."""

    manifest: pl.DataFrame
    facts: pl.DataFrame
    embeddings: np.ndarray
    model_id: str


def load_ham10000(
    root: Path,
    embedder: Embedder,
    images: int | None = None,
    cache: FactCache | None = None,
) -> HamData:
    """Verify and embed the files of ``root/manifest.csv`` (the first ``images`` ISIC images
    with all their files, or all). Byte copies are embedded once; ``cache`` keeps vectors
    between runs (by model and sha256)."""
    path = root / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is DERMA_REAL_DATA set to the datasets dir?")
    manifest = pl.read_csv(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}")
    if images is not None:
        chosen = manifest["isic_id"].unique(maintain_order=True).head(images)
        manifest = manifest.filter(pl.col("isic_id").is_in(chosen.implode()))
    keys = manifest["path"].to_list()
    facts = inspect_images(keys, lambda key: (root / key).read_bytes(), workers=2)
    failed = facts.filter(pl.col("status") != "ok")
    if failed.height:
        raise ValueError(f"{root}: {failed.height} unreadable file(s), e.g. {failed['key'][0]}")
    embeddings = embed_ok_images(facts, lambda key: (root / key).read_bytes(), embedder, cache)
    return HamData(manifest, facts, embeddings, embedder.model_id)


@dataclass(frozen=True)
class HamTruth:
    """Known pairs of the HAM10000 subset (columns a, b: manifest rows)."""

    exact: pl.DataFrame
    copies: pl.DataFrame
    flipped: pl.DataFrame
    same_lesion: pl.DataFrame


def ham10000_truth(manifest: pl.DataFrame) -> HamTruth:
    """Known pairs: same md5, same ISIC image, original/flipped of one image, same lesion."""
    copies = same_value_pairs(manifest["isic_id"])
    variant = manifest["variant"].to_numpy()
    flipped = copies.filter(
        pl.Series(variant[copies["a"].to_numpy()] != variant[copies["b"].to_numpy()])
    )
    lesion = same_value_pairs(manifest["lesion_id"])
    same_lesion = lesion.join(copies, on=["a", "b"], how="anti")
    return HamTruth(same_value_pairs(manifest["md5"]), copies, flipped, same_lesion)


def ham10000_metrics(pairs: pl.DataFrame, manifest: pl.DataFrame) -> pl.DataFrame:
    """Cluster-level scores per detector (kinds, and "all" of them together) and task.

    Tasks: ``exact`` (vs same md5; precision, for the exact detector only, counts any other
    pair as false), ``flipped``
    (recall of original/flipped pairs; a pair of one ISIC image is right, of one lesion
    neutral), ``same_lesion`` (recall of different photos of one lesion: report only).
    """
    n = manifest.height
    truth = ham10000_truth(manifest)
    rows = []
    for detector in (*KINDS, "all"):
        chosen = pairs if detector == "all" else pairs.filter(pl.col("kind") == detector)
        predicted = cluster_pairs(n, chosen)
        tasks = {
            "exact": pair_metrics(predicted, truth.exact, n),
            "flipped": pair_metrics(
                predicted, truth.copies, n, positives=truth.flipped, neutral=truth.same_lesion
            ),
            "same_lesion": pair_metrics(
                predicted, truth.copies, n, positives=truth.same_lesion, neutral=truth.same_lesion
            ),
        }
        for task, metrics in tasks.items():
            row = {"detector": detector, "task": task, "edges": chosen.height, **asdict(metrics)}
            if task == "exact" and detector != "exact":
                # Finding more than byte copies is these detectors' job, not an error.
                row.update(precision=None, strict_precision=None)
            rows.append(row)
    return pl.DataFrame(rows)


def threshold_curve(
    data: HamData,
    phash_distances: Sequence[int],
    cosines: Sequence[float],
    perceptual_min_cosines: Sequence[float],
    config: DedupConfig | None = None,
) -> pl.DataFrame:
    """Precision/recall on original/flipped pairs of each detector alone, per threshold.

    Pairs are searched once at the loosest thresholds (64 neighbours per image, so loose
    cosines are not cut short by k) and filtered per threshold, then scored as clusters.
    """
    base = config or DedupConfig()
    loose = replace(
        base,
        phash_max_distance=max(phash_distances),
        cosine_threshold=min(cosines),
        perceptual_min_cosine=-1.0,
        k_neighbors=max(base.k_neighbors, 64),
    )
    pairs = candidate_pairs(data.facts, data.embeddings, loose)
    n = data.manifest.height
    truth = ham10000_truth(data.manifest)
    perceptual = pairs.filter(pl.col("kind") == "perceptual")
    a, b = perceptual["a"].to_numpy(), perceptual["b"].to_numpy()
    agree = np.einsum("ij,ij->i", data.embeddings[a], data.embeddings[b])
    settings = [
        (
            "perceptual",
            f"distance<={d}, cosine>={c}",
            (perceptual["similarity"] >= 1 - d / 64) & pl.Series(agree >= c),
        )
        for c in perceptual_min_cosines
        for d in phash_distances
    ]
    embedding = pairs.filter(pl.col("kind") == "embedding")
    settings += [("embedding", f"cosine>={t}", embedding["similarity"] >= t) for t in cosines]
    rows = []
    for detector, setting, keep in settings:
        chosen = (perceptual if detector == "perceptual" else embedding).filter(keep)
        metrics = pair_metrics(
            cluster_pairs(n, chosen),
            truth.copies,
            n,
            positives=truth.flipped,
            neutral=truth.same_lesion,
        )
        rows.append({"detector": detector, "threshold": setting, **asdict(metrics)})
    return pl.DataFrame(rows)


@dataclass(frozen=True)
class SyntheticData:
    """A synthetic source processed: one facts row per expected image record (``records``:
    image_uuid, case_uuid, key), embeddings of the ok rows, the planted copies, and
    ``backup``, the directory the keys are read from."""

    records: pl.DataFrame
    facts: pl.DataFrame
    embeddings: np.ndarray
    planted: pl.DataFrame
    backup: Path

    def read(self, key: str) -> bytes | None:
        """The backup bytes of ``key`` (None when the file is missing)."""
        path = self.backup / key
        return path.read_bytes() if path.is_file() else None


def load_synthetic(
    source: Path, embedder: Embedder, cache: FactCache | None = None, workers: int = 2
) -> SyntheticData:
    """Verify and embed the photos of ``source``'s newest expected image records, read from
    its backup by the keys the pipeline maps their gs:// paths to."""
    truth = Path(source) / "truth"
    records = (
        pl.read_parquet(truth / "expected_image_records.parquet")
        .select("image_uuid", "case_uuid", "source_gcs_path")
        .unique("image_uuid", keep="first", maintain_order=True)
    )
    mapper = GcsPathMapper()
    keys = [mapper.key(path) for path in records["source_gcs_path"]]
    records = records.select("image_uuid", "case_uuid", pl.Series("key", keys))
    planted = pl.read_parquet(truth / "planted_duplicates.parquet")
    empty = np.zeros((0, 0), dtype=np.float32)
    data = SyntheticData(records, pl.DataFrame(), empty, planted, Path(source) / "backup")
    facts = inspect_images(keys, data.read, workers=workers)
    return replace(data, facts=facts, embeddings=embed_ok_images(facts, data.read, embedder, cache))


def synthetic_truth(
    records: pl.DataFrame, planted: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(copies, planted pairs): every pair of rows showing one original photo, and each
    planted (copy, original) pair as rows a < b with its ``transform`` and ``cross_case``
    (copy and original in different cases)."""
    row = {uuid: index for index, uuid in enumerate(records["image_uuid"])}
    original_of = dict(zip(planted["image_uuid"], planted["original_uuid"], strict=True))
    root = [original_of.get(uuid, uuid) for uuid in records["image_uuid"]]
    present = planted.filter(
        pl.col("image_uuid").is_in(list(row)) & pl.col("original_uuid").is_in(list(row))
    )
    copy = np.array([row[u] for u in present["image_uuid"]], dtype=np.int64)
    original = np.array([row[u] for u in present["original_uuid"]], dtype=np.int64)
    case = records["case_uuid"].to_numpy()
    pairs = pl.DataFrame(
        {
            "a": np.minimum(copy, original),
            "b": np.maximum(copy, original),
            "transform": present["transform"],
            "cross_case": case[copy] != case[original],
        }
    )
    return same_value_pairs(root), pairs


def synthetic_metrics(
    pairs: pl.DataFrame, records: pl.DataFrame, planted: pl.DataFrame, cross_case_only: bool
) -> pl.DataFrame:
    """Cluster-level scores per detector (kinds, and "all" of them together) and transform
    of the planted copies ("all" transforms too): precision over every predicted pair,
    recall of the planted (copy, original) pairs, or of those across cases only."""
    n = records.height
    copies, planted_pairs = synthetic_truth(records, planted)
    if cross_case_only:
        planted_pairs = planted_pairs.filter(pl.col("cross_case"))
    transforms = ["all", *sorted(planted_pairs["transform"].unique())]
    rows = []
    for detector in (*KINDS, "all"):
        chosen = pairs if detector == "all" else pairs.filter(pl.col("kind") == detector)
        predicted = cluster_pairs(n, chosen)
        for transform in transforms:
            positives = planted_pairs.filter(
                (pl.col("transform") == transform) | (transform == "all")
            )
            metrics = pair_metrics(predicted, copies, n, positives=positives.select("a", "b"))
            rows.append({"detector": detector, "transform": transform, **asdict(metrics)})
    return pl.DataFrame(rows)


def missed_synthetic_targets(metrics: pl.DataFrame, target: float) -> list[str]:
    """The transforms whose recall, and the precision, of all detectors together fall short
    of ``target`` in ``synthetic_metrics`` (empty: every target met)."""
    rows = metrics.filter(pl.col("detector") == "all")
    failures = [
        f"{row['transform']}: recall {row['recall']:.4f} ({row['found']}/{row['positives']})"
        for row in rows.iter_rows(named=True)
        if not row["recall"] >= target
    ]
    precision = rows["precision"][0]
    if not precision >= target:
        failures.append(f"precision {precision:.4f}")
    return failures


@dataclass(frozen=True)
class SyntheticEvaluation:
    """Duplicate detection on a synthetic source, two ways: ``every_pair`` with
    same_case_is_duplicate=True, scored on all planted pairs (a copy in its original's
    case included); ``cross_case`` with the configured setting and case ids, as the
    pipeline runs, scored on the planted pairs across cases."""

    every_pair: pl.DataFrame
    cross_case: pl.DataFrame
    every_pair_result: DedupResult
    cross_case_result: DedupResult


def evaluate_synthetic(
    data: SyntheticData, config: DedupConfig | None = None
) -> SyntheticEvaluation:
    """find_duplicates on the synthetic photos (with the geometric verification reading the
    backup), scored both ways (see ``SyntheticEvaluation``)."""
    config = config or DedupConfig()
    cases = data.records["case_uuid"].to_list()  # facts rows are the records' rows
    results = [
        find_duplicates(data.facts, data.embeddings, setting, case_ids=cases, read=data.read)
        for setting in (replace(config, same_case_is_duplicate=True), config)
    ]
    return SyntheticEvaluation(
        synthetic_metrics(results[0].pairs, data.records, data.planted, cross_case_only=False),
        synthetic_metrics(results[1].pairs, data.records, data.planted, cross_case_only=True),
        *results,
    )
