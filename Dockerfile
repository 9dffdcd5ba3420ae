# JiSi Gateway: the OpenAI-compatible gateway on CPU; needs no network at start (embedding model baked in).
#   docker build -t jisi-gateway .          (podman: see README, "Run it as a container")
#   docker run -p 8000:8000 -v "$PWD/banks/mybank:/data/bank:ro" \
#              -v "$PWD/config/my-gateway.yaml:/app/config/gateway.docker.yaml:ro" jisi-gateway
# scripts/container-check.sh builds it, runs it against a replay upstream and stops it gracefully.
#
# Build arguments, for builds behind a proxy or a mirror:
#   TORCH_INDEX      where torch's CPU wheel comes from (default: the PyTorch CPU index). The build fails if it
#                    is unreachable: it never falls back to PyPI's torch, whose CUDA dependencies add gigabytes.
#   PIP_INDEX_URL    the package index for everything else (default: PyPI).
#   a CA bundle      `--secret id=ca,src=/path/to/ca.pem`: trusted by pip during the build, not kept in the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_INDEX_URL=$PIP_INDEX_URL

RUN useradd --create-home --uid 10001 jisi \
 && mkdir -p /data/bank && chown jisi:jisi /data/bank
WORKDIR /app

# 1. torch's CPU wheel from TORCH_INDEX alone (a failure here fails the build), then its dependencies from the
#    index; the biggest layer, kept when anything else changes.
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip download --no-deps --index-url "$TORCH_INDEX" --dest /tmp/torch torch==2.13.0 \
 && pip install /tmp/torch/torch-*.whl \
 && rm -rf /tmp/torch \
 && python -c "import torch; assert torch.version.cuda is None, torch.__version__; print('torch', torch.__version__)"

# 2. The dependencies, pinned (docker/constraints.txt: the versions the test suite passed with), installed from
#    pyproject.toml alone with empty packages: a code change does not reinstall them.
COPY pyproject.toml README.md docker/constraints.txt ./
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && mkdir -p app bank_builder localpool && touch app/__init__.py bank_builder/__init__.py localpool/__init__.py \
 && pip install --constraint constraints.txt . \
 && pip uninstall --yes jisi-gateway \
 && rm -rf app bank_builder localpool build *.egg-info

# 3. The sources: the gateway, the bank tools and `jisi-pool` (the replay upstream); no build leftovers kept.
COPY app ./app
COPY bank_builder ./bank_builder
COPY localpool ./localpool
COPY config ./config
RUN pip install --no-deps . && rm -rf build *.egg-info

# Nothing may reach the Hugging Face hub at start: the model must load from the package alone.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    JISI_BANK_PATH=/data/bank \
    JISI_CONFIG=/app/config/gateway.docker.yaml \
    PORT=8000

USER jisi
# Fails the build if the packaged embedding model does not load offline (as the runtime user); distils the
# default static model from it here, once, into the image (~40 s), so a container starts without doing it.
RUN python -c "from app.embedding import make_embedder; from app.config import EmbedderSettings; \
e = make_embedder(EmbedderSettings(cache_dir=None)); v = e.embed(['ping']); \
assert v.shape == (1, 256), v.shape; print('embedder ok:', e.name, e.digest, v.shape)"

# The bank built by `jisi-bank build` (its models must match the config's upstreams), mounted read-only.
VOLUME ["/data/bank"]
EXPOSE 8000
# /readyz answers 200 once the bank and the embedder are loaded (503 while loading or draining); the port is
# the container's PORT, as the gateway's; no curl in slim images.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/readyz', timeout=4)"]
# exec: the gateway is PID 1 and gets SIGTERM itself (it drains: /readyz 503, then the requests in flight)
CMD ["sh", "-c", "exec jisi-gateway --host 0.0.0.0 --port \"$PORT\""]
