"""Stage `source`: the three tables this project needs, read from a dump in one pass."""

from collections.abc import Iterator

import dagster as dg

from assets.common import DUMP_PARTITIONED, counts_metadata
from dagster_project.source import read_source
from resources.storage import DumpSource


@dg.multi_asset(
    outs={
        "raw_requests": dg.AssetOut(
            description="One row per request, request JSON flattened, PII keys never read.",
            kinds={"polars"},
        ),
        "raw_annotations": dg.AssetOut(
            description="Dermatologist annotations (without modified_by and free_text).",
            kinds={"polars"},
        ),
        "disease_codes": dg.AssetOut(
            description="The Maccabi ICD-9 coding system.", kinds={"polars"}
        ),
    },
    group_name="source",
    **DUMP_PARTITIONED,
)
def source_tables(context: dg.AssetExecutionContext, dumps: DumpSource) -> Iterator[dg.Output]:
    """Streams the dump once: it holds many other tables, some far larger than these."""
    path = dumps.local_path(context.partition_key)
    tables = read_source(path)
    context.log.info(f"parsed {path.name}: {dict(sorted(tables.counts.items()))}")
    yield dg.Output(
        tables.requests,
        "raw_requests",
        metadata={"dump": path.name, **counts_metadata(tables.counts)},
    )
    yield dg.Output(tables.annotations, "raw_annotations", metadata={"dump": path.name})
    yield dg.Output(tables.disease_codes, "disease_codes", metadata={"dump": path.name})
