"""Signals: SIGTERM drains (uvicorn with a graceful drain, for rolling restarts behind a load balancer), and
SIGHUP reloads the bank.

On the first SIGTERM (or SIGINT) the app reports draining at once (`/readyz` 503), keeps accepting for
`grace_s` while load balancers take it out of rotation, then closes the listener; uvicorn lets the requests in
flight, streams included, finish for up to `deadline_s` before it cancels them, and the process exits 0. A
second signal exits at once. uvicorn alone closes the listener at the first signal (requests a load balancer
still sends are refused) and re-raises the signal when it is done, so the exit status is 143, not 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from app.config import DrainSettings
from app.http.reload import Reloader
from app.http.routes import AppState

log = logging.getLogger("jisi.gateway")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState, drain: DrainSettings) -> None:
        config.timeout_graceful_shutdown = drain.deadline_s
        super().__init__(config)
        self.state = state
        self.grace_s = drain.grace_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # not recorded in _captured_signals: uvicorn would raise it again after the shutdown (exit 143)
        if self.drain_started is not None:
            log.warning("second %s: exiting now, cutting what is still in flight", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        self.drain_started = time.monotonic()
        self.state.draining = True
        log.info("%s: draining (/readyz 503); the listener closes in %.1f s, requests in flight then have %.1f s",
                 signal.Signals(sig).name, self.grace_s, self.config.timeout_graceful_shutdown)
        if self.grace_s == 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        # uvicorn's main loop asks every 0.1 s whether to stop: after the grace, close the listener and drain
        if self.drain_started is not None and time.monotonic() - self.drain_started >= self.grace_s:
            self.should_exit = True
        return await super().on_tick(counter)


def on_sighup(reloader: Reloader) -> None:
    """SIGHUP reloads the bank (app/http/reload.py), where signals can be received: the main thread of a
    process whose loop supports them (not in tests that run the app on another thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reloader.on_signal()))
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        log.debug("SIGHUP is not available here: reload with POST /admin/reload")
