"""The local pool of real llama.cpp upstreams (config/local-pool.yaml), started once per test session.

The tests in this folder ask for `local_pool` (a dict
name -> ServerInfo, every server up). Its state lives in var/pool-test (not the CLI's var/pool), so a
session that crashed leaves PIDs that the next session reuses or replaces instead of port clashes.
Environment: JISI_POOL_KEEP=1 leaves the pool running after the session (fast reruns);
JISI_POOL_TIMEOUT (seconds, default 300) bounds the start and warm-up.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterator

import pytest

from localpool.servers import PoolError, ServerInfo, start_pool, stop_pool

REPO = Path(__file__).resolve().parents[2]
POOL_SPEC = REPO / "config" / "local-pool.yaml"
POOL_STATE = Path(os.environ.get("JISI_POOL_TEST_STATE", REPO / "var" / "pool-test"))
POOL_TIMEOUT = float(os.environ.get("JISI_POOL_TIMEOUT", "300"))
# the assembled Gemma GGUF: the same cache as `jisi-pool install`, wherever pytest is started from
os.environ.setdefault("JISI_POOL_DIR", str(REPO / "var" / "models"))


def _start() -> list[ServerInfo]:
    try:
        return start_pool(POOL_SPEC, POOL_STATE, timeout=POOL_TIMEOUT)
    except PoolError as exc:  # its message carries the server's log tail, or who holds a port
        error = str(exc)
    pytest.fail(f"local pool did not start: {error}", pytrace=False)  # outside `except`: reported once


@pytest.fixture(scope="session")
def pool_session() -> Iterator[Path]:
    """Starts (and warms up) the pool once; stops it at the end of the session. Yields the state dir."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed: run `jisi-pool install`", pytrace=False)
    _start()
    try:
        yield POOL_STATE
    finally:
        if os.environ.get("JISI_POOL_KEEP") != "1":
            stop_pool(POOL_STATE)


def pool_up() -> dict[str, ServerInfo]:
    """Every server up: restarts any that an earlier test killed or stopped, otherwise only checks /v1/models.

    For module-scoped fixtures, which cannot ask for `local_pool`: tests/test_pool.py stops the whole pool."""
    return {info.name: info for info in _start()}


@pytest.fixture(scope="module")
def module_pool(pool_session: Path) -> dict[str, ServerInfo]:
    """Every server up when a module starts, for its module-scoped fixtures (see pool_up)."""
    return pool_up()


@pytest.fixture
def local_pool(pool_session: Path) -> dict[str, ServerInfo]:
    """Every server up for this test (see pool_up)."""
    return pool_up()
