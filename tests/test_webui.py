"""The web UI for real: `dagster dev` serves the code location, its dump sensor builds a new
dump through the daemon, and headless Chromium renders the asset graph.

One `dagster dev` (webserver + daemon) serves every test of this module; it is driven over
GraphQL the way the UI drives it. Set DERMACURATE_UPDATE_DOCS=1 to refresh the screenshot
README.md shows (docs/asset_graph.png); CI leaves tracked files alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from expected_graph import ASSETS, CHECKS, SCHEDULES, SENSORS
from PIL import Image, ImageStat
from s3server import _free_port

from dagster_project.synthetic import generate

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "dagster_project.definitions"
REPOSITORY = "__repository__"
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 600
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class DagsterDev:
    """A running `dagster dev` and the dump its source holds."""

    url: str
    dump: str
    log: Path

    def graphql(self, query: str, **variables: object) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _default_signals() -> None:
    """`dagster dev` ignores SIGINT/SIGTERM when inherited as ignored; restore them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _wait_until_loaded(ui: DagsterDev, process: subprocess.Popen) -> None:
    """Wait for the webserver, then for the code location to finish loading."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dagster dev exited:\n{ui.log_tail()}"
        try:
            if requests.get(f"{ui.url}/server_info", timeout=5).ok:
                entries = ui.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
                )["workspaceOrError"]["locationEntries"]
                if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                    return
        except requests.ConnectionError:
            pass
        time.sleep(2)
    raise AssertionError(f"dagster dev not ready in {START_TIMEOUT_S} s:\n{ui.log_tail()}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home = tmp_path_factory.mktemp("webui")
    source = generate(home / "source", requests=60, seed=11)
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Every location derives from DERMACURATE_HOME; nothing inherited may point elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERMACURATE_", "DAGSTER_"))}
    env.update(DERMACURATE_HOME=str(home), DAGSTER_HOME=str(dagster_home), HF_HUB_OFFLINE="1")
    port = _free_port()
    ui = DagsterDev(f"http://127.0.0.1:{port}", source.dump_path.name, home / "dagster_dev.log")
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with ui.log.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_signals,
            start_new_session=True,
        )
    try:
        _wait_until_loaded(ui, process)
        yield ui
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):  # a child left behind
            os.killpg(process.pid, signal.SIGKILL)


def test_the_code_location_shows_every_asset_check_sensor_and_schedule(ui: DagsterDev):
    repository = ui.graphql(
        """query($selector: RepositorySelector!) {
          repositoryOrError(repositorySelector: $selector) {
            __typename
            ... on PythonError { message }
            ... on Repository {
              assetNodes {
                assetKey { path }
                assetChecksOrError { ... on AssetChecks { checks { name } } }
              }
              sensors { name sensorState { status } }
              schedules { name scheduleState { status } }
            }
          }
        }""",
        selector={"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION},
    )["repositoryOrError"]
    assert repository["__typename"] == "Repository", repository
    nodes = repository["assetNodes"]
    assert {"/".join(node["assetKey"]["path"]) for node in nodes} == ASSETS
    checks = {check["name"] for node in nodes for check in node["assetChecksOrError"]["checks"]}
    assert checks == CHECKS
    sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    assert sensors == dict.fromkeys(SENSORS, "RUNNING")
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    assert schedules == dict.fromkeys(SCHEDULES, "RUNNING")


@pytest.fixture(scope="module")
def sensor_run(ui: DagsterDev) -> dict:
    """The run the dump sensor starts for the new dump, once it has ended."""
    query = """query($filter: RunsFilter) {
      runsOrError(filter: $filter) {
        ... on Runs { results { runId status jobName tags { key value } } }
      }
    }"""
    partition = {"tags": [{"key": "dagster/partition", "value": ui.dump}]}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = ui.graphql(query, filter=partition)["runsOrError"]["results"]
        if runs and all(run["status"] in TERMINAL for run in runs):
            assert len(runs) == 1, runs
            return runs[0]
        time.sleep(5)
    raise AssertionError(f"no finished run for {ui.dump} in {RUN_TIMEOUT_S} s:\n{ui.log_tail()}")


def test_the_dump_sensor_builds_the_new_dump_and_the_blocking_checks_pass(
    ui: DagsterDev, sensor_run: dict
):
    assert sensor_run["status"] == "SUCCESS", ui.log_tail()
    assert sensor_run["jobName"] == "build_dataset"
    tags = {tag["key"]: tag["value"] for tag in sensor_run["tags"]}
    assert tags["dagster/sensor_name"] == "dump_sensor"

    data = ui.graphql(
        """query($partition: String!) {
          version: assetNodeOrError(assetKey: {path: ["dataset_version"]}) {
            ... on AssetNode {
              latestMaterializationByPartition(partitions: [$partition]) { runId }
            }
          }
          manifest: assetNodeOrError(assetKey: {path: ["manifest"]}) {
            ... on AssetNode {
              assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
            }
          }
        }""",
        partition=ui.dump,
    )
    [materialization] = data["version"]["latestMaterializationByPartition"]
    assert materialization == {"runId": sensor_run["runId"]}
    blocking = [
        c["name"] for c in data["manifest"]["assetChecksOrError"]["checks"] if c["blocking"]
    ]
    assert blocking
    for name in blocking:
        [execution] = ui.graphql(
            """query($name: String!, $partition: String!) {
              assetCheckExecutions(assetKey: {path: ["manifest"]}, checkName: $name,
                                   partition: $partition, limit: 1) { runId status }
            }""",
            name=name,
            partition=ui.dump,
        )["assetCheckExecutions"]
        assert execution == {"runId": sensor_run["runId"], "status": "SUCCEEDED"}, name


def _materialized_share(image: Image.Image) -> float:
    """Share of pixels in the pale green the UI fills materialized asset nodes with."""
    pixels = image.convert("RGB").get_flattened_data()
    return sum(1 for r, g, b in pixels if g > r + 10 and g > b) / len(pixels)


def test_the_asset_graph_renders_in_a_browser(ui: DagsterDev, sensor_run: dict, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    ui.graphql("mutation { setNuxSeen }")  # else a welcome pop-up covers the graph
    nodes = ui.graphql("{ assetNodes { groupName } }")["assetNodes"]
    groups = {node["groupName"] for node in nodes}
    # The global lineage collapses each group to one box unless the URL expands it.
    expanded = ",".join(f"global@global:{group}" for group in sorted(groups))
    screenshot = tmp_path / "asset_graph.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1600,1000",
            "--virtual-time-budget=20000",
            f"--screenshot={screenshot}",
            f"{ui.url}/asset-groups?expanded={expanded}",
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    with Image.open(screenshot) as image:
        assert image.size == (1600, 1000)
        [spread] = ImageStat.Stat(image.convert("L")).stddev
        materialized = _materialized_share(image)
    assert spread > 10, f"the page looks blank (grey-level deviation {spread:.1f})"
    # 13 expanded, materialized nodes fill about 2 % of the page; collapsed groups under 0.1 %.
    assert materialized > 0.01, f"no materialized asset nodes shown ({materialized:.2%})"
    if os.environ.get("DERMACURATE_UPDATE_DOCS") == "1":
        shutil.copyfile(screenshot, REPO_ROOT / "docs" / "asset_graph.png")
