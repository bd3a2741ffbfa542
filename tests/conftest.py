"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dagster_project.postgres import PostgresServer, postgres_bin_dir, temporary_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL on 127.0.0.1 for the whole test session (real pg_dump)."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, postgres, pg_dump) are not installed")
    with temporary_postgres() as server:
        yield server
