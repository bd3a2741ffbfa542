"""Where the pipeline reads and writes, taken from the environment.

One place decides between the embedded default (everything under a local home directory,
CPU, offline weights) and production (S3 buckets, GPU, open_clip weights); `definitions.py`
turns these settings into resources. Every variable is documented in README.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path.home() / ".dermacurate"
EXECUTORS = ("in_process", "multiprocess", "k8s")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


@dataclass(frozen=True)
class Settings:
    environment: str
    home: Path
    dumps: str
    backup: str
    curated: str
    storage: str
    cache_dir: str
    s3_endpoint_url: str | None
    test_patients_file: str | None
    algo_python: str | None
    embed_backend: str
    embed_model: str
    embed_pretrained: str
    embed_device: str
    gcs_bucket_map: dict[str, str]
    executor: str
    alert_webhook_url: str | None
    smtp_host: str | None
    smtp_port: int
    smtp_user: str | None
    alert_from: str
    alert_to: str
    ui_url: str

    @classmethod
    def from_env(cls) -> Settings:
        environment = _env("DERMACURATE_ENV", "local")
        if environment not in {"local", "production"}:
            raise ValueError(
                f"DERMACURATE_ENV must be 'local' or 'production', not {environment!r}"
            )
        home = Path(_env("DERMACURATE_HOME", str(DEFAULT_HOME))).expanduser().resolve()
        production = environment == "production"
        default_test_patients = home / "source" / "test_patients.json"
        required = {"DERMACURATE_DUMPS", "DERMACURATE_BACKUP", "DERMACURATE_CURATED"}
        missing = sorted(name for name in required if production and not _env(name))
        if missing:
            raise ValueError(f"DERMACURATE_ENV=production needs {', '.join(missing)}")
        executor = _env("DERMACURATE_EXECUTOR", "multiprocess" if production else "in_process")
        if executor not in EXECUTORS:
            raise ValueError(f"DERMACURATE_EXECUTOR must be one of {EXECUTORS}, not {executor!r}")
        return cls(
            environment=environment,
            home=home,
            dumps=_env("DERMACURATE_DUMPS", str(home / "source" / "dumps")),
            backup=_env("DERMACURATE_BACKUP", str(home / "source" / "backup")),
            curated=_env("DERMACURATE_CURATED", str(home / "curated")),
            storage=_env("DERMACURATE_STORAGE", str(home / "storage")),
            cache_dir=_env("DERMACURATE_CACHE", str(home / "cache")),
            s3_endpoint_url=_env("DERMACURATE_S3_ENDPOINT_URL"),
            test_patients_file=_env("DERMACURATE_TEST_PATIENTS", _existing(default_test_patients)),
            algo_python=_env("DERMACURATE_ALGO_PYTHON"),
            embed_backend=_env(
                "DERMACURATE_EMBED_BACKEND", "open_clip" if production else "efficientnet_lite0"
            ),
            embed_model=_env("DERMACURATE_EMBED_MODEL", "ViT-B-32"),
            embed_pretrained=_env("DERMACURATE_EMBED_PRETRAINED", "laion2b_s34b_b79k"),
            embed_device=_env("DERMACURATE_EMBED_DEVICE", "auto"),
            gcs_bucket_map=json.loads(_env("DERMACURATE_GCS_MAP", "{}")),
            executor=executor,
            alert_webhook_url=_env("DERMACURATE_ALERT_WEBHOOK"),
            smtp_host=_env("DERMACURATE_SMTP_HOST"),
            smtp_port=int(_env("DERMACURATE_SMTP_PORT", "587")),
            smtp_user=_env("DERMACURATE_SMTP_USER"),
            alert_from=_env("DERMACURATE_ALERT_FROM", "dermacurate@localhost"),
            alert_to=_env("DERMACURATE_ALERT_TO", ""),
            ui_url=_env("DERMACURATE_UI_URL", "http://127.0.0.1:3000"),
        )
