"""`dermacurate parse` on dumps it has never seen, made by the real pg_dump.

The expectation is the generator's ground truth: it decides each clean value first and only
then writes it messily into the database, so it is independent of the parser and flattener.
"""

from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from pii_scan import pii_found, planted_pii
from polars.testing import assert_frame_equal

from dagster_project.cli import main
from dagster_project.schema import IMAGE_RECORDS_SCHEMA
from dagster_project.synthetic import generate

FORMATS = {
    "plain.sql": [],
    "custom.dump": ["-Fc"],
    "inserts.sql": ["--inserts"],
    "column_inserts.sql": ["--column-inserts", "--rows-per-insert=7"],
}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, postgres):
    """One synthetic database, restored into PostgreSQL, dumped in every format."""
    root = tmp_path_factory.mktemp("parse")
    source = generate(root / "source", requests=160, seed=23, images=False, via_postgres=True)
    postgres.psql("CREATE ROLE dd_api; CREATE ROLE readonly;")
    postgres.create_database("dd_api")
    postgres.psql_file(source.dump_path, "dd_api")
    made = {"plain.sql.gz": _gzip(source.dump_path, root / "dumps" / "plain.sql.gz")}
    for name, args in FORMATS.items():
        made[name] = postgres.pg_dump("dd_api", root / "dumps" / name, args)
    return source, made


def _gzip(src: Path, dest: Path) -> Path:
    import gzip

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as raw, gzip.open(dest, "wb") as packed:
        packed.write(raw.read())
    return dest


@pytest.mark.parametrize("fmt", [*FORMATS, "plain.sql.gz"])
def test_parse_matches_the_independent_expectation(dumps, fmt, tmp_path):
    source, made = dumps
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "parse",
            str(made[fmt]),
            "--out",
            str(out),
            "--test-patients",
            str(source.test_patients_path),
        ],
    )
    assert result.exit_code == 0, result.output
    records = pl.read_parquet(out / "image_records.parquet")
    expected = pl.read_parquet(source.truth_dir / "expected_image_records.parquet")
    assert records.schema == pl.Schema(IMAGE_RECORDS_SCHEMA)
    assert records.height == expected.height > 100
    keys = ["case_uuid", "image_uuid"]
    assert_frame_equal(records.sort(keys), expected.sort(keys), check_exact=False, rel_tol=1e-9)
    outputs = sorted(out.iterdir())
    assert {p.name for p in outputs} >= {
        "image_records.parquet",
        "raw_requests.parquet",
        "raw_annotations.parquet",
        "disease_codes.parquet",
        "normalized_diagnoses.parquet",
        "disease_taxonomy.json",
    }
    assert pii_found(outputs, planted_pii(source.truth_dir)) == []
    for pii_column in ("modified_by", "free_text", "user_crypt", "headers"):
        for path in outputs:
            if path.suffix == ".parquet":
                assert pii_column not in pl.read_parquet_schema(path), (path, pii_column)


def test_parse_of_a_truncated_dump_names_table_and_line_and_writes_nothing(dumps, tmp_path):
    source, made = dumps
    lines = made["plain.sql"].read_text().splitlines(keepends=True)
    header = next(i for i, line in enumerate(lines) if line.startswith("COPY public.rn_requests"))
    truncated = tmp_path / "dd_api-truncated.sql"
    truncated.write_text("".join(lines[: header + 5]))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["parse", str(truncated), "--out", str(out)])
    assert result.exit_code != 0
    assert f"table public.rn_requests, line {header + 1}" in result.output
    assert "truncated" in result.output
    assert not (out / "image_records.parquet").exists()
