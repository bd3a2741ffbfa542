"""Automation: rebuild when a dump lands, re-check nightly, alert on failures."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from dagster_project.alerts import Alert
from dagster_project.partitions import dump_partitions
from dagster_project.storage import ObjectStat
from resources.alerts import AlertNotifier
from resources.storage import DumpSource

build_dataset_job = dg.define_asset_job(
    "build_dataset",
    selection=dg.AssetSelection.all(),
    description="Parse a dump and publish the curated dataset version it yields.",
)
recheck_job = dg.define_asset_job(
    "recheck_current_version",
    selection=dg.AssetSelection.checks_for_assets(dg.AssetKey("manifest")),
    description="Re-run the manifest checks of the newest dump's dataset.",
)


@dataclass(frozen=True)
class DumpCursor:
    """A watermark on last-modified time, plus the keys seen at that instant.

    Keeping the keys at the watermark means two dumps landing in the same second are both
    processed, and none twice.
    """

    watermark: float = 0.0
    keys_at_watermark: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> DumpCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(float(data["watermark"]), tuple(data["keys"]))

    def dump(self) -> str:
        return json.dumps({"watermark": self.watermark, "keys": sorted(self.keys_at_watermark)})

    def advance(self, stats: Iterable[ObjectStat]) -> tuple[list[ObjectStat], DumpCursor]:
        seen = set(self.keys_at_watermark)
        fresh = sorted(
            (
                stat
                for stat in stats
                if stat.last_modified.timestamp() > self.watermark
                or (stat.last_modified.timestamp() == self.watermark and stat.key not in seen)
            ),
            key=lambda stat: (stat.last_modified, stat.key),
        )
        if not fresh:
            return [], self
        newest = max(stat.last_modified.timestamp() for stat in fresh)
        at_newest = {stat.key for stat in fresh if stat.last_modified.timestamp() == newest}
        if newest == self.watermark:
            at_newest |= seen
        return fresh, DumpCursor(newest, tuple(sorted(at_newest)))


@dg.sensor(
    job=build_dataset_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new dump file and starts its build.",
)
def dump_sensor(context: dg.SensorEvaluationContext, dumps: DumpSource) -> dg.SensorResult:
    fresh, cursor = DumpCursor.parse(context.cursor).advance(
        stat for stat in dumps.list_dumps() if "/" not in stat.key
    )
    if not fresh:
        return dg.SensorResult(skip_reason="no new dump", cursor=cursor.dump())
    keys = [stat.key for stat in fresh]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key, run_key=key) for key in keys],
        dynamic_partitions_requests=[dump_partitions.build_add_request(keys)],
        cursor=cursor.dump(),
    )


@dg.schedule(
    job=recheck_job, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
def nightly_recheck(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Re-checks the dataset of the newest dump, so a rule added since is applied to it."""
    partitions = context.instance.get_dynamic_partitions(dump_partitions.name)
    if not partitions:
        return dg.SkipReason("no dump has been built yet")
    return dg.RunRequest(partition_key=partitions[-1])


RUN_ENDS = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)
RUNS_PER_TICK = 100


def run_ends_after(
    instance: dg.DagsterInstance, after_storage_id: int | None, limit: int
) -> list[dg.EventLogRecord]:
    """The first `limit` run-end events after `after_storage_id`, oldest first.

    Each end status is fetched up to `limit`, so the first `limit` of the merge are the first
    overall.
    """
    records = [
        record
        for event_type in RUN_ENDS
        for record in instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type, after_storage_id=after_storage_id),
            limit=limit,
            ascending=True,
        ).records
    ]
    return sorted(records, key=lambda record: record.storage_id)[:limit]


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Notifies maintainers of every failed asset check, once its run has ended.",
)
def check_failure_alerts(context: dg.SensorEvaluationContext, alerts: AlertNotifier) -> None:
    """One alert per failed check evaluation, read run by run once the run has ended.

    Dagster's supported reads of check evaluations are per run (reading them across runs,
    `get_event_records`, goes in 2.0), so the cursor is the storage id of the last run-end event
    handled: a run's evaluations are all stored before its end event, and each run ends once.
    """
    after = int(context.cursor) if context.cursor else None
    for run_end in run_ends_after(context.instance, after, RUNS_PER_TICK):
        evaluations = context.instance.get_records_for_run(
            run_end.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        for record in evaluations:
            evaluation = record.event_log_entry.get_dagster_event().asset_check_evaluation_data
            if not evaluation.passed:
                alerts.notify(_check_alert(evaluation, run_end.run_id, alerts), context.log)
        context.update_cursor(str(run_end.storage_id))


def _check_alert(evaluation: dg.AssetCheckEvaluation, run_id: str, alerts: AlertNotifier) -> Alert:
    """Names only: the evaluation's metadata may quote the data, so it never goes out."""
    asset = evaluation.asset_key.to_user_string()
    return Alert(
        kind="check_failed",
        title=f"check {evaluation.check_name} failed on {asset}",
        asset=asset,
        check=evaluation.check_name,
        partition=evaluation.partition,
        run_id=run_id,
        run_url=alerts.run_url(run_id),
        severity=evaluation.severity.value,
        description=(
            "Blocking: nothing was published."
            if evaluation.blocking
            else "Warning: the version was published."
        ),
    )


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Notifies maintainers of every failed run.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertNotifier) -> None:
    run = context.dagster_run
    failed_steps = sorted({event.step_key for event in context.get_step_failure_events()})
    alerts.notify(
        Alert(
            kind="run_failed",
            title=f"run of {run.job_name} failed",
            asset=None,
            check=None,
            partition=run.tags.get("dagster/partition"),
            run_id=run.run_id,
            run_url=alerts.run_url(run.run_id),
            severity="ERROR",
            description="Failed steps: " + (", ".join(failed_steps) or "none (run-level failure)"),
        ),
        context.log,
    )
