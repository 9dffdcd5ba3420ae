"""The local pool's servers: one llama.cpp server process per configured upstream, started, warmed up,
reused, stopped and watched.

The servers outlive the command that starts them (own session, logs in the state dir), so their PIDs are
recorded in <state_dir>/pool.json; `stop`, `status`, tests and later `start`s (which reuse live servers)
work from that file only and never touch processes it does not list.

Over 300 lines on purpose: the process helpers (liveness, ownership of a port, termination) and the pool
operations (start, reuse, stop, status) share the state file, its lock and the PID checks; split, each half
would reach into the other's privates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import httpx
import yaml

from localpool.models import PoolError, resolve_model

DEFAULT_SPEC = Path("config/local-pool.yaml")
DEFAULT_STATE = Path("var/pool")
STATE_FILE = "pool.json"
OWNER_ENV = "JISI_POOL_STATE"  # set in each server's environment: names the pool owning a busy port
_CHILDREN: dict[int, subprocess.Popen] = {}  # servers started by this process, to poll and reap them


@dataclass(frozen=True)
class ServerSpec:
    name: str  # served alias (--model_alias) = the gateway's upstream model id
    model: str  # a packaged model name or a .gguf path
    port: int
    host: str = "127.0.0.1"
    n_ctx: int = 2048
    n_threads: int = 1
    chat_format: str | None = None  # default: the GGUF's own chat template

    def argv(self, model_path: Path) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", self.name,
                "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
                "--interrupt_requests", "False", *(["--chat_format", self.chat_format] if self.chat_format else [])]


@dataclass
class ServerInfo:
    name: str
    host: str
    port: int
    pid: int
    argv: list[str]
    log: str
    started_at: float  # unix time of the launch
    ready_s: float | None = None  # launch -> warm-up answered (None when reused)
    warmup_s: float | None = None  # the warm-up completion alone
    reused: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def load_spec(path: Path | str = DEFAULT_SPEC) -> list[ServerSpec]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise PoolError(f"{path}: expected a mapping with a `servers` list")
    shared = {k: raw[k] for k in ("host", "n_ctx", "n_threads") if k in raw}
    entries = raw.get("servers") or []
    if not isinstance(entries, list) or not entries:
        raise PoolError(f"{path}: `servers` must be a non-empty list")
    try:
        specs = [ServerSpec(**(shared | entry)) for entry in entries]
    except TypeError as exc:
        raise PoolError(f"{path}: bad server entry: {exc}") from exc
    for s in specs:
        if not s.name or not isinstance(s.port, int) or not 0 < s.port < 65536:
            raise PoolError(f"{path}: server {s.name!r} needs a name and a port in 1..65535")
    for field in ("name", "port"):
        values = [getattr(s, field) for s in specs]
        if len(set(values)) != len(values):
            raise PoolError(f"{path}: duplicate server {field}s: {values}")
    return specs


# --- processes -----------------------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """True for a running process; a killed child not yet reaped (a zombie) counts as dead."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _reap(pid: int) -> None:
    if pid in _CHILDREN:
        _CHILDREN[pid].poll()  # reaps it and lets Popen know
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_our_server(pid: int, port: int) -> bool:
    """Guards against PID reuse: the recorded PID must still be a llama.cpp server on that port."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc: trust the record
    return b"llama_cpp.server" in args and str(port).encode() in args


def _terminate(pid: int, port: int, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """`sig` to the server's whole process group, SIGKILL after `grace` seconds; waits until it is gone."""
    if not (pid_alive(pid) and _is_our_server(pid, port)):
        return
    for s, wait in ((sig, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, s)  # own session at launch: its group id is its PID
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                _CHILDREN.pop(pid, None)
                return
            time.sleep(0.05)
    raise PoolError(f"process {pid} (port {port}) survived SIGKILL")


def _port_owner(port: int) -> str:
    """Who listens on a port (pid, command line, owning pool), from /proc; best effort."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
                hint = (f"a server of the pool in {env[OWNER_ENV]}: stop it with `jisi-pool stop --state-dir "
                        f"{env[OWNER_ENV]}`" if OWNER_ENV in env else "stop it")
                return f"pid {proc.name} ({cmd[:200]}), {hint}"
    return "an unknown process, stop it"


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise PoolError(f"port {port} is taken by {_port_owner(port)}; or change the spec's ports") from None


def log_tail(path: Path | str, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# --- HTTP ----------------------------------------------------------------------------------------------

def probe(info: ServerInfo, timeout: float = 3.0) -> Literal["yes", "busy", "no"]:
    """Does the server list its alias on /v1/models? "busy": no answer in time (the server holds that
    request until its current completion ends, so a long generation looks like this)."""
    try:
        r = httpx.get(f"{info.base_url}/models", timeout=timeout)
        ok = r.status_code == 200 and info.name in {m.get("id") for m in r.json().get("data", [])}
        return "yes" if ok else "no"
    except httpx.TimeoutException:
        return "busy"
    except (httpx.HTTPError, ValueError):
        return "no"


def answering(info: ServerInfo, timeout: float = 3.0) -> bool:
    return probe(info, timeout) == "yes"


def chat(info: ServerInfo, prompt: str, *, max_tokens: int = 32, timeout: float = 120.0,
         **fields: Any) -> dict:
    """One non-streaming chat completion straight to the server; the OpenAI response body."""
    body = {"model": info.name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            **fields}
    r = httpx.post(f"{info.base_url}/chat/completions", json=body, timeout=timeout)
    r.raise_for_status()
    return r.json()


# --- state ---------------------------------------------------------------------------------------------

def read_state(state_dir: Path | str) -> dict[str, ServerInfo]:
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return {}
    return {name: ServerInfo(**rec) for name, rec in json.loads(path.read_text())["servers"].items()}


def write_state(state_dir: Path | str, servers: dict[str, ServerInfo]) -> None:
    path = Path(state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"servers": {n: asdict(i) for n, i in servers.items()}}, indent=2))
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written record of live processes


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One pool operation at a time per state dir (two `start`s would launch every server twice)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# --- pool ----------------------------------------------------------------------------------------------

def _server_env() -> dict[str, str]:
    """Our environment minus the variables llama_cpp.server reads as its own settings: they have no prefix, so
    a shell's PORT or MODEL (e.g. `PORT=8765 bash scripts/demo.sh`) would override the server's arguments."""
    from llama_cpp.server.settings import Settings as LlamaServerSettings

    own = {name.upper() for name in LlamaServerSettings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in own}


def _launch(spec: ServerSpec, model_path: Path, state_dir: Path) -> ServerInfo:
    log = state_dir / f"{spec.name}.log"
    argv = spec.argv(model_path)
    with open(log, "wb") as out:  # this run only (the tail shown on failure); the child keeps its own fd
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,  # detached: no terminal signals, own process group
                                env=_server_env() | {OWNER_ENV: str(state_dir.resolve())})
    _CHILDREN[proc.pid] = proc
    return ServerInfo(spec.name, spec.host, spec.port, proc.pid, argv, str(log), time.time())


def _wait_ready(info: ServerInfo, deadline: float) -> None:
    """Polls /v1/models, then one tiny completion (the first one is slow: it warms the server up)."""
    while not answering(info, timeout=2.0):
        if not pid_alive(info.pid):
            raise PoolError(f"server {info.name} (pid {info.pid}) exited during startup; "
                            f"{info.log}:\n{log_tail(info.log)}")
        if time.monotonic() > deadline:
            raise PoolError(f"server {info.name} (port {info.port}) did not answer in time; "
                            f"{info.log}:\n{log_tail(info.log)}")
        time.sleep(0.25)
    t0 = time.monotonic()
    try:
        chat(info, "Say hi.", max_tokens=4, timeout=max(deadline - t0, 1.0))
    except httpx.HTTPError as exc:
        raise PoolError(f"server {info.name}: warm-up completion failed ({exc!r}); "
                        f"{info.log}:\n{log_tail(info.log)}") from exc
    info.warmup_s = round(time.monotonic() - t0, 2)
    info.ready_s = round(time.time() - info.started_at, 2)


def start_pool(spec_path: Path | str = DEFAULT_SPEC, state_dir: Path | str = DEFAULT_STATE, *,
               timeout: float = 300.0) -> list[ServerInfo]:
    """Starts the spec's servers (reusing recorded ones that are alive and answering) and warms them up."""
    specs, state_dir = load_spec(spec_path), Path(state_dir)
    deadline = time.monotonic() + timeout
    with _locked(state_dir):
        records, launched = read_state(state_dir), []
        for name in set(records) - {s.name for s in specs}:  # dropped from the spec
            _terminate(records[name].pid, records[name].port)
            del records[name]
        try:
            for spec in specs:
                model_path, old = resolve_model(spec.model), records.get(spec.name)
                argv = spec.argv(model_path)
                # same command (any interpreter), still running and answering (a busy server holds
                # /v1/models until its completion ends: give it a while before judging it stuck)
                if old and old.argv[1:] == argv[1:] and pid_alive(old.pid) and _is_our_server(old.pid, old.port) \
                        and answering(old, timeout=min(60.0, max(deadline - time.monotonic(), 1.0))):
                    records[spec.name] = ServerInfo(**(asdict(old) | {"reused": True, "ready_s": None,
                                                                      "warmup_s": None}))
                    continue
                if old:  # dead, stuck or started with other arguments
                    _terminate(old.pid, old.port)
                _check_port_free(spec.host, spec.port)
                records[spec.name] = _launch(spec, model_path, state_dir)
                launched.append(records[spec.name])
                write_state(state_dir, records)  # record each PID at once: an interrupt leaves no orphan
            write_state(state_dir, records)
            with ThreadPoolExecutor(max(len(launched), 1)) as ex:  # load and warm up all at once
                list(ex.map(lambda i: _wait_ready(i, deadline), launched))
        except BaseException:
            for info in launched:  # free the ports; servers that were already running stay up
                _terminate(info.pid, info.port, grace=2.0)
                records.pop(info.name, None)
            write_state(state_dir, records)
            raise
        write_state(state_dir, records)
        return [records[s.name] for s in specs]


def stop_pool(state_dir: Path | str = DEFAULT_STATE, grace: float = 5.0) -> list[str]:
    """Stops every recorded server (SIGTERM, then SIGKILL) and removes the state file; the names stopped."""
    state_dir = Path(state_dir)
    with _locked(state_dir):
        records = read_state(state_dir)
        stopped = [n for n, i in records.items() if pid_alive(i.pid) and _is_our_server(i.pid, i.port)]
        for info in records.values():
            _terminate(info.pid, info.port, grace=grace)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped


def kill_server(state_dir: Path | str, name: str, sig: int = signal.SIGKILL) -> int:
    """Kills ONE server (SIGKILL by default: a crash) and returns its PID; it stays recorded, as dead."""
    with _locked(Path(state_dir)):
        records = read_state(state_dir)
        if name not in records:
            raise PoolError(f"no server {name!r} in {state_dir} (known: {', '.join(records)})")
        _terminate(records[name].pid, records[name].port, grace=5.0, sig=sig)
        return records[name].pid


def pool_status(state_dir: Path | str = DEFAULT_STATE) -> list[dict[str, Any]]:
    """Per recorded server: alive (its process runs) and answering ("yes", "busy" or "no")."""
    return [{"name": n, "port": i.port, "pid": i.pid,
             "alive": (alive := pid_alive(i.pid) and _is_our_server(i.pid, i.port)),
             "answering": probe(i) if alive else "no"} for n, i in read_state(state_dir).items()]


@contextlib.contextmanager
def running_pool(spec_path: Path | str = DEFAULT_SPEC, state_dir: Path | str = DEFAULT_STATE, *,
                 timeout: float = 300.0, keep: bool = False) -> Iterator[list[ServerInfo]]:
    """The started pool; stopped on exit unless `keep`."""
    infos = start_pool(spec_path, state_dir, timeout=timeout)
    try:
        yield infos
    finally:
        if not keep:
            stop_pool(state_dir)


# --- CLI -----------------------------------------------------------------------------------------------
