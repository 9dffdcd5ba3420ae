"""`jisi-pool`: the spec and the state file without servers, then the real pool of 3 llama.cpp servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import yaml

from localpool.servers import (
    PoolError,
    ServerInfo,
    kill_server,
    load_spec,
    pid_alive,
    pool_status,
    read_state,
    start_pool,
    stop_pool,
    write_state,
)

REPO = Path(__file__).resolve().parents[2]
POOL_SPEC = REPO / "config" / "local-pool.yaml"
ALIASES = ["smollm2-concise", "smollm2-stepwise", "gemma3-270m"]


def _spec(tmp_path: Path, servers: list[dict], **shared: object) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({**shared, "servers": servers}))
    return path


def _info(name: str, pid: int, port: int = 1) -> ServerInfo:
    return ServerInfo(name, "127.0.0.1", port, pid, ["python"], f"/nonexistent/{name}.log", 0.0)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- spec, configs and state file (no servers) -------------------------------------------------------------

def test_the_pool_spec_serves_the_gateway_upstreams() -> None:
    specs = load_spec(POOL_SPEC)
    assert [(s.name, s.port, s.host, s.n_ctx, s.n_threads) for s in specs] == [
        (name, port, "127.0.0.1", 2048, 1) for name, port in zip(ALIASES, (8101, 8102, 8103))]
    argv = specs[0].argv(Path("/m.gguf"))
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    for flag, value in [("--model_alias", "smollm2-concise"), ("--port", "8101"), ("--n_threads", "1"),
                        ("--n_threads_batch", "1"), ("--interrupt_requests", "False")]:
        assert argv[argv.index(flag) + 1] == value
    # the gateway's upstreams point at these servers (by port, or by compose hostname in Docker)
    for config, host_of in [("gateway.yaml", lambda s: "127.0.0.1"), ("gateway.docker.yaml", lambda s: s.name)]:
        upstreams = yaml.safe_load((REPO / "config" / config).read_text())["upstreams"]
        assert [(u["name"], u["model"], u["base_url"]) for u in upstreams] == [
            (s.name, s.name, f"http://{host_of(s)}:{s.port}/v1") for s in specs]
        concise, stepwise, gemma = upstreams
        assert concise["defaults"] == {"temperature": 0.2} and "briefly" in concise["system_prompt"]
        assert stepwise["defaults"] == {"temperature": 0.7} and "step by step" in stepwise["system_prompt"]
        assert gemma["defaults"] == {"temperature": 0.2} and "system_prompt" not in gemma


def test_compose_runs_the_same_servers() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["gateway"]["environment"]["JISI_CONFIG"] == "/app/config/gateway.docker.yaml"
    # any Compose runs it: no depends_on.required (Compose >= 2.20); a gateway that cannot start is retried a
    # few times, not forever
    assert "depends_on" not in services["gateway"] and services["gateway"]["restart"] == "on-failure:3"
    for spec in load_spec(POOL_SPEC):
        service = services[spec.name]
        assert service["profiles"] == ["local-pool"]
        # the same flags as outside Docker, except the model path and the listen address
        local = spec.argv(Path("/m"))[3:]
        command = service["command"]
        assert command[2:] == [a if a != "127.0.0.1" else "0.0.0.0" for a in local[2:]]


@pytest.mark.parametrize("servers, message", [
    ([], "non-empty"),
    ([{"name": "a", "model": "m", "port": 1}, {"name": "a", "model": "m", "port": 2}], "duplicate server names"),
    ([{"name": "a", "model": "m", "port": 1}, {"name": "b", "model": "m", "port": 1}], "duplicate server ports"),
    ([{"name": "a", "model": "m", "port": 70000}], "1..65535"),
    ([{"name": "a", "model": "m", "port": 1, "threads": 2}], "bad server entry"),
])
def test_bad_specs_are_refused(tmp_path: Path, servers: list[dict], message: str) -> None:
    with pytest.raises(PoolError, match=message):
        load_spec(_spec(tmp_path, servers))


def test_state_file_round_trip_and_stop_spares_unrecorded_processes(tmp_path: Path) -> None:
    # our own PID, recorded as if it were a server: PID reuse must never make stop kill a stranger
    records = {"dead": _info("dead", _dead_pid()), "stranger": _info("stranger", os.getpid())}
    write_state(tmp_path, records)
    assert read_state(tmp_path) == records
    assert [(r["name"], r["alive"], r["answering"]) for r in pool_status(tmp_path)] == [
        ("dead", False, "no"), ("stranger", False, "no")]
    with pytest.raises(PoolError, match="no server 'nope'"):
        kill_server(tmp_path, "nope")
    assert stop_pool(tmp_path) == []
    assert pid_alive(os.getpid()) and read_state(tmp_path) == {}


def test_a_taken_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        spec = _spec(tmp_path, [{"name": "x", "model": str(model), "port": port}])
        with pytest.raises(PoolError, match=rf"port {port} is taken by pid {os.getpid()}"):
            start_pool(spec, tmp_path / "state", timeout=5)
    assert read_state(tmp_path / "state") == {}


def test_a_server_that_dies_fails_with_its_log_tail(tmp_path: Path) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"not a gguf file")
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = _spec(tmp_path, [{"name": "broken", "model": str(model), "port": port}])
    with pytest.raises(PoolError, match=r"server broken \(pid \d+\) exited during startup; \S+broken\.log:\n") as err:
        start_pool(spec, tmp_path / "state", timeout=120)
    assert "Failed to load model" in str(err.value)  # the log's tail, not just its path
    assert read_state(tmp_path / "state") == {}


# --- the real pool ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_pool_answers_survives_a_killed_server_and_stops(local_pool: dict[str, ServerInfo],
                                                              pool_session: Path) -> None:
    assert list(local_pool) == ALIASES

    def ask(info: ServerInfo) -> str:
        client = openai.OpenAI(base_url=info.base_url, api_key="none", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=info.name, max_tokens=12, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert reply.model == info.name
        return reply.choices[0].message.content or ""

    for info in local_pool.values():
        assert ask(info).strip(), f"{info.name} gave an empty answer"

    victim = local_pool["smollm2-stepwise"]
    assert kill_server(pool_session, victim.name) == victim.pid
    assert not pid_alive(victim.pid)
    with pytest.raises(openai.APIConnectionError):
        ask(victim)
    for name in ("smollm2-concise", "gemma3-270m"):
        assert ask(local_pool[name]).strip()
    assert {r["name"]: r["answering"] for r in pool_status(pool_session)} == {
        "smollm2-concise": "yes", "smollm2-stepwise": "no", "gemma3-270m": "yes"}

    recorded = [info.pid for info in read_state(pool_session).values()]
    assert sorted(stop_pool(pool_session)) == ["gemma3-270m", "smollm2-concise"]
    assert not [pid for pid in recorded if pid_alive(pid)]
    assert not (pool_session / "pool.json").exists()


def test_servers_do_not_inherit_variables_that_llama_cpp_reads_as_settings(monkeypatch) -> None:
    from localpool.servers import _server_env

    monkeypatch.setenv("PORT", "8765")  # e.g. `PORT=8765 bash scripts/demo.sh`: meant for the gateway
    monkeypatch.setenv("n_ctx", "16")
    monkeypatch.setenv("JISI_SOMETHING", "kept")
    env = _server_env()
    assert "PORT" not in env and "n_ctx" not in env
    assert env["JISI_SOMETHING"] == "kept" and env["PATH"] == os.environ["PATH"]
