"""Bank hot-swap: on SIGHUP or POST /admin/reload, the settings are read again and the bank at `bank_path` is
loaded and validated off the event loop, then the gateway serving it replaces the old one in one assignment.

A request holds the gateway it started with, so requests in flight finish on the bank they started with. A bank
or settings that fail the checks are refused with one log line and a metric, and the old bank keeps serving.
What can change live: the bank, upstream prices, timeouts, keys, defaults and system prompts, the method's
defaults (`jisi`), the client keys and the request limits. What cannot (it is built into objects that live as
long as the process: the embedders, the index settings, the connection limits, the retry policy, the body limit,
the inspector, the drain) is kept as it was and named in the answer: those need a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from pydantic import ValidationError

from app.bank.format import BankError
from app.bank.reader import Bank
from app.config import Settings
from app.errors import GatewayError, bad_request
from app.http.checks import ConfigError, validate
from app.observability.metrics import Metrics

log = logging.getLogger("jisi.gateway")

# settings read once at start-up, into objects that live as long as the process
RESTART_FIELDS = ("embedder", "response_embedder", "embedding_batching", "bank_index", "resilience",
                  "max_body_bytes", "inspector", "drain", "admin")


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """The settings that changed and cannot change live."""
    changed = [name for name in RESTART_FIELDS if getattr(old, name) != getattr(new, name)]
    if _pool_shape(old) != _pool_shape(new):
        changed.append("upstreams (names, max_concurrency, max_queue)")
    return changed


def _pool_shape(settings: Settings) -> list[tuple[str, int, int]]:
    return [(u.name, u.max_concurrency, u.max_queue) for u in settings.upstreams]


class Reloader:
    """Loads the bank again and hands it to `apply` (which builds the gateway and swaps it in); one at a time.

    `read_settings` re-reads the settings (`Settings` in production: the environment over $JISI_CONFIG);
    `load_bank` loads a bank for the embedders in use (Bank.load, which refuses a bank of other embedders)."""

    def __init__(self, settings: Settings, read_settings: Callable[[], Settings],
                 load_bank: Callable[[Settings], Bank], apply: Callable[[Settings, Bank], None],
                 metrics: Metrics) -> None:
        self.settings = settings
        self.read_settings, self.load_bank, self.apply = read_settings, load_bank, apply
        self.metrics = metrics
        self.serving: str | None = None  # the build id in service
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> dict[str, Any]:
        """The new bank in service, or a GatewayError (400 reload_refused) with the old one still serving."""
        async with self._lock:
            started = time.perf_counter()
            try:
                fresh = await asyncio.to_thread(self.read_settings)
                restart = needs_restart(self.settings, fresh)
                # what needs a restart is kept as it runs; the rest is taken from the fresh settings
                kept: dict[str, Any] = {name: getattr(self.settings, name) for name in RESTART_FIELDS}
                if _pool_shape(self.settings) != _pool_shape(fresh):
                    kept["upstreams"] = self.settings.upstreams
                effective = fresh.model_copy(update=kept)
                bank = await asyncio.to_thread(self.load_bank, effective)
                validate(effective, bank.models)
            except (BankError, ConfigError, ValidationError, OSError, ValueError) as exc:
                message = " ".join(str(exc).split())  # one line, whatever the source's layout
                self.metrics.reloads.labels(trigger, "refused").inc()
                log.error("reload (%s) refused, bank %s keeps serving: %s", trigger, self.serving, message)
                raise bad_request(f"reload refused, bank {self.serving} keeps serving: {message}",
                                  code="reload_refused") from None
            self.apply(effective, bank)
            previous, self.settings = self.serving, effective
            self.serving = bank.manifest.build_id
            self.metrics.reloads.labels(trigger, "ok").inc()
            self.metrics.serving_bank(self.serving)
            seconds = time.perf_counter() - started
            log.info("reload (%s): bank %s -> %s (%d queries, %d models) in %.2f s%s", trigger, previous,
                     self.serving, bank.n_queries, len(bank.models), seconds,
                     f"; needs a restart to change: {', '.join(restart)}" if restart else "")
            return {"status": "reloaded", "previous": previous,
                    "bank": {"build_id": self.serving, "queries": bank.n_queries, "models": len(bank.models)},
                    "needs_restart": restart, "seconds": round(seconds, 3)}

    async def on_signal(self) -> None:
        """SIGHUP: reload; a refusal is already logged and counted."""
        try:
            await self.reload("SIGHUP")
        except GatewayError:
            pass
