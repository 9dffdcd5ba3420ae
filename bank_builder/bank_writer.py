"""Writes bank files and commits them by replacing the manifest last (see app/bank.py)."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable

import faiss
import numpy as np

from app import bank_index
from app.bank import MANIFEST, Manifest, QueryInfo
from app.bank_index import BankIndexSettings


# files a build writes (and temporary files of a crashed one); anything else in the folder is left alone
_OWNED_PREFIXES = ("query_emb-", "resp-", "v-", "c-", "present-", "queries-", "index-", ".")


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a temporary file in the same folder, synced, then renamed over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_array(out: Path, name: str, array: np.ndarray) -> str:
    atomic_write(out / name, lambda handle: np.save(handle, np.ascontiguousarray(array)))
    return name


def save_queries(out: Path, name: str, queries: list[QueryInfo]) -> str:
    lines = "".join(json.dumps(q.__dict__, ensure_ascii=False) + "\n" for q in queries)
    atomic_write(out / name, lambda handle: handle.write(lines.encode()))
    return name


def save_index(out: Path, name: str, e: np.ndarray, settings: BankIndexSettings | None = None) -> str:
    """Index the query embeddings e (flat or IVF by `settings`, default auto: app/bank_index.py) and save it.

    The manifest records the kind as bank_index.index_type_for(len(e), settings).
    """
    index = bank_index.build_index(e, settings or BankIndexSettings())
    atomic_write(out / name, lambda handle: handle.write(faiss.serialize_index(index)))  # no copy: a buffer
    return name


def commit(out: Path, manifest: Manifest) -> None:
    """Make the bank current by replacing its manifest, then delete files no manifest names."""
    payload = manifest.model_dump_json(indent=2).encode()
    atomic_write(out / MANIFEST, lambda handle: handle.write(payload))
    files = manifest.files
    keep = {MANIFEST, files.query_emb, files.v, files.c, files.present, files.queries, files.index,
            *files.responses}
    for path in out.iterdir():
        if path.is_file() and path.name not in keep and path.name.startswith(_OWNED_PREFIXES):
            path.unlink()
