"""App factory, lifespan (settings, bank, embedder and the HTTP client loaded once) and `jisi-gateway`:
the one place where the layers below are wired together."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import httpx
from fastapi import FastAPI

from app.bank.format import BankError, EmbedderInfo
from app.bank.reader import Bank
from app.config import Settings
from app.embedding import Embedder, make_embedder
from app.embedding.batcher import request_path_embedder
from app.http.checks import ConfigError, preflight, say_unpriced, validate
from app.http.errors import install_error_handlers
from app.http.middleware import BodySizeLimit, RequestContext
from app.http.routes import AppState, openapi_without_422, router
from app.http.reload import Reloader
from app.http.server import DrainingServer, on_sighup
from app.http.inspector import install_inspector
from app.observability.logs import configure_logging
from app.observability.loop_lag import LoopLagProbe
from app.observability.metrics import Metrics
from app.observability.tracing import Tracing, TracingError
from app.pipeline.prepare import Pipeline
from app.serving.gateway import Gateway
from app.upstream.pool import UpstreamPool
from app.upstream.transport import upstream_client

log = logging.getLogger("jisi.gateway")


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None,
               response_embedder: Embedder | None = None, transport: httpx.AsyncBaseTransport | None = None,
               read_settings: Callable[[], Settings] | None = None, tracing: Tracing | None = None) -> FastAPI:
    """The ASGI app. Tests inject embedders or an httpx transport; production loads them from settings.

    `read_settings` gives the settings a reload (SIGHUP, POST /admin/reload) serves: by default the environment
    over $JISI_CONFIG read again when the app read them itself, else the settings given."""
    given = settings
    settings = settings or Settings()
    tracing = tracing or Tracing.from_env()  # off unless OTEL_TRACES_EXPORTER names an exporter
    reread = read_settings or (Settings if given is None else (lambda: settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # no disk cache on the request path: user text is not persisted, and live texts rarely repeat
        model = embedder or make_embedder(settings.embedder, use_cache=False)
        responses_model = response_embedder or (make_embedder(settings.response_embedder, use_cache=False)
                                                if settings.response_embedder is not None else model)
        infos = {"query_embedder": EmbedderInfo.of(model), "response_embedder": EmbedderInfo.of(responses_model)}

        def load_bank(current: Settings) -> Bank:  # at start-up and on every reload, for the embedders in use
            return Bank.load(current.bank_path, index_settings=current.bank_index, **infos)

        bank = load_bank(settings)
        validate(settings, bank.models)
        async_embedder = request_path_embedder(model, settings.embedding_batching)
        # one micro-batcher per model: the responses' own when they have another embedder
        async_responses = async_embedder if responses_model is model else \
            request_path_embedder(responses_model, settings.embedding_batching)
        limits = httpx.Limits(max_connections=sum(u.max_concurrency for u in settings.upstreams) + 16,
                              max_keepalive_connections=64)
        async with upstream_client(limits, transport) as client:
            pool = UpstreamPool(settings.upstreams, client, settings.resilience, tracer=tracing)
            state.metrics.watch_pool(pool)
            state.metrics.watch_embedders(async_embedder, async_responses)
            probe = LoopLagProbe(interval_s=0.025, observe=state.metrics.loop_lag_seconds.observe, keep=1)
            probe.start()

            def serve(current: Settings, bank: Bank) -> None:
                """Put `bank` in service under `current`: one assignment, so a request sees one gateway or the
                other; requests in flight keep the gateway (and the bank) they started with."""
                pool.upstreams = {u.name: u for u in current.upstreams}  # prices, timeouts, keys, defaults
                calibration = bank.manifest.calibration or {}
                params, sources = current.jisi.resolve(calibration.get("params"))
                profiles = {}  # the bank's other named profiles, under the same rule: settings over the bank's
                for name, profile in (calibration.get("profiles") or {}).items():
                    values, origin = current.jisi.resolve(profile.get("params"))
                    profiles[name] = (values, {k: f"bank:{name}" if v == "bank" else v for k, v in origin.items()})
                pipeline = Pipeline(bank, async_embedder, pool, params, embed_system_prompt=current.embed_system_prompt,
                                    response_embedder=async_responses, param_sources=sources, profiles=profiles)
                say_unpriced(current, bank)
                state.api_keys = current.auth.keys()
                state.gateway = Gateway(pipeline, pool, state.metrics, max_messages=current.max_messages,
                                        max_requested_tokens=current.max_requested_tokens, tracing=tracing)

            serve(settings, bank)
            state.metrics.serving_bank(bank.manifest.build_id)
            state.admin_keys = settings.admin.keys()
            state.reloader = Reloader(settings, reread, load_bank, serve, state.metrics)
            state.reloader.serving = bank.manifest.build_id
            on_sighup(state.reloader)
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
                state.gateway = state.reloader = None
                await probe.stop()
                tracing.shutdown()
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
    app.add_middleware(RequestContext, observe=state.metrics.observe_http, tracing=tracing)
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
        validate(settings, preflight(settings).models)  # the manifest, read once
        tracing = Tracing.from_env()
    except (BankError, ConfigError, TracingError) as exc:
        sys.exit(f"jisi-gateway: {exc}")
    app = create_app(settings, read_settings=Settings, tracing=tracing)
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
