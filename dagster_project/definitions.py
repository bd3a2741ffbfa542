"""The code location: assets, checks, jobs and automation, with resources picked per environment."""

from __future__ import annotations

import dagster as dg

from assets import checks, dataset, images, metadata, source
from dagster_project.sensors import (
    build_dataset_job,
    check_failure_alerts,
    dump_sensor,
    nightly_recheck,
    recheck_job,
    run_failure_alerts,
)
from dagster_project.settings import Settings
from resources.alerts import AlertNotifier
from resources.curation import CurationConfig
from resources.embedder import EmbedderResource
from resources.io_manager import ParquetIOManager
from resources.storage import BackupStore, DumpSource, ObjectStoreResource

ASSET_MODULES = [source, metadata, images, dataset, checks]


def build_resources(settings: Settings) -> dict[str, object]:
    """Local directories and CPU by default; S3 and GPU when the environment says production."""
    endpoint = settings.s3_endpoint_url
    return {
        "io_manager": ParquetIOManager(base=settings.storage, endpoint_url=endpoint),
        "dumps": DumpSource(
            uri=settings.dumps,
            endpoint_url=endpoint,
            download_dir=str(settings.home / "downloads"),
        ),
        "backup": BackupStore(
            uri=settings.backup, endpoint_url=endpoint, gcs_bucket_map=settings.gcs_bucket_map
        ),
        "curated": ObjectStoreResource(uri=settings.curated, endpoint_url=endpoint),
        "embedder": EmbedderResource(
            backend=settings.embed_backend,
            model=settings.embed_model,
            pretrained=settings.embed_pretrained,
            device=settings.embed_device,
        ),
        "alerts": AlertNotifier(
            webhook_url=settings.alert_webhook_url,
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_user=settings.smtp_user,
            smtp_password=dg.EnvVar("DERMACURATE_SMTP_PASSWORD") if settings.smtp_user else None,
            mail_from=settings.alert_from,
            mail_to=settings.alert_to,
            ui_url=settings.ui_url,
        ),
        "curation": CurationConfig(
            test_patients_file=settings.test_patients_file,
            algo_python=settings.algo_python,
            cache_dir=settings.cache_dir,
        ),
    }


def build_executor(name: str) -> dg.ExecutorDefinition:
    """`in_process` locally (each extra process would re-import torch and the code location),
    `multiprocess` on one production machine, `k8s` for a step per pod (dagster-k8s, the
    `deploy` extra) with the embedding step on GPU nodes (docs/deploy.md)."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}[name]


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[build_dataset_job, recheck_job],
        sensors=[dump_sensor, check_failure_alerts, run_failure_alerts],
        schedules=[nightly_recheck],
        resources=build_resources(settings),
        executor=build_executor(settings.executor),
    )


defs = build_definitions(Settings.from_env())
