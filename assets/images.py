"""Stage `images`: verify every photo, embed it, and find its duplicates."""

import dagster as dg
import numpy as np
import polars as pl

from assets.common import DUMP_PARTITIONED, counts_metadata
from dagster_project.images.cache import FactCache
from dagster_project.images.dedup import DedupConfig, find_duplicates
from dagster_project.images.folder import embed_ok_images
from dagster_project.images.verify import inspect_images
from resources.curation import CurationConfig
from resources.embedder import EmbedderResource
from resources.storage import BackupStore


def _progress(context: dg.AssetExecutionContext, what: str):
    step = {"next": 0}

    def report(done: int, total: int) -> None:
        if done >= step["next"] or done == total:
            context.log.info(f"{what}: {done}/{total}")
            step["next"] = done + max(1, total // 20)

    return report


@dg.asset(group_name="images", kinds={"polars"}, **DUMP_PARTITIONED)
def image_files(
    context: dg.AssetExecutionContext,
    image_records: pl.DataFrame,
    backup: BackupStore,
    curation: CurationConfig,
) -> dg.Output[pl.DataFrame]:
    """Status, checksum, size, perceptual hashes and quality of each photo, read once."""
    store = backup.store()
    mapper = backup.mapper()
    images = image_records.select("image_uuid", "source_gcs_path").unique(
        "image_uuid", keep="first", maintain_order=True
    )
    keys = [mapper.key(path) for path in images["source_gcs_path"]]
    listing = {stat.key: (stat.size, stat.version) for stat in store.list()}
    with FactCache(curation.cache_path("image_facts")) as cache:
        facts = inspect_images(
            keys,
            store.read_bytes,
            workers=curation.io_workers,
            cache=cache,
            stat=listing.get,
            progress=_progress(context, "inspected"),
        )
    files = images.with_columns(pl.Series("key", keys)).join(facts, on="key", how="left")
    status_counts = dict(files["status"].value_counts().iter_rows())
    return dg.Output(
        files,
        metadata={"images": files.height, **counts_metadata(status_counts, "status")},
    )


@dg.asset(group_name="images", kinds={"pytorch"}, pool="gpu", **DUMP_PARTITIONED)
def image_embeddings(
    context: dg.AssetExecutionContext,
    image_files: pl.DataFrame,
    backup: BackupStore,
    embedder: EmbedderResource,
    curation: CurationConfig,
) -> dg.Output[pl.DataFrame]:
    """One L2-normalised vector per readable photo, computed once per (model, sha256)."""
    store = backup.store()
    model = embedder.load()
    ok = image_files.filter(pl.col("status") == "ok")
    with FactCache(curation.cache_path("image_facts")) as cache:
        vectors = embed_ok_images(
            ok, store.read_bytes, model, cache=cache, progress=_progress(context, "embedded")
        )
    frame = pl.DataFrame(
        {"image_uuid": ok["image_uuid"], "embedding": vectors},
        schema={"image_uuid": pl.String, "embedding": pl.Array(pl.Float32, model.dim)},
    )
    return dg.Output(
        frame,
        metadata={
            "model": model.model_id,
            "dim": model.dim,
            "vectors": frame.height,
            "distinct_photos": int(ok["sha256"].n_unique()),
            "device": str(model.device),
        },
    )


@dg.asset(group_name="images", kinds={"faiss"}, **DUMP_PARTITIONED)
def duplicate_clusters(
    image_files: pl.DataFrame,
    image_embeddings: pl.DataFrame,
    image_records: pl.DataFrame,
    backup: BackupStore,
    curation: CurationConfig,
) -> dg.Output[pl.DataFrame]:
    """Exact, perceptual, embedding and geometrically verified duplicates joined into
    clusters, plus outlier scores. Verification reads the photos of the candidate pairs
    (embedding neighbours just below the cosine threshold) from the backup, unless the cache
    holds the verdict on that pair of contents.

    One row per readable photo: image_uuid, cluster_id, cluster_size, representative (the
    image_uuid of the cluster's largest photo), homogeneous (diagnoses agree), outlier_score.
    """
    config = DedupConfig.calibrated(
        phash_max_distance=curation.phash_max_distance,
        cosine_threshold=curation.cosine_threshold,
    )
    cases = image_records.select("image_uuid", "case_uuid", "diagnosis").unique(
        "image_uuid", keep="first"
    )
    facts = (
        image_files.filter(pl.col("status") == "ok")
        .join(image_embeddings, on="image_uuid", how="left", maintain_order="left")
        .join(cases, on="image_uuid", how="left", maintain_order="left")
        .drop("key")
        .with_columns(pl.col("image_uuid").alias("key"))
    )
    store = backup.store()
    backup_key = dict(zip(image_files["image_uuid"], image_files["key"], strict=True))
    with FactCache(curation.cache_path("image_facts")) as cache:
        result = find_duplicates(
            facts,
            np.asarray(facts["embedding"].to_numpy(), dtype=np.float32).reshape(facts.height, -1),
            config,
            case_ids=facts["case_uuid"].to_list(),
            labels=facts["diagnosis"].to_list(),
            read=lambda image_uuid: store.read_bytes(backup_key[image_uuid]),
            cache=cache,
        )
    clusters = result.clusters.rename({"key": "image_uuid"})
    return dg.Output(clusters, metadata=result.metadata())
