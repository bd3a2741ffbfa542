"""Search every output file for the PII strings a synthetic source planted."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import polars as pl


def planted_pii(truth_dir: Path) -> list[str]:
    return [line for line in (truth_dir / "pii_strings.txt").read_text().splitlines() if line]


def _text(path: Path) -> str:
    if path.suffix == ".parquet":
        return json.dumps(pl.read_parquet(path).to_dicts(), default=str, ensure_ascii=False)
    return path.read_bytes().decode("utf-8", errors="replace")


def pii_found(paths: Iterable[Path], pii: list[str]) -> list[tuple[str, str]]:
    """(file, planted string) for every planted PII string found in a text or Parquet file."""
    found = []
    for path in paths:
        if path.suffix not in {".parquet", ".json", ".md", ".csv", ".txt"}:
            continue
        text = _text(path)
        found += [(str(path), value) for value in pii if value in text]
    return found
