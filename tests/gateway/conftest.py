"""Gateway tests: the app in-process over ASGI on the real mini bank, upstreams faked with respx
(gateway_helpers.FakeUpstreams) or served over real loopback sockets (fault_server.FaultServer)."""

from __future__ import annotations

from typing import Any, Iterator

import openai
import pytest

from app.bank.format import read_manifest
from app.config import Settings
from fault_server import FaultServer
from gateway_helpers import FakeUpstreams, make_settings
from sdk_upstream import sdk_gateway


@pytest.fixture(scope="session")
def bank_models(mini_bank) -> list[str]:
    return list(read_manifest(mini_bank).models)


@pytest.fixture
def fake(bank_models) -> FakeUpstreams:
    return FakeUpstreams(list(bank_models))


@pytest.fixture
def settings(mini_bank, bank_models, tmp_path) -> Settings:
    return make_settings(mini_bank, bank_models, tmp_path / "cache")


@pytest.fixture(scope="module")
def fault_upstreams() -> Iterator[FaultServer]:
    """One real-socket fake upstream per test module (uvicorn in a thread)."""
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def server(fault_upstreams: FaultServer) -> FaultServer:
    """The module's fault server with no faults set and no calls recorded."""
    fault_upstreams.reset()
    fault_upstreams.hits.clear()
    return fault_upstreams


@pytest.fixture(scope="module")
def upstream_calls() -> list[dict[str, Any]]:
    """What sdk_upstream's server was sent, per module of SDK tests."""
    return []


@pytest.fixture(scope="module")
def gateway_url(mini_bank, bank_models, minilm, tmp_path_factory, upstream_calls) -> Iterator[str]:
    """The gateway on loopback in front of sdk_upstream's server (one per module of SDK tests)."""
    with sdk_gateway(mini_bank, bank_models, minilm, tmp_path_factory.mktemp("sdk-cache"), upstream_calls) as url:
        yield url


@pytest.fixture
def client(gateway_url, upstream_calls) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at it, no retries; the upstream's record of calls starts empty."""
    upstream_calls.clear()
    with openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="x", max_retries=0, timeout=30) as c:
        yield c
