"""What is checked before the gateway serves, and again before a reloaded bank does: the settings against
the bank's models and the environment (`validate`), and the bank's embedders against the configured ones
(`preflight`, before a transformer loads)."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from app.bank.format import BankError, Manifest, read_manifest
from app.bank.reader import Bank
from app.config import EmbedderSettings, Settings
from app.embedding import embedder_name

log = logging.getLogger("jisi.gateway")


class ConfigError(RuntimeError):
    """The settings do not fit together; the message lists every problem at once."""


def validate(settings: Settings, models: Sequence[str]) -> None:
    """The settings against the bank's models and the environment, every problem at once (one on one line).
    Needs only the manifest's model list, so `jisi-gateway` runs it before the slow parts load."""
    problems = []
    configured = {u.name for u in settings.upstreams}
    unknown = sorted(configured - set(models))
    if unknown:
        problems.append(f"upstream(s) not in the bank at {settings.bank_path}: {', '.join(unknown)} "
                        f"(the bank knows: {', '.join(models)})")
    unserved = [m for m in models if m not in configured]
    if unserved and not settings.allow_unserved_models:
        problems.append(f"bank model(s) with no upstream: {', '.join(unserved)} (configure them, or set "
                        "allow_unserved_models: true to leave them out of routing)")
    for u in settings.upstreams:
        if u.api_key_env and not os.environ.get(u.api_key_env):
            problems.append(f"upstream {u.name}: environment variable {u.api_key_env} (its API key) is not set")
    if settings.auth.api_keys_env and not settings.auth.keys():  # set but only commas/blanks would mean no auth
        problems.append(f"auth: environment variable {settings.auth.api_keys_env} (the gateway's keys) is not set")
    if not settings.upstreams:
        problems.append("no upstreams configured")
    baseline = settings.inspector.baseline_model
    if baseline is not None and baseline not in configured:
        problems.append(f"inspector.baseline_model {baseline!r} is not a configured upstream")
    if len(problems) == 1:
        raise ConfigError(f"invalid gateway configuration: {problems[0]}")
    if problems:
        raise ConfigError("invalid gateway configuration:\n  - " + "\n  - ".join(problems))


def static_digest(settings: EmbedderSettings) -> str | None:
    """The configured static model's digest (None for the other backends: they load in seconds, and Bank.load
    compares them in full)."""
    if settings.backend != "static":
        return None
    from app.embedding.static import StaticEmbedder

    return StaticEmbedder(settings.model).digest


def preflight(settings: Settings) -> Manifest:
    """The bank's embedders against the configured ones by name (and a static model's digest: it loads in a
    fraction of a second), before a transformer loads: a bank built with another embedder (one built before the
    default became the static model, or with an older distillation) is refused in one line that says how to
    rebuild it. The full comparison (budget, truncation) follows in Bank.load. Returns the manifest it read."""
    path = settings.bank_path
    manifest = read_manifest(path)
    for what, setting, built, configured in (
            ("queries", "embedder", manifest.embedder, settings.embedder),
            ("responses", "response_embedder" if settings.response_embedder else "embedder",
             manifest.responses_embedder, settings.response_embedder or settings.embedder)):
        wanted = embedder_name(configured)
        digest = static_digest(configured) if built.name == wanted else None
        if built.name == wanted and (digest is None or digest == built.digest):
            continue
        default = "" if setting in settings.model_fields_set else ", the default"
        records = " ".join(f"--records {source.path}" for source in manifest.sources)
        part = manifest.split.get("part", "all")
        rebuild = f"jisi-bank build {records} --out {path}" + (f" --split {part}" if part != "all" else "")
        if built.name == wanted:  # a static model of another distillation (an older recipe): other vectors
            raise BankError(f"the bank at {path} embedded its {what} with {built.name} of digest {built.digest}, "
                            f"the gateway's is {digest} (`{setting}`{default}): rebuild the bank (`{rebuild}`)")
        backend = "static" if built.name.startswith("static:") else "local"
        raise BankError(f"the bank at {path} embedded its {what} with {built.name}, the gateway with {wanted} "
                        f"(`{setting}`{default}): rebuild the bank with the gateway's settings (`{rebuild}`) or set "
                        f"`{setting}.backend: {backend}` to serve it as it was built")
    return manifest


def say_unpriced(settings: Settings, bank: Bank) -> None:
    """One line at start-up per upstream without a price: how its cost is forecast and booked."""
    for u in settings.upstreams:
        if not u.priced:
            j = bank.models.index(u.name)
            recorded = bank.cost is not None and bool(np.isfinite(bank.cost[bank.present[:, j], j]).any())
            log.warning("upstream %s has no configured price (input_usd_per_mtok, output_usd_per_mtok): its calls are "
                        "booked at 0 USD and its cost is forecast %s", u.name,
                        "from the bank's recorded costs" if recorded else "at the median price of the priced upstreams")
