"""Writes bank files and commits them by replacing the manifest last (format: app/bank/format.py)."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from app.bank import index as bank_index
from app.bank.format import MANIFEST, OWNED_PREFIXES, Manifest, QueryInfo
from app.config import BankIndexSettings
from app.files import atomic_write


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_array(out: Path, name: str, array: np.ndarray) -> str:
    atomic_write(out / name, lambda handle: np.save(handle, np.ascontiguousarray(array)))
    return name


def save_queries(out: Path, name: str, queries: list[QueryInfo]) -> str:
    lines = "".join(json.dumps(q.__dict__, ensure_ascii=False) + "\n" for q in queries)
    atomic_write(out / name, lambda handle: handle.write(lines.encode()))
    return name


def save_index(out: Path, name: str, e: np.ndarray, settings: BankIndexSettings | None = None) -> str:
    """Index the query embeddings e (flat or IVF by `settings`, default auto: app/bank/index.py) and save it.

    The manifest records the kind as bank_index.index_type_for(len(e), settings).
    """
    index = bank_index.build_index(e, settings or BankIndexSettings())
    atomic_write(out / name, lambda handle: handle.write(faiss.serialize_index(index)))  # no copy: a buffer
    return name


def commit(out: Path, manifest: Manifest) -> None:
    """Make the bank current by replacing its manifest, then delete files no manifest names."""
    payload = manifest.model_dump_json(indent=2).encode()
    atomic_write(out / MANIFEST, lambda handle: handle.write(payload))
    keep = {MANIFEST, *manifest.files.names()}
    for path in out.iterdir():
        if path.is_file() and path.name not in keep and path.name.startswith(OWNED_PREFIXES):
            path.unlink()
