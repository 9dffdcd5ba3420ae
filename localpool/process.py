"""A server in a subprocess, started and waited for until it answers, and a free loopback port: what the demo
(`jisi-pool demo`), the benchmarks and the end-to-end tests start their replay upstreams and gateways with."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Self, Sequence

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server in a subprocess: start, wait until `ready_path` answers 200, stop (terminate, then kill)."""

    def __init__(self, argv: Sequence[str], port: int, ready_path: str = "/healthz", timeout_s: float = 30.0,
                 env: dict[str, str] | None = None, cwd: Path | None = None, log_path: Path | None = None) -> None:
        self.argv, self.port, self.ready_path, self.timeout_s = list(argv), port, ready_path, timeout_s
        self.env, self.cwd, self.log_path = env, cwd, log_path  # log_path: its stdout and stderr, else ours
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else None
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT if log else None)
        finally:
            if log:
                log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
                raise RuntimeError(f"{self.argv[:4]} exited with {self.proc.returncode} before it was ready"
                                   + (f"; its log ends:\n{tail}" if tail else ""))
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.argv[:4]} not ready on port {self.port} after {self.timeout_s:g}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
