"""write_datasheet: every section, valid PNGs linked from the markdown, no identity values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from test_stats import CLASSES, make_clusters, make_manifest, make_splits

from dagster_project.datasheet import write_datasheet
from dagster_project.stats import dataset_stats

SECTIONS = (
    "## Motivation",
    "## Composition",
    "### Counts per split",
    "### Classes per split",
    "### Demographics",
    "## Collection process and sources",
    "## Preprocessing, cleaning and labeling",
    "### Disease taxonomy",
    "### Duplicates",
    "### Configuration",
    "## Split policy",
    "## Known limitations",
    "## Uses, distribution and maintenance",
)
DROPS = {"test_account": 17, "no_usable_image": 5, "age_out_of_range": 3}
TAXONOMY = {
    "source": "project dictionary",
    "synonyms": {"plaque psoriasis": "psoriasis"},
    "exclusions": ["unclear image", "test"],
}
CONTEXT = {
    "version": 3,
    "source_dump": "dd_api-2024_05_01_00_00_00.sql.gz",
    "created_at": "2024-05-02T03:04:05+00:00",
    "labels": [*CLASSES, "melasma"],
    "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "duplicate_policy": "collapse_exact",
    "conflict_policy": "keep",
    "cosine_threshold": 0.95,
    "split_ratios": [0.8, 0.1, 0.1],
}


@pytest.fixture(scope="module")
def manifest() -> pl.DataFrame:
    return make_manifest()


@pytest.fixture(scope="module")
def written(manifest: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    stats = dataset_stats(manifest, make_splits(manifest), make_clusters(manifest), DROPS)
    return write_datasheet(manifest, stats, TAXONOMY, tmp_path_factory.mktemp("v3"), CONTEXT)


def test_all_sections_in_order(written: Path) -> None:
    text = written.read_text(encoding="utf-8")
    assert written.name == "datasheet.md"
    assert text.startswith("# DermaDetect curated dataset v3")
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "dd_api-2024_05_01_00_00_00.sql.gz" in text


def test_plots_exist_are_valid_pngs_and_linked(written: Path) -> None:
    text = written.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 4
    for link in links:
        with Image.open(written.parent / link) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(written.parent / link) as image:
            assert image.width > 300 and image.height > 200


def test_class_table_counts(manifest: pl.DataFrame, written: Path) -> None:
    text = written.read_text(encoding="utf-8")
    for name, code in CLASSES.items():
        rows = manifest.filter(pl.col("diagnosis") == name)
        counts = [rows.filter(pl.col("split") == s).height for s in ("train", "val", "test")]
        cells = [name, code or "", *(f"{n:,}" for n in counts), f"{rows.height:,}"]
        assert re.search(r"\|\s*" + r"\s*\|\s*".join(map(re.escape, cells)) + r"\s*\|", text)


def test_drops_config_taxonomy_and_limitations(written: Path) -> None:
    text = written.read_text(encoding="utf-8")
    for reason, n in DROPS.items():
        assert re.search(rf"\|\s*{reason}\s*\|\s*{n}\s*\|", text)
    assert re.search(r"Total: 25\.", text)
    assert re.search(r"\|\s*cosine_threshold\s*\|\s*0\.95\s*\|", text)
    assert re.search(r"\|\s*split_ratios\s*\|\s*\[0\.8, 0\.1, 0\.1\]\s*\|", text)
    assert not re.search(r"\|\s*labels\s*\|", text)
    assert re.search(r"\|\s*synonyms\s*\|\s*1 entries\s*\|", text)
    # melasma is in the label file but has no images at all.
    assert "9 classes of the label file, 1 lack images in some split: melasma." in text


def test_no_identity_values(manifest: pl.DataFrame, written: Path) -> None:
    text = written.read_text(encoding="utf-8")
    for name in ("image_uuid", "case_uuid", "sha256"):
        assert not any(value in text for value in manifest[name].unique())
    assert not any(str(p) in text for p in manifest["patient_id"].unique())
    assert "gs://" not in text


def test_refuses_pii_from_the_context(manifest: pl.DataFrame, tmp_path: Path) -> None:
    stats = dataset_stats(manifest, make_splits(manifest), make_clusters(manifest), DROPS)
    context = {**CONTEXT, "alert_email": "ops@example.org"}
    with pytest.raises(ValueError, match=r"line \d+ holds what looks like e-mail") as error:
        write_datasheet(manifest, stats, TAXONOMY, tmp_path, context)
    assert "example.org" not in str(error.value)
    assert not (tmp_path / "datasheet.md").exists()


def test_missing_context_is_named(manifest: pl.DataFrame, tmp_path: Path) -> None:
    stats = dataset_stats(manifest, make_splits(manifest), make_clusters(manifest), DROPS)
    with pytest.raises(ValueError, match="context lacks source_dump"):
        write_datasheet(manifest, stats, TAXONOMY, tmp_path, {"version": 1})


def test_classes_listed_largest_first_from_reloaded_stats(
    manifest: pl.DataFrame, tmp_path: Path
) -> None:
    stats = dataset_stats(manifest, make_splits(manifest), make_clusters(manifest), DROPS)
    reloaded = json.loads(json.dumps(stats, sort_keys=True))
    text = write_datasheet(manifest, reloaded, TAXONOMY, tmp_path, CONTEXT).read_text("utf-8")
    table = text[text.index("### Classes per split") : text.index("![Class distribution")]
    listed = [line.split("|")[1].strip() for line in table.splitlines()[4:] if line.strip()]
    sizes = manifest["diagnosis"].value_counts()
    expected = sizes.sort(["count", "diagnosis"], descending=[True, False])["diagnosis"]
    assert listed == expected.to_list()


def test_version_is_optional(manifest: pl.DataFrame, tmp_path: Path) -> None:
    stats = dataset_stats(manifest, make_splits(manifest), make_clusters(manifest), DROPS)
    path = write_datasheet(manifest, stats, {}, tmp_path, {"source_dump": "dd_api-x.sql"})
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# DermaDetect curated dataset: datasheet")
    assert "No taxonomy document was given." in text and "Defaults." in text
