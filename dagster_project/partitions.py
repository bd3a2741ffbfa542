"""One dynamic partition per source dump: each dump builds one dataset version."""

import dagster as dg

dump_partitions = dg.DynamicPartitionsDefinition(name="dumps")
