#!/usr/bin/env bash
# The demo on a fresh machine, in one of two forms.
#
#   bash scripts/demo.sh                    three real small LLMs on loopback (llama.cpp: SmolLM2-135M twice and
#                                           Gemma-3-270M), a small bank collected from them, the gateway on it
#   bash scripts/demo.sh --records [PATH]   the recorded answers of real models (default: the 52 models of
#                                           ../shared/data/zeroeval-bench.tar.xz): a calibrated bank of the train
#                                           split (built once, cached in var/demo), the replay upstream over the
#                                           test split, the gateway and the routing inspector at /inspector/
#
# The gateway listens on http://127.0.0.1:${PORT:-8000}; Ctrl-C stops it and what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PORT=${PORT:-8000}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "${1:-}" = "--records" ]; then
    shift
    records=()
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then records=(--records "$1"); shift; fi
    # no llama.cpp here: every model is replayed from its records
    # torch is pinned in pyproject.toml (a CPU wheel is on disk; an unpinned torch pulls CUDA)
    .venv/bin/pip install --quiet --disable-pip-version-check -e .
    exec .venv/bin/jisi-pool demo "${records[@]}" --port "$PORT" "$@"
fi
source scripts/llama-wheel.sh  # a portable llama.cpp build, cached per machine
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[local]'
.venv/bin/jisi-pool install
.venv/bin/jisi-pool start
trap '.venv/bin/jisi-pool stop' EXIT
.venv/bin/jisi-bank collect --questions config/demo-questions.jsonl --config config/gateway.yaml \
    --out var/demo-records --max-queries 20 --max-tokens 96 --no-progress
.venv/bin/jisi-bank build --records var/demo-records --out banks/local-pool
JISI_CONFIG=config/gateway.yaml .venv/bin/jisi-gateway --host 127.0.0.1 --port "$PORT"
