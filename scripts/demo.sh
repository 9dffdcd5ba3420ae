#!/usr/bin/env bash
# The demo on a fresh machine: install everything, start three real LLMs on loopback (jisi-pool),
# collect a small bank from them (answers are cached in var/, so a rerun asks nothing again), build the
# bank, and serve the gateway on http://127.0.0.1:${PORT:-8000}. Ctrl-C stops the gateway and the pool.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PORT=${PORT:-8000}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
source scripts/llama-wheel.sh  # a portable llama.cpp build, cached per machine
# torch is pinned in pyproject.toml (a CPU wheel is on disk; an unpinned torch pulls CUDA)
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[local]'
.venv/bin/jisi-pool install
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/jisi-pool start
trap '.venv/bin/jisi-pool stop' EXIT
.venv/bin/jisi-bank collect --questions config/demo-questions.jsonl --config config/gateway.yaml \
    --out var/demo-records --max-queries 20 --max-tokens 96 --no-progress
.venv/bin/jisi-bank build --records var/demo-records --out banks/local-pool
JISI_CONFIG=config/gateway.yaml .venv/bin/jisi-gateway --host 127.0.0.1 --port "$PORT"
