#!/usr/bin/env bash
# Sourced by test.sh and demo.sh. llama-cpp-python has no Linux wheel on PyPI: it compiles llama.cpp. A native
# build (-march=native) crashed on this machine's CPU (AMX present: a segfault in the first completion), so
# we build a portable AVX2 wheel, once per machine and per build flags, into a wheelhouse that pip then
# prefers over its own cache (whose native wheel would otherwise be reused: pip keys it by version, not flags).
: "${CMAKE_ARGS:=-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
export CMAKE_ARGS
LLAMA_SPEC="llama-cpp-python[server]==0.3.36"
WHEELHOUSE="${XDG_CACHE_HOME:-$HOME/.cache}/jisi/wheels/$(printf '%s' "$LLAMA_SPEC $CMAKE_ARGS" | sha256sum | cut -c1-16)"
if ! ls "$WHEELHOUSE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building $LLAMA_SPEC ($CMAKE_ARGS) into $WHEELHOUSE: about 10 minutes, once" >&2
    mkdir -p "$WHEELHOUSE"
    .venv/bin/pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps -w "$WHEELHOUSE" "$LLAMA_SPEC"
fi
export PIP_FIND_LINKS="$WHEELHOUSE"  # also seen by `jisi-pool install`, which runs pip
