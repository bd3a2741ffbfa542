"""The ground truth of a synthetic source, recorded while it is generated.

The expected image records are written from the clean values the generator decided before
it spelled them messily, never by reading the dump back, so they are an independent check
of the pipeline's metadata stage.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from dagster_project.schema import IMAGE_RECORDS_SCHEMA

_CHUNK_ROWS = 20_000
PII_FILE = "pii_strings.txt"
PARAMS_FILE = "params.json"
TRUTH_FILES = (
    "expected_image_records.parquet",
    "planted_duplicates.parquet",
    "bad_images.parquet",
    PII_FILE,
    PARAMS_FILE,
)


class PiiLog:
    """Every PII string planted, one a line (multi-line texts line by line), for the tests
    that grep outputs for leaks. Written as generated, so memory stays flat."""

    def __init__(self, truth_dir: Path) -> None:
        truth_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(truth_dir / PII_FILE, "w", encoding="utf-8")  # noqa: SIM115

    def add(self, *values: str) -> None:
        for value in values:
            self._file.writelines(
                f"{line.strip()}\n" for line in value.splitlines() if line.strip()
            )

    def __enter__(self) -> PiiLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._file.close()


class TruthTable:
    """Expected image records, accumulated in compact chunks."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._chunks: list[pl.DataFrame] = []

    def add(
        self,
        *,
        image_uuid: str,
        case_uuid: str,
        patient_id: int,
        labels: list[str],
        icd9: str | None,
        metadata: dict[str, Any],
        vendor_id: str,
        modified_at: dt.datetime | None,
        source_gcs_path: str,
    ) -> None:
        self._rows.append(
            {
                "image_uuid": image_uuid,
                "case_uuid": case_uuid,
                "patient_id": patient_id,
                "diagnosis": labels[0],
                "diagnosis_icd9": icd9,
                "diagnoses_all": labels,
                **metadata,
                "vendor_id": vendor_id,
                "modified_at": modified_at,
                "source_gcs_path": source_gcs_path,
            }
        )
        if len(self._rows) >= _CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._chunks.append(pl.DataFrame(self._rows, schema=IMAGE_RECORDS_SCHEMA))
            self._rows = []

    def frame(self) -> pl.DataFrame:
        """All rows, in the contract's order: by case_uuid, then image_uuid."""
        self._flush()
        frame = (
            pl.concat(self._chunks) if self._chunks else pl.DataFrame(schema=IMAGE_RECORDS_SCHEMA)
        )
        return frame.sort("case_uuid", "image_uuid")


def write_truth(
    truth_dir: Path,
    records: pl.DataFrame,
    duplicates: dict[str, tuple[str, str]],
    bad: dict[str, str],
    params: dict[str, Any],
) -> None:
    """Write the expected records, planted duplicates, broken files and the parameters that
    regenerate the dump (see the package doc)."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
    records.write_parquet(truth_dir / "expected_image_records.parquet")
    pl.DataFrame(
        {
            "image_uuid": list(duplicates),
            "original_uuid": [o for o, _ in duplicates.values()],
            "transform": [t for _, t in duplicates.values()],
        },
        schema={"image_uuid": pl.String, "original_uuid": pl.String, "transform": pl.String},
    ).write_parquet(truth_dir / "planted_duplicates.parquet")
    pl.DataFrame(
        {"image_uuid": list(bad), "expected_status": list(bad.values())},
        schema={"image_uuid": pl.String, "expected_status": pl.String},
    ).write_parquet(truth_dir / "bad_images.parquet")


def promote(dump_truth: Path, truth_dir: Path) -> None:
    """Copy one dump's truth to the top of `truth_dir`, which describes the newest dump."""
    for name in TRUTH_FILES:
        shutil.copyfile(dump_truth / name, truth_dir / name)
