"""A synthetic DermaDetect source: pg_dumps, their photo backup, and the ground truth.

`generate(out)` writes, under `out`:

- `dumps/dd_api-<YYYY_MM_DD_HH_MM_SS>.sql`: a plain-format dump as PostgreSQL 15's
  pg_dump writes it (with `via_postgres=True`, written by the real pg_dump), holding
  `rn_requests`, `dermatologist_annotation`, `disease_codes` and unrelated PII-laden tables
  (`users`, `sessions`, `request_logs`, the largest);
- `backup/<gcs bucket>/<prefix>/<image_uuid>.jpg`: the photos, as the GCS mirror holds them;
- `test_patients.json`: the configured list of test-account patient ids;
- `truth/`: what a correct pipeline must find in the newest dump, recorded when the values
  were decided: `expected_image_records.parquet` (schema.IMAGE_RECORDS_SCHEMA, ordered by
  case_uuid, image_uuid), `planted_duplicates.parquet` (image_uuid, original_uuid,
  transform), `bad_images.parquet` (image_uuid, expected_status), `pii_strings.txt` (every
  PII string planted, one a line, for leak tests) and `params.json` (the parameters that
  regenerate the dump: `first_request_id`, `duplicates` where not the default (see
  `Planting`), and, per dump, oldest first, `requests`, `seed`, `images`, `dump_name`);
- `truth/by_dump/<dump file name>/`: the same five files for each dump ever written there.

`grow(out, extra_requests)` writes the next dump of the same service into `out/dumps/` (a
later timestamp in its name): every row of the newest dump, unchanged and in the same order,
then the new rows (see `growth`): new requests of new and returning patients, new reviews
(some of older cases: their labels change, or they leave or join the dataset), new photos
into the same backup (older photos are not touched) with planted duplicates among them,
some of them copies of older photos by other patients. It regenerates the older dumps'
population from `truth/params.json`, never by reading a dump, then rewrites
`test_patients.json` (every test account so far: valid for the older dumps too) and
`truth/`, and adds `truth/by_dump/<new dump>/`. It can be called again on its own output.
`planted_duplicates` and `bad_images` of a dump cover the photos of every dump up to it;
planted copies and their originals always stay in the expected records.

Everything is deterministic for the recorded parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from dagster_project.synthetic.database import write_database
from dagster_project.synthetic.diseases import load_vocabulary
from dagster_project.synthetic.dump_writer import DumpWriter, PostgresLoader, restrict_key
from dagster_project.synthetic.growth import grow_population, plant_old_copies
from dagster_project.synthetic.images import write_backup
from dagster_project.synthetic.population import (
    Case,
    Population,
    build_population,
    pick_bad_images,
    plant_duplicates,
)
from dagster_project.synthetic.truth import PARAMS_FILE, PiiLog, TruthTable, promote, write_truth

__all__ = ["GeneratedSource", "Planting", "generate", "grow"]

Planted = dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Planting:
    """How many duplicates to plant: `rate` of the photos (each photo copied at most once),
    with transforms by their weight in uploads or, `even_transforms`, equally often. More
    than the default serves to measure duplicate detection per transform."""

    rate: float = 0.03
    even_transforms: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"duplicate rate must be in [0, 1], not {self.rate}")


@dataclass(frozen=True)
class GeneratedSource:
    """Where a dump and its truth were written; `n_requests` counts the dump's requests and
    `n_images` the files this call wrote into the backup."""

    dump_path: Path
    backup_dir: Path
    test_patients_path: Path
    truth_dir: Path
    n_requests: int
    n_images: int


@dataclass(frozen=True)
class _Dump:
    """One entry of params.json: how a dump's new requests were drawn."""

    requests: int
    seed: int
    images: bool
    dump_name: str


@dataclass
class _History:
    """The population of every dump so far and, per dump, what it planted."""

    population: Population
    keys: list[str]
    duplicates: list[Planted]
    bad: list[dict[str, str]]
    moment: dt.datetime  # when the newest dump was taken

    def all_duplicates(self) -> Planted:
        return {copy: item for planted in self.duplicates for copy, item in planted.items()}

    def all_bad(self) -> dict[str, str]:
        return {image: status for bad in self.bad for image, status in bad.items()}


def _involved(duplicates: Planted) -> set[str]:
    return set(duplicates) | {original for original, _ in duplicates.values()}


def _moment(cases: list[Case]) -> dt.datetime:
    """The dump is taken at 03:00 the day after its last request."""
    last = cases[-1].created_at + dt.timedelta(days=1)
    return last.replace(hour=3, minute=0, second=0, microsecond=0)


def _history(first_request_id: int, dumps: list[tuple[int, int]], planting: Planting) -> _History:
    """Draw the population of each (requests, seed) in turn: `generate`'s, then each growth."""
    (requests, seed), *growths = dumps
    key = f"{seed}/{first_request_id}"
    population = build_population(
        requests, random.Random(f"{key}/population"), load_vocabulary(), first_request_id
    )
    plan = random.Random(f"{key}/plan")
    duplicates = plant_duplicates(population.cases, plan, planting.rate, planting.even_transforms)
    history = _History(
        population,
        [key],
        [duplicates],
        [pick_bad_images(population.cases, _involved(duplicates), plan)],
        _moment(population.cases),
    )
    for step, (extra, grow_seed) in enumerate(growths, start=1):
        step_key = f"{key}/grow{step}/{grow_seed}"
        older = list(population.cases)
        new = grow_population(
            population,
            extra,
            random.Random(f"{step_key}/population"),
            step,
            history.moment,
            _involved(history.all_duplicates()),
        )
        plan = random.Random(f"{step_key}/plan")
        duplicates = plant_duplicates(new, plan, planting.rate, planting.even_transforms)
        duplicates |= plant_old_copies(older, new, set(history.all_bad()), plan)
        history.keys.append(step_key)
        history.duplicates.append(duplicates)
        history.bad.append(pick_bad_images(new, _involved(duplicates), plan))
        history.moment = _moment(new)
    return history


def _write(
    out: Path,
    first_request_id: int,
    dumps: list[_Dump],
    history: _History,
    via_postgres: bool,
    planting: Planting,
) -> GeneratedSource:
    """Write the newest dump of `history`, its new photos and its truth (see module doc)."""
    name = dumps[-1].dump_name
    dump_path = out / "dumps" / name
    truth_dir = out / "truth"
    dump_truth = truth_dir / "by_dump" / name
    population, keys = history.population, history.keys
    truth = TruthTable()
    sink: DumpWriter | PostgresLoader = PostgresLoader() if via_postgres else DumpWriter()
    with PiiLog(dump_truth) as pii:
        files = write_database(population, sink, truth, pii, keys)
    if isinstance(sink, PostgresLoader):
        sink.finish(dump_path)
    else:
        sink.finish(dump_path, restrict_key(random.Random(f"{keys[-1]}/restrict")))
    test_patients_path = out / "test_patients.json"
    test_patients_path.write_text(json.dumps(population.test_patient_ids) + "\n")
    backup_dir = out / "backup"
    backup_dir.mkdir(parents=True, exist_ok=True)
    n_images = 0
    if dumps[-1].images:
        step = len(keys) - 1
        new = {i for c in population.cases if c.step == step for i in c.images + c.duplicates}
        key_of = {i: keys[c.step] for c in population.cases if c.step < step for i in c.images}
        n_images = write_backup(
            backup_dir,
            {image: path for image, path in files.items() if image in new},
            history.duplicates[-1],
            history.bad[-1],
            keys[-1],
            key_of,
        )
    params: dict[str, object] = {"first_request_id": first_request_id}
    if planting != Planting():  # absent by default: default outputs stay unchanged
        params["duplicates"] = asdict(planting)
    params["dumps"] = [asdict(dump) for dump in dumps]
    write_truth(dump_truth, truth.frame(), history.all_duplicates(), history.all_bad(), params)
    promote(dump_truth, truth_dir)
    return GeneratedSource(
        dump_path, backup_dir, test_patients_path, truth_dir, len(population.cases), n_images
    )


def _dump_name(moment: dt.datetime) -> str:
    return f"dd_api-{moment:%Y_%m_%d_%H_%M_%S}.sql"


def generate(
    out: Path,
    requests: int = 2000,
    seed: int = 0,
    images: bool = True,
    via_postgres: bool = False,
    dump_name: str | None = None,
    first_request_id: int = 1,
    duplicates: Planting = Planting(),
) -> GeneratedSource:
    """Write a synthetic dump, photo backup and ground truth under `out` (see module doc).

    `via_postgres` loads the rows into a throwaway PostgreSQL and writes the dump with the
    real pg_dump (needs PostgreSQL binaries and psycopg); `images=False` writes no photos
    (the truth still says which ones exist); `first_request_id` starts the id ranges, so two
    sources generated with different values do not collide; `duplicates` says how many
    re-uploads to plant, here and in later growths.
    """
    history = _history(first_request_id, [(requests, seed)], duplicates)
    dump = _Dump(requests, seed, images, dump_name or _dump_name(history.moment))
    return _write(Path(out), first_request_id, [dump], history, via_postgres, duplicates)


def grow(
    source_dir: Path,
    extra_requests: int,
    seed: int = 1,
    images: bool = True,
    dump_name: str | None = None,
    via_postgres: bool = False,
) -> GeneratedSource:
    """Write the next dump of the source under `source_dir`: the newest dump's rows plus
    `extra_requests` new requests and what comes with them (see module doc).

    `dump_name` must sort after every earlier dump's name (the default does: it is dated
    the day after the new requests).
    """
    source_dir = Path(source_dir)
    params_path = source_dir / "truth" / PARAMS_FILE
    if not params_path.exists():
        raise FileNotFoundError(f"{params_path} is missing: grow needs a source from generate")
    params = json.loads(params_path.read_text())
    dumps = [_Dump(**dump) for dump in params["dumps"]]
    first_request_id = params["first_request_id"]
    planting = Planting(**params.get("duplicates", {}))
    history = _history(
        first_request_id,
        [(d.requests, d.seed) for d in dumps] + [(extra_requests, seed)],
        planting,
    )
    name = dump_name or _dump_name(history.moment)
    if any(name <= dump.dump_name for dump in dumps):
        raise ValueError(f"dump name {name!r} does not sort after {dumps[-1].dump_name!r}")
    dumps.append(_Dump(extra_requests, seed, images, name))
    return _write(source_dir, first_request_id, dumps, history, via_postgres, planting)
