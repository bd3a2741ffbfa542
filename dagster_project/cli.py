"""`dermacurate`: the same Dagster assets the web UI shows, run from a terminal."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click
import dagster as dg
import polars as pl

from dagster_project.partitions import dump_partitions
from dagster_project.settings import Settings

METADATA_ASSETS = (
    "raw_requests",
    "raw_annotations",
    "disease_codes",
    "normalized_diagnoses",
    "disease_taxonomy",
    "image_records",
)


def _instance(settings: Settings) -> dg.DagsterInstance:
    """The instance `dagster dev` shows: $DAGSTER_HOME, else one under the project's home."""
    if not os.environ.get("DAGSTER_HOME"):
        home = settings.home / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def _root_cause(error) -> str:
    """The user's error (a bad dump line, a missing file), not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def run_dump(
    settings: Settings,
    dump_name: str,
    instance: dg.DagsterInstance,
    assets: tuple[str, ...] | None = None,
    dry_run: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize the build job (or some of its assets) for one dump partition.

    `dry_run` builds everything up to the checks, reports what the copy would do, and
    publishes nothing.
    """
    from dagster_project.definitions import build_definitions

    instance.add_dynamic_partitions(dump_partitions.name, [dump_name])
    job = build_definitions(settings).resolve_job_def("build_dataset")
    result = job.execute_in_process(
        instance=instance,
        partition_key=dump_name,
        run_config={
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
            **({"ops": {"curated_images": {"config": {"dry_run": True}}}} if dry_run else {}),
        },
        asset_selection=[dg.AssetKey(name) for name in assets] if assets else None,
        raise_on_error=False,
    )
    if not result.success:
        failures = [
            f"{event.step_key}: {_root_cause(event.event_specific_data.error)}"
            for event in result.all_events
            if event.is_step_failure
        ]
        raise click.ClickException("run failed:\n" + "\n".join(failures or ["see the run log"]))
    return result


@click.group()
def main() -> None:
    """DermaDetect curated-dataset pipeline."""


@main.command()
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write a new source here."
)
@click.option(
    "--grow",
    "grow_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Add a newer dump (old rows + new requests) to this source.",
)
@click.option(
    "--requests",
    "n_requests",
    default=2000,
    show_default=True,
    help="Requests of a new source, or new requests when growing.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-images", is_flag=True, help="Write the dump only.")
@click.option("--via-postgres", is_flag=True, help="Load a real PostgreSQL and pg_dump it.")
def generate(
    out: Path | None,
    grow_dir: Path | None,
    n_requests: int,
    seed: int,
    no_images: bool,
    via_postgres: bool,
) -> None:
    """Write a synthetic dump, photo backup and ground truth that follow the source contract."""
    from dagster_project import synthetic

    if (out is None) == (grow_dir is None):
        raise click.UsageError("give exactly one of --out and --grow")
    if grow_dir is not None:
        source = synthetic.grow(
            grow_dir, n_requests, seed=seed, images=not no_images, via_postgres=via_postgres
        )
    else:
        source = synthetic.generate(
            out, requests=n_requests, seed=seed, images=not no_images, via_postgres=via_postgres
        )
    click.echo(f"dump:    {source.dump_path}")
    click.echo(f"backup:  {source.backup_dir} ({source.n_images} images written)")
    click.echo(f"truth:   {source.truth_dir}")


@main.command()
@click.argument("dump", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--test-patients", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--algo-python", type=click.Path(exists=True, file_okay=False), default=None)
def parse(dump: Path, out: Path, test_patients: str | None, algo_python: str | None) -> None:
    """Run the metadata stage on DUMP and write image_records.parquet and the raw tables."""
    dump = dump.resolve()
    with tempfile.TemporaryDirectory(prefix="dermacurate-parse-") as scratch:
        settings = replace(
            Settings.from_env(),
            dumps=str(dump.parent),
            storage=scratch,
            test_patients_file=test_patients,
            algo_python=algo_python,
            home=Path(scratch),
        )
        run_dump(settings, dump.name, dg.DagsterInstance.ephemeral(), METADATA_ASSETS)
        out.mkdir(parents=True, exist_ok=True)
        for name in METADATA_ASSETS:
            for stored in Path(scratch).glob(f"{name}/{dump.name}.*"):
                shutil.copyfile(stored, out / f"{name}{stored.suffix}")
    click.echo(f"wrote {out / 'image_records.parquet'} and the raw tables to {out}")


def _latest_dump(settings: Settings) -> str:
    from resources.storage import DumpSource

    dumps = DumpSource(
        uri=settings.dumps,
        endpoint_url=settings.s3_endpoint_url,
        download_dir=str(settings.home / "downloads"),
    ).list_dumps()
    if not dumps:
        raise click.ClickException(f"no dump found in {settings.dumps}")
    return dumps[-1].key


def _build(settings: Settings, dump_name: str | None, dry_run: bool = False) -> None:
    name = dump_name or _latest_dump(settings)
    instance = _instance(settings)
    click.echo(f"building {name} from {settings.dumps}")
    run_dump(settings, name, instance, dry_run=dry_run)
    if dry_run:
        click.echo("dry run: nothing copied, nothing published (see curated_images in the UI)")
    click.echo(f"curated dataset:  {settings.curated}")
    click.echo(f"run history:      DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    dagster = Path(sys.executable).with_name("dagster")
    click.echo(
        f"open the UI with: DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
        f"{dagster} dev -m dagster_project.definitions  (then http://127.0.0.1:3000)"
    )


@main.command()
@click.option("--dump", "dump_name", default=None, help="Dump file name (default: the newest).")
@click.option("--dry-run", is_flag=True, help="Build and check; report the copy; publish nothing.")
def build(dump_name: str | None, dry_run: bool) -> None:
    """Build and publish the dataset version of a dump in the configured location."""
    _build(Settings.from_env(), dump_name, dry_run)


@main.command()
@click.option("--requests", "n_requests", default=1500, show_default=True)
@click.option("--seed", default=0, show_default=True)
def demo(n_requests: int, seed: int) -> None:
    """Generate the embedded synthetic source (once) and build the dataset from it."""
    settings = Settings.from_env()
    source_dir = settings.home / "source"
    if not any(Path(settings.dumps).glob("*.sql")):
        from dagster_project.synthetic import generate as generate_source

        click.echo(f"generating a synthetic source ({n_requests} requests) in {source_dir}")
        generate_source(source_dir, requests=n_requests, seed=seed)
        settings = Settings.from_env()
    _build(settings, None)


@main.command()
@click.option(
    "--metadata",
    "metadata_csv",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="CSV with the id column and the group column.",
)
@click.option(
    "--split",
    "split_csv",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="CSV image_id,split (or split,index,image_id).",
)
@click.option("--group-col", required=True, help="The group column: lesion, patient, ...")
@click.option("--id-col", default="image_id", show_default=True)
@click.option(
    "--pairs",
    "pairs_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Known duplicate pairs image_a,image_b (a CSV or a folder of CSVs).",
)
@click.option(
    "--default-split",
    type=click.Choice(["train", "val", "test"]),
    default=None,
    help="Split of metadata images the split file does not list.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def audit(
    metadata_csv: str,
    split_csv: str,
    group_col: str,
    id_col: str,
    pairs_paths: tuple[str, ...],
    default_split: str | None,
    out: Path,
) -> None:
    """Audit any dataset's split for group and duplicate leaks, and write a corrected split."""
    from dagster_project.audit import audit_split, read_pairs_csv, read_split_csv, write_report

    report = audit_split(
        pl.read_csv(metadata_csv, infer_schema=False),
        read_split_csv(split_csv, id_col),
        group_col=group_col,
        id_col=id_col,
        pairs=read_pairs_csv(*pairs_paths) if pairs_paths else None,
        default_split=default_split,
    )
    write_report(report, out)
    state = "clean" if report.leaks.clean else "LEAKS FOUND"
    click.echo(
        f"{state}: report in {out / 'report.md'}; corrected split in {out / 'corrected_split.csv'}"
    )


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option(
    "--backend",
    type=click.Choice(["efficientnet_lite0", "open_clip"]),
    default="efficientnet_lite0",
    show_default=True,
)
@click.option("--model", default="ViT-B-32", show_default=True, help="open_clip model.")
@click.option(
    "--pretrained",
    default="laion2b_s34b_b79k",
    show_default=True,
    help="open_clip weights tag or local file.",
)
@click.option("--phash-max-distance", type=int, default=None)
@click.option("--cosine-threshold", type=float, default=None)
@click.option("--workers", default=8, show_default=True)
def dedup(
    folder: Path,
    out: Path,
    backend: str,
    model: str,
    pretrained: str,
    phash_max_distance: int | None,
    cosine_threshold: float | None,
    workers: int,
) -> None:
    """Find exact and near-duplicate photos in any FOLDER (e.g. a public dataset)."""
    from dagster_project.images.dedup import DedupConfig
    from dagster_project.images.embed import Embedder, EmbedderConfig
    from dagster_project.images.folder import dedup_folder

    embedder = Embedder(EmbedderConfig(backend=backend, model=model, pretrained=pretrained))
    config = DedupConfig.calibrated(phash_max_distance, cosine_threshold)
    found = dedup_folder(folder, embedder, config, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    found.files.write_parquet(out / "image_files.parquet")
    found.pairs.write_parquet(out / "duplicate_pairs.parquet")
    found.clusters.write_parquet(out / "duplicate_clusters.parquet")
    statuses = dict(found.files["status"].value_counts().iter_rows())
    kinds = dict(found.pairs["kind"].value_counts().iter_rows())
    multi = found.clusters.filter(pl.col("cluster_size") > 1)
    click.echo(f"files: {found.files.height} {statuses}")
    click.echo(f"duplicate pairs: {found.pairs.height} {kinds}")
    click.echo(
        f"clusters with copies: {multi['cluster_id'].n_unique()} holding {multi.height} files"
    )
    click.echo(f"model: {embedder.model_id}; wrote {out}")
