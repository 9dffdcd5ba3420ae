"""`jisi-bank collect`, the run: every question of every selected upstream not already answered, through the
pool's retry loop; every answer appended to a cache (JSONL, fsync'd per line) before anything else, so a
killed run loses nothing: the next run reads it and asks only what is missing."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import httpx
from tqdm import tqdm

from app.config import ResilienceSettings, Settings, UpstreamSettings
from app.upstream.call import CallResult, UpstreamError
from app.upstream.pool import UpstreamPool
from bank_builder.collect import scorers
from bank_builder.collect.questions import CollectOptions, Question
from bank_builder.collect.results import CollectSummary, Key, build_documents, write_results

class AnswerCache:
    """Append-only JSONL of finished answers by (dataset, index, model); each line flushed and fsync'd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[Key, dict[str, Any]] = {}
        self.unreadable = 0
        raw = path.read_bytes() if path.is_file() else b""
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.answers[(row["dataset"], int(row["index"]), row["model"])] = row
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1  # a line torn by a kill mid-write
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")
        if raw and not raw.endswith(b"\n"):
            self._fh.write(b"\n")  # so the next answer does not glue onto the torn line

    def get(self, key: Key, prompt: str) -> dict[str, Any] | None:
        row = self.answers.get(key)
        return row if row is not None and row.get("prompt") == prompt else None  # a changed prompt is re-asked

    def add(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.answers[(row["dataset"], row["index"], row["model"])] = row

    def close(self) -> None:
        self._fh.close()


def select_upstreams(settings: Settings, names: Sequence[str] | None,
                     concurrency: int | None = None) -> list[UpstreamSettings]:
    by_name = {u.name: u for u in settings.upstreams}
    if not by_name:
        raise ValueError("no upstreams configured (add `upstreams:` to the config YAML)")
    names = list(dict.fromkeys(names or by_name))
    if unknown := [n for n in names if n not in by_name]:
        raise ValueError(f"unknown upstream(s) {unknown}; configured: {sorted(by_name)}")
    return [by_name[n].model_copy(update={"max_concurrency": concurrency}) if concurrency else by_name[n]
            for n in names]


def collect_resilience(options: CollectOptions) -> ResilienceSettings:
    """The pool's one retry loop, set for collection: every retryable failure retried (timeouts too: an
    unanswered question is a hole in the records), no breaker trip (a model is never skipped), and only each
    upstream's timeout_s bounding a call (a non-streamed answer's first byte is its end)."""
    return ResilienceSettings(retries=options.retries, retry_timeouts=True, backoff_base_s=options.backoff_s,
                              backoff_max_s=options.max_backoff_s, breaker_failures=10**9,
                              first_byte_timeout_s=10**6, request_deadline_s=10**9)


def _row(q: Question, u: UpstreamSettings, prompt: str, result: CallResult) -> dict[str, Any]:
    return {"dataset": q.dataset, "index": q.index, "model": u.name, "upstream_model": u.upstream_model,
            "prompt": prompt, "response": result.text, "finish_reason": result.finish_reason,
            "usage": {"prompt_tokens": result.usage.prompt_tokens,
                      "completion_tokens": result.usage.completion_tokens},
            "usage_estimated": result.usage_estimated, "cost_usd": result.cost_usd,
            "latency_s": round(result.latency_s, 4), "collected_at": datetime.now(timezone.utc).isoformat()}


async def collect(questions: list[Question], settings: Settings, upstream_names: list[str] | None, out: Path, *,
                  cache_path: Path | None = None, options: CollectOptions | None = None,
                  progress: bool = True) -> CollectSummary:
    """Ask every question of every selected upstream not already in the cache, then write the result files."""
    options = options or CollectOptions()
    out = Path(out)
    upstreams = select_upstreams(settings, upstream_names, options.concurrency)
    for kind in {options.kind(q) for q in questions}:
        scorers.get_scorer(kind)
    prompts = {(q.dataset, q.index): options.prompt(q) for q in questions}
    cache = AnswerCache(cache_path or out / ".collect-cache.jsonl")
    pending = {u.name: [q for q in reversed(questions) if cache.get((q.dataset, q.index, u.name),
                                                                  prompts[q.dataset, q.index]) is None]
               for u in upstreams}
    total = len(questions) * len(upstreams)
    asked: dict[str, int] = {u.name: len(pending[u.name]) for u in upstreams}
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=total, initial=total - sum(asked.values()), unit="answer", desc="collecting",
               disable=not progress)

    async def worker(pool: UpstreamPool, u: UpstreamSettings) -> None:
        queue = pending[u.name]
        while queue:
            q = queue.pop()
            prompt = prompts[q.dataset, q.index]
            body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
            body.update({k: v for k, v in (("max_tokens", options.max_tokens),
                                          ("temperature", options.temperature)) if v is not None})
            try:
                cache.add(_row(q, u, prompt, await pool.complete(u.name, body, role="collect")))
            except UpstreamError as exc:  # not cached and not written: the next run asks again
                failures.append({"dataset": q.dataset, "index": q.index, "model": u.name,
                                 "status": exc.status, "error": exc.message})
                bar.set_postfix(failed=len(failures))
            bar.update(1)

    try:
        limits = httpx.Limits(max_connections=sum(u.max_concurrency for u in upstreams))
        async with httpx.AsyncClient(limits=limits) as client:
            pool = UpstreamPool(upstreams, client, collect_resilience(options))
            async with asyncio.TaskGroup() as group:  # per upstream, max_concurrency workers share its queue
                for u in upstreams:
                    for _ in range(min(u.max_concurrency, len(pending[u.name]))):
                        group.create_task(worker(pool, u))
    except BaseExceptionGroup as errors:  # a bug in a worker: show it, not the TaskGroup wrapper
        raise errors.exceptions[0] from None
    finally:
        bar.close()
        cache.close()
    docs = build_documents(questions, cache.answers, upstreams, options)
    files = write_results(docs, out)
    summary = CollectSummary.of(docs, upstreams, asked, failures, files, time.perf_counter() - started,
                                len(questions), str(cache.path))
    if progress:
        print(summary.table())
    return summary


def settings_from(config: Path | None) -> Settings:
    """The settings with `config` as the YAML file (as $JISI_CONFIG would name it), for this command only."""
    previous = os.environ.get("JISI_CONFIG")
    if config is not None:
        os.environ["JISI_CONFIG"] = str(config)
    try:
        return Settings()
    finally:
        if previous is None:
            os.environ.pop("JISI_CONFIG", None)
        else:
            os.environ["JISI_CONFIG"] = previous
