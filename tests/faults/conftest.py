"""Fixtures of the fault-injection suite: tiny data and the API process once per session, and
per test a `Rig`: an AOF Redis, the fault proxy in front of the API, and the workers the test
starts, all killed when the test ends whatever it left running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.harness import AofRedis, ApiProcess, FaultProxy, Rig, redis_binaries, tiny_data


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("faults-data"))


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """`digits serve` as a process (uploads stored in its model dir); tests use their own
    model ids, so one API serves them all."""
    root = tmp_path_factory.mktemp("faults-api")
    api = ApiProcess(root / "models", root / "api.log")
    api.start()
    yield api
    api.stop()


@pytest.fixture
def redis_binary_name() -> str:
    """Which redis-server: `system` (7.x) unless a test parametrizes this name."""
    return "system"


@pytest.fixture
def rig(
    tmp_path: Path, data_root: Path, redis_binary_name: str, api_server: ApiProcess
) -> Iterator[Rig]:
    binaries = redis_binaries()
    if redis_binary_name not in binaries:
        pytest.skip(f"no {redis_binary_name} redis-server here (found {sorted(binaries)})")
    server = AofRedis(binaries[redis_binary_name], tmp_path / "redis")
    server.start()
    proxy = FaultProxy(lambda: api_server.port)
    built = Rig(tmp_path, data_root, server, api_server, proxy, server.client())
    try:
        yield built
    finally:
        built.close()
