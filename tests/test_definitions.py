"""The code location loads: every asset, check and job the UI will show."""

import dagster as dg
from expected_graph import ASSETS, BLOCKING_CHECKS

from dagster_project.definitions import build_definitions
from dagster_project.settings import Settings


def test_definitions_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMACURATE_HOME", str(tmp_path))
    defs = build_definitions(Settings.from_env())
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    checks = {key.name: graph.get_check_spec(key) for key in graph.asset_check_keys}
    assert set(checks) >= BLOCKING_CHECKS
    assert all(checks[name].blocking for name in BLOCKING_CHECKS)
    assert defs.resolve_job_def("build_dataset") is not None


def test_production_requires_locations(monkeypatch):
    monkeypatch.setenv("DERMACURATE_ENV", "production")
    for name in ("DERMACURATE_DUMPS", "DERMACURATE_BACKUP", "DERMACURATE_CURATED"):
        monkeypatch.delenv(name, raising=False)
    try:
        Settings.from_env()
    except ValueError as error:
        assert "DERMACURATE_DUMPS" in str(error)
    else:
        raise AssertionError("production settings without locations were accepted")


def test_dump_partitions_are_dynamic():
    from dagster_project.partitions import dump_partitions

    assert isinstance(dump_partitions, dg.DynamicPartitionsDefinition)
