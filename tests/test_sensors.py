"""The dump sensor's cursor, the sensor on a watched directory, check alerts, the channels."""

import json
import os
import socketserver
import threading
from datetime import UTC, datetime

import dagster as dg
from webhook import webhook_receiver

from dagster_project.alerts import Alert
from dagster_project.sensors import DumpCursor, check_failure_alerts, dump_sensor, run_ends_after
from dagster_project.storage import ObjectStat
from resources.alerts import AlertNotifier
from resources.storage import DumpSource


def _stat(key: str, second: int) -> ObjectStat:
    return ObjectStat(
        key=key, size=1, last_modified=datetime.fromtimestamp(second, UTC), version=str(second)
    )


def test_cursor_processes_each_dump_once_including_same_second_arrivals():
    cursor = DumpCursor()
    fresh, cursor = cursor.advance([_stat("a.sql", 100)])
    assert [s.key for s in fresh] == ["a.sql"]
    # b lands in the same second as a, after the first tick: it must still be picked up.
    fresh, cursor = cursor.advance([_stat("a.sql", 100), _stat("b.sql", 100)])
    assert [s.key for s in fresh] == ["b.sql"]
    fresh, cursor = cursor.advance([_stat("a.sql", 100), _stat("b.sql", 100)])
    assert fresh == []
    fresh, cursor = DumpCursor.parse(cursor.dump()).advance(
        [_stat("a.sql", 100), _stat("b.sql", 100), _stat("c.sql", 101), _stat("d.sql", 101)]
    )
    assert [s.key for s in fresh] == ["c.sql", "d.sql"]
    assert cursor.advance([_stat("c.sql", 101), _stat("d.sql", 101)])[0] == []


def test_dump_sensor_adds_partitions_and_requests_runs(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "dd_api-2026_01_01_00_00_00.sql").write_text("--")
    (dumps / "notes.txt").write_text("not a dump")
    resource = DumpSource(uri=str(dumps), download_dir=str(tmp_path / "dl"))
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"dumps": resource})
        result = dump_sensor(context)
        assert [r.partition_key for r in result.run_requests] == ["dd_api-2026_01_01_00_00_00.sql"]
        assert result.dynamic_partitions_requests[0].partition_keys == [
            "dd_api-2026_01_01_00_00_00.sql"
        ]
        (dumps / "dd_api-2026_02_01_00_00_00.sql.gz").write_bytes(b"\x1f\x8b")
        later = os.path.getmtime(dumps / "dd_api-2026_01_01_00_00_00.sql") + 5
        os.utime(dumps / "dd_api-2026_02_01_00_00_00.sql.gz", (later, later))
        context = dg.build_sensor_context(
            instance=instance, resources={"dumps": resource}, cursor=result.cursor
        )
        second = dump_sensor(context)
        assert [r.partition_key for r in second.run_requests] == [
            "dd_api-2026_02_01_00_00_00.sql.gz"
        ]


@dg.asset
def _table() -> int:
    return 1


@dg.asset_check(asset=_table, blocking=True)
def _no_leak() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description="found john.doe@example.org",
        metadata={"sample": "john.doe@example.org"},
    )


@dg.asset_check(asset=_table)
def _ratio() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset=_table)
def _fine() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[dict], str | None]:
    """One sensor evaluation on a fresh context, as after a daemon restart; (alerts, cursor)."""
    with webhook_receiver() as (url, payloads):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"alerts": AlertNotifier(webhook_url=url)}
        )
        check_failure_alerts(context)
    return payloads, context.cursor


def test_each_failed_check_is_alerted_once_without_its_data():
    with dg.instance_for_test() as instance:
        first = dg.materialize(
            [_table, _no_leak, _ratio, _fine], instance=instance, raise_on_error=False
        )
        assert not first.success  # the blocking failure fails the run
        alerts, cursor = _tick(instance, None)
        assert sorted((a["check"], a["severity"], a["run_id"]) for a in alerts) == [
            ("_no_leak", "ERROR", first.run_id),
            ("_ratio", "WARN", first.run_id),
        ]
        assert {a["asset"] for a in alerts} == {"_table"}
        assert all("john.doe" not in json.dumps(a) for a in alerts)
        assert _tick(instance, cursor)[0] == []
        second = dg.materialize([_table, _ratio, _fine], instance=instance)
        alerts, cursor = _tick(instance, cursor)
        assert [(a["check"], a["run_id"]) for a in alerts] == [("_ratio", second.run_id)]
        assert _tick(instance, cursor)[0] == []


def test_run_ends_are_merged_across_end_statuses_in_order():
    with dg.instance_for_test() as instance:
        failed = dg.materialize([_table, _no_leak], instance=instance, raise_on_error=False)
        succeeded = dg.materialize([_table, _fine], instance=instance)
        [first] = run_ends_after(instance, None, 1)
        [second] = run_ends_after(instance, first.storage_id, 1)
        assert (first.run_id, second.run_id) == (failed.run_id, succeeded.run_id)
        assert run_ends_after(instance, second.storage_id, 5) == []


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to accept one message."""

    messages: list = []

    def handle(self):
        self.wfile.write(b"220 test\r\n")
        data_mode, lines = False, []
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if data_mode:
                if line == ".":
                    data_mode = False
                    _SmtpHandler.messages.append("\n".join(lines))
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line)
                continue
            verb = line.split(" ")[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250 test\r\n")
            elif verb == "DATA":
                data_mode = True
                self.wfile.write(b"354 go\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def _alert() -> Alert:
    return Alert(
        kind="check_failed",
        title="check no_split_leaks failed on manifest",
        asset="manifest",
        check="no_split_leaks",
        partition="dd_api-x.sql",
        run_id="abc",
        run_url="http://127.0.0.1:3000/runs/abc",
        severity="ERROR",
        description="Blocking: nothing was published.",
    )


def test_alert_reaches_webhook_and_email():
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    try:
        with webhook_receiver() as (url, payloads):
            notifier = AlertNotifier(
                webhook_url=url,
                smtp_host="127.0.0.1",
                smtp_port=smtp.server_address[1],
                mail_to="maintainer@example.org",
            )
            assert notifier.notify(_alert()) == ["webhook", "email"]
    finally:
        smtp.shutdown()
        smtp.server_close()
    payload = payloads[-1]
    assert payload["check"] == "no_split_leaks" and payload["partition"] == "dd_api-x.sql"
    assert payload["run_url"].endswith("/runs/abc")
    assert "no_split_leaks" in _SmtpHandler.messages[-1]
    assert "maintainer@example.org" in _SmtpHandler.messages[-1]
