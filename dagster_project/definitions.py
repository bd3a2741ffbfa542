"""The code location: assets, checks, jobs and automation, with resources picked per environment."""

from __future__ import annotations

import dagster as dg

from assets import checks, dataset, images, metadata, source
from dagster_project.settings import Settings
from resources.curation import CurationConfig
from resources.embedder import EmbedderResource
from resources.io_manager import ParquetIOManager
from resources.storage import DumpSource, ObjectStoreResource

ASSET_MODULES = [source, metadata, images, dataset, checks]

build_dataset_job = dg.define_asset_job(
    "build_dataset",
    selection=dg.AssetSelection.all(),
    description="Parse a dump and publish the curated dataset version it yields.",
)


def build_resources(settings: Settings) -> dict[str, object]:
    """Local directories and CPU by default; S3 and GPU when the environment says production."""
    endpoint = settings.s3_endpoint_url
    return {
        "io_manager": ParquetIOManager(base=settings.storage, endpoint_url=endpoint),
        "dumps": DumpSource(
            uri=settings.dumps, endpoint_url=endpoint,
            download_dir=str(settings.home / "downloads"),
        ),
        "backup": ObjectStoreResource(uri=settings.backup, endpoint_url=endpoint),
        "curated": ObjectStoreResource(uri=settings.curated, endpoint_url=endpoint),
        "embedder": EmbedderResource(
            backend=settings.embed_backend, model=settings.embed_model,
            pretrained=settings.embed_pretrained, device=settings.embed_device,
        ),
        "curation": CurationConfig(
            test_patients_file=settings.test_patients_file,
            algo_python=settings.algo_python,
            cache_dir=settings.cache_dir,
        ),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[build_dataset_job],
        resources=build_resources(settings),
    )


defs = build_definitions(Settings.from_env())
