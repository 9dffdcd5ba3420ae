"""App factory, lifespan (settings, bank, embedder and the HTTP client loaded once) and `jisi-gateway`:
the one place where the layers below are wired together."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator, Sequence

import httpx
import numpy as np
from fastapi import FastAPI

from app.bank.format import BankError, EmbedderInfo, read_manifest
from app.bank.reader import Bank
from app.config import EmbedderSettings, Settings
from app.embedding import Embedder, embedder_name, make_embedder
from app.embedding.batcher import request_path_embedder
from app.http.errors import install_error_handlers
from app.http.middleware import BodySizeLimit, RequestContext
from app.http.routes import AppState, openapi_without_422, router
from app.http.server import DrainingServer
from app.http.inspector import install_inspector
from app.observability.logs import configure_logging
from app.observability.loop_lag import LoopLagProbe
from app.observability.metrics import Metrics
from app.pipeline.prepare import Pipeline
from app.serving.gateway import Gateway
from app.upstream.pool import UpstreamPool
from app.upstream.transport import upstream_client

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


def preflight(settings: Settings) -> None:
    """The bank's embedders against the configured ones by name (and a static model's digest: it loads in a
    fraction of a second), before a transformer loads: a bank built with another embedder (one built before the
    default became the static model, or with an older distillation) is refused in one line that says how to
    rebuild it. The full comparison (budget, truncation) follows in Bank.load."""
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


def _say_unpriced(settings: Settings, bank: Bank) -> None:
    """One line at start-up per upstream without a price: how its cost is forecast and booked."""
    for u in settings.upstreams:
        if not u.priced:
            j = bank.models.index(u.name)
            recorded = bank.cost is not None and bool(np.isfinite(bank.cost[bank.present[:, j], j]).any())
            log.warning("upstream %s has no configured price (input_usd_per_mtok, output_usd_per_mtok): its calls are "
                        "booked at 0 USD and its cost is forecast %s", u.name,
                        "from the bank's recorded costs" if recorded else "at the median price of the priced upstreams")


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None,
               response_embedder: Embedder | None = None,
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The ASGI app. Tests inject embedders or an httpx transport; production loads them from settings."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # no disk cache on the request path: user text is not persisted, and live texts rarely repeat
        model = embedder or make_embedder(settings.embedder, use_cache=False)
        responses_model = response_embedder or (make_embedder(settings.response_embedder, use_cache=False)
                                                if settings.response_embedder is not None else model)
        bank = Bank.load(settings.bank_path, query_embedder=EmbedderInfo.of(model),
                         response_embedder=EmbedderInfo.of(responses_model), index_settings=settings.bank_index)
        validate(settings, bank.models)
        async_embedder = request_path_embedder(model, settings.embedding_batching)
        # one micro-batcher per model: the responses' own when they have another embedder
        async_responses = async_embedder if responses_model is model else \
            request_path_embedder(responses_model, settings.embedding_batching)
        limits = httpx.Limits(max_connections=sum(u.max_concurrency for u in settings.upstreams) + 16,
                              max_keepalive_connections=64)
        async with upstream_client(limits, transport) as client:
            pool = UpstreamPool(settings.upstreams, client, settings.resilience)
            state.metrics.watch_pool(pool)
            state.metrics.watch_embedders(async_embedder, async_responses)
            probe = LoopLagProbe(interval_s=0.025, observe=state.metrics.loop_lag_seconds.observe, keep=1)
            probe.start()
            calibration = bank.manifest.calibration or {}
            params, sources = settings.jisi.resolve(calibration.get("params"))
            profiles = {}  # the bank's other named profiles, under the same rule: settings over the bank's
            for name, profile in (calibration.get("profiles") or {}).items():
                values, origin = settings.jisi.resolve(profile.get("params"))
                profiles[name] = (values, {k: f"bank:{name}" if v == "bank" else v for k, v in origin.items()})
            pipeline = Pipeline(bank, async_embedder, pool, params, embed_system_prompt=settings.embed_system_prompt,
                                response_embedder=async_responses, param_sources=sources, profiles=profiles)
            _say_unpriced(settings, bank)
            state.api_keys = settings.auth.keys()
            state.gateway = Gateway(pipeline, pool, state.metrics, max_messages=settings.max_messages,
                                    max_requested_tokens=settings.max_requested_tokens)
            # The model, the libraries and the bank leave ~500k long-lived objects, and a full collection
            # scanned them all: a ~200 ms stall of the event loop every so often under load (the p99).
            # Frozen objects are never scanned again; what requests allocate is collected as before.
            gc.collect()
            gc.freeze()
            log.info("ready: bank %s (%d queries, %d models), embedders %s / %s", settings.bank_path,
                     bank.n_queries, len(bank.models), model.name, responses_model.name)
            try:
                yield
            finally:
                state.gateway = None
                await probe.stop()
                async_embedder.close()
                async_responses.close()

    app = FastAPI(title="JiSi Gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible gateway that routes and aggregates LLMs with JiSi")
    state = app.state.jisi = AppState(metrics=Metrics())
    install_error_handlers(app)
    app.include_router(router)
    if settings.inspector.enabled:
        install_inspector(app, settings.inspector)
    openapi_without_422(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    state.metrics.known_paths = {path for route in (*app.routes, *router.routes)
                                 if isinstance(path := getattr(route, "path", None), str)}
    # outermost: every response, even a 413, carries the request id and is counted
    app.add_middleware(RequestContext, observe=state.metrics.observe_http)
    return app


def run(argv: list[str] | None = None) -> None:
    """`jisi-gateway --host H --port P`."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="jisi-gateway", description="Serve the JiSi gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=["json", "text"], default="json",
                        help="json: one object per line with the request id (default); text: for a terminal")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's message names every bad field
        sys.exit(f"jisi-gateway: invalid settings: {exc}")
    try:  # what can be checked before the embedding model and the bank load: one line and exit 1
        preflight(settings)
        validate(settings, read_manifest(settings.bank_path).models)
    except (BankError, ConfigError) as exc:
        sys.exit(f"jisi-gateway: {exc}")
    app = create_app(settings)
    # log_config=None keeps our handler; our middleware writes the access log (with the request id)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                            access_log=False)
    DrainingServer(config, app.state.jisi, settings.drain).run()


def app_from_env() -> FastAPI:
    """For `uvicorn app.http.app:app`-style launches (the module attribute is built lazily)."""
    return create_app()


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        return app_from_env()
    raise AttributeError(name)
